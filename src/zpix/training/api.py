"""Training entry points: one model, an ensemble (Pasquet 2019 Sect. 3.8), k-fold cross-validation.

A run directory holds everything needed to reuse it::

    run/config.yaml          the TrainConfig + library versions
    run/split.npz            train / val / test rows of the cube store
    run/member_<k>/best.ckpt best-validation checkpoint of ensemble member k (seed + k)
    run/summary.json         per-member validation scores and timings

Ensembles and k-fold are loops over the same Lightning Trainer, not new trainers.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

from zpix.runs import Split
from zpix.store.cube_store import CubeStore
from zpix.store.dataset import CubeDataset
from zpix.training.config import TrainConfig
from zpix.training.module import PhotoZModule
from zpix.training.splits import kfold_splits, labelled_rows, random_split


@dataclass
class TrainResult:
    run_dir: Path
    checkpoints: list[Path]
    split: Split
    summary: dict[str, Any]


def _mag_normalization(cubes: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each observed magnitude over the training rows (missing: NaN or ≥ 90)."""
    with CubeStore(cubes, validate=False) as store:
        mags = store.column("mags")[rows].astype(np.float64)
    mags[~np.isfinite(mags) | (mags >= 90)] = np.nan
    mean = np.nanmean(mags, axis=0)
    std = np.nanstd(mags, axis=0)
    return np.nan_to_num(mean), np.where(np.isfinite(std) & (std > 0), std, 1.0)


def build_module(cfg: TrainConfig, n_bands: int, image_size: int, n_mags: int) -> PhotoZModule:
    model_config: dict[str, Any] = {"n_bands": n_bands, "image_size": image_size, "use_ebv": cfg.use_ebv,
                                    "z_min": cfg.z_min, "z_max": cfg.z_max}
    if n_mags:
        model_config["n_mags"] = n_mags
    model_config.update(cfg.model_args)
    from zpix.models import create_model

    probe = create_model(cfg.model, **model_config)
    if probe.output_kind == "pdf":
        model_config.setdefault("n_bins", cfg.n_bins)
    if cfg.target_cubes:  # adversarial domain adaptation to an unlabelled target field
        from zpix.training.domain import DomainAdaptationModule

        module = DomainAdaptationModule(cfg.model, model_config, cfg.grid.to_dict(), loss=cfg.loss,
                                        huber_delta=cfg.huber_delta, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                        augment=cfg.augment, channels_last=cfg.channels_last,
                                        lr_schedule=cfg.lr_schedule, lr_factor=cfg.lr_factor,
                                        lr_patience=cfg.lr_patience, compile=cfg.compile)
        module.attach_domain(cfg.domain, cfg.target_cubes)
        return module
    return PhotoZModule(cfg.model, model_config, cfg.grid.to_dict(), loss=cfg.loss, huber_delta=cfg.huber_delta,
                        lr=cfg.lr, weight_decay=cfg.weight_decay, augment=cfg.augment,
                        channels_last=cfg.channels_last, lr_schedule=cfg.lr_schedule, lr_factor=cfg.lr_factor,
                        lr_patience=cfg.lr_patience, compile=cfg.compile)


def warm_start(module: PhotoZModule, sources: list[str], member: int) -> list[str]:
    """Initialise ``module.model`` from trained runs (or .ckpt files), member ``member`` (mod count) of each.

    Returns the names of the tensors copied; the model decides how (see ``PhotoZModel.init_from``).
    """
    from zpix.runs import checkpoint_paths

    models = []
    for source in sources:
        paths = checkpoint_paths(source)
        models.append(PhotoZModule.load_from_checkpoint(paths[member % len(paths)], map_location="cpu",
                                                        compile="none").model)
    try:
        return module.model.init_from(models)
    except ValueError as err:
        raise ValueError(f"init_from {sources}: {err}") from err


def _loader(cfg: TrainConfig, rows: np.ndarray, shuffle: bool, seed: int) -> DataLoader:
    dataset = CubeDataset(cfg.cubes, indices=rows, use_mags=cfg.use_mags, on_bad=cfg.on_bad)  # type: ignore[arg-type]
    if cfg.target_cubes and shuffle:  # training objects come with target-field partners (zpix.training.domain)
        from zpix.training.domain import domain_dataset

        dataset = domain_dataset(dataset, cfg.target_cubes, cfg.domain)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=cfg.num_workers,
                      persistent_workers=cfg.num_workers > 0, generator=generator,
                      drop_last=shuffle and len(rows) > cfg.batch_size)


