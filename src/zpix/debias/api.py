"""Bias correction of a trained run with respect to spec-z (Lin et al. 2022, steps 1-3).

Given a run directory written by ``zpix train`` (any model with a binned-PDF head), :func:`debias_run`

1. keeps each member's representation frozen and retrains only its head on a near-balanced subset of
   the run's training rows: at most ``n_th`` objects per (z_spec, r magnitude) cell
   (:mod:`zpix.debias.balance`);
2. with soft labels N(μ, σ), one σ per r-magnitude bin, fitted between the spec-z histogram and the
   histogram of the run's own photo-z on its *validation* rows (:mod:`zpix.debias.labels`);
3. with labels relocated against the pull of under-populated edges, on an output grid extended by
   ``extend`` beyond the run's;

and writes a NEW run directory (``zpix predict`` reads it unchanged) holding the retrained
checkpoints, the run's split, its config with a ``debias`` section, and ``debias.json`` with what was
fitted (σ per magnitude bin, cell counts before and after capping, the training history).  The
calibration against photo-z (step 4) is a separate, later step: :mod:`zpix.calibration.photoz`.

:func:`prepare_labels` and :func:`retrain_heads` are the same steps on arrays, for callers that hold
the frozen features already (the benchmark, a magnitude-catalogue network).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zpix.atomic import atomic_file
from zpix.debias.balance import BalancedSubset, balanced_subset, cell_index, regular_edges
from zpix.debias.head import HeadInputs, extended_head, head_inputs, pdf_head, train_head
from zpix.debias.labels import edge_shift, fit_sigma_per_mag, gaussian_labels
from zpix.pdf import RedshiftGrid, pdf_mean
from zpix.plain_types import check_known_options

DEBIAS_FILE = "debias.json"


@dataclass
class DebiasConfig:
    """Options of the bias correction.  N_th and edge_scale are best chosen on validation rows for each
    catalogue (benchmarks/bias_correction.py does; the values it chose are in docs/bias_correction.md)."""

    n_th: int = 100  # at most this many training objects per (z, mag) cell
    cell_dz: float = 0.01  # cell size in z_spec
    cell_dmag: float = 0.5  # cell size in r magnitude (also the magnitude bins of σ)
    soft_labels: bool = True
    sigma_rebin: int = 4  # σ is fitted on histograms of this many grid bins per bin
    sigma_min_count: int = 100  # magnitude bins with fewer validation objects use the overall σ
    sigma_max: float = 0.1
    edge_shift: bool = True
    edge_scale: float = 1.0  # neighbourhood width of the edge shift, in units of the step-1 σ_MAD(z) per mag bin
    # density n(z′) that modifies the neighbourhood: "balanced" (the balanced subset's labels) or "range" (flat
    # over the training labels' range: only the range edges pull)
    edge_density: str = "balanced"
    extend: float = 0.03  # the output grid is extended by this much in z at both ends (whole bins)
    mag_column: str = "r_mag"  # cube-store catalogue column of the r magnitude (else the 'r' magnitude)
    # Adam on the head alone: at 3e-4 the head was still improving after 40 epochs (never early-stopped);
    # at 1e-3 with up to 200 epochs early stopping on the validation loss ends it (history: "converged")
    lr: float = 1e-3
    epochs: int = 200
    patience: int = 8
    batch_size: int = 256
    weight_decay: float = 0.0
    seed: int = 0
    # > 1: the head answers M r-magnitude channels x the redshift bins and its PDF is the marginal over them
    # (zpix.debias.multichannel); 1 is the single-channel head
    mag_channels: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> DebiasConfig:
        values = dict(values or {})
        check_known_options(cls, values, "debias")
        return cls(**values)


@dataclass
class LabelPlan:
    """Everything fitted before the head is retrained: the subset, its labels, σ, the grid."""

    grid: RedshiftGrid
    base_grid: RedshiftGrid
    subset: BalancedSubset
    mag_edges: np.ndarray
    sigma: np.ndarray  # per magnitude bin (0 when soft labels are off)
    sigma_counts: np.ndarray
    edge_width: np.ndarray  # per magnitude bin (z units)
    mu: np.ndarray  # label centres of the subset rows
    label_sigma: np.ndarray  # label width of the subset rows
    val_mu: np.ndarray
    val_sigma: np.ndarray
    val_weight: np.ndarray  # importance weights: balanced / natural density of each validation object's cell
    config: DebiasConfig = field(default_factory=DebiasConfig)
    mag: np.ndarray | None = None  # r magnitude of the subset rows (the magnitude channels)
    val_mag: np.ndarray | None = None

    def train_targets(self) -> np.ndarray:
        return gaussian_labels(self.mu, self.label_sigma, self.grid)

    def val_targets(self) -> np.ndarray:
        return gaussian_labels(self.val_mu, self.val_sigma, self.grid)

    def to_dict(self) -> dict[str, Any]:
        channels = {}
        if self.config.mag_channels > 1:
            from zpix.debias.multichannel import channel_record

            channels = {"mag_channels": channel_record(self)}
        return {
            **channels,
            "grid": self.grid.to_dict(), "base_grid": self.base_grid.to_dict(),
            "config": self.config.to_dict(),
            "mag_edges": self.mag_edges.tolist(),
            "sigma_per_mag_bin": self.sigma.tolist(),
            "sigma_fit_counts": self.sigma_counts.tolist(),
            "edge_width_per_mag_bin": self.edge_width.tolist(),
            "cells": self.subset.to_dict(),
        }


def extended_grid(grid: RedshiftGrid, extend: float) -> RedshiftGrid:
    """``grid`` with ``round(extend / width)`` extra bins of the same width at each end."""
    k = int(round(max(0.0, extend) / grid.width))
    return RedshiftGrid(grid.n_bins + 2 * k, grid.z_min - k * grid.width, grid.z_max + k * grid.width)


def _mad_sigma(x: np.ndarray) -> float:
    from scipy.stats import median_abs_deviation

    return float(median_abs_deviation(x, scale="normal")) if x.size else float("nan")


def prepare_labels(
    *,
    z_train: np.ndarray,
    mag_train: np.ndarray,
    z_val: np.ndarray,
    mag_val: np.ndarray,
    zphot_val: np.ndarray,
    grid: RedshiftGrid,
    config: DebiasConfig | None = None,
) -> LabelPlan:
    """Steps 1-3 on arrays: the balanced subset of the training rows and the labels of its objects.

    ``zphot_val`` are the step-1 model's photo-z (PDF means) on the validation rows; σ and the edge
    widths are fitted on them (never on test rows).
    """
    cfg = config or DebiasConfig()
    z_train, mag_train = np.asarray(z_train, np.float64), np.asarray(mag_train, np.float64)
    z_val, mag_val, zphot_val = (np.asarray(a, np.float64) for a in (z_val, mag_val, zphot_val))
    z_edges = regular_edges(z_train, cfg.cell_dz, lo=grid.z_min, hi=grid.z_max)
    mag_edges = regular_edges(np.concatenate([mag_train, mag_val]), cfg.cell_dmag)
    subset = balanced_subset(z_train, mag_train, z_edges=z_edges, mag_edges=mag_edges, n_th=cfg.n_th,
                             seed=cfg.seed)
    n_mag = len(mag_edges) - 1
    if cfg.soft_labels:
        hist_edges = grid.edges[::max(1, int(cfg.sigma_rebin))]
        sigma, counts = fit_sigma_per_mag(z_val, zphot_val, mag_val, mag_edges=mag_edges, edges=hist_edges,
                                          min_count=cfg.sigma_min_count, sigma_max=cfg.sigma_max)
    else:
        sigma, counts = np.zeros(n_mag), np.bincount(cell_index(mag_val, mag_edges), minlength=n_mag)
    # the neighbourhood over which the step-1 model averages: its residual scatter per magnitude bin
    resid = zphot_val - z_val
    m_val = cell_index(mag_val, mag_edges)
    overall = _mad_sigma(resid)
    width = np.array([_mad_sigma(resid[m_val == b]) if np.sum(m_val == b) >= cfg.sigma_min_count else overall
                      for b in range(n_mag)]) * cfg.edge_scale
    # step 3 extends the output range so that relocated labels near the edges fit on it
    out_grid = extended_grid(grid, cfg.extend) if cfg.edge_shift else grid
    rows = subset.rows
    m_tr = cell_index(mag_train[rows], mag_edges)
    mu = z_train[rows].copy()
    val_mu = z_val.copy()
    if cfg.edge_shift:
        fine = grid.edges
        if cfg.edge_density == "balanced":
            dens = z_train[rows]
        elif cfg.edge_density == "range":
            c = 0.5 * (fine[:-1] + fine[1:])
            dens = c[(c >= z_train.min()) & (c <= z_train.max())]
        else:
            raise ValueError(f"edge_density must be 'balanced' or 'range', got {cfg.edge_density!r}")
        mu = edge_shift(mu, width[m_tr], density_z=dens, edges=fine)
        val_mu = edge_shift(val_mu, width[m_val], density_z=dens, edges=fine)
    # validation objects weighted to the balanced density: kept / available in their training cell
    flat_val = cell_index(z_val, z_edges) * n_mag + m_val
    ratio = (subset.kept / np.maximum(subset.counts, 1)).ravel()
    val_weight = ratio[flat_val]
    return LabelPlan(out_grid, grid, subset, mag_edges, sigma, counts, width, mu, sigma[m_tr], val_mu,
                     sigma[m_val], val_weight, cfg, mag_train[rows], mag_val)


def retrain_heads(
    heads: list[Any],
    train_inputs: list[HeadInputs],
    val_inputs: list[HeadInputs],
    plan: LabelPlan,
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Retrain a copy of each member's head on its frozen features of the subset rows.

    ``train_inputs[k]`` must hold member k's features of exactly the subset rows, in ``plan.subset.rows``
    order; ``val_inputs[k]`` those of all validation rows.  With ``mag_channels`` > 1 the new heads have
    magnitude channels (:func:`zpix.debias.multichannel.retrain_multichannel_heads`).
    """
    cfg = plan.config
    if any(hasattr(h, "channel_config") for h in heads):
        raise ValueError("this run's heads already have magnitude channels; debias the run they were debiased from")
    if cfg.mag_channels != 1:
        from zpix.debias.multichannel import retrain_multichannel_heads

        if cfg.mag_channels < 1:
            raise ValueError(f"mag_channels must be >= 1, got {cfg.mag_channels}")
        return retrain_multichannel_heads(heads, train_inputs, val_inputs, plan)
    targets = plan.train_targets()
    val_targets = plan.val_targets()
    new_heads, histories = [], []
    for k, (head, tr, va) in enumerate(zip(heads, train_inputs, val_inputs, strict=True)):
        if tr.features.shape[0] != targets.shape[0]:
            raise ValueError(f"member {k}: {tr.features.shape[0]} training feature rows but {targets.shape[0]} labels")
        new = extended_head(head, plan.grid)
        new, hist = train_head(new, (tr.features, tr.ebv, targets), (va.features, va.ebv, val_targets, plan.val_weight),
                               lr=cfg.lr, epochs=cfg.epochs, patience=cfg.patience, batch_size=cfg.batch_size,
                               weight_decay=cfg.weight_decay, seed=cfg.seed + k)
        new_heads.append(new)
        histories.append(hist)
    return new_heads, histories


