"""Calibration benchmark (issue 17): PDFs before/after post-hoc calibration on test objects never used for
fitting, and how well the per-object quality score finds catastrophic outliers.

Runs (``runs`` map of the JSON, each with ``before`` and ``after`` blocks of pit_ks, coverage68,
coverage95, crps, sigma_mad, eta, bias, n; ``variants`` holds every other method chain tried):

* ``cnn_mock`` — a trained image run (default ``runs/bench/p19s_v10k``: ``pasquet2019-small`` on a 40,000-object
  SDSS-like mock with 22,500 training, 7,500 validation and 10,000 test rows, made by the two commands below):
  the calibration is fitted on the run's validation rows, scored on its test rows.  The results before 2026-12-03
  used ``runs/bench/p19s_20k`` (28k mock, 2,240 validation rows), whose fitted map's own noise filled the target;
* ``knn_mgs`` and ``magnet_mgs`` — the k-NN and magnitude-network baselines on the real SDSS MGS
  catalogue (``../shared``; skipped where absent), trained on 60% of SDSS_MGS.train, calibrated on the
  other 40% (2000 objects, seeded draw), scored on SDSS_MGS.test;
* ``kids_regression`` — the KiDS hybrid's regression head, magnitudes branch only (``hybrid-mags``), trained
  on the 20,000-object KiDS mock of ``benchmarks/kids_hybrid.py`` (``--survey kids --n 20000 --seed 7``) with
  30% test rows and 30% of the rest as validation rows (not the preset's 15% and 15%: 4,200 fitting and 6,000
  test objects, so that neither the fitted map's noise nor the test set's own, 0.87/√6000 = 0.011, fills the
  0.02 target; ``--kids-cubes``; skipped where absent).  The results before 05d108f used a 12,000-object
  mock (2,520 / 3,600).

Each run also has ``val_vs_test``: two-sample KS tests between its fitting and its test rows (uncalibrated PITs,
z_spec), to tell a real shift between them from sampling noise.

``flags``: on the mock's test rows, the ROC AUC of each score for |Δz| > 0.05 (Δz = (z_mean − z_spec)/(1 +
z_spec), after calibration) and η after removing the 5/10/20% worst-flagged (``quality``) objects versus
the 5/10/20% widest PDFs (width68).  ``pit_hist``: 20-bin PIT densities before/after per run.
``cnn_mock.small_fit``: the CNN calibrated from 5 draws of 320 of its validation rows (the demo's size).
``noise_vs_n``: synthetic PDFs, calibrated and mis-calibrated, fitted on n = 100 ... 4000 objects and scored
on 20,000 new ones: the fitted maps' own noise against n (the nonparametric ``pit`` and the few-parameter
``pit-affine`` and ``pit-beta``), from which MIN_AUTO was chosen, and what ``auto`` does on each population.

Run from a clean worktree of a commit (see COMMON.md).  The committed results ran as locked parts, then
joined::

    zpix simulate --survey kids --n 20000 --seed 7 --workers 2 --out /work/main/runs/calib17/kids20k.h5
    zpix simulate --survey sdss --n 40000 --seed 2020 --workers 2 --out /work/main/runs/bench/mock_sdss40k.h5
    zpix train --config pasquet2019_small --seed 2019 --max-epochs 10 --set val_fraction=0.25 \
        --set test_fraction=0.25 --cubes /work/main/runs/bench/mock_sdss40k.h5 --out /work/main/runs/bench/p19s_v10k
    B="python benchmarks/calibration.py --run /work/main/runs/bench/p19s_v10k \
        --cubes /work/main/runs/bench/mock_sdss40k.h5"
    $B --cases noise_vs_n --out part_noise.json
    $B --cases cnn_mock --out part_cnn.json
    $B --cases knn_mgs,magnet_mgs --out part_mgs.json
    $B --cases kids_regression --kids-cubes /work/main/runs/calib17/kids20k.h5 --work /tmp/zcal17/work \\
        --out part_kids20k.json
    for s in 1 2; do $B --cases knn_mgs,magnet_mgs --seed $s --out part_mgs_seed$s.json; done
    $B --merge part_noise.json --merge part_cnn.json --merge part_mgs.json --merge part_kids20k.json \
        --merge-seed part_mgs_seed1.json --merge-seed part_mgs_seed2.json
    python benchmarks/calibration.py --render-docs                                   # docs/calibration.md + figure
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED, stamp, write_json  # noqa: E402

MGS = SHARED / "data" / "real" / "sdss_mgs_catalog"
CHAINS = {"auto": ["auto"], "temperature": ["temperature"], "pit-affine": ["pit-affine"], "pit-beta": ["pit-beta"],
          "pit": ["pit"], "temperature+pit": ["temperature", "pit"], "pit-local": ["pit-local"],
          "pit-width": ["pit-width"], "temperature+pit-local": ["temperature", "pit-local"], "student-t": ["student-t"],
          "student-t+pit-affine": ["student-t", "pit-affine"],
          "student-t+pit-affine+keep-mean": ["student-t", "pit-affine", "keep-mean"],
          "student-t+pit": ["student-t", "pit"], "student-t+pit+keep-mean": ["student-t", "pit", "keep-mean"]}
#: the PIT maps whose own noise ``noise_vs_n`` measures on calibrated PDFs (nonparametric and few-parameter)
NOISE_MAPS = ("pit", "pit-affine", "pit-beta")
#: what `zpix train` and `zpix calibrate` do by default: the chain chosen by 5-fold CV on the fitting rows
DEFAULT_CHAIN = "auto"
CUTS = (0.05, 0.10, 0.20)


def block(probs: np.ndarray, z: np.ndarray, grid: Any) -> dict[str, float]:
    """The before/after metrics of one set of PDFs against z_spec (zpix.evaluation.metrics)."""
    from zpix.evaluation.metrics import summary
    from zpix.pdf import pdf_mean

    m = summary(pdf_mean(probs, grid), z, probs, grid)
    keys = ("pit_ks", "coverage68", "coverage95", "crps", "sigma_mad", "eta", "bias", "n")
    return {k: (int(m[k]) if k == "n" else float(m[k])) for k in keys}


def pit_hist(probs: np.ndarray, z: np.ndarray, grid: Any) -> list[float]:
    from zpix.evaluation.metrics import pit, pit_histogram

    return [round(v, 4) for v in pit_histogram(pit(probs, grid, z), 20)["density"]]


def target_checks(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Issue 17's four targets on test rows: PIT KS ≤ 0.02, coverage68 0.683 ± 0.02, σ_MAD changed ≤ 1%, CRPS
    not worse (and the σ_MAD change itself)."""
    change = after["sigma_mad"] / before["sigma_mad"] - 1
    return {"pit_ks_le_0.02": after["pit_ks"] <= 0.02,
            "coverage68_within_0.02": abs(after["coverage68"] - 0.683) <= 0.02, "sigma_mad_change": change,
            "sigma_mad_change_le_1pct": abs(change) <= 0.01, "crps_not_worse": after["crps"] <= before["crps"]}


