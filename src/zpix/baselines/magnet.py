"""A magnitudes-only neural network with a binned-PDF head: the ANNz2-like catalogue baseline.

ANNz2 (Sadeh, Abdalla & Lahav 2016) trains multilayer perceptrons on magnitudes.  zpix already has
that network: the magnitude branch of the hybrid model, registered as ``hybrid-mags``, whose dense
layers read the standardised magnitudes and their observed-mask (missing bands -> 0, mask 0) and
whose ``head="pdf"`` ends in a softmax over the redshift bins, trained with the cross-entropy

    L = −log P_k(z_spec)   (Pasquet et al. 2019, Sect. 3.6),

exactly as the image networks.  This module only turns a catalogue into a training table
(:class:`zpix.training.data.TableData`) and a :class:`~zpix.training.config.TrainConfig`, and trains
it with :func:`zpix.training.api.train_table`: the loop, checkpoints, early stopping on a held-out
validation part of the training set, seeds and run directory of every zpix training.

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
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zpix.baselines.tables import MagnitudeTable
from zpix.pdf import RedshiftGrid
from zpix.runs import Split
from zpix.training.config import TrainConfig
from zpix.training.data import MagnitudeDataset, TableData

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

    def train_config(self, *, out: str | os.PathLike, use_ebv: bool) -> TrainConfig:
        """The :class:`TrainConfig` of this network: ``hybrid-mags`` with a PDF head, constant learning rate,
        no augmentation or calibration, fp32 on one CPU (a small MLP gains nothing from more)."""
        return TrainConfig(
            out=str(out), model=MODEL_NAME,
            model_args={"head": "pdf", "mag_widths": list(self.mag_widths), "head_widths": list(self.head_widths)},
            n_bins=self.n_bins, z_min=self.z_min, z_max=self.z_max, use_ebv=use_ebv, use_mags=True,
            val_fraction=self.val_fraction, lr=self.lr, weight_decay=self.weight_decay, lr_schedule="none",
            batch_size=self.batch_size, max_epochs=self.max_epochs, patience=self.patience, augment=False,
            seed=self.seed, calibrate=[], accelerator="cpu", devices=1, precision="32-true", num_workers=0,
            channels_last=False, progress=self.progress,
        )


def network_inputs(table: MagnitudeTable, colours: bool) -> np.ndarray:
    """(N, M) de-reddened magnitudes, followed by the M − 1 adjacent colours when ``colours``.

    Missing magnitudes stay NaN (and make their colours NaN): the network's encoder masks them.
    """
    mags = table.dereddened()
    if not colours or mags.shape[1] < 2:
        return mags
    return np.concatenate([mags, mags[:, :-1] - mags[:, 1:]], axis=1)


def input_names(bands: list[str], colours: bool) -> list[str]:
    """Names of the columns of :func:`network_inputs`: ``mag_u``, ..., then ``u-g``, ..."""
    names = [f"mag_{b}" for b in bands]
    return names + ([f"{a}-{b}" for a, b in zip(bands[:-1], bands[1:], strict=True)]
                    if colours and len(bands) >= 2 else [])


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


def holdout_split(n: int, val_fraction: float, seed: int) -> Split:
    """A random ``val_fraction`` of ``n`` rows (at least one) for validation, the rest for training; no test rows."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    return Split(np.sort(perm[n_val:]), np.sort(perm[:n_val]), np.empty(0, dtype=np.int64))


def train_magnet(train: MagnitudeTable, config: MagNetConfig | None = None, work_dir: str | os.PathLike | None = None,
                 **options: Any) -> tuple[MagNet, dict[str, Any]]:
    """Train the magnitude network on ``train``'s labelled objects inside [z_min, z_max].

    A ``val_fraction`` of them (random, from ``seed``) is held out for early stopping and for choosing
    the checkpoint.  ``work_dir`` receives the run directory (config, split, checkpoints; default: a
    temporary directory, removed with the returned model).  Returns the model (best validation loss)
    and a training summary.
    """
    from zpix.training.api import train_table
    from zpix.training.module import PhotoZModule

    cfg = config or MagNetConfig(**options)
    labelled = train.labelled(cfg.z_min, cfg.z_max)
    n = len(labelled)
    if n < 20:
        raise ValueError(f"{train.source}: only {n} objects with z_spec in [{cfg.z_min}, {cfg.z_max}]; need >= 20")
    split = holdout_split(n, cfg.val_fraction, cfg.seed)
    data = TableData(network_inputs(labelled, cfg.colours), labelled.ebv, labelled.z_spec,
                     input_names(list(train.bands), cfg.colours), str(train.source))
    use_ebv = cfg.use_ebv and float(np.ptp(labelled.ebv)) > 0  # a constant E(B-V) column carries nothing
    run_dir = Path(tempfile.mkdtemp(prefix="zpix-magnet-")) if work_dir is None else Path(work_dir)
    try:
        result = train_table(cfg.train_config(out=run_dir, use_ebv=use_ebv), data, split)
    except BaseException:
        if work_dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    best = PhotoZModule.load_from_checkpoint(result.checkpoints[0], map_location="cpu")
    model = MagNet(best, list(train.bands), cfg.colours, result.checkpoints[0])
    if work_dir is None:
        weakref.finalize(model, shutil.rmtree, run_dir, ignore_errors=True)
    member = result.summary["members"][0]
    summary = {"train_s": member["train_seconds"], "epochs": int(member["epochs"]), "n_train": len(split.train),
               "n_val": len(split.val), "best_val_loss": member["best_val_loss"],
               "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}}
    return model, summary


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
        model, summary = train_magnet(train, cfg, work_dir=Path(work) / "run")
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
