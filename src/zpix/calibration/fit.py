"""Fitting a calibration on a run's validation objects, and `zpix calibrate` (a new, calibrated run).

``calibrate(run, out, methods=[...])`` predicts the run's validation rows (``split.npz``: never the
test rows), fits each method in turn on the output of the ones before, and writes a NEW run directory
``out`` that shares ``run``'s checkpoints (hard links where the filesystem allows, copies otherwise)
and holds the fitted ``calibration.json``; ``run`` itself is never modified.  A run that already has a
calibration keeps its steps and gets the new ones appended.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from zpix.calibration.base import CALIBRATION_FILE, Calibration, load_calibration
from zpix.pdf import RedshiftGrid
from zpix.quality.features import infer
from zpix.quality.scores import QUALITY_FILE, QualityModel, fit_quality
from zpix.runs import CONFIG_FILE, SPLIT_FILE, Split

#: Fewer validation objects than this cannot pin down even one temperature; training skips calibration and
#: the quality model then.
MIN_VALIDATION = 50

#: ``auto`` fits no map on fewer objects than this.  Measured (benchmarks/results/calibration.json ``noise_vs_n``;
#: docs/calibration.md "How many validation objects"): below it a map fitted on calibrated PDFs moves the test PIT
#: KS and coverage68 by about the targets (0.02), and the cross-validated rule alone still gives calibrated PDFs a
#: map in some fits.  ``zpix calibrate --method pit`` (or any named method) still fits on fewer.
MIN_AUTO = 1000

#: Chains that ``auto`` chooses from, in order of preference (of two as good, the earlier is taken).
#: The empty chain comes first: PDFs already calibrated within the validation set's noise are left as they
#: are, rather than given a map that can only add the noise of its fit.  ``pit-width`` (maps conditioned on each
#: PDF's own width) comes next: where it is as good as the global maps on held-out validation rows it is also right
#: for a sample brighter or fainter than the validation one, which a global map is not (the SDSS MGS test file is
#: 0.18 mag brighter in r than the training file: docs/calibration.md "Limits").  The few-parameter maps
#: (``pit-affine``: 2 numbers, ``pit-beta``: 3) come before the nonparametric ``pit`` (K − 1 ECDF values): where
#: they are as good on held-out folds they carry less of the fitting set's noise to new objects.  For a regression
#: head the ``keep-mean`` variant (point estimates unchanged) comes before the same chain without it.
AUTO_CANDIDATES: tuple[tuple[str, ...], ...] = (
    (), ("pit-width",), ("pit-affine",), ("pit-beta",), ("pit",), ("temperature", "pit"), ("pit-local",),
    ("student-t", "pit-affine", "keep-mean"), ("student-t", "pit-affine"),
    ("student-t", "pit", "keep-mean"), ("student-t", "pit"))

#: A chain replaces the identity only if its held-out PIT KS (mean over the folds) is lower by more than this many
#: standard deviations of the paired difference (bootstrap of the rows within their folds).
SIGNIFICANCE = 1.0

#: ``auto`` takes no chain that moves σ_MAD of the point estimates (the PDFs' means) on the held-out folds by more
#: than this fraction: calibration is for the PDFs' width and shape, not a second photo-z estimator.
MAX_SIGMA_MAD_CHANGE = 0.01


def select_chain(probs: np.ndarray, z_spec: np.ndarray, grid: RedshiftGrid, *,
                 candidates: Sequence[Sequence[str]] = AUTO_CANDIDATES, k: int = 5, seed: int = 0,
                 base: Calibration | None = None, min_n: int = MIN_AUTO, n_boot: int = 200,
                 significance: float | None = None) -> tuple[list[str], dict[str, Any]]:
    """The chain ``auto`` fits on (probs, z_spec): the identity unless a candidate does better on held-out rows.

    Each candidate is scored by k-fold cross-validation on these rows alone: each fold's PDFs are calibrated by
    the chain fitted on the other folds, and the score is the mean over the folds of the KS distance D_f of that
    fold's n_f ≈ n/k calibrated PITs from U(0, 1),

        S_c = (1/k) Σ_f D_f,

    an honest estimate of the PIT KS that the chain fitted on (k − 1)/k of the rows gives n/k new objects, its own
    fitting noise included.  (The KS distance of the *pooled* held-out PITs, recorded as ``cv_pit_ks``, is not:
    pooling folds whose maps were each fitted on the other folds makes a flexible map's PITs more uniform than an
    independent sample could be — the nonparametric ``pit`` map scored 0.008 there on 2,240 CNN validation
    objects, below the 0.018 of a perfect model — so ranking by it favours the most flexible map.)
    With S_0, CRPS_0 the identity's (the first candidate, ``()``), a chain c *beats the identity* when

        S_0 − S_c > significance · sd*(S_0 − S_c),   mean(CRPS_c − CRPS_0) ≤ 2 · se(CRPS_c − CRPS_0),
        and |σ_MAD,c / σ_MAD,0 − 1| ≤ MAX_SIGMA_MAD_CHANGE,

    sd* the standard deviation of the difference over ``n_boot`` bootstrap resamplings of the rows within their
    folds, se the standard error of the mean per-object CRPS difference (both paired: the same rows for both),
    σ_MAD that of the held-out PDFs' means: a better PIT, a CRPS not worse beyond its noise, point estimates not
    moved.  Of the chains that beat the identity the first in ``candidates`` whose S is within one sd* (paired)
    of the best one's is chosen (the one-standard-error rule); where none does, or n < ``min_n``, the identity.

    Returns the chosen chain and a record: ``cv_fold_ks`` (S), ``cv_pit_ks`` (pooled), ``cv_crps`` and
    ``cv_sigma_mad_change`` per candidate, ``sd_vs_none`` (sd* of S_0 − S_c), ``crps_se_vs_none``, ``n``,
    ``significance`` and ``reason``.
    """
    from scipy.stats import kstest

    from zpix.evaluation.metrics import crps, delta_z, sigma_mad
    from zpix.pdf import cdf_at, pdf_mean

    sig = SIGNIFICANCE if significance is None else float(significance)
    z = np.asarray(z_spec, dtype=np.float64)
    n = len(z)
    cands = [tuple(c) for c in candidates]
    keys = ("cv_fold_ks", "cv_pit_ks", "cv_crps", "cv_sigma_mad_change", "sd_vs_none", "crps_se_vs_none")
    record: dict[str, Any] = {"n": int(n), "significance": sig, **{key: {} for key in keys}}
    if n < min_n:
        record["reason"] = f"{n} fitting objects < {min_n}: too few to tell a map from its noise"
        return [], record
    folds = np.random.default_rng(seed).permutation(n) % k
    members = [np.flatnonzero(folds == f) for f in range(k)]
    # bootstrap resamplings of the rows within each fold, the same for every candidate (paired differences)
    rng = np.random.default_rng(seed + 1)
    boot = [m[rng.integers(0, m.size, (n_boot, m.size))] for m in members]
    scores: dict[tuple[str, ...], np.ndarray] = {}
    s_boot: dict[tuple[str, ...], np.ndarray] = {}
    ident = () if () in cands else cands[0]
    smad0 = 1.0
    for cand in [ident] + [c for c in cands if c != ident]:
        pit, score, zmean = np.empty(n), np.empty(n), np.empty(n)
        for f in range(k):
            held = folds == f
            chain = fit_calibration(probs[~held], z[~held], grid, list(cand), base=base)
            cal = chain(probs[held]) if chain else probs[held]
            pit[held] = cdf_at(cal, grid, z[held])
            score[held] = crps(cal, grid, z[held])
            zmean[held] = pdf_mean(cal, grid)
        scores[cand] = score
        name = _chain_name(cand)
        record["cv_fold_ks"][name] = float(np.mean([_ks_uniform(pit[m]) for m in members]))
        record["cv_pit_ks"][name] = float(kstest(pit, "uniform").statistic)
        record["cv_crps"][name] = float(score.mean())
        smad = sigma_mad(delta_z(zmean, z))
        smad0 = smad if cand == ident else smad0
        record["cv_sigma_mad_change"][name] = float(smad / smad0 - 1)
        s_boot[cand] = np.mean([[_ks_uniform(pit[b]) for b in fb] for fb in boot], axis=0)
    s = record["cv_fold_ks"]
    winners = []
    for cand in cands:
        if cand == ident:
            continue
        name = _chain_name(cand)
        sd = float(np.std(s_boot[ident] - s_boot[cand]))
        d_crps = scores[cand] - scores[ident]
        se = float(np.std(d_crps) / np.sqrt(n))
        record["sd_vs_none"][name], record["crps_se_vs_none"][name] = sd, se
        if (s[_chain_name(ident)] - s[name] > sig * sd and d_crps.mean() <= 2.0 * se
                and abs(record["cv_sigma_mad_change"][name]) <= MAX_SIGMA_MAD_CHANGE):
            winners.append(cand)
    if not winners:
        record["reason"] = ("no chain beats the identity's held-out PIT KS beyond the noise without a CRPS worse "
                            "beyond it or a sigma_MAD moved")
        return list(ident), record
    best = min(winners, key=lambda c: s[_chain_name(c)])
    # one-standard-error rule among the winners: noise in a small set must not pick the most flexible chain
    chosen = next(c for c in winners
                  if s[_chain_name(c)] - s[_chain_name(best)] <= float(np.std(s_boot[c] - s_boot[best])))
    record["reason"] = "first chain beating the identity beyond the noise, within one sd of the best"
    return list(chosen), record


def _ks_uniform(u: np.ndarray) -> float:
    """KS distance of the sample u from U(0, 1) (the statistic of scipy.stats.kstest, vectorised here)."""
    s = np.sort(u)
    i = np.arange(1, s.size + 1) / s.size
    return float(max(np.max(i - s), np.max(s - (i - 1 / s.size))))


def _chain_name(chain: Sequence[str]) -> str:
    return "+".join(chain) or "none"


def fit_calibration(probs: np.ndarray, z_spec: np.ndarray, grid: RedshiftGrid, methods: Sequence[str], *,
                    base: Calibration | None = None, fitted_on: dict[str, Any] | None = None,
                    **context: Any) -> Calibration:
    """Fit ``methods`` in order on (probs, z_spec); ``base`` (kept, not refitted) comes first.

    ``probs`` are uncalibrated PDFs (N, n_bins); each method is fitted on what the earlier steps make of them.
    The method ``auto`` stands for the chain :func:`select_chain` picks on these objects, possibly none
    (recorded, with the candidates' cross-validated scores and the reason, in the chain's ``notes["auto"]``).
    """
    chain = Calibration(grid, list(base.steps) if base else [], dict(base.notes) if base else {},
                        bool(base.keep_mean) if base else False)
    if base and base.grid is not None and base.grid != grid:
        raise ValueError(f"the existing calibration is on {base.grid}, the PDFs on {grid}")
    methods = list(methods)
    if "keep-mean" in methods:
        if methods[-1] != "keep-mean" or methods.count("keep-mean") > 1:
            raise ValueError(f"keep-mean must come once, after the last method: {methods}")
        methods = methods[:-1]
        keep_mean = True
    else:
        keep_mean = False
    for method in methods:
        if method == "auto":
            chosen, record = select_chain(probs, z_spec, grid, base=chain)
            chain.notes["auto"] = {"chosen": chosen, **record}
            for m in chosen:
                if m == "keep-mean":
                    keep_mean = True
                    continue
                chain.fit_step(m, probs=probs, z_spec=z_spec, fitted_on={**(fitted_on or {}), "auto": chosen},
                               **context)
            continue
        chain.fit_step(method, probs=probs, z_spec=z_spec, fitted_on=fitted_on, **context)
    chain.keep_mean = chain.keep_mean or keep_mean
    return chain


def _run_cubes(run: Path, cubes: str | os.PathLike | None) -> str:
    if cubes:
        return str(cubes)
    cfg_file = run / CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{run}: no {CONFIG_FILE}; pass a run directory written by `zpix train`")
    doc = yaml.safe_load(cfg_file.read_text()) or {}
    found = (doc.get("train") or {}).get("cubes")
    if not found or not Path(found).exists():
        raise FileNotFoundError(f"{run}: the cube store of its config ({found!r}) is not there; pass --cubes")
    return str(found)


def validation_pdfs(run: str | os.PathLike, cubes: str | os.PathLike | None = None, *, batch_size: int = 64,
                    device: str | None = None, rows: str = "val", on_bad: str = "error",
                    with_features: bool = False, members: list | None = None) -> dict[str, Any]:
    """Uncalibrated ensemble PDFs of the run's ``rows`` split ("val"), with z_spec, the members' z_mean and
    (``with_features``) the learned features: see :func:`zpix.quality.features.infer`."""
    run = Path(run)
    split_file = run / SPLIT_FILE
    if not split_file.is_file():
        raise FileNotFoundError(f"{run}: no {SPLIT_FILE}; calibration needs the run's validation rows")
    idx = getattr(Split.load(split_file), rows)
    if len(idx) == 0:
        raise ValueError(f"{run}: the split has no {rows} rows to fit a calibration on")
    return infer(run, _run_cubes(run, cubes), np.sort(idx), with_features=with_features, batch_size=batch_size,
                 device=device, on_bad=on_bad, members=members)


def held_out_pdfs(predictions: Sequence[str | os.PathLike], grid: RedshiftGrid) -> dict[str, Any]:
    """PDFs and z_spec of the labelled objects of prediction directories, to fit a run's calibration on instead
    of its validation rows: e.g. `zpix kfold`'s out-of-fold ``predictions/`` (every labelled object predicted
    by a model that never saw it), each fold run's ``--split test`` predictions, or a spectroscopic sample kept
    out of training.

    Refused where a directory includes objects its model trained or validated on (meta ``rows``) or lies on
    another grid than ``grid`` (the run's output), or where all together hold fewer than ``MIN_VALIDATION``
    labelled objects.
    """
    from zpix.prediction.format import read_meta, read_predictions, rows_record

    probs, z_spec, theirs = [], [], []
    for path in predictions:
        meta = read_meta(path)
        rows = rows_record(meta)
        n_seen = int(rows.get("n_training_rows", 0) or 0)
        if n_seen:
            raise ValueError(f"{path}: {n_seen} of its {rows.get('n_rows', '?')} objects trained or validated the "
                             "model that predicted them, so their PDFs are sharper than a new object's and a "
                             "calibration fitted on them would be over-confident. Fit on held-out predictions: "
                             "`zpix kfold` writes out-of-fold ones (OUT/predictions), or predict a labelled sample "
                             "kept out of training")
        pred = read_predictions(path)
        if pred.grid != grid:
            raise ValueError(f"{path}: PDFs on {pred.grid}, the run predicts on {grid}; predict them with a model "
                             "of the same configuration")
        z = pred.catalog["z_spec"].to_numpy(dtype=np.float64)
        labelled = np.isfinite(z)
        probs.append(pred.pdfs[labelled])
        z_spec.append(z[labelled])
        theirs.append([st.get("name") for st in (meta.get("meta") or {}).get("calibration") or []])
    z = np.concatenate(z_spec) if z_spec else np.empty(0)
    if z.size < MIN_VALIDATION:
        raise ValueError(f"{', '.join(map(str, predictions))}: {z.size} objects with a z_spec; a calibration needs "
                         f"at least {MIN_VALIDATION}")
    return {"probs": np.concatenate(probs), "z_spec": z, "grid": grid, "their_calibration": theirs}


def fit_run_quality(run: str | os.PathLike, chain: Calibration, val: dict[str, Any], *,
                    cubes: str | os.PathLike | None = None, n_features: int = 5000, seed: int = 0,
                    batch_size: int = 64, device: str | None = None, on_bad: str = "error",
                    members: list | None = None) -> QualityModel:
    """The quality model of a run: scores of its calibrated validation PDFs, and the learned features of up
    to ``n_features`` training rows (drawn with ``seed``) as the reference for the k-NN distance."""
    run = Path(run)
    train_rows = Split.load(run / SPLIT_FILE).train
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(train_rows, size=min(n_features, len(train_rows)), replace=False))
    ref = infer(run, _run_cubes(run, cubes), pick, with_features=True, batch_size=batch_size, device=device,
                on_bad=on_bad, members=members)
    probs = chain(val["probs"]) if chain else val["probs"]
    return fit_quality(probs, val["z_spec"], val["grid"], features=val["features"], train_features=ref["features"],
                       member_zmean=val["member_zmean"], seed=seed)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def calibrate(run: str | os.PathLike, out: str | os.PathLike | None, methods: Sequence[str], *,
              cubes: str | os.PathLike | None = None, batch_size: int = 64, device: str | None = None,
              append: bool = True, on_bad: str = "error", quality: bool = True, n_features: int = 5000,
              seed: int = 0, fit_on: Sequence[str | os.PathLike] | None = None) -> Calibration:
    """Fit ``methods`` on ``run``'s validation rows; write them to ``out`` (a new run directory) or, with
    ``out=None``, into ``run`` itself (what `zpix train` does to the run it has just written).

    With ``fit_on`` (prediction directories, see :func:`held_out_pdfs`) the methods are fitted on their labelled
    objects instead, on their PDFs as they are (after the calibration of the models that wrote them), and
    appended after ``run``'s own steps; no cube pass, and ``run``'s quality model is kept as it is.
    Cross-fitting: `zpix kfold` with ``run``'s configuration gives every labelled object an out-of-fold PDF, so
    a calibration fitted on those uses all of them rather than the validation rows alone, and its own noise
    shrinks accordingly (benchmarks/bias_crossfit.py).

    Returns the fitted chain: with ``append`` the run's existing steps, then the new ones; without, the
    new ones alone (a run being (re)trained must not keep a calibration fitted for other weights).  With
    ``quality`` the per-object quality model (:mod:`zpix.quality`) is fitted too, on the calibrated
    validation PDFs, and saved as ``quality.npz``.
    """
    from zpix.calibration.base import get_calibrator
    from zpix.prediction.streaming import default_device, load_ensemble

    run = Path(run)
    if not methods:
        raise ValueError("calibrate: name at least one method (see zpix.calibration.available_calibrators())")
    for m in methods:
        if m not in ("auto", "keep-mean"):
            get_calibrator(m)  # unknown names fail before the prediction pass
    if out is not None and Path(out).exists():
        raise FileExistsError(f"{out} already exists; `zpix calibrate` writes a new run directory, choose another "
                              "--out")
    device = device or default_device()
    members = load_ensemble(run, device)
    base = load_calibration(run) if append else None
    if not fit_on:
        val = validation_pdfs(run, cubes, batch_size=batch_size, device=device, on_bad=on_bad,
                              with_features=quality, members=members)
        chain = fit_calibration(val["probs"], val["z_spec"], val["grid"], methods, base=base or None,
                                fitted_on={"rows": "val", "run": str(run)})
    else:
        val = held_out_pdfs(list(fit_on), RedshiftGrid.from_dict(members[0].hparams.grid))
        quality = False
        # these PDFs already went through their models' calibration: the new steps are fitted on them as they
        # are, then put after the run's own steps (which must not be applied to them a second time)
        chain = fit_calibration(val["probs"], val["z_spec"], val["grid"], methods, fitted_on={
            "predictions": [str(f) for f in fit_on], "their_calibration": val["their_calibration"]})
        if base:
            if base.keep_mean:
                raise ValueError(f"{run}: its calibration ends with keep-mean, which would undo new steps appended "
                                 "after it; calibrate the uncalibrated run instead")
            chain = Calibration(val["grid"], list(base.steps) + list(chain.steps), {**base.notes, **chain.notes},
                                chain.keep_mean)
    qmodel = fit_run_quality(run, chain, val, cubes=cubes, n_features=n_features, seed=seed, batch_size=batch_size,
                             device=device, on_bad=on_bad, members=members) if quality else None
    if out is None:
        chain.save(run / CALIBRATION_FILE)
        if qmodel is not None:
            qmodel.save(run / QUALITY_FILE)
        return chain
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    # a quality model not refitted here is the run's own, fitted after its own calibration: kept
    refit = (CALIBRATION_FILE, QUALITY_FILE) if qmodel is not None or not fit_on else (CALIBRATION_FILE,)
    try:
        for src in sorted(run.rglob("*")):
            rel = src.relative_to(run)
            if src.is_file() and rel.parts[0] != "logs" and rel.name not in refit:
                _link_or_copy(src, tmp / rel)
        chain.save(tmp / CALIBRATION_FILE)
        if qmodel is not None:
            qmodel.save(tmp / QUALITY_FILE)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return chain
