"""Adversarial domain adaptation: train on a labelled source field, adapt to an unlabelled target field.

Ait Ouahmed et al. (2024, A&A 683, A26; the seed slides, "Adversarial Domain Adaptation, the
architecture") train on one deep field (COSMOS) and predict another (XMM) whose seeing, depth and
sky differ.  A *domain discriminator* D is attached to the shared feature extractor F (the
convolutional part of the photo-z network, before the fully connected head); the photo-z head is
trained on source labels only, and F learns features from which D cannot tell the fields apart.
The objective is that of DANN (Ganin et al. 2016, JMLR 17, 59, Sect. 5):

    E = L_z(head(F(x_s)), z_s)  +  L_D(D(R_λ(F(x))), d)

with L_z the photo-z loss of :class:`~zpix.training.module.PhotoZModule`, L_D the binary
cross-entropy of D and R_λ the *gradient reversal layer*: identity forward, ``-λ`` times the
gradient backward.  D descends L_D while F ascends it (a saddle point reached with one optimiser).
λ ramps in as ``λ(p) = w (2 / (1 + exp(-γ p)) - 1)``, γ = 10, p the fraction of training done
(Ganin et al. 2016, Sect. 5.2.2), so that D's early, noisy signal does not disturb F.

The slides' two fixes against negative transfer, each switchable:

* **guided batch selection** (``guided``): every source image of a batch comes with a target image
  of similar r-band magnitude (:mod:`zpix.training.guided`); otherwise a target image drawn at random.
* **paired discriminator input** (``paired``): D does not classify single images; it sees pairs
  (source, its matched target) labelled "different fields" and (source, another source) /
  (target, another target) labelled "same field", and must say whether a pair comes from one field.
  A pair (a, b) enters D as ``[a + b, |a - b|]`` (symmetric: the order of a pair tells nothing).
  The "same field" pairs carry half the weight each, so both answers weigh the same.

``adversarial`` chooses the objective: "grl" (above), "gan" (the alternative GAN-style update:
D minimises L_D on detached features, F minimises ``λ L_D`` with the labels swapped against a
frozen copy of D's weights -- the inverted-label loss of Tzeng et al. 2017 -- in the same
optimiser step), or "none" (D is trained on detached features and only *measures* how separable
the fields are: the photo-z network trains exactly as without adaptation).

The target cube store's ``z_spec`` is never read (a store of unlabelled images, NaN z_spec, works).
Lightning handles this module like :class:`PhotoZModule` (checkpoints, DDP, progress): the training
DataLoader yields source objects with their matched target images (:class:`DomainPairDataset`, a
map-style dataset, so that a DistributedSampler shards it), validation is on source labels.
Checkpoints keep D apart (``checkpoint["zpix_domain"]``) so that `zpix predict` and ``init_from``
load them as plain photo-z modules.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from zpix.plain_types import check_known_options
from zpix.store.cube_store import CubeStore, OnBad
from zpix.store.dataset import CubeDataset
from zpix.training.augment import random_dihedral
from zpix.training.guided import MagnitudeMatcher, matching_magnitudes
from zpix.training.module import PhotoZModule

ADVERSARIAL = ("grl", "gan", "none")
SELECT = ("last", "val_loss")


@dataclass(frozen=True)
class DomainConfig:
    """Options of the domain-adaptation objective (the ``domain`` block of a training config)."""

    adversarial: str = "grl"  # grl | gan | none (see the module docstring)
    weight: float = 1.0  # w: the final value of the ramped adversarial weight λ
    ramp_gamma: float = 10.0  # γ of Ganin's ramp; 0 gives a constant λ = w
    guided: bool = True  # magnitude-guided choice of each source object's target partner
    paired: bool = True  # D tells "same field?" for pairs instead of classifying single images
    match_band: str = "r"
    match_k: int = 5  # the partner is drawn among the k target objects nearest in magnitude
    aperture_arcsec: float = 3.0  # radius of the aperture magnitude used where catalogue mags are missing
    hidden: int = 256  # width of D's two hidden layers
    # which checkpoint becomes best.ckpt: "last" (the end of the λ ramp; the source validation loss
    # is no criterion for the target field, where no labels exist) or "val_loss" (as without DA)
    select: str = "last"

    def __post_init__(self) -> None:
        problems = []
        if self.adversarial not in ADVERSARIAL:
            problems.append(f"adversarial must be one of {ADVERSARIAL}, not {self.adversarial!r}")
        if self.select not in SELECT:
            problems.append(f"select must be one of {SELECT}, not {self.select!r}")
        if not self.weight >= 0 or not self.ramp_gamma >= 0:
            problems.append(f"weight and ramp_gamma must be >= 0, got {self.weight}, {self.ramp_gamma}")
        if self.match_k < 1 or self.hidden < 1 or not self.aperture_arcsec > 0:
            problems.append("match_k and hidden must be >= 1 and aperture_arcsec > 0")
        if problems:
            raise ValueError("domain: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict[str, Any] | DomainConfig | None) -> DomainConfig:
        if isinstance(values, DomainConfig):
            return values
        values = dict(values or {})
        check_known_options(cls, values, "domain")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def ganin_lambda(p: float, gamma: float = 10.0) -> float:
    """Ganin et al. (2016) ramp ``2 / (1 + exp(-γ p)) - 1``: 0 at p = 0, → 1 as p → 1 (0.9999 at p = 1)."""
    if gamma == 0:
        return 1.0
    p = min(max(float(p), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.lam * grad, None


def grad_reverse(x: Tensor, lam: float = 1.0) -> Tensor:
    """Gradient reversal layer R_λ (Ganin et al. 2016, Eq. 16-17): R(x) = x, dR/dx = -λ I."""
    return _GradientReversal.apply(x, float(lam))


class GradientReversal(nn.Module):
    """:func:`grad_reverse` as a module, with a settable ``lam``."""

    def __init__(self, lam: float = 1.0) -> None:
        super().__init__()
        self.lam = float(lam)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.lam)


class DomainDiscriminator(nn.Module):
    """D: an MLP on the feature vector (or on a pair encoding ``[a + b, |a - b|]``) -> one logit.

    The input is layer-normalised (no affine weights) so that D works on any feature scale.
    """

    def __init__(self, n_features: int, hidden: int = 256, paired: bool = True) -> None:
        super().__init__()
        self.paired = bool(paired)
        n_in = 2 * n_features if paired else n_features
        self.net = nn.Sequential(
            nn.LayerNorm(n_in, elementwise_affine=False),
            nn.Linear(n_in, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    @staticmethod
    def encode_pair(a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([a + b, (a - b).abs()], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)


def domain_inputs(source: Tensor, target: Tensor, paired: bool) -> tuple[Tensor, Tensor, Tensor]:
    """D's inputs, labels and per-input weights for a batch of source features and their matched targets.

    Single images: label 1 for source, 0 for target.  Pairs (``paired``): (s_j, t_j) "different
    fields" (0), (s_j, s_{j+1}) and (t_j, t_{j+1}) "same field" (1), the latter weighted 1/2.
    """
    n = source.shape[0]
    if not paired:
        x = torch.cat([source, target])
        y = torch.cat([source.new_ones(n), source.new_zeros(target.shape[0])])
        return x, y, torch.ones_like(y)
    if n < 2:
        raise ValueError("paired domain discrimination needs batches of at least 2 source objects")
    enc = DomainDiscriminator.encode_pair
    x = torch.cat([enc(source, target), enc(source, source.roll(1, 0)), enc(target, target.roll(1, 0))])
    y = torch.cat([source.new_zeros(n), source.new_ones(2 * n)])
    w = torch.cat([source.new_ones(n), source.new_full((2 * n,), 0.5)])
    return x, y, w


def feature_extractor(model: nn.Module) -> tuple[Callable[[Tensor], Tensor], int]:
    """The shared feature extractor of a registered image model and its output size.

    ``MultimodalNet.features`` or the ``backbone`` of the Pasquet et al. networks; the model's ``head``
    turns the features (+ E(B-V)) into its output.
    """
    if hasattr(model, "features") and hasattr(model, "out_features"):
        return model.features, int(model.out_features)
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "out_features"):
        return backbone, int(backbone.out_features)
    raise ValueError(f"domain adaptation needs an image model with a feature extractor (pasquet2019*, "
                     f"multimodal*); {type(model).__name__} has none")


# -- data -------------------------------------------------------------------------------------------
class TargetImages:
    """Unlabelled target images, read by row with a per-process HDF5 handle; never touches z_spec."""

    def __init__(self, path: str | os.PathLike, on_bad: OnBad = "error") -> None:
        self.path = str(path)
        self.on_bad: OnBad = on_bad
        with CubeStore(self.path, on_bad=on_bad) as store:
            self.rows = np.asarray(store.valid_index, dtype=np.int64)
            self.image_shape = store.image_shape
            self.bands = store.bands
        if len(self.rows) == 0:
            raise ValueError(f"target cube store {self.path} holds no usable images")
        self._store: CubeStore | None = None
        self._pid: int | None = None

    def images(self, rows: np.ndarray) -> np.ndarray:
        if self._store is None or self._pid != os.getpid():
            self._store = CubeStore(self.path, on_bad=self.on_bad, validate=False)
            self._pid = os.getpid()
        return self._store.images(rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}


class DomainPairDataset(Dataset):
    """Source samples (``image``, ``ebv``, ``z``, ...) each with a target partner (``target_image``,
    ``target_index``): magnitude-matched (``guided``) or drawn uniformly from the target store.

    Draws use torch's generator of the process (seeded per DataLoader worker), so a seed reproduces them.
    """

    def __init__(self, source: CubeDataset, target: str | os.PathLike, config: DomainConfig) -> None:
        self.source = source
        self.target = TargetImages(target, on_bad=source.on_bad)
        if self.target.image_shape != tuple(source.image_shape) or list(self.target.bands) != list(source.bands):
            raise ValueError(f"target cube store {target} has images {self.target.image_shape} in bands "
                             f"{self.target.bands}, the source {source.path} {source.image_shape} in {source.bands}; "
                             "both fields must have the same bands and stamp size")
        self.guided = config.guided
        self.match_kind = "random"
        self.matcher: MagnitudeMatcher | None = None
        self._source_key: np.ndarray | None = None
        if config.guided:
            src_mags, tgt_mags, self.match_kind = matching_magnitudes(
                source.path, source.indices, target, self.target.rows, config.match_band, config.aperture_arcsec)
            self.matcher = MagnitudeMatcher(tgt_mags, config.match_k)
            self._source_key = src_mags

    def __len__(self) -> int:
        return len(self.source)

    def partners(self, positions: np.ndarray) -> np.ndarray:
        """Target rows partnering the source samples at ``positions``."""
        if self.matcher is not None:
            picks = self.matcher.draw(self._source_key[positions])
        else:
            picks = torch.randint(len(self.target.rows), (len(positions),)).numpy()
        return self.target.rows[picks]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, positions: list[int]) -> list[dict[str, Tensor]]:
        pos = np.asarray(positions, dtype=np.int64)
        items = self.source.__getitems__(list(pos))
        rows = self.partners(pos)
        images = self.target.images(rows)
        for item, image, row in zip(items, images, rows, strict=True):
            item["target_image"] = torch.from_numpy(image)
            item["target_index"] = torch.tensor(row)
        return items


# -- the objective -----------------------------------------------------------------------------------
class DomainAdaptationModule(PhotoZModule):
    """:class:`PhotoZModule` plus a domain discriminator on the shared features (call :meth:`attach_domain`)."""

    discriminator: DomainDiscriminator

    def attach_domain(self, config: DomainConfig | dict[str, Any] | None, target_cubes: str = "") -> None:
        """Build D for this model's features; ``target_cubes`` is recorded in the checkpoints."""
        self.domain_config = DomainConfig.from_dict(config)
        self.target_cubes = str(target_cubes)
        _, n_features = feature_extractor(self.model)
        self.discriminator = DomainDiscriminator(n_features, self.domain_config.hidden, self.domain_config.paired)

    @property
    def checkpoint_monitor(self) -> str:
        """The metric (lowest wins) that picks best.ckpt: ``ramp_steps_left`` (optimiser steps still to go,
        logged at each validation: the latest epoch wins) for ``select=last``, else ``val_loss``."""
        return "ramp_steps_left" if self.domain_config.select == "last" else "val_loss"

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and not trainer.sanity_checking:
            total = float(trainer.estimated_stepping_batches)
            left = total - self.global_step if math.isfinite(total) else -float(self.global_step)
            self.log("ramp_steps_left", float(left))

    def domain_lambda(self) -> float:
        """λ = w · ramp(p), p = optimiser steps done / steps planned."""
        cfg = self.domain_config
        trainer = getattr(self, "_trainer", None)
        total = float(trainer.estimated_stepping_batches) if trainer is not None else float("inf")
        p = self.global_step / total if math.isfinite(total) and total > 0 else 1.0
        return cfg.weight * ganin_lambda(p, cfg.ramp_gamma)

    def domain_loss(self, source: Tensor, target: Tensor, lam: float) -> tuple[Tensor, Tensor]:
        """The adversarial term added to the photo-z loss, and D's accuracy (on the current batch)."""
        cfg = self.domain_config
        if cfg.adversarial == "grl":
            x, y, w = domain_inputs(grad_reverse(source, lam), grad_reverse(target, lam), cfg.paired)
            logits = self.discriminator(x.float())
            loss = F.binary_cross_entropy_with_logits(logits, y, weight=w, reduction="sum") / w.sum()
        else:
            x, y, w = domain_inputs(source.detach(), target.detach(), cfg.paired)
            logits = self.discriminator(x.float())
            loss = F.binary_cross_entropy_with_logits(logits, y, weight=w, reduction="sum") / w.sum()
            if cfg.adversarial == "gan" and lam > 0:
                # F's step against a frozen D: the same inputs, not detached, with the labels swapped
                xf, yf, wf = domain_inputs(source, target, cfg.paired)
                frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
                fooled = torch.func.functional_call(self.discriminator, frozen, (xf.float(),))
                loss = loss + lam * F.binary_cross_entropy_with_logits(
                    fooled, 1 - yf, weight=wf, reduction="sum") / wf.sum()
        accuracy = (((logits > 0).float() == y).float() * w).sum() / w.sum()
        return loss, accuracy.detach()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        extract, _ = feature_extractor(self.model)
        source, target = batch["image"], batch["target_image"]
        n = source.shape[0]
        images = torch.cat([source, target])
        if self.hparams.augment:
            images = random_dihedral(images)
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = extract(images)
        out = self.model.head(features[:n], batch["ebv"])
        task = self.loss(out, batch["z"])
        lam = self.domain_lambda()
        adv, accuracy = self.domain_loss(features[:n], features[n:], lam)
        loss = task + adv
        size = len(batch["z"])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=size)
        self.log("train_task_loss", task, on_step=False, on_epoch=True, sync_dist=True, batch_size=size)
        self.log("domain_loss", adv, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=size)
        self.log("domain_acc", accuracy, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=size)
        self.log("domain_lambda", lam, on_step=True, on_epoch=False, batch_size=size)
        return loss

    # -- checkpoints: D travels beside the photo-z weights, so that plain loaders read them -------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        moved = {k: state.pop(k) for k in [k for k in state if k.startswith("discriminator.")]}
        checkpoint["zpix_domain"] = {"config": self.domain_config.to_dict(), "target_cubes": self.target_cubes,
                                     "discriminator": moved}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        domain = checkpoint.get("zpix_domain")
        if domain is None:
            return
        if not hasattr(self, "discriminator"):
            self.attach_domain(domain["config"], domain.get("target_cubes", ""))
        checkpoint.setdefault("state_dict", {}).update(domain["discriminator"])


def domain_dataset(source: CubeDataset, target_cubes: str | os.PathLike, config: dict[str, Any] | DomainConfig
                   ) -> DomainPairDataset:
    """The training dataset of a DA run: ``source`` with target partners from ``target_cubes``."""
    return DomainPairDataset(source, target_cubes, DomainConfig.from_dict(config))
