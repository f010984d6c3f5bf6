"""Images + magnitudes: the combined model of John William et al. (KiDS bright sample), Sect. 3, Fig. 1a.

Two branches, concatenated, then a head:

* an Inception CNN (Szegedy et al. 2015; the modules of :mod:`zpix.models.inception`) on the 4-band
  (ugri) 36x36 KiDS cutouts,
* an "ordinary neural network" (dense layers) on the 9-band KiDS+VIKING magnitudes,

regressing z (they train with the Huber loss, delta = 1e-4).  Here the head is a choice:
``head="regression"`` gives (z, log sigma), ``head="pdf"`` a binned PDF.  ``use_images=False`` or
``use_mags=False`` switches a branch off, giving the magnitudes-only and images-only models of the
comparison from the same class.

Missing magnitudes (NaN, or >= ``missing_threshold``, e.g. the 99 sentinel of KiDS/SExtractor
catalogues) are handled inside the model, so that no caller has to invent values:

    m'_j = (m_j - mean_j) / std_j  if observed,   0 if missing;      mask_j = 1 if observed else 0,

and the dense branch reads [m', mask] (2 x n_mags inputs): zero is the mean after standardisation,
and the mask tells the network that the zero is not a measurement.  ``mean``/``std`` are buffers set
with :meth:`HybridNet.set_mag_normalization`, so checkpoints carry them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zpix.models.base import PhotoZModel, check_head_fits, check_images
from zpix.models.heads import BinnedPDFHead, RegressionHead, make_head
from zpix.models.inception import InceptionBackbone
from zpix.models.layers import MLP
from zpix.models.registry import register_model, register_variant

#: the branches, in the order their features are concatenated for the head
BRANCHES = ("cnn", "mag_net")

#: CNN branch for 36x36 cutouts: 18x18 after the stem, two modules, 9x9, one module, pooled to 3x3.
HYBRID_MODULES: tuple[tuple[int, int, int, int], ...] = ((32, 48, 48, 48), (48, 64, 64, 64), (64, 96, 96, 0))


def missing_mask(mags: Tensor, missing_threshold: float = 90.0) -> Tensor:
    """Boolean (B, M) mask, True where a magnitude is observed (finite and < ``missing_threshold``)."""
    return torch.isfinite(mags) & (mags < missing_threshold)


def magnitude_statistics(mags: Any, missing_threshold: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation of the observed magnitudes of a training set (N, M).

    Missing entries are ignored; a band with fewer than two observed values gets mean 0 and std 1.
    Feed the result to :meth:`HybridNet.set_mag_normalization`.
    """
    m = np.asarray(mags, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"magnitudes must be a (N, n_mags) array, got shape {m.shape}")
    observed = np.isfinite(m) & (m < missing_threshold)
    mean = np.zeros(m.shape[1])
    std = np.ones(m.shape[1])
    for j in range(m.shape[1]):
        col = m[observed[:, j], j]
        if col.size >= 2:
            mean[j], std[j] = col.mean(), max(col.std(), 1e-6)
    return mean, std


class MagnitudeEncoder(nn.Module):
    """Dense branch: [standardised magnitudes with missing = 0, observed mask] -> MLP with ReLU."""

    def __init__(self, *, n_mags: int, widths: Sequence[int], missing_threshold: float = 90.0) -> None:
        super().__init__()
        if n_mags < 1:
            raise ValueError(f"n_mags must be >= 1, got {n_mags}")
        self.n_mags = int(n_mags)
        self.missing_threshold = float(missing_threshold)
        self.register_buffer("mag_mean", torch.zeros(self.n_mags))
        self.register_buffer("mag_std", torch.ones(self.n_mags))
        self.mlp = MLP(in_features=2 * self.n_mags, widths=widths)
        self.out_features = self.mlp.out_features

    def inputs(self, mags: Tensor) -> Tensor:
        """The (B, 2 n_mags) vector the MLP reads: standardised magnitudes (missing -> 0), then the mask."""
        if mags.ndim != 2 or mags.shape[1] != self.n_mags:
            raise ValueError(
                f"mags must have shape (B, {self.n_mags}), got {tuple(mags.shape)}; "
                "build the model with n_mags= matching your catalogue"
            )
        observed = missing_mask(mags, self.missing_threshold)
        scaled = (mags - self.mag_mean) / self.mag_std
        # torch.where, not multiplication by the mask: NaN * 0 would still be NaN
        scaled = torch.where(observed, scaled, torch.zeros_like(scaled))
        return torch.cat([scaled, observed.to(scaled.dtype)], dim=1)

    def forward(self, mags: Tensor) -> Tensor:
        return self.mlp(self.inputs(mags))


