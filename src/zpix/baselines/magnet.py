"""A magnitudes-only neural network with a binned-PDF head: the ANNz2-like catalogue baseline.

ANNz2 (Sadeh, Abdalla & Lahav 2016) trains multilayer perceptrons on magnitudes.  zpix already has
that network: the magnitude branch of the hybrid model, registered as ``hybrid-mags``, whose dense
layers read the standardised magnitudes and their observed-mask (missing bands -> 0, mask 0) and
whose ``head="pdf"`` ends in a softmax over the redshift bins, trained with the cross-entropy

    L = −log P_k(z_spec)   (Pasquet et al. 2019, Sect. 3.6),

exactly as the image networks.  This module only feeds it a catalogue: a small in-memory Dataset of
``{"mags", "ebv", "z"}`` dicts, :class:`~zpix.training.module.PhotoZModule` for the steps, and
Lightning's Trainer with early stopping on a held-out validation part of the training set.

Inputs are the (de-reddened, when the table carries extinction coefficients) magnitudes and, by
default, their adjacent colours m_j − m_{j+1}: the same information, but a representation in which
redshift is close to linear, which a small MLP learns faster.  E(B−V) goes to the head as for the CNN.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zpix.baselines.tables import MagnitudeTable
from zpix.pdf import RedshiftGrid

MODEL_NAME = "hybrid-mags"


@dataclass
class MagNetConfig:
    """Options of the magnitude network and of its training."""

    colours: bool = True
    mag_widths: tuple[int, ...] = (128, 128)
    head_widths: tuple[int, ...] = (256, 128)
    use_ebv: bool = True
    n_bins: int = 180
    z_min: float = 0.0
    z_max: float = 0.4
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 20
    val_fraction: float = 0.15
    seed: int = 0
    progress: bool = False

    @property
    def grid(self) -> RedshiftGrid:
        return RedshiftGrid(self.n_bins, self.z_min, self.z_max)


def network_inputs(table: MagnitudeTable, colours: bool) -> np.ndarray:
    """(N, M) de-reddened magnitudes, followed by the M − 1 adjacent colours when ``colours``.

    Missing magnitudes stay NaN (and make their colours NaN): the network's encoder masks them.
    """
    mags = table.dereddened()
    if not colours or mags.shape[1] < 2:
        return mags
    return np.concatenate([mags, mags[:, :-1] - mags[:, 1:]], axis=1)


class MagnitudeDataset(Dataset):
    """In-memory ``{"mags", "ebv", "z"}`` samples (z is NaN where unknown)."""

    def __init__(self, inputs: np.ndarray, ebv: np.ndarray, z: np.ndarray) -> None:
        self.mags = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
        self.ebv = torch.as_tensor(np.asarray(ebv, dtype=np.float32))
        self.z = torch.as_tensor(np.asarray(z, dtype=np.float32))

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"mags": self.mags[i], "ebv": self.ebv[i], "z": self.z[i]}

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        # one gather per batch instead of B dicts; the collate function passes a dict through
        i = torch.as_tensor(idx)
        return {"mags": self.mags[i], "ebv": self.ebv[i], "z": self.z[i]}


def _collate(batch: Any) -> Any:
    return batch if isinstance(batch, dict) else torch.utils.data.default_collate(batch)


def _loader(ds: MagnitudeDataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=0, generator=generator,
                      collate_fn=_collate, drop_last=shuffle and len(ds) > batch_size)


@dataclass
class MagNet:
    """A trained magnitude network: the Lightning module and how to build its inputs."""

    module: Any  # PhotoZModule
    bands: list[str]
    colours: bool
    checkpoint: Path | None = None

    @property
    def grid(self) -> RedshiftGrid:
        return RedshiftGrid.from_dict(self.module.hparams.grid)

    def predict(self, table: MagnitudeTable, batch_size: int = 4096) -> np.ndarray:
        """Probabilities per bin (N, n_bins) for every object of ``table``."""
        if list(table.bands) != self.bands:
            raise ValueError(f"{table.source}: bands {table.bands} differ from the training bands {self.bands}")
        ds = MagnitudeDataset(network_inputs(table, self.colours), table.ebv, table.z_spec)
        self.module.eval()
        out = []
        with torch.inference_mode():
            for s in range(0, len(ds), batch_size):
                batch = ds.__getitems__(list(range(s, min(len(ds), s + batch_size))))
                out.append(self.module(batch).double().numpy())
        return np.concatenate(out) if out else np.empty((0, self.grid.n_bins))

    def save(self, path: str | os.PathLike) -> Path:
        """Copy the checkpoint to ``path`` (``.ckpt``) with the input description beside it (``.json``)."""
        if self.checkpoint is None:
            raise RuntimeError("MagNet.save: no checkpoint to save")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        from zpix.atomic import atomic_file, write_json

        with atomic_file(path) as tmp:
            shutil.copyfile(self.checkpoint, tmp)
        write_json(path.with_suffix(".json"), {"bands": self.bands, "colours": self.colours}, indent=None)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> MagNet:
        """Inverse of :meth:`save`."""
        from zpix.training.module import PhotoZModule

        path = Path(path)
        side = path.with_suffix(".json")
        if not side.is_file():
            raise FileNotFoundError(f"{side}: the input description saved beside {path.name} is missing")
        info = json.loads(side.read_text())
        module = PhotoZModule.load_from_checkpoint(path, map_location="cpu")
        return cls(module, list(info["bands"]), bool(info["colours"]), path)


def train_magnet(train: MagnitudeTable, config: MagNetConfig | None = None, work_dir: str | os.PathLike | None = None,
                 **options: Any) -> tuple[MagNet, dict[str, Any]]:
    """Train the magnitude network on ``train``'s labelled objects inside [z_min, z_max].

    A ``val_fraction`` of them (random, from ``seed``) is held out for early stopping and for choosing
    the checkpoint.  Checkpoints go to ``work_dir`` (default: a temporary directory, removed unless
    the returned model is saved).  Returns the model (best validation loss) and a training summary.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from zpix.models.hybrid import magnitude_statistics
    from zpix.training.module import PhotoZModule

    cfg = config or MagNetConfig(**options)
    labelled = train.labelled(cfg.z_min, cfg.z_max)
    n = len(labelled)
    if n < 20:
        raise ValueError(f"{train.source}: only {n} objects with z_spec in [{cfg.z_min}, {cfg.z_max}]; need >= 20")
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n)
    n_val = max(1, int(round(cfg.val_fraction * n)))
    val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    x = network_inputs(labelled, cfg.colours)
    use_ebv = cfg.use_ebv and float(np.ptp(labelled.ebv)) > 0  # a constant E(B-V) column carries nothing
    model_config = {"n_mags": x.shape[1], "head": "pdf", "use_ebv": use_ebv, "n_bins": cfg.n_bins,
                    "z_min": cfg.z_min, "z_max": cfg.z_max, "mag_widths": list(cfg.mag_widths),
                    "head_widths": list(cfg.head_widths)}
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = PhotoZModule(MODEL_NAME, model_config, cfg.grid.to_dict(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                          augment=False)
    module.model.set_mag_normalization(*magnitude_statistics(x[train_rows]))
    ds_train = MagnitudeDataset(x[train_rows], labelled.ebv[train_rows], labelled.z_spec[train_rows])
    ds_val = MagnitudeDataset(x[val_rows], labelled.ebv[val_rows], labelled.z_spec[val_rows])
    own_dir = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="zpix-magnet-")) if own_dir else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = ModelCheckpoint(dirpath=work, filename="best", monitor="val_loss", mode="min", save_top_k=1,
                                 enable_version_counter=False)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=cfg.max_epochs, deterministic=True, logger=False,
        callbacks=[checkpoint, EarlyStopping(monitor="val_loss", patience=cfg.patience, mode="min")],
        enable_progress_bar=cfg.progress, enable_model_summary=False, default_root_dir=str(work),
        num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    trainer.fit(module, _loader(ds_train, cfg.batch_size, True, cfg.seed),
                _loader(ds_val, 4096, False, cfg.seed))
    seconds = time.perf_counter() - t0
    best = PhotoZModule.load_from_checkpoint(checkpoint.best_model_path, map_location="cpu")
    model = MagNet(best, list(train.bands), cfg.colours, Path(checkpoint.best_model_path))
    summary = {"train_s": seconds, "epochs": int(trainer.current_epoch), "n_train": int(len(train_rows)),
               "n_val": int(len(val_rows)), "best_val_loss": float(checkpoint.best_model_score),
               "config": _plain(asdict(cfg))}
    return model, summary


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def run_magnet(
    train: MagnitudeTable,
    test: MagnitudeTable,
    out: str | os.PathLike,
    config: MagNetConfig | None = None,
    model_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    split: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train on ``train``, predict ``test`` into the prediction directory ``out`` (``method="magnet"``)."""
    from zpix.baselines.tables import rows_record
    from zpix.prediction.format import write_predictions

    cfg = config or MagNetConfig(**options)
    with tempfile.TemporaryDirectory(prefix="zpix-magnet-") as work:
        model, summary = train_magnet(train, cfg, work_dir=work)
        if model_path is not None:
            model.save(model_path)
        t0 = time.perf_counter()
        pdfs = model.predict(test)
        predict_s = time.perf_counter() - t0
    write_predictions(out, test.ids, pdfs, model.grid, z_spec=test.z_spec, extra={"ebv": test.ebv, **test.extra},
                      method="magnet", overwrite=overwrite,
                      meta={"baseline": "magnet", "model_name": MODEL_NAME, "bands": train.bands,
                            "train": train.source, "test": test.source, **summary,
                            "model": None if model_path is None else str(model_path),
                            "rows": rows_record(train, test, split)})
    return {**summary, "predict_s": predict_s, "n_test": len(test)}