# --------------------------------------------------------------------------------------------
# run directories


def module_with_head(module: Any, head: Any) -> Any:
    """A copy of a PhotoZModule whose head is ``head`` and whose grid and hyper-parameters follow it."""
    import torch

    from zpix.training.module import PhotoZModule

    grid = RedshiftGrid(head.n_bins, head.z_min, head.z_max)
    hp = dict(module.hparams)
    model_config = dict(hp["model_config"])
    model_config.update(n_bins=grid.n_bins, z_min=grid.z_min, z_max=grid.z_max)
    hp.update(model_config=model_config, grid=grid.to_dict(), compile="none")
    if hasattr(head, "channel_config") or hp.get("head_channels"):
        # a head with magnitude channels is rebuilt from this record when the checkpoint is loaded
        hp["head_channels"] = head.channel_config() if hasattr(head, "channel_config") else None
    new = PhotoZModule(**hp)
    state = {k: v for k, v in module.model.state_dict().items() if not k.startswith("head.")}
    state.update({f"head.{k}": v for k, v in head.state_dict().items()})
    new.model.load_state_dict(state)
    new.model.to(torch.float32)
    return new


def save_checkpoint(module: Any, path: str | os.PathLike) -> Path:
    """Write a checkpoint that ``PhotoZModule.load_from_checkpoint`` (and so ``zpix predict``) reads."""
    import lightning as L
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                    "pytorch-lightning_version": L.__version__, "epoch": 0, "global_step": 0}, tmp)
    return path


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_debiased_run(source: str | os.PathLike, out: str | os.PathLike, modules: list[Any],
                       info: dict[str, Any]) -> Path:
    """Write the new run directory ``out`` (refused if it exists) from ``source`` and the new modules.

    Built under a temporary name and renamed into place, so a failed write leaves no half run.
    """
    import yaml

    from zpix.runs import CONFIG_FILE, INPUT_SPEC_FILE, SPLIT_FILE, SUMMARY_FILE, mark_run

    source, out = Path(source), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another --out (bias correction never replaces a directory)")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover from this very process id
    tmp.mkdir(parents=True)
    try:
        for k, module in enumerate(modules):
            save_checkpoint(module, tmp / f"member_{k}" / "best.ckpt")
        # the same rows and inputs as the source: its split (train/val stay "training rows" for evaluation)
        for name in (SPLIT_FILE, INPUT_SPEC_FILE):
            if (source / name).is_file():
                _link_or_copy(source / name, tmp / name)
        mark_run(tmp)
        doc: dict[str, Any] = {}
        if (source / CONFIG_FILE).is_file():
            doc = yaml.safe_load((source / CONFIG_FILE).read_text()) or {}
        doc["debias"] = {"source_run": str(source), **info.get("config_section", {})}
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(doc, sort_keys=False))
        if (source / SUMMARY_FILE).is_file():
            summary = json.loads((source / SUMMARY_FILE).read_text())
            summary["debiased_from"] = str(source)
            (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        from zpix.plain_types import to_plain

        (tmp / DEBIAS_FILE).write_text(json.dumps(to_plain(info, finite=True), indent=1))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def r_magnitudes(cubes: str | os.PathLike, rows: np.ndarray, column: str = "r_mag") -> np.ndarray:
    """The r magnitude of ``rows``: catalogue column ``column``, else the stored 'r' magnitude."""
    from zpix.store.cube_store import CubeStore

    with CubeStore(cubes, validate=False) as store:
        if column in store.catalog_columns:
            return np.asarray(store.column(f"catalog/{column}"), dtype=np.float64)[rows]
        if store.has_mags and "r" in store.mag_names:
            return np.asarray(store.column("mags"), dtype=np.float64)[rows, store.mag_names.index("r")]
    raise ValueError(f"{cubes}: no catalogue column {column!r} and no 'r' magnitude; bias correction needs an "
                     "r magnitude per object for its (z, mag) cells (pass mag_column= / --mag-column)")


def _batches(cubes: str, rows: np.ndarray, use_mags: bool, batch_size: int, num_workers: int):
    from torch.utils.data import DataLoader

    from zpix.store.dataset import CubeDataset

    ds = CubeDataset(cubes, indices=rows, use_mags=use_mags, on_bad="zero")
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def debias_run(
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    cubes: str | os.PathLike | None = None,
    config: DebiasConfig | dict[str, Any] | None = None,
    device: str = "cpu",
    batch_size: int = 128,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Steps 1-3 of Lin et al. on the run directory ``run``; writes the new run directory ``out``.

    ``cubes`` defaults to the cube store named in the run's config.  Returns what was fitted (also in
    ``out/debias.json``).
    """
    import torch
    import yaml

    from zpix.prediction.streaming import load_ensemble
    from zpix.runs import CONFIG_FILE, SPLIT_FILE, Split

    cfg = config if isinstance(config, DebiasConfig) else DebiasConfig.from_dict(config)
    run = Path(run)
    if not (run / SPLIT_FILE).is_file():
        raise FileNotFoundError(f"{run}: no {SPLIT_FILE}; pass a run directory written by `zpix train`")
    if cubes is None:
        doc = yaml.safe_load((run / CONFIG_FILE).read_text()) if (run / CONFIG_FILE).is_file() else {}
        cubes = (doc or {}).get("train", {}).get("cubes")
        if not cubes:
            raise ValueError(f"{run}: its {CONFIG_FILE} names no cube store; pass cubes= / --cubes")
    cubes = str(cubes)
    split = Split.load(run / SPLIT_FILE)
    if len(split.val) == 0:
        raise ValueError(f"{run}: the run has no validation rows; σ and the edge widths are fitted on them")
    members = load_ensemble(run, device, channels_last=False)
    grid = RedshiftGrid.from_dict(members[0].hparams.grid)
    for m in members:
        pdf_head(m)
    use_mags = any(bool(getattr(m.model, "zpix_config", {}).get("n_mags", 0)) for m in members)
    with torch.inference_mode():
        val_inputs = [head_inputs(m, _batches(cubes, split.val, use_mags, batch_size, num_workers), device)
                      for m in members]
    from zpix.store.cube_store import CubeStore

    with CubeStore(cubes, validate=False) as store:
        z_all = np.asarray(store.z_spec, dtype=np.float64)
    zphot_val = pdf_mean(np.mean([v.probs for v in val_inputs], axis=0), grid)
    plan = prepare_labels(z_train=z_all[split.train], mag_train=r_magnitudes(cubes, split.train, cfg.mag_column),
                          z_val=z_all[split.val], mag_val=r_magnitudes(cubes, split.val, cfg.mag_column),
                          zphot_val=zphot_val, grid=grid, config=cfg)
    train_rows = split.train[plan.subset.rows]
    # the loader reads rows in the order given; keep the subset's order so labels line up
    train_inputs = [head_inputs(m, _batches(cubes, train_rows, use_mags, batch_size, num_workers), device)
                    for m in members]
    heads, histories = retrain_heads([pdf_head(m) for m in members], train_inputs, val_inputs, plan)
    modules = [module_with_head(m, h) for m, h in zip(members, heads, strict=True)]
    info = {**plan.to_dict(), "histories": histories, "source_run": str(run), "cubes": cubes,
            "n_train_rows": int(len(split.train)), "n_subset": int(len(train_rows)),
            "config_section": {"config": cfg.to_dict(), "grid": plan.grid.to_dict()}}
    write_debiased_run(run, out, modules, info)
    return info


def describe_debias(run_dir: str | os.PathLike) -> str | None:
    """What ``zpix debias`` fitted for ``run_dir`` (its ``debias.json``) as text, or None if it has none."""
    path = Path(run_dir) / DEBIAS_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        cfg, cells, grid = d["config"], d["cells"], d["grid"]
        counts = np.asarray(cells["counts"])
        kept = np.asarray(cells["kept"])
        lines = [f"debias (Lin et al. steps 1-3) of {d.get('source_run', '?')}:",
                 f"  balanced subset: N_th = {cells['n_th']} per (z_spec, r) cell of {cfg['cell_dz']} x "
                 f"{cfg['cell_dmag']} mag; kept {cells['n_kept']} of {cells['n_in']} training objects "
                 f"({int((counts > 0).sum())} cells populated, {int((counts > kept).sum())} capped)"]
        edges = d["mag_edges"]
        if cfg["soft_labels"]:
            parts = [f"[{edges[i]:.1f},{edges[i + 1]:.1f}) {s:.4f} (n={n})"
                     for i, (s, n) in enumerate(zip(d["sigma_per_mag_bin"], d["sigma_fit_counts"], strict=True))]
            lines.append("  soft-label σ per r bin (fitted on validation rows): " + ", ".join(parts))
        else:
            lines.append("  soft labels: off (one-hot)")
        if cfg["edge_shift"]:
            lines.append(f"  edge shift: on (width {cfg['edge_scale']} x step-1 σ_MAD(z) per r bin); output grid "
                         f"{grid['n_bins']} bins on [{grid['z_min']:.4f}, {grid['z_max']:.4f}]")
        else:
            lines.append("  edge shift: off")
        if "mag_channels" in d:
            from zpix.debias.multichannel import describe_channels

            lines.append(describe_channels(d["mag_channels"]))
        return "\n".join(lines)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a zpix debias record ({err!r})") from err