def train_member(cfg: TrainConfig, split: Split, member_dir: Path, seed: int) -> tuple[Path, dict[str, Any]]:
    """Train one model on ``split`` with ``seed``; returns its best checkpoint and its scores."""
    L.seed_everything(seed, workers=True, verbose=False)
    with CubeStore(cfg.cubes, validate=False) as store:
        n_bands, size, _ = store.image_shape
        n_mags = len(store.mag_names) if cfg.use_mags else 0
    module = build_module(cfg, n_bands, size, n_mags)
    if cfg.use_mags and hasattr(module.model, "set_mag_normalization"):
        module.model.set_mag_normalization(*_mag_normalization(cfg.cubes, split.train))
    # after the normalisation: a warm-started magnitude branch keeps the statistics it was trained with
    initialised = warm_start(module, cfg.init_from, seed - cfg.seed) if cfg.init_from else []
    # best.ckpt: lowest val_loss, or the last epoch for objectives that say so (domain adaptation)
    monitor = getattr(module, "checkpoint_monitor", "val_loss")
    checkpoint = ModelCheckpoint(dirpath=member_dir, filename="best", monitor=monitor, mode="min",
                                 save_top_k=1, save_last=False)
    train_loader = _loader(cfg, split.train, True, seed)
    trainer = L.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision, strategy=cfg.strategy,
        max_epochs=cfg.max_epochs, max_steps=cfg.max_steps, default_root_dir=str(member_dir),
        # a max_steps shorter than an epoch ends that epoch there, so that it is still validated and
        # checkpointed (stopping mid-epoch would leave no val_loss and no best.ckpt)
        limit_train_batches=min(len(train_loader), cfg.max_steps) if cfg.max_steps > 0 else None,
        callbacks=[checkpoint, *([EarlyStopping(monitor=monitor, patience=cfg.patience, mode="min")] if monitor
                                 else [])],
        enable_progress_bar=cfg.progress,
        logger=L.pytorch.loggers.CSVLogger(str(member_dir.parent / "logs"), name=member_dir.name),
        deterministic=False, log_every_n_steps=max(1, min(50, len(train_loader))), enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module, train_loader, _loader(cfg, split.val, False, seed))
    seconds = time.perf_counter() - start
    scores = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
    best = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else math.nan
    summary = {"seed": seed, "init_from": list(cfg.init_from), "n_initialised_tensors": len(initialised),
               "best_val_loss": best, "epochs": trainer.current_epoch, "steps": trainer.global_step,
               "train_seconds": seconds,
               "train_images_per_s": trainer.global_step * cfg.batch_size / max(seconds, 1e-9),
               "last_metrics": scores}
    return Path(checkpoint.best_model_path), summary


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def train(config: TrainConfig | dict[str, Any] | str | Path, split: Split | None = None, **overrides: Any
          ) -> TrainResult:
    """Train ``config.ensemble`` models (seeds ``seed, seed+1, ...``) on one split of the cube store.

    ``config`` is a TrainConfig, a dict of its fields or a YAML path; ``overrides`` replace fields.
    """
    if isinstance(config, str | Path):
        cfg = TrainConfig.from_yaml(config)
    elif isinstance(config, dict):
        cfg = TrainConfig.from_dict(config)
    else:
        cfg = config
    cfg = replace(cfg, **overrides)
    if not cfg.cubes:
        raise ValueError("no training data: set 'cubes' (a cube store .h5) in the config or with --cubes")
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if split is None:
        with CubeStore(cfg.cubes, on_bad=cfg.on_bad) as store:  # type: ignore[arg-type]
            rows = labelled_rows(store.z_spec, store.valid_index, cfg.z_min, cfg.z_max)
        if len(rows) < 10:
            raise ValueError(f"{cfg.cubes}: only {len(rows)} objects have z_spec inside "
                             f"[{cfg.z_min}, {cfg.z_max}]; need at least 10 to train")
        split = random_split(rows, cfg.test_fraction, cfg.val_fraction, cfg.seed, cfg.max_train)
    split.save(run_dir / "split.npz")
    cfg.save(run_dir / "config.yaml", extra={"n_train": len(split.train), "n_val": len(split.val),
                                              "n_test": len(split.test)})
    checkpoints, members = [], []
    for k in range(cfg.ensemble):
        ckpt, summary = train_member(cfg, split, run_dir / f"member_{k}", cfg.seed + k)
        checkpoints.append(ckpt)
        members.append(summary)
    summary = {"n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test), "members": members}
    _write_json(run_dir / "summary.json", summary)
    return TrainResult(run_dir, checkpoints, split, summary)


def kfold(config: TrainConfig | dict[str, Any] | str | Path, k: int = 5, **overrides: Any) -> dict[str, Any]:
    """k-fold cross-validation (Pasquet 2019 Sect. 3.6, Table 1): train on k−1 folds, predict the held-out fold,
    so that every labelled object gets a prediction from a model that never saw it.

    Writes ``<out>/fold_<i>/`` runs and predictions, ``<out>/predictions`` (all objects) and
    ``<out>/kfold_metrics.json`` with per-fold metrics and their mean ± std.
    """
    from zpix.evaluation.metrics import summary as metric_summary
    from zpix.prediction.format import read_predictions
    from zpix.prediction.streaming import merge_predictions, predict

    cfg = config if isinstance(config, TrainConfig) else (
        TrainConfig.from_yaml(config) if isinstance(config, str | Path) else TrainConfig.from_dict(config))
    cfg = replace(cfg, **overrides)
    out = Path(cfg.out)
    with CubeStore(cfg.cubes, on_bad=cfg.on_bad) as store:  # type: ignore[arg-type]
        rows = labelled_rows(store.z_spec, store.valid_index, cfg.z_min, cfg.z_max)
    folds, fold_dirs = [], []
    for i, split in enumerate(kfold_splits(rows, k, cfg.val_fraction, cfg.seed)):
        result = train(replace(cfg, out=str(out / f"fold_{i}")), split=split)
        pred_dir = predict(result.run_dir, cfg.cubes, out / f"fold_{i}" / "predictions", rows=split.test,
                           num_workers=cfg.num_workers, overwrite=True, progress=cfg.progress)
        p = read_predictions(pred_dir)
        m = metric_summary(p.catalog["z_mean"].to_numpy(), p.catalog["z_spec"].to_numpy(), p.pdfs, p.grid)
        folds.append({key: m[key] for key in ("n", "bias", "sigma_mad", "eta", "crps") if key in m})
        fold_dirs.append(pred_dir)
    merge_predictions(fold_dirs, out / "predictions")
    doc = {"k": k, "folds": folds,
           "mean": {key: float(np.mean([f[key] for f in folds])) for key in folds[0]},
           "std": {key: float(np.std([f[key] for f in folds], ddof=1)) for key in folds[0]}}
    _write_json(out / "kfold_metrics.json", doc)
    return doc
