"""Training entry points: one model, an ensemble (Pasquet 2019 Sect. 3.8), k-fold cross-validation.

A run directory (:mod:`zpix.runs`) holds everything needed to reuse or resume it: the config, the
split, the input spec, and per member ``best.ckpt``, ``last.ckpt`` (every epoch) and, once finished,
``summary.json``.  :func:`resume` continues a killed run from its members' ``last.ckpt``.

Ensembles and k-fold are loops over the same Lightning Trainer, not new trainers; so is
:func:`train_table`, which trains a magnitude network on an in-memory catalogue
(:mod:`zpix.training.data`, used by the catalogue baseline :mod:`zpix.baselines.magnet`).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

from zpix.atomic import UnsafeOutputError, is_run_dir, write_json
from zpix.hardware import training_precision
from zpix.runs import (
    CONFIG_FILE,
    INPUT_SPEC_FILE,
    SPLIT_FILE,
    SUMMARY_FILE,
    InputSpec,
    RunInputError,
    Split,
    load_split,
    mark_run,
    spec_for,
)
from zpix.store.cube_store import CubeStore
from zpix.training.config import TrainConfig
from zpix.training.data import CubeData, TableData
from zpix.training.module import PhotoZModule
from zpix.training.splits import kfold_splits, labelled_rows, random_split


@dataclass
class TrainResult:
    run_dir: Path
    checkpoints: list[Path]
    split: Split
    summary: dict[str, Any]


def build_module(cfg: TrainConfig, n_bands: int | None = None, image_size: int | None = None, n_mags: int = 0
                 ) -> PhotoZModule:
    """The Lightning module of ``cfg`` for inputs of that shape (images None: a model without an image branch)."""
    model_config: dict[str, Any] = {"use_ebv": cfg.use_ebv, "z_min": cfg.z_min, "z_max": cfg.z_max}
    if n_bands is not None and image_size is not None:
        model_config.update(n_bands=n_bands, image_size=image_size)
    if n_mags:
        model_config["n_mags"] = n_mags
    model_config.update(cfg.model_args)
    from zpix.models import create_model

    probe = create_model(cfg.model, **model_config)
    if probe.output_kind == "pdf":
        model_config.setdefault("n_bins", cfg.n_bins)
    options: dict[str, Any] = {
        "model_name": cfg.model, "model_config": model_config, "grid": cfg.grid.to_dict(), "loss": cfg.loss,
        "huber_delta": cfg.huber_delta, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "augment": cfg.augment,
        "channels_last": cfg.channels_last, "lr_schedule": cfg.lr_schedule, "lr_factor": cfg.lr_factor,
        "lr_patience": cfg.lr_patience, "compile": cfg.compile}
    if cfg.target_cubes:  # adversarial domain adaptation to an unlabelled target field
        from zpix.training.domain import DomainAdaptationModule

        module = DomainAdaptationModule(**options)
        module.attach_domain(cfg.domain, cfg.target_cubes)
        return module
    return PhotoZModule(**options)


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


def _loader(cfg: TrainConfig, data: CubeData | TableData, rows: np.ndarray, shuffle: bool, seed: int) -> DataLoader:
    dataset = data.dataset(rows, train=shuffle)
    generator = torch.Generator().manual_seed(seed)
    workers = data.workers
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=workers,
                      persistent_workers=workers > 0, generator=generator,
                      collate_fn=getattr(dataset, "collate", None), drop_last=shuffle and len(rows) > cfg.batch_size)


def train_member(cfg: TrainConfig, split: Split, member_dir: Path, seed: int,
                 data: CubeData | TableData | None = None) -> tuple[Path, dict[str, Any]]:
    """Train one model on ``split`` (rows of ``data``, default: the cube store ``cfg.cubes``) with ``seed``;
    returns its best checkpoint and its scores.

    A finished member (its ``summary.json``) is returned as is; one with a ``last.ckpt`` (a killed
    run) continues from it through Lightning's ``ckpt_path``: epoch, optimiser, scheduler, early
    stopping and best-checkpoint state all come back.
    """
    done = member_dir / SUMMARY_FILE
    if done.is_file() and (member_dir / "best.ckpt").is_file():
        import json

        return member_dir / "best.ckpt", json.loads(done.read_text())
    last = member_dir / "last.ckpt"
    resume_from = str(last) if last.is_file() else None
    data = CubeData(cfg) if data is None else data
    L.seed_everything(seed, workers=True, verbose=False)
    module = build_module(cfg, **data.model_inputs())
    if cfg.use_mags and hasattr(module.model, "set_mag_normalization"):
        module.model.set_mag_normalization(*data.mag_statistics(split.train))
    # after the normalisation: a warm-started magnitude branch keeps the statistics it was trained with
    initialised = warm_start(module, cfg.init_from, seed - cfg.seed) if cfg.init_from and not resume_from else []
    # best.ckpt: lowest val_loss, or the last epoch for objectives that say so (domain adaptation)
    monitor = getattr(module, "checkpoint_monitor", "val_loss")
    checkpoint = ModelCheckpoint(dirpath=member_dir, filename="best", monitor=monitor, mode="min",
                                 save_top_k=1, enable_version_counter=False)
    # every epoch's state, for --resume (Lightning's save_last writes only when the best improves)
    latest = ModelCheckpoint(dirpath=member_dir, filename="last", monitor=None, save_top_k=1,
                             enable_version_counter=False)
    train_loader = _loader(cfg, data, split.train, True, seed)
    trainer = L.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy,
        precision=training_precision(cfg.precision, cfg.accelerator),
        max_epochs=cfg.max_epochs, max_steps=cfg.max_steps, default_root_dir=str(member_dir),
        # a max_steps shorter than an epoch ends that epoch there, so that it is still validated and
        # checkpointed (stopping mid-epoch would leave no val_loss and no best.ckpt)
        limit_train_batches=min(len(train_loader), cfg.max_steps) if cfg.max_steps > 0 else None,
        callbacks=[checkpoint, latest, *([EarlyStopping(monitor=monitor, patience=cfg.patience, mode="min")] if monitor
                                 else [])],
        enable_progress_bar=cfg.progress,
        logger=L.pytorch.loggers.CSVLogger(str(member_dir.parent / "logs"), name=member_dir.name),
        deterministic=False, log_every_n_steps=max(1, min(50, len(train_loader))), enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module, train_loader, _loader(cfg, data, split.val, False, seed), ckpt_path=resume_from)
    seconds = time.perf_counter() - start
    scores = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
    best = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else math.nan
    summary = {"seed": seed, "init_from": list(cfg.init_from), "n_initialised_tensors": len(initialised),
               "best_val_loss": best, "epochs": trainer.current_epoch, "steps": trainer.global_step,
               "train_seconds": seconds,
               "train_images_per_s": trainer.global_step * cfg.batch_size / max(seconds, 1e-9),
               "resumed_from": resume_from, "last_metrics": scores}
    write_json(done, summary)
    return Path(checkpoint.best_model_path), summary


def _as_config(config: TrainConfig | dict[str, Any] | str | Path, overrides: dict[str, Any]) -> TrainConfig:
    if isinstance(config, str | Path):
        cfg = TrainConfig.from_yaml(config)
    elif isinstance(config, dict):
        cfg = TrainConfig.from_dict(config)
    else:
        cfg = config
    return TrainConfig.from_dict({**cfg.to_dict(), **overrides}) if overrides else cfg


def _prepare(cfg: TrainConfig, split: Split | None) -> tuple[Split, InputSpec]:
    """Everything that can fail on bad input, before any file is written: the store, the split, the
    model built on the store's shape, the warm-start sources' input specs."""
    with CubeStore(cfg.cubes, on_bad=cfg.on_bad) as store:  # type: ignore[arg-type]
        if split is None:
            rows = labelled_rows(store.z_spec, store.valid_index, cfg.z_min, cfg.z_max)
            if len(rows) < 10:
                raise ValueError(f"{cfg.cubes}: only {len(rows)} objects have z_spec inside "
                                 f"[{cfg.z_min}, {cfg.z_max}]; need at least 10 to train")
            split = random_split(rows, cfg.test_fraction, cfg.val_fraction, cfg.seed, cfg.max_train)
        n_bands, size, _ = store.image_shape
        if cfg.use_mags and not store.has_mags:
            raise ValueError(f"{cfg.cubes} holds no magnitudes; train without magnitude input (use_mags=false) "
                             "or write 'mags' into the cube store")
        module = build_module(cfg, n_bands, size, len(store.mag_names) if cfg.use_mags else 0)
        reads_mags = bool(getattr(module.model, "use_mags", False))
        if reads_mags and not cfg.use_mags:
            raise ValueError(f"model {cfg.model} reads magnitudes; set use_mags=true (and give the cube store "
                             "'mags') or choose a model without a magnitude branch")
        for source in cfg.init_from:
            source_spec = spec_for(source)
            problems = source_spec.mismatches(store, needs_mags=False) if source_spec else []
            if problems:
                raise RunInputError(f"init_from {source}: the cube store {cfg.cubes} has " + "; ".join(problems)
                                    + "; a warm start needs training data made like the source run's")
        spec = InputSpec.from_store(store, mag_names=store.mag_names if reads_mags else None,
                                    use_ebv=cfg.use_ebv, split=split, target=cfg.target_cubes or None)
    return split, spec


def _claim_run_dir(run_dir: Path) -> bool:
    """Make ``run_dir`` ours: new, empty, or an older run (whose outputs are removed); True if created."""
    if run_dir.exists():
        if not run_dir.is_dir():
            raise UnsafeOutputError(f"{run_dir} exists and is not a directory; choose another --out")
        if any(run_dir.iterdir()) and not is_run_dir(run_dir):
            raise UnsafeOutputError(f"{run_dir} exists and is not a zpix run directory; choose another --out")
        for old in [*run_dir.glob("member_*"), run_dir / "logs"]:
            shutil.rmtree(old, ignore_errors=True)
        for name in (SUMMARY_FILE, INPUT_SPEC_FILE, "calibration.json"):
            (run_dir / name).unlink(missing_ok=True)
        mark_run(run_dir)
        return False
    run_dir.mkdir(parents=True)
    mark_run(run_dir)
    return True


def _train_members(cfg: TrainConfig, split: Split, run_dir: Path, data: TableData | None = None) -> TrainResult:
    checkpoints, members = [], []
    try:
        for k in range(cfg.ensemble):
            ckpt, summary = train_member(cfg, split, run_dir / f"member_{k}", cfg.seed + k, data)
            checkpoints.append(ckpt)
            members.append(summary)
    except Exception:
        # a run that failed before its first checkpoint is no run: leave nothing that looks like one
        if not any(run_dir.glob("member_*/*.ckpt")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    summary = {"n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test), "members": members}
    if data is None:  # calibration and debiasing predict from the cube store (train_table refuses them)
        summary["calibration"] = _calibrate_run(cfg, run_dir, split)
        summary["debiased"] = _debias_run(cfg, run_dir)
    write_json(run_dir / SUMMARY_FILE, summary)
    return TrainResult(run_dir, checkpoints, split, summary)


def _calibrate_run(cfg: TrainConfig, run_dir: Path, split: Split) -> list[dict[str, Any]] | None:
    """Fit ``cfg.calibrate`` on the validation rows into ``run_dir/calibration.json`` (zpix.calibration);
    None when switched off or with too few validation objects."""
    from zpix.calibration import calibrate
    from zpix.calibration.fit import MIN_VALIDATION

    if not cfg.calibrate or len(split.val) < MIN_VALIDATION:
        return None
    chain = calibrate(run_dir, None, cfg.calibrate, cubes=cfg.cubes, append=False, on_bad=cfg.on_bad)
    return [s.to_dict() for s in chain.steps]


def _debias_options(cfg: TrainConfig) -> tuple[dict[str, Any], Path, list[str]]:
    """The ``debias`` block split into DebiasConfig options, the output run and its calibration steps."""
    from zpix.debias.api import DebiasConfig

    opts = dict(cfg.debias)
    out = Path(opts.pop("out", None) or f"{Path(cfg.out)}-debiased")
    methods = list(opts.pop("calibrate", ["photoz"]))
    DebiasConfig.from_dict(opts)  # unknown options fail before training, not after it
    return opts, out, methods


def _debias_run(cfg: TrainConfig, run_dir: Path) -> dict[str, Any] | None:
    """Lin et al. steps 1-3 into a new run (zpix.debias), then its calibration against photo-z (step 4)."""
    if not cfg.debias:
        return None
    from zpix.calibration import calibrate
    from zpix.debias.api import debias_run

    opts, out, methods = _debias_options(cfg)
    info = debias_run(run_dir, out, cubes=cfg.cubes, config=opts)
    if methods:
        calibrate(out, None, methods, cubes=cfg.cubes, append=False, on_bad=cfg.on_bad)
    return {"run": str(out), "n_subset": info["n_subset"], "sigma_per_mag_bin": info["sigma_per_mag_bin"],
            "calibration": methods}


def train(config: TrainConfig | dict[str, Any] | str | Path, split: Split | None = None, **overrides: Any
          ) -> TrainResult:
    """Train ``config.ensemble`` models (seeds ``seed, seed+1, ...``) on one split of the cube store.

    ``config`` is a TrainConfig, a dict of its fields or a YAML path; ``overrides`` replace fields.
    """
    cfg = _as_config(config, overrides)
    if not cfg.cubes:
        raise ValueError("no training data: set 'cubes' (a cube store .h5) in the config or with --cubes")
    split, spec = _prepare(cfg, split)
    if cfg.debias and _debias_options(cfg)[1].exists():
        raise UnsafeOutputError(f"{_debias_options(cfg)[1]} exists; the debias block writes a new run there: "
                                "remove it or set debias.out to another directory")
    run_dir = _start_run(cfg, split, spec=spec)
    return _train_members(cfg, split, run_dir)


def _start_run(cfg: TrainConfig, split: Split, *, spec: InputSpec | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """Claim ``cfg.out`` and write the split, the input spec (if any) and the config with the split's sizes
    (plus ``extra``); a directory this call created is removed again if any of it fails."""
    run_dir = Path(cfg.out)
    created = _claim_run_dir(run_dir)
    try:
        split.save(run_dir / SPLIT_FILE)
        if spec is not None:
            spec.save(run_dir)
        cfg.save(run_dir / CONFIG_FILE, extra={"n_train": len(split.train), "n_val": len(split.val),
                                                "n_test": len(split.test), **(extra or {})})
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def train_table(config: TrainConfig | dict[str, Any] | str | Path, data: TableData, split: Split,
                **overrides: Any) -> TrainResult:
    """Train on an in-memory catalogue (``data``: magnitudes, E(B−V), z; no images) into the run directory
    ``config.out``, through the loop of :func:`train`: the same checkpoints, early stopping, seeds and
    atomic writes, and the config saved beside them with a description of the table.

    ``split`` holds rows of ``data``.  The model must read magnitudes and no images (``hybrid-mags``);
    calibration and debiasing, which predict from a cube store, must be switched off.
    """
    cfg = _as_config(config, overrides)
    problems = []
    if cfg.cubes or cfg.target_cubes or cfg.init_from:
        problems.append("cubes, target_cubes and init_from name cube stores and runs; leave them empty")
    if cfg.calibrate or cfg.debias:
        problems.append("calibration and debiasing predict from a cube store; set calibrate=[] and debias={}")
    if not cfg.use_mags:
        problems.append("a table holds magnitudes only: set use_mags=true")
    rows = np.concatenate([split.train, split.val, split.test])
    if rows.size and (rows.min() < 0 or rows.max() >= len(data)):
        problems.append(f"the split's rows must lie in [0, {len(data)})")
    if len(split.train) == 0 or len(split.val) == 0:
        problems.append("the split needs training and validation rows")
    if problems:
        raise ValueError(f"cannot train on the table {data.source}: " + "; ".join(problems))
    module = build_module(cfg, **data.model_inputs())
    if getattr(module.model, "use_images", True) or not getattr(module.model, "use_mags", False):
        raise ValueError(f"model {cfg.model} does not read magnitudes alone; a table ({data.source}) has no "
                         "images: choose hybrid-mags")
    run_dir = _start_run(cfg, split, extra={"table": data.describe()})
    return _train_members(cfg, split, run_dir, data)


def resume(run: str | Path) -> TrainResult:
    """Continue a killed `zpix train` run: finished members are kept, the others continue from their
    ``last.ckpt`` (or start, if they had none), with the run's own config, split and cube store."""
    run_dir = Path(run)
    if not is_run_dir(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a run directory written by `zpix train` (no {CONFIG_FILE} "
                                f"and {SPLIT_FILE})")
    cfg = TrainConfig.from_yaml(run_dir / CONFIG_FILE)
    cfg = replace(cfg, out=str(run_dir))
    split = load_split(run_dir)
    spec = InputSpec.load(run_dir)
    with CubeStore(cfg.cubes, on_bad=cfg.on_bad) as store:  # type: ignore[arg-type]
        if spec is not None and not spec.same_store(store):
            raise RunInputError(f"cannot resume {run_dir}: its cube store {cfg.cubes} no longer holds the objects "
                                "the run was split on (ids/z_spec fingerprint differs)")
    return _train_members(cfg, split, run_dir)


def kfold(config: TrainConfig | dict[str, Any] | str | Path, k: int = 5, **overrides: Any) -> dict[str, Any]:
    """k-fold cross-validation (Pasquet 2019 Sect. 3.6, Table 1): train on k−1 folds, predict the held-out fold,
    so that every labelled object gets a prediction from a model that never saw it.

    Writes ``<out>/fold_<i>/`` runs and predictions, ``<out>/predictions`` (all objects) and
    ``<out>/kfold_metrics.json`` with per-fold metrics and their mean ± std.
    """
    from zpix.evaluation.metrics import summary as metric_summary
    from zpix.prediction.format import read_predictions
    from zpix.prediction.streaming import merge_predictions, predict

    cfg = _as_config(config, overrides)
    out = Path(cfg.out)
    with CubeStore(cfg.cubes, on_bad=cfg.on_bad) as store:  # type: ignore[arg-type]
        rows = labelled_rows(store.z_spec, store.valid_index, cfg.z_min, cfg.z_max)
    folds, fold_dirs = [], []
    for i, split in enumerate(kfold_splits(rows, k, cfg.val_fraction, cfg.seed)):
        result = train(replace(cfg, out=str(out / f"fold_{i}")), split=split)
        pred_dir = predict(result.run_dir, cfg.cubes, out / f"fold_{i}" / "predictions", rows=split.test,
                           num_workers=CubeData(cfg).workers, overwrite=True, progress=cfg.progress, on_bad=cfg.on_bad)
        p = read_predictions(pred_dir)
        m = metric_summary(p.catalog["z_mean"].to_numpy(), p.catalog["z_spec"].to_numpy(), p.pdfs, p.grid)
        folds.append({key: m[key] for key in ("n", "bias", "sigma_mad", "eta", "crps") if key in m})
        fold_dirs.append(pred_dir)
    merge_predictions(fold_dirs, out / "predictions")
    doc = {"k": k, "folds": folds,
           "mean": {key: float(np.mean([f[key] for f in folds])) for key in folds[0]},
           "std": {key: float(np.std([f[key] for f in folds], ddof=1)) for key in folds[0]}}
    write_json(out / "kfold_metrics.json", doc)
    return doc
