"""Lin et al. bias correction, measured: before / after debiasing (steps 1-3) / after photo-z calibration.

For each case the script scores the test objects (never used for any fit or choice) three times:

* ``before``: the trained network as it is;
* ``debiased``: its head retrained on frozen features (balanced (z_spec, r) subset capped at N_th, soft
  labels with σ per r-magnitude bin, edge shift on an extended grid; :mod:`zpix.debias`);
* ``after``: the debiased model calibrated against photo-z (:mod:`zpix.calibration.photoz`), fitted
  on the validation rows;

with σ_MAD, the spec-z trend amplitude (largest |mean Δz| over 0.02-wide z_spec bins with ≥ 100
objects), the KS distance between the z_phot and z_spec distributions and the largest |Δ⟨z⟩| over 5
equal-count z_phot bins (:func:`zpix.evaluation.trends.bias_summary`).  N_th, the edge-shift width
(and, on MGS, a few candidates with the range-edge density) are chosen on the validation rows only: the
smallest validation spec-z trend amplitude (z_spec bins holding the same share of the validation rows as
100 test objects are of the test rows) among the candidates whose validation σ_MAD is within 5% of the
model's own.  The photo-z calibration's bin size is chosen on the validation rows by the calibrator's
default rule (:func:`zpix.calibration.photoz.choose_bin_size`: maps that resolve the 5 tomographic bins
with ≥ 2 knots each, 20 × 5-fold CV scored on the held-out folds' Δ⟨z⟩ per tomographic bin, ties within
one standard error to the larger bins); a fixed 50 objects per bin is recorded too.

The tomographic requirement is measured on a finite test sample after a calibration fitted on a finite
validation sample, so each ``max_tomo_bias`` comes with its noise (:func:`tomo_noise`): the bootstrap error
of the test value, the value noise alone would give if every bin were unbiased, and, for the calibrated
stage, the value expected from a perfect calibration rule given the validation size.  ``rule_check``
repeats the calibration rule and fixed bin sizes on synthetic samples drawn from the validation rows
themselves (their binned trend as the truth, their residuals as the noise; no test row), which is how the
rule was checked before it was run on test rows.  Ablations (no soft labels, no
edge shift, no balancing) at the chosen configuration and the calibration without debiasing are recorded.

Cases:

* ``mock_sdss``: a trained image run (``--run``, e.g. pasquet2019-small on 20k objects of the SDSS-like
  mock, ``--cubes``).  Its frozen head inputs are computed once and cached under ``--work``.  The chosen
  correction is also written as ordinary run directories (``zpix debias`` / ``zpix calibrate`` layout)
  and the first 1000 test rows predicted from them with ``zpix.prediction.predict`` (the numbers must agree).
* ``sdss_mgs``: the magnitude network (``hybrid-mags``, PDF head) on the real SDSS MGS catalogue
  (``../shared/data/real/sdss_mgs_catalog``): trained on 3500 of the 5000 training galaxies, the other
  1500 are the validation rows, the 5000 test galaxies are scored; skipped where ``../shared`` is absent.

Run from a clean worktree (see benchmarks/README.md), with absolute data paths; MGS's other seeds first,
each its own invocation, then both cases at seed 0 merging them into ``seeds`` / ``seed_summary``::

    for s in 1 2; do OMP_NUM_THREADS=2 python benchmarks/bias_correction.py --threads 2 --cases sdss_mgs \
        --seed $s --ablations none --rule-check-reps 0 --out /tmp/bias_seed$s.json; done
    OMP_NUM_THREADS=2 python benchmarks/bias_correction.py --threads 2 \
        --run /work/main/runs/bench/p19s_20k --cubes /work/main/runs/bench/mock_sdss.h5 \
        --work /work/main/runs/h12_bias_correction --seed-results /tmp/bias_seed1.json,/tmp/bias_seed2.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED, load_same_commit, stamp, write_json  # noqa: E402

MGS = SHARED / "data" / "real" / "sdss_mgs_catalog"
#: candidate N_th per case: the 20k mock fills its cells, the 3.5k MGS fit rows need smaller caps to flatten anything
N_TH_GRID = {"mock_sdss": (50, 100, 200), "sdss_mgs": (10, 25, 50, 100)}
EDGE_SCALE_GRID = (0.5, 1.0, 2.0)
#: further candidates (DebiasConfig options): the edge shift modified by the range edges alone
EXTRA_CANDIDATES: dict[str, tuple[dict[str, Any], ...]] = {
    "mock_sdss": (),
    "sdss_mgs": tuple({"n_th": n, "edge_scale": e, "edge_density": "range"} for n, e in ((100, 1.0), (100, 2.0),
                                                                                        (25, 2.0)))}
N_VAL_MGS = 1500
#: validation σ_MAD may grow by at most this factor for an N_th to be eligible
SIGMA_TOLERANCE = 1.05
#: test rows predicted from the written run directories to check them against the in-memory numbers
N_PREDICT_CHECK = 1000
#: the spec-z trend amplitude counts z_spec bins with at least this many test objects (issue 12)
TEST_MIN_COUNT = 100


def val_min_count(n_val: int, n_test: int) -> int:
    """Objects a z_spec bin needs for the validation amplitude: the same share of the sample as the test
    amplitude's ``TEST_MIN_COUNT``, so that both look at the same bins (a fixed smaller count would leave
    out sparse end bins that the test amplitude includes); never below 20."""
    return max(20, int(round(TEST_MIN_COUNT * n_val / max(n_test, 1))))


def scores(probs: np.ndarray, grid: Any, z_spec: np.ndarray, min_count: int = 100, n_boot: int = 100
           ) -> dict[str, Any]:
    """The four headline numbers and the trends behind them."""
    from zpix.evaluation.metrics import delta_z, sigma_mad
    from zpix.evaluation.trends import bias_summary
    from zpix.pdf import pdf_mean

    zp = pdf_mean(probs, grid)
    b = bias_summary(zp, z_spec, min_count=min_count, n_boot=n_boot)
    return {"n": int(len(z_spec)), "sigma_mad": sigma_mad(delta_z(zp, z_spec)),
            "bias": float(np.mean(delta_z(zp, z_spec))),
            "spec_z_trend_amplitude": b["spec_z_trend_amplitude"], "nz_ks": b["nz_ks"],
            "max_tomo_bias": b["max_tomo_bias"],
            "tomographic_delta_mean_z": b["tomographic"]["delta_mean_z"],
            "tomographic_delta_mean_z_err": tomo_errors(zp, z_spec, b["tomographic"]["edges"]),
            "spec_z_trend": {k: b["spec_z_trend"][k] for k in ("center", "n", "mean_dz", "mean_dz_err")},
            "phot_z_trend": {k: b["phot_z_trend"][k] for k in ("center", "n", "mean_dz", "mean_dz_err")}}


def tomo_noise(zp: np.ndarray, zs: np.ndarray, *, cal_err: list[float] | None = None, n_boot: int = 200,
               n_draw: int = 20000, seed: int = 0, requirement: float = 0.002) -> dict[str, Any]:
    """The noise of max |Δ⟨z⟩| over 5 equal-count z_phot bins on these objects.

    * ``bootstrap_err``: std of the max over bootstrap resamples of the objects (edges recomputed each time);
    * ``noise_only_expected`` / ``noise_only_p_below``: E[max_j |N(0, s_j)|] and P(max < ``requirement``)
      with s_j = std(Δz_j)/√n_j, i.e. for a perfectly unbiased estimate measured on this many objects;
    * with ``cal_err`` (per-bin standard errors of the calibration's own fit, from the fitting rows):
      ``perfect_calibration_expected`` / ``perfect_calibration_p_below``, the same with
      s_j² + cal_err_j²: what a calibration free of any bias still shows, from the two sample sizes alone.
    """
    from zpix.evaluation.nz import tomographic_edges, tomographic_index

    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        i = rng.integers(0, zp.size, zp.size)
        idx = tomographic_index(zp[i], tomographic_edges(zp[i], 5))
        boot.append(max(abs(np.mean(zp[i][idx == j] - zs[i][idx == j])) for j in range(5)))
    s = np.asarray(tomo_errors(zp, zs, list(tomographic_edges(zp, 5))))
    draws = np.abs(rng.normal(0.0, s, (n_draw, s.size))).max(1)
    out = {"bootstrap_err": float(np.std(boot)), "per_bin_test_err": s.tolist(),
           "noise_only_expected": float(draws.mean()), "noise_only_p_below": float(np.mean(draws < requirement))}
    if cal_err is not None:
        tot = np.sqrt(s ** 2 + np.asarray(cal_err) ** 2)
        draws = np.abs(rng.normal(0.0, tot, (n_draw, tot.size))).max(1)
        out.update(per_bin_calibration_err=list(map(float, cal_err)),
                   perfect_calibration_expected=float(draws.mean()),
                   perfect_calibration_p_below=float(np.mean(draws < requirement)))
    return out


def calibration_errors(zp_val: np.ndarray, zs_val: np.ndarray) -> list[float]:
    """Standard error of the validation mean residual in each of 5 equal-count z_phot bins: the noise a
    calibration fitted on these rows carries into each tomographic bin, whatever its bin size (≤ n/5)."""
    from zpix.evaluation.nz import tomographic_edges

    return tomo_errors(zp_val, zs_val, list(tomographic_edges(zp_val, 5)))


def rule_check(zp_val: np.ndarray, zs_val: np.ndarray, n_test: int, reps: int, seed: int = 0,
               fixed: tuple[int, ...] = (25, 50, 100, 200, 400)) -> dict[str, Any]:
    """The bin-size rule on synthetic samples made from the validation rows only.

    Truth: E[z_spec − z_phot | z_phot] = the validation rows' mean residual in 15 equal-count z_phot bins,
    interpolated; a synthetic object is a validation z_phot (jittered by 0.002) with a residual drawn from a
    validation object of the same bin.  Each repeat draws as many fitting objects as there are validation
    rows, fits the calibration with the default rule, with the old rule (one 5-fold CV, smallest RMS, no
    resolution condition) and with each fixed bin size, and measures the calibration error per tomographic
    bin exactly on 200,000 synthetic objects; the test sample's own noise (``n_test`` objects) is then
    added by simulation.  Reported: RMS error per bin, E[max |Δ⟨z⟩|], P(max < 0.002), the sizes chosen.
    """
    from zpix.calibration.photoz import MIN_PER_BIN_GRID, _isotonic_map, choose_bin_size

    rng = np.random.default_rng(seed)
    zp0, zs0 = np.asarray(zp_val, dtype=np.float64), np.asarray(zs_val, dtype=np.float64)
    q = np.quantile(zp0, np.linspace(0, 1, 16))
    b0 = np.clip(np.searchsorted(q, zp0, side="right") - 1, 0, 14)
    cen = np.array([zp0[b0 == j].mean() for j in range(15)])
    trend = np.array([(zs0 - zp0)[b0 == j].mean() for j in range(15)])
    res0 = (zs0 - zp0) - np.interp(zp0, cen, trend)
    members = [np.flatnonzero(b0 == j) for j in range(15)]

    def draw(n):
        i = rng.integers(0, zp0.size, n)
        zp = zp0[i] + rng.normal(0.0, 0.002, n)
        j = np.array([members[b][rng.integers(0, members[b].size)] for b in b0[i]])
        return zp, zp + np.interp(zp, cen, trend) + res0[j]

    zp_big, zs_big = draw(200_000)
    test_err = float(np.std(zs_big - zp_big) / np.sqrt(n_test / 5))
    rules = {"default_rule": lambda a, b: choose_bin_size(a, b, seed=int(rng.integers(1 << 31)))["chosen"],
             "old_rule_5fold_rms": lambda a, b: choose_bin_size(a, b, grid=MIN_PER_BIN_GRID, repeats=1,
                                                                 knots_per_cv_bin=0,
                                                                 seed=int(rng.integers(1 << 31)))["best_score"],
             **{f"fixed_{m}": (lambda a, b, m=m: m) for m in fixed}}
    errs: dict[str, list] = {k: [] for k in rules}
    chosen: dict[str, list] = {k: [] for k in rules}
    for _ in range(reps):
        zp, zs = draw(zp0.size)
        cache: dict[int, np.ndarray] = {}
        for k, f in rules.items():
            m = int(f(zp, zs))
            if m not in cache:
                kn, tg = _isotonic_map(zp, zs, m, 100)
                out = zp_big + np.interp(zp_big, kn, np.asarray(tg) - np.asarray(kn))
                g = np.array_split(np.argsort(out, kind="stable"), 5)
                cache[m] = np.array([np.mean(out[x] - zs_big[x]) for x in g])
            errs[k].append(cache[m])
            chosen[k].append(m)
    test_noise = rng.normal(0.0, test_err, (reps, 5))
    out: dict[str, Any] = {"reps": reps, "n_fit": int(zp0.size), "n_test": int(n_test),
                           "test_err_per_bin": test_err, "rules": {}}
    for k in rules:
        e = np.asarray(errs[k])
        mx = np.abs(e + test_noise).max(1)
        sizes, counts = np.unique(chosen[k], return_counts=True)
        out["rules"][k] = {"rms_calibration_err_per_bin": float(np.sqrt(np.mean(e ** 2))),
                           "expected_max_tomo_bias": float(mx.mean()), "p_below_0.002": float(np.mean(mx < 0.002)),
                           "chosen": {str(a): int(c) for a, c in zip(sizes, counts, strict=True)}}
    return out


def rule_stability(zp_val: np.ndarray, zs_val: np.ndarray, n_seeds: int = 10) -> dict[str, list[int]]:
    """The bin size each rule picks on the same validation rows for ``n_seeds`` CV partition seeds: the
    default rule and the old one (one 5-fold CV, smallest RMS, no resolution condition)."""
    from zpix.calibration.photoz import choose_bin_size

    return {"default_rule": [choose_bin_size(zp_val, zs_val, seed=s)["chosen"] for s in range(n_seeds)],
            "old_rule_5fold_rms": [choose_bin_size(zp_val, zs_val, repeats=1, knots_per_cv_bin=0, seed=s)["best_score"]
                                   for s in range(n_seeds)]}


def tomo_errors(zp: np.ndarray, zs: np.ndarray, edges: list[float]) -> list[float]:
    """Standard error of Δ<z> = <z_phot − z_spec> in each tomographic bin: std/√n (how far from 0 noise alone
    puts it on this many test objects)."""
    from zpix.evaluation.nz import tomographic_index

    idx = tomographic_index(zp, np.asarray(edges))
    d = zp - zs
    return [float(d[idx == j].std(ddof=1) / np.sqrt(max((idx == j).sum(), 1))) for j in range(len(edges) - 1)]


def headline(block: dict[str, Any]) -> str:
    return (f"σ_MAD {block['sigma_mad']:.5f}  trend {block['spec_z_trend_amplitude']:.4f}  "
            f"KS {block['nz_ks']:.4f}  max|Δ<z>| {block['max_tomo_bias']:.4f}")


def correct(heads, train_in, val_in, test_in, z_train, mag_train, z_val, mag_val, grid, config):
    """Steps 1-3 with ``config``; returns the plan, new heads and the val/test probabilities (ensemble means)."""
    from zpix.debias.api import prepare_labels, retrain_heads
    from zpix.debias.head import head_probs
    from zpix.pdf import pdf_mean

    zphot_val = pdf_mean(np.mean([v.probs for v in val_in], axis=0), grid)
    plan = prepare_labels(z_train=z_train, mag_train=mag_train, z_val=z_val, mag_val=mag_val, zphot_val=zphot_val,
                          grid=grid, config=config)
    sub = [t.take(plan.subset.rows) for t in train_in]
    if any(np.isnan(t.features).any() for t in sub):
        raise ValueError("a training row of the subset has no features (computed only for a smaller N_th)")
    new_heads, hist = retrain_heads(heads, sub, val_in, plan)
    p_val = np.mean([head_probs(h, v.features, v.ebv) for h, v in zip(new_heads, val_in, strict=True)], axis=0)
    p_test = np.mean([head_probs(h, t.features, t.ebv) for h, t in zip(new_heads, test_in, strict=True)], axis=0)
    return plan, new_heads, hist, p_val, p_test


def photoz_calibrate(p_val, z_val, p_test, grid, fixed_min_per_bin: int | None = None):
    """Step 4 fitted on the validation rows: the bin size chosen by cross-validation on them (the
    calibrator's default), or ``fixed_min_per_bin`` objects per bin."""
    from zpix.calibration import Calibration
    from zpix.calibration.photoz import PhotoZCalibration

    chain = Calibration(grid)
    cal = (PhotoZCalibration() if fixed_min_per_bin is None
           else PhotoZCalibration(min_per_bin=fixed_min_per_bin, min_per_bin_grid=None))
    step = chain.fit_step(cal, probs=p_val, z_spec=z_val, fitted_on={"rows": "val"})
    return chain, step, chain(p_test)


def describe(overrides: dict[str, Any]) -> str:
    return " ".join(f"{k} {v}" for k, v in overrides.items())


def candidate_grid(n_th_grid, edge_scales, extra=()) -> list[dict[str, Any]]:
    """Every (N_th, edge scale) pair, then the ``extra`` configurations (each a dict of DebiasConfig options)."""
    return [{"n_th": int(n), "edge_scale": float(e)} for n in n_th_grid for e in edge_scales] + [dict(x) for x in extra]


#: the ablations, each a change of the chosen configuration
ABLATIONS: dict[str, dict[str, Any]] = {
    "no_soft_labels": {"soft_labels": False}, "no_edge_shift": {"edge_shift": False},
    "balanced_only": {"soft_labels": False, "edge_shift": False}, "no_balancing": {"n_th": 10**9}}


def choose_candidate(blocks: list[dict[str, Any]], sigma_before: float, tolerance: float) -> tuple[int, list[int]]:
    """Index of the candidate with the smallest spec-z trend amplitude among those whose σ_MAD is at most
    ``tolerance`` × ``sigma_before`` (each candidate's ``blocks`` entry scored on non-test rows), and the eligible
    indices; with none eligible, the one of smallest σ_MAD (the σ_MAD target then fails on those rows)."""
    eligible = [i for i, b in enumerate(blocks) if b["sigma_mad"] <= tolerance * sigma_before]
    best = (min(eligible, key=lambda i: blocks[i]["spec_z_trend_amplitude"]) if eligible
            else min(range(len(blocks)), key=lambda i: blocks[i]["sigma_mad"]))
    return best, eligible


def targets(before: dict[str, Any], debiased: dict[str, Any], after: dict[str, Any]) -> dict[str, bool]:
    """Issue 12's targets on test rows: the spec-z trend at least halves, max |Δ⟨z⟩| < 0.002 after the photo-z
    calibration, σ_MAD at most 5% worse."""
    return {
        "trend_halves (debiased)": debiased["spec_z_trend_amplitude"] <= 0.5 * before["spec_z_trend_amplitude"],
        "trend_halves (after)": after["spec_z_trend_amplitude"] <= 0.5 * before["spec_z_trend_amplitude"],
        "max_tomo_bias_below_0.002 (after)": after["max_tomo_bias"] < 0.002,
        "sigma_mad_within_5pct (debiased)": debiased["sigma_mad"] <= 1.05 * before["sigma_mad"],
        "sigma_mad_within_5pct (after)": after["sigma_mad"] <= 1.05 * before["sigma_mad"]}


def run_case(name: str, heads, train_in, val_in, test_in, z_train, mag_train, z_val, mag_val, z_test, grid,
             candidates: list[dict[str, Any]], seed: int, log, ablation_names=tuple(ABLATIONS),
             rule_check_reps: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sweep on validation rows, the chosen correction on test rows, ablations and calibration."""
    from zpix.debias.api import DebiasConfig
    from zpix.pdf import pdf_mean

    p_val0 = np.mean([v.probs for v in val_in], axis=0)
    p_test0 = np.mean([t.probs for t in test_in], axis=0)
    vmin = val_min_count(len(z_val), len(z_test))
    before_val = scores(p_val0, grid, z_val, vmin)
    before = scores(p_test0, grid, z_test)
    before["max_tomo_bias_noise"] = tomo_noise(pdf_mean(p_test0, grid), z_test, seed=seed)
    log(f"[{name}] before (test): {headline(before)}")
    sweep, made = [], []
    for overrides in candidates:
        t0 = time.perf_counter()
        cfg = DebiasConfig(**overrides, seed=seed)
        plan, new_heads, hist, p_val, p_test = correct(heads, train_in, val_in, test_in, z_train, mag_train, z_val,
                                                       mag_val, grid, cfg)
        v = scores(p_val, plan.grid, z_val, vmin)
        sweep.append({**overrides, "n_subset": int(len(plan.subset.rows)), "val": v,
                      "epochs": [h["epochs_run"] for h in hist], "converged": [h["converged"] for h in hist],
                      "seconds": time.perf_counter() - t0})
        made.append((plan, new_heads, hist, p_val, p_test))
        log(f"[{name}] {describe(overrides)} ({len(plan.subset.rows)} objects, head epochs "
            f"{[h['epochs_run'] for h in hist]}) val: {headline(v)}")
    best, eligible = choose_candidate([s["val"] for s in sweep], before_val["sigma_mad"], SIGMA_TOLERANCE)
    chosen = candidates[best]
    n_th, scale = chosen["n_th"], chosen["edge_scale"]
    cfg = DebiasConfig(**chosen, seed=seed)
    plan, new_heads, hist, p_val, p_test = made[best]
    debiased = scores(p_test, plan.grid, z_test)
    debiased["max_tomo_bias_noise"] = tomo_noise(pdf_mean(p_test, plan.grid), z_test, seed=seed)
    log(f"[{name}] debiased {describe(chosen)} (test): {headline(debiased)}")
    chain, step, p_after = photoz_calibrate(p_val, z_val, p_test, plan.grid)
    after = scores(p_after, plan.grid, z_test)
    from zpix.pdf import pdf_mean

    zp_val_after = pdf_mean(chain(p_val), plan.grid)
    after["max_tomo_bias_noise"] = tomo_noise(pdf_mean(p_after, plan.grid), z_test,
                                              cal_err=calibration_errors(zp_val_after, z_val), seed=seed)
    log(f"[{name}] after photo-z calibration ({step.calibrator.summary()}) (test): {headline(after)}")
    nz = after["max_tomo_bias_noise"]
    log(f"[{name}]   noise of max|Δ<z>|: bootstrap ±{nz['bootstrap_err']:.4f}; test size alone "
        f"{nz['noise_only_expected']:.4f}; a perfect calibration on {len(z_val)} validation rows "
        f"{nz['perfect_calibration_expected']:.4f} (P < 0.002: {nz['perfect_calibration_p_below']:.2f})")
    _, _, p_fixed = photoz_calibrate(p_val, z_val, p_test, plan.grid, fixed_min_per_bin=50)
    after_fixed_bins = scores(p_fixed, plan.grid, z_test)
    log(f"[{name}] after photo-z calibration with 50 objects per bin, no CV (test): {headline(after_fixed_bins)}")
    _, _, p_cal_only = photoz_calibrate(p_val0, z_val, p_test0, grid)
    calibrated_only = scores(p_cal_only, grid, z_test)
    log(f"[{name}] photo-z calibration without debiasing (test): {headline(calibrated_only)}")
    ablations = {}
    for label in ablation_names:
        changes = ABLATIONS[label]
        c = DebiasConfig(**{**cfg.to_dict(), **changes})
        p2, _, _, pv, pt = correct(heads, train_in, val_in, test_in, z_train, mag_train, z_val, mag_val, grid, c)
        ablations[label] = {"val": scores(pv, p2.grid, z_val, vmin), "test": scores(pt, p2.grid, z_test)}
        log(f"[{name}] ablation {label} (test): {headline(ablations[label]['test'])}")
    check = None
    if rule_check_reps:
        # validation rows only: decided before, and independent of, the test numbers above
        t0 = time.perf_counter()
        check = rule_check(pdf_mean(p_val, plan.grid), z_val, len(z_test), rule_check_reps, seed=seed)
        log(f"[{name}] rule check on synthetic samples from the validation rows ({rule_check_reps} repeats, "
            f"{time.perf_counter() - t0:.0f} s): " + "; ".join(
                f"{k} E[max] {v['expected_max_tomo_bias']:.4f} P<0.002 {v['p_below_0.002']:.2f}"
                for k, v in check["rules"].items()))
    stability = rule_stability(pdf_mean(p_val, plan.grid), z_val)
    log(f"[{name}] photo-z bin size on the validation rows, CV partition seeds 0-9: default rule "
        f"{stability['default_rule']}, old rule {stability['old_rule_5fold_rms']}")
    fitted = {"n_th": n_th, "edge_scale": scale, "chosen": chosen, "val_min_count": vmin,
              "chosen_on": "validation rows: smallest spec-z trend amplitude (bins >= "
              f"{vmin} objects) with sigma_MAD <= {SIGMA_TOLERANCE} x the model's own",
              "none_within_sigma_tolerance_on_val": not eligible,
              "config": cfg.to_dict(), "grid": plan.grid.to_dict(), "mag_edges": plan.mag_edges.tolist(),
              "sigma_per_mag_bin": plan.sigma.tolist(), "sigma_fit_counts": plan.sigma_counts.tolist(),
              "edge_width_per_mag_bin": plan.edge_width.tolist(), "n_subset": int(len(plan.subset.rows)),
              "n_train": int(len(z_train)), "cells": plan.subset.to_dict(),
              "head_epochs": [h["epochs_run"] for h in hist], "head_converged": [h["converged"] for h in hist],
              "photoz_calibration": step.to_dict(), "photoz_rule_stability": stability}
    result = {"n_train": int(len(z_train)), "n_val": int(len(z_val)), "n_test": int(len(z_test)),
              "before": before, "debiased": debiased, "after": after, "calibrated_only": calibrated_only,
              "after_fixed_50_per_bin": after_fixed_bins,
              "before_val": before_val, "sweep": sweep, "ablations": ablations, "fitted": fitted}
    if check is not None:
        result["photoz_rule_check"] = check
    result["targets"] = targets(before, debiased, after)
    return result, {"plan": plan, "heads": new_heads, "chain": chain, "p_test_after": p_after}


# --------------------------------------------------------------------------------------------
# the mock: an image run


def largest_subset_rows(z_train, mag_train, mag_val, grid, n_th: int, seed: int) -> np.ndarray:
    """Training rows of the balanced subset for ``n_th``, with the cells :func:`prepare_labels` uses."""
    from zpix.debias.api import DebiasConfig
    from zpix.debias.balance import balanced_subset, regular_edges

    cfg = DebiasConfig(n_th=n_th, seed=seed)
    z_edges = regular_edges(z_train, cfg.cell_dz, lo=grid.z_min, hi=grid.z_max)
    mag_edges = regular_edges(np.concatenate([mag_train, mag_val]), cfg.cell_dmag)
    return balanced_subset(z_train, mag_train, z_edges=z_edges, mag_edges=mag_edges, n_th=n_th, seed=seed).rows


def spread_rows(h, rows: np.ndarray, n: int):
    """``h`` (features of ``rows``) placed into arrays of ``n`` rows, NaN elsewhere: a row without
    features that a head were trained on would turn its loss into NaN (checked in :func:`correct`)."""
    from zpix.debias.head import HeadInputs

    def full(a):
        out = np.full((n, *a.shape[1:]), np.nan, dtype=np.float32 if a.dtype.kind == "f" else np.float64)
        out[rows] = a
        return out

    return HeadInputs(full(h.features), None if h.ebv is None else full(h.ebv), full(h.probs), full(h.z),
                      None if h.index is None else full(h.index))


def mock_case(run: Path, cubes: Path, work: Path, candidates, seed: int, batch_size: int, log,
              max_train: int | None = None, ablations=tuple(ABLATIONS), rule_check_reps: int = 0) -> dict[str, Any]:
    import torch

    from zpix.debias.api import module_with_head, r_magnitudes, write_debiased_run
    from zpix.debias.head import HeadInputs, head_inputs, pdf_head
    from zpix.pdf import RedshiftGrid
    from zpix.prediction.streaming import load_ensemble
    from zpix.runs import Split
    from zpix.store.cube_store import CubeStore
    from zpix.store.dataset import CubeDataset

    split = Split.load(run / "split.npz")
    if max_train is not None:  # a quicker, smaller look (recorded in the results)
        split = Split(split.train[:max_train], split.val, split.test)
    members = load_ensemble(run, "cpu", channels_last=True)
    grid = RedshiftGrid.from_dict(members[0].hparams.grid)
    work.mkdir(parents=True, exist_ok=True)
    ckpt_stamp = "-".join(f"{int(p.stat().st_mtime)}" for p in sorted(run.glob("member_*/best.ckpt")))

    def inputs(part: str, rows: np.ndarray) -> list[HeadInputs]:
        out = []
        for k, m in enumerate(members):
            cache = work / f"features_{part}{len(rows)}_member{k}_{ckpt_stamp}.npz"
            if cache.is_file():
                with np.load(cache) as f:
                    out.append(HeadInputs(f["features"], f["ebv"] if f["ebv"].size else None, f["probs"], f["z"],
                                          f["index"]))
                continue
            t0 = time.perf_counter()
            loader = torch.utils.data.DataLoader(CubeDataset(cubes, indices=rows), batch_size=batch_size,
                                                 num_workers=1)
            h = head_inputs(m, loader)
            np.savez(cache, features=h.features, ebv=h.ebv if h.ebv is not None else np.empty(0), probs=h.probs,
                     z=h.z, index=h.index)
            log(f"[mock_sdss] {part} head inputs of member {k}: {len(rows)} objects, {time.perf_counter() - t0:.0f} s")
            out.append(h)
        return out

    with CubeStore(cubes, validate=False) as store:
        z_all = np.asarray(store.z_spec, dtype=np.float64)
    mag_train, mag_val = r_magnitudes(cubes, split.train), r_magnitudes(cubes, split.val)
    # subsets are nested in N_th (one random order per cell): only the largest one's rows need features,
    # unless the no-balancing ablation (every training row) is asked for
    needed = np.arange(len(split.train))
    if "no_balancing" not in ablations:
        needed = largest_subset_rows(z_all[split.train], mag_train, mag_val, grid,
                                     max(c["n_th"] for c in candidates), seed)
    part = inputs("train", split.train[needed])
    train_in = [spread_rows(h, needed, len(split.train)) for h in part]
    val_in, test_in = inputs("val", split.val), inputs("test", split.test)
    result, made = run_case("mock_sdss", [pdf_head(m) for m in members], train_in, val_in, test_in,
                            z_all[split.train], mag_train, z_all[split.val], mag_val, z_all[split.test], grid,
                            candidates, seed, log, ablations, rule_check_reps)
    result["n_train_with_features"] = int(len(needed))
    # the same correction as ordinary run directories, predicted like any run
    from zpix.calibration import calibrate
    from zpix.pdf import pdf_mean
    from zpix.prediction.format import read_predictions
    from zpix.prediction.streaming import predict

    try:  # the numbers above stand even if writing or predicting the run directories fails
        stamp_dir = work / f"runs_{int(time.time())}"
        debiased_dir = stamp_dir / "debiased"
        plan = made["plan"]
        new_modules = [module_with_head(m, h) for m, h in zip(members, made["heads"], strict=True)]
        write_debiased_run(run, debiased_dir, new_modules,
                           {**plan.to_dict(), "config_section": {"config": plan.config.to_dict(),
                                                                 "grid": plan.grid.to_dict()}})
        calibrated_dir = stamp_dir / "debiased_photoz"
        calibrate(debiased_dir, calibrated_dir, ["photoz"], cubes=str(cubes), device="cpu")
        # a share of the test rows is enough to show that the run directories predict the same numbers
        check = split.test[:N_PREDICT_CHECK]
        # fp32 like the in-memory numbers ("auto" may pick bf16 on this hardware)
        pred = predict(calibrated_dir, cubes, stamp_dir / "test_predictions", rows=check, num_workers=1,
                       progress=False, device="cpu", precision="32")
        p = read_predictions(pred)
        order = np.argsort(p.catalog["id"].to_numpy())
        zp_dir = p.catalog["z_mean"].to_numpy()[order]
        with CubeStore(cubes, validate=False) as store:
            ids = np.asarray(store.ids)[check]
        zp_mem = pdf_mean(made["p_test_after"][:len(check)], plan.grid)[np.argsort(ids)]
        result["run_directories"] = {"debiased": str(debiased_dir), "calibrated": str(calibrated_dir),
                                     "predict_max_abs_diff_z_mean": float(np.max(np.abs(zp_dir - zp_mem))),
                                     "predict_check_rows": int(len(check))}
        log(f"[mock_sdss] zpix predict on the calibrated run dir vs in-memory: max |Δz_mean| = "
            f"{result['run_directories']['predict_max_abs_diff_z_mean']:.2e}")
    except Exception as err:  # noqa: BLE001 - recorded, not hidden
        result["run_directories"] = {"error": repr(err)}
        log(f"[mock_sdss] writing / predicting the run directories failed: {err!r}")
    result["data"] = {"cubes": str(cubes), "run": str(run), "model": members[0].hparams.model_name,
                      "n_members": len(members), "max_train": max_train}
    return result


# --------------------------------------------------------------------------------------------
# the real catalogue: the magnitude network


def magnet_batches(model, table, size: int = 2048) -> list[dict[str, Any]]:
    """The magnitude network's input batches for ``table`` (what :func:`zpix.debias.head.head_inputs` runs)."""
    from zpix.baselines.magnet import MagnitudeDataset, network_inputs

    ds = MagnitudeDataset(network_inputs(table, model.colours), table.ebv, table.z_spec)
    return [ds.__getitems__(list(range(s, min(len(ds), s + size)))) for s in range(0, len(ds), size)]


def mgs_case(candidates, seed: int, log, ablations=tuple(ABLATIONS), rule_check_reps: int = 0
             ) -> dict[str, Any] | None:
    if not MGS.is_dir():
        log(f"[sdss_mgs] {MGS} is not available (../shared is absent); skipped")
        return None
    from zpix.baselines.magnet import MagNetConfig, train_magnet
    from zpix.baselines.tables import load_magnitudes
    from zpix.debias.head import head_inputs, pdf_head

    grid_cfg = MagNetConfig(seed=seed)
    train_all = load_magnitudes(MGS / "SDSS_MGS.train", columns="sdss-mgs").labelled(grid_cfg.z_min, grid_cfg.z_max)
    test = load_magnitudes(MGS / "SDSS_MGS.test", columns="sdss-mgs").labelled(grid_cfg.z_min, grid_cfg.z_max)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(train_all))
    # 1500 validation objects: they fix σ, N_th and the photo-z calibration, whose noise goes as 1/√n_val
    val_rows, fit_rows = np.sort(perm[:N_VAL_MGS]), np.sort(perm[N_VAL_MGS:])
    fit, val = train_all.subset(fit_rows), train_all.subset(val_rows)
    t0 = time.perf_counter()
    model, summary = train_magnet(fit, grid_cfg)
    log(f"[sdss_mgs] magnitude network trained on {len(fit)} objects in {time.perf_counter() - t0:.0f} s")
    module = model.module
    ins = {k: [head_inputs(module, magnet_batches(model, t))]
           for k, t in (("train", fit), ("val", val), ("test", test))}
    r = list(train_all.bands).index("r")
    mag_fit, mag_val = fit.dereddened()[:, r], val.dereddened()[:, r]
    result, _ = run_case("sdss_mgs", [pdf_head(module)], ins["train"], ins["val"], ins["test"],
                         fit.z_spec.astype(np.float64), mag_fit, val.z_spec.astype(np.float64), mag_val,
                         test.z_spec.astype(np.float64), model.grid, candidates, seed, log, ablations,
                         rule_check_reps)
    result["data"] = {"catalogue": "SDSS MGS (MLZ SDSS_MGS.train / .test)", "model": "hybrid-mags (PDF head)",
                      "magnet_training": summary}
    return result


#: the numbers of a run that the seed summary keeps
SEED_METRICS = ("sigma_mad", "spec_z_trend_amplitude", "nz_ks", "max_tomo_bias")


def seed_entry(res: dict[str, Any]) -> dict[str, Any]:
    """One seed of a case: its validation choices and the headline numbers of each stage."""
    cal = res["fitted"]["photoz_calibration"]["params"]
    return {"chosen": res["fitted"]["chosen"], "photoz_min_per_bin": cal["min_per_bin"],
            **{st: {k: res[st][k] for k in SEED_METRICS} for st in ("before", "debiased", "after")},
            "after_max_tomo_bias_noise": res["after"].get("max_tomo_bias_noise"),
            "targets": res["targets"]}


def seed_summary(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and std (ddof 1) over seeds of each stage's headline numbers, and how often each target held."""
    out: dict[str, Any] = {"n_seeds": len(entries), "seeds": sorted(entries, key=int)}
    for st in ("before", "debiased", "after"):
        out[st] = {}
        for k in SEED_METRICS:
            v = np.array([e[st][k] for e in entries.values()], dtype=np.float64)
            out[st][k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
                          "values": v.tolist()}
    names = next(iter(entries.values()))["targets"]
    out["targets_met"] = {t: int(sum(bool(e["targets"][t]) for e in entries.values())) for t in names}
    return out


@click.command()
@click.option("--run", type=click.Path(exists=True, file_okay=False), help="Trained image run (the mock case).")
@click.option("--cubes", type=click.Path(exists=True, dir_okay=False), help="Its cube store.")
@click.option("--work", default="runs/bench/bias_correction", show_default=True,
              help="Feature cache and the written run directories.")
@click.option("--n-th", "n_th_grid", default="", help="Candidate N_th values, for both cases (default: "
              f"{N_TH_GRID}; chosen on validation rows).")
@click.option("--edge-scale", "edge_scales", default="", help="Candidate edge-shift widths in units of the step-1 "
              f"σ_MAD per magnitude bin, for both cases (default: {EDGE_SCALE_GRID}).")
@click.option("--cases", default="mock_sdss,sdss_mgs", show_default=True)
@click.option("--max-train", type=int, default=None, help="Use only the first N training rows of --run (a quick look).")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=1, show_default=True, help="torch threads (the machine is shared).")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--ablations", "ablation_list", default=",".join(ABLATIONS), show_default=True,
              help="Ablations to run at the chosen configuration (comma-separated; 'none' for none).")
@click.option("--out", default=str(RESULTS / "bias_correction.json"), show_default=True)
@click.option("--rule-check-reps", default=100, show_default=True,
              help="Repeats of the photo-z bin-size rule check on synthetic samples from the validation rows "
              "(0: none).")
@click.option("--seed-results", default="", help="Comma-separated results files of other-seed invocations "
              "(same commit, e.g. --cases sdss_mgs --seed 1 --ablations none): each case's seeds go into a "
              "`seeds` block with their mean and std.")
@click.option("--include", "include", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Results file of an earlier invocation (same commit) whose cases are added to this one's.")
def main(run: str | None, cubes: str | None, work: str, n_th_grid: str, edge_scales: str, cases: str,
         max_train: int | None, seed: int, threads: int, batch_size: int, ablation_list: str,
         rule_check_reps: int, seed_results: str, out: str, include: str | None) -> None:
    import torch

    ablations = tuple(a for a in ablation_list.split(",") if a and a != "none")
    unknown = set(ablations) - set(ABLATIONS)
    if unknown:
        raise click.BadParameter(f"unknown ablation(s) {sorted(unknown)}; known: {', '.join(ABLATIONS)}")

    torch.set_num_threads(threads)
    def candidates(case: str) -> list[dict[str, Any]]:
        grid = tuple(int(x) for x in n_th_grid.split(",")) if n_th_grid else N_TH_GRID[case]
        scales = tuple(float(x) for x in edge_scales.split(",")) if edge_scales else EDGE_SCALE_GRID
        return candidate_grid(grid, scales, () if n_th_grid or edge_scales else EXTRA_CANDIDATES[case])

    wanted = set(cases.split(","))
    doc: dict[str, Any] = {**stamp(), "method": "Lin et al. 2022 bias correction (zpix.debias) + photo-z "
                           "calibration (zpix.calibration.photoz)",
                           "candidates": {c: candidates(c) for c in ("mock_sdss", "sdss_mgs")},
                           "sigma_tolerance": SIGMA_TOLERANCE, "ablations": list(ablations), "seed": seed,
                           "runs": {},
                           "log": []}

    def log(msg: str) -> None:
        print(msg, flush=True)
        doc["log"].append(msg)

    if "mock_sdss" in wanted:
        if run is None or cubes is None:
            log("[mock_sdss] needs --run and --cubes; skipped")
        else:
            doc["runs"]["mock_sdss"] = mock_case(Path(run), Path(cubes), Path(work), candidates("mock_sdss"), seed,
                                                 batch_size, log, max_train, ablations, rule_check_reps)
            write_json(Path(out), doc)
    if "sdss_mgs" in wanted:
        res = mgs_case(candidates("sdss_mgs"), seed, log, ablations, rule_check_reps)
        if res is not None:
            doc["runs"]["sdss_mgs"] = res
    if include:
        other = load_same_commit(include, doc["commit"])
        for name, res in other["runs"].items():
            when = {"date_utc": other["date_utc"], "loadavg_at_start": other.get("loadavg_at_start")}
            doc["runs"].setdefault(name, {**res, "from_invocation": when})
        doc["log"] = other.get("log", []) + doc["log"]
    if seed_results:
        for path in seed_results.split(","):
            other = load_same_commit(path, doc["commit"])
            for name, res in other["runs"].items():
                if name in doc["runs"]:
                    doc["runs"][name].setdefault("seeds", {str(seed): seed_entry(doc["runs"][name])})
                    s_other = str(other["seed"])
                    if s_other in doc["runs"][name]["seeds"]:
                        raise click.ClickException(f"{path}: seed {s_other} of {name} is already in")
                    doc["runs"][name]["seeds"][s_other] = {**seed_entry(res), "date_utc": other["date_utc"],
                                                           "loadavg_at_start": other.get("loadavg_at_start")}
            doc["log"] += [f"[seed {other['seed']}] {m}" for m in other.get("log", [])]
        for res in doc["runs"].values():
            if len(res.get("seeds", {})) > 1:
                res["seed_summary"] = seed_summary(res["seeds"])
    write_json(Path(out), doc)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