class HybridNet(PhotoZModel):
    """CNN on images and/or dense network on magnitudes, concatenated, then a PDF or regression head.

    ``cnn`` (an :class:`InceptionBackbone`) or ``mag_net`` (a :class:`MagnitudeEncoder`) may be None, not
    both; ``head`` reads their features in that order (:data:`BRANCHES`).  The factory :func:`hybrid`
    configures the parts.
    """

    def __init__(
        self,
        *,
        cnn: InceptionBackbone | None,
        mag_net: MagnitudeEncoder | None,
        head: BinnedPDFHead | RegressionHead,
    ) -> None:
        super().__init__()
        if cnn is None and mag_net is None:
            raise ValueError("a hybrid model needs at least one branch: use_images or use_mags must be True")
        n_features = (cnn.out_features if cnn else 0) + (mag_net.out_features if mag_net else 0)
        check_head_fits(head, n_features)
        self.cnn, self.mag_net, self.head = cnn, mag_net, head

    @property
    def use_images(self) -> bool:
        return self.cnn is not None

    @property
    def use_mags(self) -> bool:
        return self.mag_net is not None

    def set_mag_normalization(self, mean: Any, std: Any) -> None:
        """Store the per-band magnitude mean and std (length n_mags) used to standardise the inputs.

        Compute them on the training set, e.g. with :func:`magnitude_statistics`.
        """
        if self.mag_net is None:
            raise ValueError("this model was built with use_mags=False and has no magnitude branch")
        buffers = {"mean": self.mag_net.mag_mean, "std": self.mag_net.mag_std}
        for name, value in (("mean", mean), ("std", std)):
            t = torch.as_tensor(np.asarray(value, dtype=np.float64)).to(buffers[name])
            if t.shape != buffers[name].shape or not torch.isfinite(t).all():
                raise ValueError(f"mag {name} must be {self.mag_net.n_mags} finite numbers, got {value!r}")
            if name == "std" and (t <= 0).any():
                raise ValueError(f"mag std must be positive, got {value!r}")
            buffers[name].copy_(t)

    def feature_columns(self) -> dict[str, slice]:
        """Where each input of the head sits in its first layer: [CNN features | magnitude features | E(B-V)]."""
        columns, start = {}, 0
        for name in BRANCHES:
            branch = getattr(self, name)
            if branch is not None:
                columns[name] = slice(start, start + branch.out_features)
                start += branch.out_features
        if self.use_ebv:
            columns["ebv"] = slice(start, start + 1)
        return columns

    def init_from(self, sources: Sequence[PhotoZModel]) -> list[str]:
        """Fuse trained models into this one: the two-stage training of a hybrid.

        Each branch (``cnn``, ``mag_net``) is copied from the first source that has it, so a hybrid can
        start from a trained images-only and a trained magnitudes-only model.  The head is copied from
        ``sources[0]``; in its first layer, ``h = W [f_cnn; f_mag; ebv] + b``, the columns of the branches
        that ``sources[0]`` lacks start at zero.  The fused network then computes exactly what
        ``sources[0]`` computed, and joint fine-tuning starts from that model and can only add what the
        other branch's features know (the zero columns get gradient ``dL/dh f_cnn`` at once).
        Returns the names of the copied tensors.
        """
        if not sources:
            raise ValueError("init_from needs at least one trained model")
        for source in sources:
            if not isinstance(source, HybridNet):
                raise ValueError(f"a hybrid starts only from hybrid-family models, got {type(source).__name__}")
        donor = sources[0]
        theirs, mine = donor.feature_columns(), self.feature_columns()
        if not set(theirs) <= set(mine):
            raise ValueError(f"the first source has inputs {sorted(theirs)} that this model lacks ({sorted(mine)}); "
                             "list a source whose branches this model has first")
        if type(donor.head) is not type(self.head) or (donor.z_min, donor.z_max) != (self.z_min, self.z_max) or (
            self.output_kind == "pdf" and donor.n_bins != self.n_bins
        ):
            raise ValueError("the first source has another head kind, redshift range or binning than this model")
        first_with = {name: next((s for s in sources if getattr(s, name) is not None), None) for name in BRANCHES}
        donors = {name: s for name, s in first_with.items() if s is not None and getattr(self, name) is not None}
        idle = [i for i, s in enumerate(sources) if all(s is not d for d in donors.values()) and i > 0]
        if idle:
            raise ValueError(f"source(s) {idle} give this model nothing: earlier sources already hold their branches")
        copied: list[str] = []
        for name, source in donors.items():
            target = getattr(self, name)
            try:
                target.load_state_dict(getattr(source, name).state_dict())
            except RuntimeError as err:
                raise ValueError(f"the {name} branch of the source does not fit this model "
                                 f"(build both with the same options): {err}") from err
            copied += [f"{name}.{k}" for k in target.state_dict()]
        head = donor.head.state_dict()
        first = "mlp.0.weight"
        weight = torch.zeros_like(self.head.state_dict()[first])
        if weight.shape[0] != head[first].shape[0]:
            raise ValueError(f"the first source's head has {head[first].shape[0]} units in its first layer, "
                             f"this model {weight.shape[0]}: build both with the same head_widths")
        for name, cols in theirs.items():
            weight[:, mine[name]] = head[first][:, cols]
        head[first] = weight
        try:
            self.head.load_state_dict(head)
        except RuntimeError as err:
            raise ValueError(f"the first source's head does not fit this model (head_widths?): {err}") from err
        return copied + [f"head.{k}" for k in head]

    def forward(self, images: Tensor | None, ebv: Tensor | None = None, mags: Tensor | None = None) -> Tensor:
        features = []
        if self.cnn is not None:
            features.append(self.cnn(check_images(images, self.cnn.n_bands, self.cnn.image_size, "HybridNet")))
        if self.mag_net is not None:
            if mags is None:
                raise ValueError("this model was built with use_mags=True and needs mags (B, n_mags) in forward()")
            # float64 catalogues are cast to the model's own dtype (that of its buffers)
            features.append(self.mag_net(mags.to(self.mag_net.mag_mean.dtype)))
        return self.head(torch.cat(features, dim=1) if len(features) > 1 else features[0], ebv)


