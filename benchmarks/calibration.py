"""Calibration benchmark (issue 17): PDFs before/after post-hoc calibration on test objects never used for
fitting, and how well the per-object quality score finds catastrophic outliers.

Runs (``runs`` map of the JSON, each with ``before`` and ``after`` blocks of pit_ks, coverage68,
coverage95, crps, sigma_mad, eta, bias, n; ``variants`` holds every other method chain tried):

* ``cnn_mock`` — a trained image run (default the shared ``pasquet2019-small`` on the 28k SDSS-like mock,
  ``runs/bench/p19s_20k``): the calibration is fitted on the run's validation rows, scored on its test rows;
* ``knn_mgs`` and ``magnet_mgs`` — the k-NN and magnitude-network baselines on the real SDSS MGS
  catalogue (``../shared``; skipped where absent), trained on 80% of SDSS_MGS.train, calibrated on the
  other 20% (seeded draw), scored on SDSS_MGS.test;
* ``kids_regression`` — the KiDS hybrid's regression head, magnitudes branch only (``hybrid-mags``), trained
  with the kids_hybrid preset's 70/15/15 split on a KiDS mock (``--kids-cubes``; skipped where absent).

``flags``: on the mock's test rows, the ROC AUC of each score for |Δz| > 0.05 (Δz = (z_mean − z_spec)/(1 +
z_spec), after calibration) and η after removing the 5/10/20% worst-flagged (``quality``) objects versus
the 5/10/20% widest PDFs (width68).  ``pit_hist``: 20-bin PIT densities before/after per run.

Run from a clean worktree of a commit (see COMMON.md).  The committed results ran as two processes, then
joined (the CNN run is a copy of the shared runs/bench/p19s_20k, stopped after 2 epochs)::

    B="python benchmarks/calibration.py --run /work/main/runs/calib/p19s_20k_ep2 --cubes runs/bench/mock_sdss.h5"
    $B --cases cnn_mock --n-features 4000 --out part_cnn.json
    $B --cases knn_mgs,magnet_mgs,kids_regression --kids-cubes runs/calib/kids6k.h5 --out part_other.json
    python benchmarks/calibration.py --merge part_cnn.json --merge part_other.json   # -> results/calibration.json
    python benchmarks/calibration.py --render-docs                                   # docs/calibration.md + figure

with the KiDS mock from ``zpix simulate --survey kids --n 6000 --seed 7 --out runs/calib/kids6k.h5``.
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
CHAINS = {"auto": ["auto"], "temperature": ["temperature"], "pit": ["pit"], "temperature+pit": ["temperature", "pit"],
          "pit-local": ["pit-local"], "temperature+pit-local": ["temperature", "pit-local"],
          "student-t": ["student-t"], "student-t+pit": ["student-t", "pit"]}
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
        after = chain(test_p)
        res = block(after, test_z, grid)
        res["fit_s"] = round(fit_s, 2)
        res["steps"] = [s.calibrator.name for s in chain.steps]
        res["params"] = [s.to_dict()["params"] for s in chain.steps
                         if s.calibrator.name in ("temperature", "student-t")]
        if name == "auto":
            res["cv_pit_ks"] = chain.steps[0].fitted_on["auto"]["cv_pit_ks"]
        entry["variants"][name] = res
        fitted[name] = (chain, after)
        if name == DEFAULT_CHAIN:
            entry["after"] = {k: v for k, v in res.items() if k not in ("params",)}
            hist["after"] = pit_hist(after, test_z, grid)
    b, a = entry["before"], entry["after"]
    entry["checks"] = {"pit_ks_le_0.02": a["pit_ks"] <= 0.02, "coverage68_within_0.02": abs(a["coverage68"] - 0.683)
                       <= 0.02, "sigma_mad_change": a["sigma_mad"] / b["sigma_mad"] - 1,
                       "sigma_mad_change_le_1pct": abs(a["sigma_mad"] / b["sigma_mad"] - 1) <= 0.01,
                       "crps_not_worse": a["crps"] <= b["crps"]}
    entry["pit_hist"] = hist
    return entry, fitted


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


DOCS = Path(__file__).resolve().parents[1] / "docs" / "calibration.md"
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "calibration_pit.png"
START, END = "<!-- calibration:start -->", "<!-- calibration:end -->"


def render(doc: dict[str, Any]) -> str:
    """Markdown of the results (the block between the markers of docs/calibration.md)."""
    out = [f"*{doc['date_utc'][:10]}, commit `{doc['commit']}`; chain `{'+'.join(doc['default_chain'])}`; "
           "targets: PIT KS ≤ 0.02, coverage68 0.683 ± 0.02, σ_MAD changed ≤ 1%, CRPS not worse.*", "",
           "| run | fit / test objects | chain chosen | PIT KS | coverage68 | coverage95 | CRPS | σ_MAD (change) |",
           "|---|---|---|---|---|---|---|---|"]
    for case, r in doc["runs"].items():
        b, a = r["before"], r["after"]
        chosen = "+".join(r["variants"][DEFAULT_CHAIN]["steps"])
        out.append(f"| {case} | {r['n_fit']:,} / {r['n_test']:,} | {chosen} "
                   f"| {b['pit_ks']:.4f} → **{a['pit_ks']:.4f}** | {b['coverage68']:.3f} → **{a['coverage68']:.3f}** "
                   f"| {b['coverage95']:.3f} → {a['coverage95']:.3f} | {b['crps']:.5f} → {a['crps']:.5f} "
                   f"| {b['sigma_mad']:.5f} → {a['sigma_mad']:.5f} "
                   f"({100 * (a['sigma_mad'] / b['sigma_mad'] - 1):+.1f}%) |")
    for case, why in doc.get("skipped", {}).items():
        out.append(f"| {case} | skipped: {why} | | | | | | |")
    out += ["", "Every fixed chain, PIT KS after (test):", "",
            "| run | " + " | ".join(k for k in doc["chains"] if k != DEFAULT_CHAIN) + " |",
            "|---|" + "---|" * (len(doc["chains"]) - 1)]
    for case, r in doc["runs"].items():
        out.append(f"| {case} | " + " | ".join(f"{r['variants'][k]['pit_ks']:.4f}" for k in doc["chains"]
                                                if k != DEFAULT_CHAIN) + " |")
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
    return "\n".join(out)


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


def run_kids_regression(cubes: Path, work: Path, seed: int, epochs: int, batch_size: int) -> dict[str, Any]:
    """The KiDS hybrid's regression head (Gaussian N(z, σ) from Huber + Gaussian NLL), magnitudes branch only
    (``hybrid-mags``: seconds per epoch on a CPU), trained with the kids_hybrid preset's split on a KiDS mock;
    calibrated on its validation rows, scored on its test rows."""
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
                  calibrate=[], accelerator="cpu", devices=1)
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
                  "fit_rows": "run split val", "test_rows": "run split test"})
    return entry


@click.command()
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), default="runs/bench/p19s_20k",
              show_default=True, help="Trained image run (config.yaml, split.npz, member_*/best.ckpt).")
@click.option("--cubes", type=click.Path(exists=True, dir_okay=False), default="runs/bench/mock_sdss.h5",
              show_default=True)
@click.option("--cases", default="cnn_mock,knn_mgs,magnet_mgs,kids_regression", show_default=True)
@click.option("--n-features", default=5000, show_default=True, help="Training rows whose features are stored.")
@click.option("--val-fraction", default=0.2, show_default=True, help="MGS: part of the training file for fitting.")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--kids-cubes", type=click.Path(dir_okay=False), default="runs/calib/kids6k.h5", show_default=True,
              help="KiDS mock (zpix simulate --survey kids) for the kids_regression case.")
@click.option("--kids-epochs", default=20, show_default=True)
@click.option("--work", type=click.Path(file_okay=False), default="runs/calib/work", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=str(RESULTS / "calibration.json"), show_default=True)
@click.option("--render-docs", is_flag=True, help="Only rewrite docs/calibration.md's results block and figure "
              "from --out.")
@click.option("--merge", "merge_parts", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Only combine the runs of several partial results files (cases run in parallel) into --out.")
def main(run_dir: str, cubes: str, cases: str, n_features: int, val_fraction: float, batch_size: int,
         kids_cubes: str, kids_epochs: int, work: str, seed: int, out: str, render_docs: bool,
         merge_parts: tuple[str, ...]) -> None:
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
            merged.update({k: part[k] for k in ("flags",) if k in part})
            merged["parts"].append({k: part[k] for k in ("date_utc", "commit", "loadavg_at_start") if k in part}
                                   | {"cases": list(part["runs"])})
        if len({p["commit"] for p in parts}) != 1:
            raise click.ClickException(f"parts come from different commits: {[p['commit'] for p in parts]}")
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
                doc["skipped"][case] = f"{kids_cubes} is absent (zpix simulate --survey kids --n 6000 --seed 7)"
                print(f"[{case}] skipped: {kids_cubes} absent")
                continue
            entry = run_kids_regression(Path(kids_cubes), Path(work), seed, kids_epochs, batch_size)
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