def meets_targets(before: dict[str, Any], after: dict[str, Any]) -> bool:
    return all(v for k, v in target_checks(before, after).items() if k != "sigma_mad_change")


def calibrate_case(val_p: np.ndarray, val_z: np.ndarray, test_p: np.ndarray, test_z: np.ndarray, grid: Any,
                   chains: dict[str, list[str]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit every chain on validation, score on test; returns the run's JSON entry and the fitted chains."""
    from zpix.calibration import fit_calibration

    entry: dict[str, Any] = {"n_fit": int(len(val_z)), "n_test": int(len(test_z)), "chain": chains[DEFAULT_CHAIN],
                             "before": block(test_p, test_z, grid), "variants": {}}
    hist = {"before": pit_hist(test_p, test_z, grid)}
    fitted = {}
    for name, methods in chains.items():
        t0 = time.perf_counter()
        chain = fit_calibration(val_p, val_z, grid, methods, fitted_on={"rows": "val"})
        fit_s = time.perf_counter() - t0
        after = chain(test_p) if chain else test_p  # the identity: the same PDFs, not renormalised copies
        res = block(after, test_z, grid)
        res["fit_s"] = round(fit_s, 2)
        res["steps"] = [s.calibrator.name for s in chain.steps]
        res["params"] = [s.to_dict()["params"] for s in chain.steps
                         if s.calibrator.name in ("temperature", "student-t", "pit-affine", "pit-beta")]
        res["keep_mean"] = chain.keep_mean
        if name == "auto":
            res["auto"] = chain.notes["auto"]
        entry["variants"][name] = res
        fitted[name] = (chain, after)
        if name == DEFAULT_CHAIN:
            entry["after"] = {k: v for k, v in res.items() if k not in ("params",)}
            hist["after"] = pit_hist(after, test_z, grid)
    entry["checks"] = target_checks(entry["before"], entry["after"])
    entry["pit_hist"] = hist
    entry["val_vs_test"] = transfer_block(val_p, val_z, test_p, test_z, grid)
    return entry, fitted


def transfer_block(val_p: np.ndarray, val_z: np.ndarray, test_p: np.ndarray, test_z: np.ndarray, grid: Any
                   ) -> dict[str, float]:
    """Are the fitting and the test objects alike?  Two-sample KS tests (scipy.stats.ks_2samp) of their
    uncalibrated PITs and of their z_spec, and their coverage68: a map fitted on the one corrects the other only
    where they share their mis-calibration (a real shift when the PIT test rejects, sampling noise otherwise)."""
    from scipy.stats import ks_2samp

    from zpix.evaluation.metrics import pit

    uv, ut = pit(val_p, grid, val_z), pit(test_p, grid, test_z)
    rp, rz = ks_2samp(uv, ut), ks_2samp(val_z, test_z)
    return {"pit_ks_2samp": float(rp.statistic), "pit_p": float(rp.pvalue), "z_spec_ks_2samp": float(rz.statistic),
            "z_spec_p": float(rz.pvalue), "coverage68_val": float(np.mean(np.abs(uv - 0.5) <= 0.34)),
            "coverage68_test": float(np.mean(np.abs(ut - 0.5) <= 0.34))}


def small_fit_block(val_p: np.ndarray, val_z: np.ndarray, test_p: np.ndarray, test_z: np.ndarray, grid: Any, n: int,
                    repeats: int, seed: int) -> dict[str, Any]:
    """``repeats`` draws of ``n`` of the fitting rows (a small validation set, e.g. the demo's 320): the PIT map
    and ``auto`` fitted on each draw, scored on all the test rows (identity = the uncalibrated PDFs)."""
    from zpix.calibration import fit_calibration

    out: dict[str, Any] = {"n": n, "repeats": repeats, "identity": block(test_p, test_z, grid), "draws": {}}
    for method in ("pit", "auto"):
        draws = []
        for r in range(repeats):
            pick = np.random.default_rng([seed, r]).choice(len(val_z), size=n, replace=False)
            chain = fit_calibration(val_p[pick], val_z[pick], grid, [method])
            m = block(chain(test_p) if chain else test_p, test_z, grid)
            draws.append({k: m[k] for k in ("pit_ks", "coverage68", "crps", "sigma_mad")} |
                         {"steps": [st.calibrator.name for st in chain.steps]})
        out["draws"][method] = draws
    return out


def flags_block(val: dict[str, Any], test: dict[str, Any], ref: dict[str, Any], chain: Any, grid: Any,
                seed: int) -> dict[str, Any]:
    """AUC of each score for |Δz| > 0.05 on test, and η after the worst-flagged vs widest cuts."""
    from sklearn.metrics import roc_auc_score

    from zpix.evaluation.metrics import delta_z, outlier_fraction, sigma_mad
    from zpix.pdf import pdf_mean
    from zpix.quality import fit_quality
    from zpix.quality.scores import raw_scores

    model = fit_quality(chain(val["probs"]), val["z_spec"], grid, features=val["features"],
                        train_features=ref["features"], member_zmean=val["member_zmean"], seed=seed)
    tp = chain(test["probs"])
    cols = model.columns(tp, features=test["features"], member_zmean=test["member_zmean"])
    raw = raw_scores(tp, grid, features=test["features"], member_zmean=test["member_zmean"],
                     distance=model.feature_distance)
    dz = delta_z(pdf_mean(tp, grid), test["z_spec"])
    out = np.abs(dz) > 0.05
    scores = {"quality": cols["quality"], "width68": raw["width68"], "p_outlier_pdf": raw["p_outlier_pdf"],
              "feat_knn": raw.get("feat_knn"), "ens_std": raw.get("ens_std"), "n_modes": raw["n_modes"]}
    auc = {k: float(roc_auc_score(out, v)) for k, v in scores.items() if v is not None and 0 < out.sum() < len(out)}
    cuts: dict[str, Any] = {"none": {"eta": outlier_fraction(dz, 0.05), "sigma_mad": sigma_mad(dz)}}
    for frac in CUTS:
        n_keep = int(round(len(dz) * (1 - frac)))
        for name, score in (("worst_flagged", cols["quality"]), ("widest", raw["width68"])):
            keep = np.argsort(score, kind="stable")[:n_keep]
            cuts[f"{name}_{int(frac * 100)}pct"] = {"eta": outlier_fraction(dz[keep], 0.05),
                                                   "sigma_mad": sigma_mad(dz[keep])}
    return {"n_test": int(len(dz)), "n_outliers": int(out.sum()), "outlier_definition": "|dz| > 0.05 after "
            f"calibration ({DEFAULT_CHAIN})", "auc": auc, "cuts": cuts,
            "flag_fraction": {k: float(((cols["flag"] & b) > 0).mean())
                              for k, b in __import__("zpix.quality", fromlist=["FLAG_BITS"]).FLAG_BITS.items()},
            "quality_model": {"score_names": model.score_names, "coef": model.coef.tolist(),
                              "intercept": model.intercept, "thresholds": model.thresholds, **model.info}}


def run_cnn(run: Path, cubes: Path, n_features: int, seed: int, batch_size: int) -> tuple[dict, dict]:
    import torch

    from zpix.prediction.streaming import load_ensemble
    from zpix.quality.features import infer
    from zpix.runs import Split

    torch.set_num_threads(1)
    split = Split.load(run / "split.npz")
    members = load_ensemble(run, "cpu")
    t0 = time.perf_counter()
    kw = dict(with_features=True, batch_size=batch_size, device="cpu", members=members)
    val = infer(run, cubes, np.sort(split.val), **kw)
    test = infer(run, cubes, np.sort(split.test), **kw)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(split.train, size=min(n_features, len(split.train)), replace=False))
    ref = infer(run, cubes, pick, **kw)
    infer_s = time.perf_counter() - t0
    grid = val["grid"]
    entry, fitted = calibrate_case(val["probs"], val["z_spec"], test["probs"], test["z_spec"], grid, CHAINS)
    entry.update({"run": str(run), "cubes": str(cubes), "n_train": int(len(split.train)), "members": len(members),
                  "model": members[0].hparams.model_name, "infer_s": round(infer_s, 1),
                  "fit_rows": "run split.npz val", "test_rows": "run split.npz test"})
    # the demo's situation on this model: a validation set of 320 objects
    entry["small_fit"] = small_fit_block(val["probs"], val["z_spec"], test["probs"], test["z_spec"], grid, 320, 5,
                                         seed)
    flags = flags_block(val, test, ref, fitted[DEFAULT_CHAIN][0], grid, seed)
    flags["n_train_features"] = int(len(pick))
    return entry, flags


def run_mgs(method: str, seed: int, val_fraction: float) -> dict[str, Any]:
    from zpix.baselines.tables import load_magnitudes

    train_all = load_magnitudes(MGS / "SDSS_MGS.train", columns="sdss-mgs")
    test = load_magnitudes(MGS / "SDSS_MGS.test", columns="sdss-mgs")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(train_all))
    n_val = int(round(val_fraction * len(train_all)))
    val_t, train_t = train_all.subset(np.sort(perm[:n_val])), train_all.subset(np.sort(perm[n_val:]))
    t0 = time.perf_counter()
    if method == "knn":
        from zpix.baselines.knn import KNNPhotoZ

        model = KNNPhotoZ().fit(train_t.labelled(0.0, 0.4))
        val_p, test_p, grid = model.predict(val_t).pdfs, model.predict(test).pdfs, model.config.grid
    else:
        from zpix.baselines.magnet import train_magnet

        model, _ = train_magnet(train_t, seed=seed)
        val_p, test_p, grid = model.predict(val_t), model.predict(test), model.grid
    train_s = time.perf_counter() - t0
    keep_v, keep_t = np.isfinite(val_t.z_spec), np.isfinite(test.z_spec)
    entry, _ = calibrate_case(val_p[keep_v], val_t.z_spec[keep_v], test_p[keep_t], test.z_spec[keep_t], grid,
                              CHAINS)
    entry.update({"catalogue": "SDSS MGS", "n_train": int(len(train_t)), "train_s": round(train_s, 1),
                  "fit_rows": f"{val_fraction:.0%} of SDSS_MGS.train (seed {seed})", "test_rows": "SDSS_MGS.test"})
    return entry