@register_model("hybrid")
def hybrid(
    *,
    n_bands: int = 4,
    image_size: int = 36,
    n_mags: int = 9,
    use_images: bool = True,
    use_mags: bool = True,
    use_ebv: bool = False,
    head: str = "regression",
    n_bins: int = 180,
    z_min: float = 0.0,
    z_max: float = 0.8,
    stem_width: int = 32,
    modules: Sequence[Sequence[int]] = HYBRID_MODULES,
    pool_after: Sequence[int] = (1,),
    final_pool_size: int | None = 3,
    mag_widths: Sequence[int] = (64, 64),
    head_widths: Sequence[int] = (256, 128),
    missing_threshold: float = 90.0,
    prelu: str = "channel",
) -> HybridNet:
    """KiDS-bright combined model (John William et al.): Inception CNN on ugri 36x36 cutouts + dense
    network on 9 magnitudes; ``head`` "regression" ((z, log sigma)) or "pdf" (``n_bins`` logits)."""
    if not (use_images or use_mags):
        raise ValueError("a hybrid model needs at least one branch: use_images or use_mags must be True")
    cnn = InceptionBackbone(n_bands=n_bands, image_size=image_size, stem_width=stem_width, stem_kernel=5,
                            modules=modules, pool_after=pool_after, final_pool_size=final_pool_size,
                            prelu=prelu) if use_images else None
    mag_net = (MagnitudeEncoder(n_mags=n_mags, widths=mag_widths, missing_threshold=missing_threshold)
               if use_mags else None)
    n_features = (cnn.out_features if cnn else 0) + (mag_net.out_features if mag_net else 0)
    return HybridNet(cnn=cnn, mag_net=mag_net, head=make_head(head, in_features=n_features, n_bins=n_bins,
                                                                z_min=z_min, z_max=z_max, hidden=head_widths,
                                                                use_ebv=use_ebv))


register_variant("hybrid-images", "hybrid", doc="The hybrid model's image branch alone.", use_mags=False)
register_variant("hybrid-mags", "hybrid", doc="The hybrid model's magnitude branch alone.", use_images=False)