#: Synthetic populations of the noise-vs-N study: Gaussian PDFs of width w x the true scatter 0.015
#: (w < 1 over-confident), residuals Gaussian or Student-t with 3 degrees of freedom (a regression head).
POPULATIONS = {"calibrated": (1.0, False), "over-confident x0.9": (0.9, False), "over-confident x0.7": (0.7, False),
               "t3 residuals": (1.0, True)}
NOISE_SIZES = (100, 200, 320, 500, 1000, 2000, 4000)
#: sizes at which ``auto`` (cross-validation: slower) is run on every population; the PIT map runs at all
AUTO_SIZES = (200, 320, 500, 1000, 2000)


def synthetic_pdfs(n: int, width: float, tails: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n Gaussian PDFs on the 180-bin [0, 0.4] grid, width ``width`` x the true scatter (0.015), z_spec."""
    from zpix.pdf import RedshiftGrid, gaussian_pdfs

    z = rng.uniform(0.05, 0.35, n)
    err = rng.standard_t(3, n) * 0.015 / np.sqrt(3) if tails else rng.normal(0, 0.015, n)
    return gaussian_pdfs(z + err, 0.015 * width, RedshiftGrid(180, 0.0, 0.4)), z


def noise_vs_n(sizes: tuple[int, ...], auto_sizes: tuple[int, ...], repeats: int, n_test: int, seed: int,
               pit_repeats: int = 20) -> dict[str, Any]:
    """How a calibration fitted on n objects does on a large test set, against n.

    For each population and n, independent fitting sets are drawn: ``pit_repeats`` for the PIT map (``pit``; on
    the calibrated population only: its spread there is the map's own noise) and ``repeats`` for ``auto`` (at
    ``auto_sizes``: slower); each fit is scored on the same ``n_test`` new objects (large, so that the spread
    over draws is the fitted map's own noise, not the test set's).  Reported per n: the identity's test
    metrics, and for each method the mean and 90th percentile over draws of the test PIT KS and
    |coverage68 − 0.683|, the mean and worst relative CRPS change, and (auto) how often it kept the identity;
    ``auto-no-floor`` is auto's rule without the MIN_AUTO floor (what it would do on fewer objects).
    """
    from zpix.calibration import fit_calibration
    from zpix.calibration.fit import MIN_AUTO, select_chain
    from zpix.pdf import RedshiftGrid

    grid = RedshiftGrid(180, 0.0, 0.4)
    out: dict[str, Any] = {"min_auto": MIN_AUTO, "sizes": list(sizes), "auto_sizes": list(auto_sizes),
                           "repeats": repeats, "pit_repeats": pit_repeats, "n_test": n_test, "populations": {}}
    for p_i, (pop, (width, tails)) in enumerate(POPULATIONS.items()):
        rng = np.random.default_rng([seed, p_i])
        test_p, test_z = synthetic_pdfs(n_test, width, tails, rng)
        ident = block(test_p, test_z, grid)
        res: dict[str, Any] = {"width": width, "t3_tails": tails, "identity": ident, "by_n": {}}
        for n in sorted(set(sizes) | set(auto_sizes)):
            methods = (list(NOISE_MAPS) if pop == "calibrated" and n in sizes else []) + \
                (["auto"] if n in auto_sizes else []) + (["auto-no-floor"] if n in auto_sizes and n < MIN_AUTO else [])
            if not methods:
                continue
            rows: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
            for r in range(max(pit_repeats if "pit" in rows else 0, repeats if "auto" in rows else 0)):
                fit_p, fit_z = synthetic_pdfs(n, width, tails, rng)
                for method in [m for m in rows if r < (pit_repeats if m in NOISE_MAPS else repeats)]:
                    if method == "auto-no-floor":  # the same rule as auto on n < MIN_AUTO objects
                        chain = fit_calibration(fit_p, fit_z, grid, select_chain(fit_p, fit_z, grid, min_n=0)[0])
                    else:
                        chain = fit_calibration(fit_p, fit_z, grid, [method])
                    m = block(chain(test_p), test_z, grid) if chain else dict(ident)
                    m["kept_identity"] = float(not chain)
                    rows[method].append(m)
            agg = {}
            for method, ms in rows.items():
                ks = np.array([m["pit_ks"] for m in ms])
                cov = np.abs(np.array([m["coverage68"] for m in ms]) - 0.683)
                dcrps = np.array([m["crps"] for m in ms]) / ident["crps"] - 1
                agg[method] = {"pit_ks_mean": float(ks.mean()), "pit_ks_p90": float(np.quantile(ks, 0.9)),
                               "cov68_err_mean": float(cov.mean()), "cov68_err_p90": float(np.quantile(cov, 0.9)),
                               "crps_change_mean": float(dcrps.mean()), "crps_change_max": float(dcrps.max()),
                               "kept_identity": float(np.mean([m["kept_identity"] for m in ms]))}
            res["by_n"][str(n)] = agg
            print(f"[noise_vs_n] {pop} n={n}: " + "  ".join(
                f"{k}: KS {v['pit_ks_mean']:.4f}/{v['pit_ks_p90']:.4f} cov {v['cov68_err_mean']:.4f}/"
                f"{v['cov68_err_p90']:.4f} crps {v['crps_change_mean']:+.4f}/{v['crps_change_max']:+.4f} "
                f"id {v['kept_identity']:.2f}" for k, v in agg.items()), flush=True)
        out["populations"][pop] = res
    return out


DOCS = Path(__file__).resolve().parents[1] / "docs" / "calibration.md"
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "calibration_pit.png"
START, END = "<!-- calibration:start -->", "<!-- calibration:end -->"


def seed_entry(run: dict[str, Any]) -> dict[str, Any]:
    """One seed of a run: the chain ``auto`` chose, then every chain's test numbers and whether they meet the
    targets."""
    v = run["variants"][DEFAULT_CHAIN]
    return {"auto_chose": "+".join(v["steps"] + (["keep-mean"] if v.get("keep_mean") else [])) or "none",
            "chains": {k: {m: v[m] for m in ("pit_ks", "coverage68", "crps", "sigma_mad")}
                       | {"meets_targets": meets_targets(run["before"], v)} for k, v in run["variants"].items()}}


def render_seeds(doc: dict[str, Any]) -> list[str]:
    """Test numbers of ``auto`` and of the single PIT maps over the seeds of each run that has several."""
    out: list[str] = []
    for case, r in doc["runs"].items():
        seeds = r.get("seeds")
        if not seeds or len(seeds) < 2:
            continue
        names = ", ".join(seeds)
        out += ["", f"{case}, seeds {names} (split of the training file, training and CV folds redone): PIT KS / "
                "coverage68 on the test rows per seed, and on how many seeds all four targets hold "
                f"(`auto` chose: {', '.join(e['auto_chose'] for e in seeds.values())}):", "",
                "| chain | " + " | ".join(f"seed {k}" for k in seeds) + " | targets met |",
                "|---|" + "---|" * (len(seeds) + 1)]
        for chain in (DEFAULT_CHAIN, "pit-width", "pit-affine", "pit"):
            rows = [e["chains"][chain] for e in seeds.values()]
            out.append(f"| {chain} | " + " | ".join(f"{x['pit_ks']:.4f} / {x['coverage68']:.3f}" for x in rows)
                       + f" | {sum(x['meets_targets'] for x in rows)} of {len(rows)} |")
    return out


def render(doc: dict[str, Any]) -> str:
    """Markdown of the results (the block between the markers of docs/calibration.md)."""
    out = [f"*{doc['date_utc'][:10]}, commit `{doc['commit']}`; chain `{'+'.join(doc['default_chain'])}`; "
           "targets: PIT KS ≤ 0.02, coverage68 0.683 ± 0.02, σ_MAD changed ≤ 1%, CRPS not worse.*", "",
           "| run | fit / test objects | chain chosen | PIT KS | coverage68 | coverage95 | CRPS | σ_MAD (change) |",
           "|---|---|---|---|---|---|---|---|"]
    for case, r in doc["runs"].items():
        b, a = r["before"], r["after"]
        v = r["variants"][DEFAULT_CHAIN]
        chosen = "+".join(v["steps"] + (["keep-mean"] if v.get("keep_mean") else [])) or "none (identity)"
        out.append(f"| {case} | {r['n_fit']:,} / {r['n_test']:,} | {chosen} "
                   f"| {b['pit_ks']:.4f} → **{a['pit_ks']:.4f}** | {b['coverage68']:.3f} → **{a['coverage68']:.3f}** "
                   f"| {b['coverage95']:.3f} → {a['coverage95']:.3f} | {b['crps']:.5f} → {a['crps']:.5f} "
                   f"| {b['sigma_mad']:.5f} → {a['sigma_mad']:.5f} "
                   f"({100 * (a['sigma_mad'] / b['sigma_mad'] - 1):+.1f}%) |")
    for case, why in doc.get("skipped", {}).items():
        out.append(f"| {case} | skipped: {why} | | | | | | |")
    tr = {case: r["val_vs_test"] for case, r in doc["runs"].items() if "val_vs_test" in r}
    if tr:
        out += ["", "Are the fitting and the test objects alike? Two-sample KS tests between them (uncalibrated PITs, "
                "z_spec) and their coverage68 before calibration:", "",
                "| run | PIT 2-sample KS (p) | z_spec 2-sample KS (p) | coverage68 fit rows | coverage68 test rows |",
                "|---|---|---|---|---|"]
        for case, t in tr.items():
            out.append(f"| {case} | {t['pit_ks_2samp']:.4f} ({t['pit_p']:.3f}) | {t['z_spec_ks_2samp']:.4f} "
                       f"({t['z_spec_p']:.3f}) | {t['coverage68_val']:.3f} | {t['coverage68_test']:.3f} |")
    out += render_seeds(doc)
    runs = list(doc["runs"])
    out += ["", "Every fixed chain on the test rows, PIT KS / coverage68 / σ_MAD change (`auto` chose among them "
            "on the fitting rows alone):", "", "| chain | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for k in doc["chains"]:
        if k == DEFAULT_CHAIN:
            continue
        cells = []
        for case in runs:
            r = doc["runs"][case]
            v = r["variants"][k]
            cells.append(f"{v['pit_ks']:.4f} / {v['coverage68']:.3f} / "
                         f"{100 * (v['sigma_mad'] / r['before']['sigma_mad'] - 1):+.1f}%")
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    f = doc.get("flags")
    if f:
        out += ["", f"Quality score on the mock's test rows ({f['n_test']:,} objects, {f['n_outliers']} with "
                f"|Δz| > 0.05 after calibration). ROC AUC for finding them:", "",
                "| score | " + " | ".join(f["auc"]) + " |", "|---|" + "---|" * len(f["auc"]),
                "| AUC | " + " | ".join(f"{v:.3f}" for v in f["auc"].values()) + " |", "",
                "| removed | η (worst-flagged removed) | η (widest removed) | σ_MAD (worst-flagged) | σ_MAD (widest) |",
                "|---|---|---|---|---|",
                f"| none | {100 * f['cuts']['none']['eta']:.2f}% | | {f['cuts']['none']['sigma_mad']:.5f} | |"]
        for frac in CUTS:
            k = int(frac * 100)
            w, d = f["cuts"][f"worst_flagged_{k}pct"], f["cuts"][f"widest_{k}pct"]
            out.append(f"| {k}% | {100 * w['eta']:.2f}% | {100 * d['eta']:.2f}% | {w['sigma_mad']:.5f} "
                       f"| {d['sigma_mad']:.5f} |")
    out += ["", "![PIT histograms before and after calibration](figures/calibration_pit.png)"]
    out += render_noise(doc)
    return "\n".join(out)


def render_noise(doc: dict[str, Any]) -> list[str]:
    """The small-validation-set draws of the CNN and the noise-vs-n study (how MIN_AUTO was chosen)."""
    out: list[str] = []
    small = doc.get("runs", {}).get("cnn_mock", {}).get("small_fit")
    if small:
        i = small["identity"]
        out += ["", f"The CNN with a demo-sized validation set: {small['repeats']} draws of {small['n']} of its "
                f"validation rows, each calibration scored on all {i['n']:,} test rows (uncalibrated: PIT KS "
                f"{i['pit_ks']:.4f}, coverage68 {i['coverage68']:.3f}, CRPS {i['crps']:.5f}):", "",
                "| fitted | chains | PIT KS | coverage68 | CRPS |", "|---|---|---|---|---|"]
        for method, draws in small["draws"].items():
            chains = sorted({"+".join(d["steps"]) or "none" for d in draws})
            rng = {k: (min(d[k] for d in draws), max(d[k] for d in draws)) for k in ("pit_ks", "coverage68", "crps")}
            out.append(f"| {method} | {', '.join(chains)} | {rng['pit_ks'][0]:.4f}–{rng['pit_ks'][1]:.4f} "
                       f"| {rng['coverage68'][0]:.3f}–{rng['coverage68'][1]:.3f} "
                       f"| {rng['crps'][0]:.5f}–{rng['crps'][1]:.5f} |")
    nv = doc.get("noise_vs_n")
    if not nv:
        return out
    pops = nv["populations"]
    cal = pops["calibrated"]
    out += ["", f"<a id=\"noise-vs-n\"></a>How many validation objects (`noise_vs_n`): synthetic Gaussian PDFs, "
            f"{nv['pit_repeats']} fitting sets per n for the PIT map, {nv['repeats']} for `auto`, each calibration "
            f"scored on the same {nv['n_test']:,} new objects "
            "(mean / 90th percentile over the fitting sets; MIN_AUTO = "
            f"{nv['min_auto']:,}). A PIT map fitted on PDFs that are calibrated already (uncalibrated there: PIT KS "
            f"{cal['identity']['pit_ks']:.4f}, coverage68 {cal['identity']['coverage68']:.3f}) shows the map's own "
            "noise (nonparametric `pit` with K = √n/5 knots beside the few-parameter `pit-affine` and `pit-beta`):",
            "", "| n fitted | map | PIT KS | \\|coverage68 − 0.683\\| | CRPS change (mean / worst) |",
            "|---|---|---|---|---|"]
    for n, r in cal["by_n"].items():
        for name in [k for k in r if k not in ("auto", "auto-no-floor")]:
            m = r[name]
            out.append(f"| {int(n):,} | {name} | {m['pit_ks_mean']:.4f} / {m['pit_ks_p90']:.4f} | "
                       f"{m['cov68_err_mean']:.4f} / {m['cov68_err_p90']:.4f} | {100 * m['crps_change_mean']:+.2f}% / "
                       f"{100 * m['crps_change_max']:+.2f}% |")
    out += ["", "`auto` on each population (kept: the fraction of fitting sets on which it kept the identity; "
            "below MIN_AUTO, `auto` keeps it always and the \"rule alone\" columns show what the cross-validated "
            "rule would have done there):", "",
            "| population (uncalibrated PIT KS, coverage68) | n | kept | PIT KS | \\|cov68 − 0.683\\| | CRPS change "
            "| rule alone: kept, PIT KS, \\|cov68 − 0.683\\| (p90) |", "|---|---|---|---|---|---|---|"]
    for pop, res in pops.items():
        i = res["identity"]
        for n, r in res["by_n"].items():
            if "auto" not in r:
                continue
            a, nf = r["auto"], r.get("auto-no-floor")
            alone = (f"{nf['kept_identity']:.0%}, {nf['pit_ks_p90']:.4f}, {nf['cov68_err_p90']:.4f}" if nf else "")
            out.append(f"| {pop} ({i['pit_ks']:.3f}, {i['coverage68']:.3f}) | {int(n):,} | {a['kept_identity']:.0%} "
                       f"| {a['pit_ks_mean']:.4f} / {a['pit_ks_p90']:.4f} | {a['cov68_err_mean']:.4f} / "
                       f"{a['cov68_err_p90']:.4f} | {100 * a['crps_change_mean']:+.2f}% | {alone} |")
    return out


def pit_figure(doc: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = doc["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), squeeze=False)
    for ax, (case, r) in zip(axes[0], runs.items(), strict=True):
        edges = np.linspace(0, 1, len(r["pit_hist"]["before"]) + 1)
        for key, colour in (("before", "tab:red"), ("after", "tab:blue")):
            ax.stairs(r["pit_hist"][key], edges, color=colour, lw=1.6,
                      label=f"{key}: KS {r[key]['pit_ks']:.3f}, cov68 {r[key]['coverage68']:.3f}")
        ax.axhline(1, color="0.5", lw=0.8, ls="--")
        ax.set_title(case, fontsize=9)
        ax.set_xlabel("PIT")
        ax.set_ylim(0, max(1.6, max(max(r["pit_hist"]["before"]), max(r["pit_hist"]["after"])) * 1.1))
        ax.legend(fontsize=7, loc="lower center")
    axes[0][0].set_ylabel("density (1 = calibrated)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_docs(results: Path) -> None:
    import json

    doc = json.loads(results.read_text())
    text = DOCS.read_text()
    if START not in text or END not in text:
        raise click.ClickException(f"{DOCS} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(f"{head}{START}\n{render(doc)}\n{END}{tail}")
    pit_figure(doc, FIGURE)
    print(f"updated {DOCS} and {FIGURE}")


def run_kids_regression(cubes: Path, work: Path, seed: int, epochs: int, batch_size: int, val_fraction: float,
                        test_fraction: float) -> dict[str, Any]:
    """The KiDS hybrid's regression head (Gaussian N(z, σ) from Huber + Gaussian NLL), magnitudes branch only
    (``hybrid-mags``: seconds per epoch on a CPU), trained with the kids_hybrid preset's split on a KiDS mock;
    calibrated on its validation rows (``val_fraction`` of the non-test rows), scored on its test rows
    (``test_fraction``)."""
    import shutil
    from dataclasses import replace

    import torch

    import zpix
    from zpix.prediction.streaming import load_ensemble
    from zpix.quality.features import infer
    from zpix.training.config import TrainConfig

    torch.set_num_threads(1)
    run = work / "kids_mags_regression"
    if run.exists():
        shutil.rmtree(run)  # this script's own work directory, rebuilt each time
    cfg = replace(TrainConfig.from_yaml("kids_hybrid"), cubes=str(cubes), out=str(run), model="hybrid-mags",
                  model_args={"head": "regression"}, max_epochs=epochs, seed=seed, progress=False, num_workers=0,
                  calibrate=[], accelerator="cpu", devices=1, val_fraction=val_fraction,
                  test_fraction=test_fraction)
    t0 = time.perf_counter()
    result = zpix.train(cfg)
    train_s = time.perf_counter() - t0
    members = load_ensemble(run, "cpu")
    kw = dict(with_features=False, batch_size=batch_size, device="cpu", members=members)
    val = infer(run, cubes, np.sort(result.split.val), **kw)
    test = infer(run, cubes, np.sort(result.split.test), **kw)
    entry, _ = calibrate_case(val["probs"], val["z_spec"], test["probs"], test["z_spec"], val["grid"], CHAINS)
    entry.update({"cubes": str(cubes), "model": "hybrid-mags, head: regression (kids_hybrid preset)",
                  "n_train": int(len(result.split.train)), "epochs": epochs, "train_s": round(train_s, 1),
                  "val_fraction": val_fraction, "test_fraction": test_fraction,
                  "fit_rows": "run split val", "test_rows": "run split test"})
    return entry


@click.command()
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), default="runs/bench/p19s_v10k",
              show_default=True, help="Trained image run (config.yaml, split.npz, member_*/best.ckpt).")
@click.option("--cubes", type=click.Path(exists=True, dir_okay=False), default="runs/bench/mock_sdss40k.h5",
              show_default=True)
@click.option("--cases", default="cnn_mock,knn_mgs,magnet_mgs,kids_regression,noise_vs_n", show_default=True)
@click.option("--noise-repeats", default=5, show_default=True, help="noise_vs_n: fitting sets drawn per size.")
@click.option("--n-features", default=5000, show_default=True, help="Training rows whose features are stored.")
@click.option("--val-fraction", default=0.4, show_default=True,
              help="MGS: part of the training file for fitting (0.4: 2000 objects).")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--kids-cubes", type=click.Path(dir_okay=False), default="runs/calib17/kids20k.h5", show_default=True,
              help="KiDS mock (zpix simulate --survey kids) for the kids_regression case.")
@click.option("--kids-epochs", default=20, show_default=True)
@click.option("--kids-val-fraction", default=0.3, show_default=True,
              help="KiDS: validation part of the non-test rows (0.3 of 14,000: 4,200 objects).")
@click.option("--kids-test-fraction", default=0.3, show_default=True,
              help="KiDS test rows (the preset's 0.15 of 20,000 leaves 3,000: a perfectly calibrated model's PIT KS "
                   "there is 0.87/sqrt(3000) = 0.016 on average, most of the target).")
@click.option("--work", type=click.Path(file_okay=False), default="runs/calib/work", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=str(RESULTS / "calibration.json"), show_default=True)
@click.option("--render-docs", is_flag=True, help="Only rewrite docs/calibration.md's results block and figure "
              "from --out.")
@click.option("--merge", "merge_parts", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Only combine the runs of several partial results files (cases run in parallel) into --out.")
@click.option("--merge-seed", "seed_parts", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="With --merge: results files of the same cases at other --seed values; each run gets a `seeds` "
                   "block (auto's choice, every chain's test numbers and whether they meet the targets).")
def main(run_dir: str, cubes: str, cases: str, noise_repeats: int, n_features: int, val_fraction: float,
         batch_size: int, kids_cubes: str, kids_epochs: int, kids_val_fraction: float, kids_test_fraction: float,
         work: str, seed: int, out: str, render_docs: bool, merge_parts: tuple[str, ...],
         seed_parts: tuple[str, ...]) -> None:
    """Write benchmarks/results/calibration.json."""
    if render_docs:
        globals()["render_docs"](Path(out))
        return
    if merge_parts:
        import json

        parts = [json.loads(Path(p).read_text()) for p in merge_parts]
        merged = {**parts[0], "runs": {}, "skipped": {}, "parts": []}
        for part in parts:
            merged["runs"].update(part["runs"])
            merged["skipped"].update(part.get("skipped", {}))
            merged.update({k: part[k] for k in ("flags", "noise_vs_n") if k in part})
            merged["parts"].append({k: part[k] for k in ("date_utc", "commit", "loadavg_at_start") if k in part}
                                   | {"cases": list(part["runs"])})
        others = [json.loads(Path(p).read_text()) for p in seed_parts]
        if len({p["commit"] for p in parts + others}) != 1:
            raise click.ClickException(f"parts come from different commits: {[p['commit'] for p in parts + others]}")
        for other in others:
            for case, run in other["runs"].items():
                if case not in merged["runs"]:
                    raise click.ClickException(f"seed {other['seed']}: run {case} is in no --merge part")
                first = merged["runs"][case]
                seeds = first.setdefault("seeds", {str(merged["seed"]): seed_entry(first)})
                if str(other["seed"]) in seeds:
                    raise click.ClickException(f"seed {other['seed']} of {case} is given twice")
                seeds[str(other["seed"])] = seed_entry(run)
        write_json(Path(out), merged)
        print(f"wrote {out}")
        return
    doc: dict[str, Any] = {**stamp(), "seed": seed, "default_chain": CHAINS[DEFAULT_CHAIN], "chains": CHAINS,
                           "targets": {"pit_ks": "<= 0.02", "coverage68": "0.683 +- 0.02", "sigma_mad": "changed <= 1%",
                                       "crps": "not worse"},
                           "runs": {}, "skipped": {}}
    out_path = Path(out)
    for case in [c.strip() for c in cases.split(",") if c.strip()]:
        t0 = time.perf_counter()
        if case == "noise_vs_n":
            doc["noise_vs_n"] = noise_vs_n(NOISE_SIZES, AUTO_SIZES, noise_repeats, 20_000, seed)
            doc["noise_vs_n"]["wall_s"] = round(time.perf_counter() - t0, 1)
            write_json(out_path, doc)
            continue
        if case == "cnn_mock":
            entry, flags = run_cnn(Path(run_dir), Path(cubes), n_features, seed, batch_size)
            doc["flags"] = flags
        elif case in ("knn_mgs", "magnet_mgs"):
            if not MGS.is_dir():
                doc["skipped"][case] = f"{MGS} is not available (../shared absent)"
                print(f"[{case}] skipped: {MGS} absent")
                continue
            entry = run_mgs(case.split("_")[0], seed, val_fraction)
        elif case == "kids_regression":
            if not Path(kids_cubes).is_file():
                doc["skipped"][case] = f"{kids_cubes} is absent (zpix simulate --survey kids --n 20000 --seed 7)"
                print(f"[{case}] skipped: {kids_cubes} absent")
                continue
            entry = run_kids_regression(Path(kids_cubes), Path(work), seed, kids_epochs, batch_size, kids_val_fraction,
                                        kids_test_fraction)
        else:
            raise click.BadParameter(f"unknown case {case!r}")
        entry["wall_s"] = round(time.perf_counter() - t0, 1)
        doc["runs"][case] = entry
        b, a = entry["before"], entry["after"]
        print(f"[{case}] pit_ks {b['pit_ks']:.4f} -> {a['pit_ks']:.4f}  cov68 {b['coverage68']:.3f} -> "
              f"{a['coverage68']:.3f}  crps {b['crps']:.5f} -> {a['crps']:.5f}  smad {b['sigma_mad']:.5f} -> "
              f"{a['sigma_mad']:.5f}", flush=True)
        write_json(out_path, doc)
    write_json(out_path, doc)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
