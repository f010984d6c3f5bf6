"""Multi-channel outputs of the Lin et al. bias correction (issue 12, step 5), measured.

On the same split as ``benchmarks/bias_correction.py``, for each seed the test objects are scored

* ``before``: the trained network as it is;
* ``debiased``: its head retrained with the single-channel correction (steps 1-3, ``mag_channels`` 1);
* ``debiased_multichannel``: the same correction (same N_th, edge shift, soft-label σ, subset, seed) with a
  head of M r-magnitude channels x the redshift bins, p(z|θ) = Σ_m p(m|θ) p(z|m,θ)
  (:mod:`zpix.debias.multichannel`); M is chosen on the validation rows only, among ``--channels``, by
  ``bias_correction.py``'s rule (smallest validation spec-z trend amplitude among the candidates whose
  validation σ_MAD is within 5% of the model's own);

and, for the tomographic target, each debiased model after the photo-z calibration fitted on the
validation rows (``*_calibrated``).  Metrics (test rows): σ_MAD, spec-z trend amplitude, N(z) KS, max
|Δ⟨z⟩| over 5 equal-count z_phot bins — ``bias_correction.scores``.  The N_th / edge-shift configuration
of both debiased heads is the one ``bias_correction.json`` chose on validation rows at 1e2e407
(:data:`BASE_CONFIG`): this benchmark isolates the channels, it does not re-sweep N_th.

Cases:

* ``sdss_mgs``: the magnitude network on the real SDSS MGS catalogue, split and trained exactly as in
  ``bias_correction.py`` for each seed (seed → the 3,500 / 1,500 split, the network's training, the
  balanced subset and the head's initialisation);
* ``mock_sdss``: the converged ``pasquet2019-small`` run ``--run`` (not retrained); its frozen head inputs
  are read from ``--features`` (the cache ``bias_correction.py`` wrote, read only) or computed into
  ``--work``.  The seed changes the balanced subset and the head's initialisation only.  The first seed's
  multi-channel correction is also written as ordinary run directories (``zpix debias`` layout, then
  ``zpix calibrate --method photoz``) under ``--work`` and the first 1000 test rows predicted from them.

Run from a clean worktree, one case per locked invocation, the second including the first::

    PYTHONPATH=$PWD/src flock /tmp/zpix-heavy.lock python benchmarks/bias_multichannel.py --threads 2 \
        --cases sdss_mgs --out /tmp/bmc_mgs.json
    PYTHONPATH=$PWD/src flock /tmp/zpix-heavy.lock python benchmarks/bias_multichannel.py --threads 2 \
        --cases mock_sdss --run /work/main/runs/bench/p19s_20k --cubes /work/main/runs/bench/mock_sdss.h5 \
        --features /work/main/runs/bench/bias_correction --include /tmp/bmc_mgs.json
    python benchmarks/bias_multichannel.py --docs   # the block of docs/bias_correction.md from the JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, load_same_commit, stamp, write_json  # noqa: E402
from bias_correction import (  # noqa: E402
    MGS,
    N_PREDICT_CHECK,
    N_VAL_MGS,
    SIGMA_TOLERANCE,
    choose_candidate,
    correct,
    headline,
    magnet_batches,
    photoz_calibrate,
    scores,
    val_min_count,
)

#: the single-channel configuration bias_correction.json (commit 2896b16, run at 1e2e407) chose on validation rows
BASE_CONFIG: dict[str, dict[str, Any]] = {
    "mock_sdss": {"n_th": 50, "edge_scale": 1.0},
    "sdss_mgs": {"n_th": 100, "edge_scale": 2.0, "edge_density": "range"},
}
CHANNELS = (2, 4, 8)
METRICS = ("sigma_mad", "spec_z_trend_amplitude", "nz_ks", "max_tomo_bias")
STAGES = ("before", "debiased", "debiased_multichannel", "debiased_calibrated", "debiased_multichannel_calibrated")
DOCS = ROOT / "docs" / "bias_correction.md"
DOCS_START, DOCS_END = "<!-- bias-multichannel:start -->", "<!-- bias-multichannel:end -->"


def headline_block(block: dict[str, Any]) -> dict[str, Any]:
    return {k: block[k] for k in (*METRICS, "bias", "n")}


def choose_channels(sweep: list[dict[str, Any]], before_val_sigma: float) -> int:
    """``bias_correction.py``'s rule on validation rows: the smallest trend amplitude among the candidates
    whose σ_MAD is within the tolerance of the model's own; none within it: the smallest σ_MAD."""
    best, _ = choose_candidate([s["val"] for s in sweep], before_val_sigma, SIGMA_TOLERANCE)
    return sweep[best]["mag_channels"]


def one_seed(name: str, heads, train_in, val_in, test_in, z_train, mag_train, z_val, mag_val, z_test, grid,
             seed: int, channels: tuple[int, ...], log, keep: dict[str, Any] | None = None) -> dict[str, Any]:
    """before / single-channel / multi-channel (M chosen on validation) on one seed, plus their calibrations.
    ``keep`` (a dict) receives the chosen multi-channel heads, plan and test probabilities."""
    from zpix.debias.api import DebiasConfig

    vmin = val_min_count(len(z_val), len(z_test))
    p_val0 = np.mean([v.probs for v in val_in], axis=0)
    p_test0 = np.mean([t.probs for t in test_in], axis=0)
    before_val = scores(p_val0, grid, z_val, vmin)
    out: dict[str, Any] = {"seed": seed, "val_min_count": vmin, "before_val": headline_block(before_val)}
    out["before"] = scores(p_test0, grid, z_test)
    log(f"[{name} seed {seed}] before (test): {headline(out['before'])}")
    made = {}
    sweep = []
    for m in (1, *channels):
        t0 = time.perf_counter()
        cfg = DebiasConfig(**BASE_CONFIG[name], seed=seed, mag_channels=m)
        plan, new_heads, hist, p_val, p_test = correct(heads, train_in, val_in, test_in, z_train, mag_train, z_val,
                                                       mag_val, grid, cfg)
        made[m] = (plan, p_val, p_test, new_heads)
        entry = {"mag_channels": m, "val": headline_block(scores(p_val, plan.grid, z_val, vmin)),
                 "test": headline_block(scores(p_test, plan.grid, z_test)),
                 "epochs": [h["epochs_run"] for h in hist], "converged": [h["converged"] for h in hist],
                 "seconds": time.perf_counter() - t0}
        if m > 1:
            entry["channels"] = plan.to_dict()["mag_channels"]
        sweep.append(entry)
        log(f"[{name} seed {seed}] M={m} ({entry['seconds']:.0f} s, epochs {entry['epochs']}) val: "
            f"{headline(entry['val'])}")
    best = choose_channels([s for s in sweep if s["mag_channels"] > 1], before_val["sigma_mad"])
    out["chosen_mag_channels"] = best
    out["sweep"] = sweep
    for label, m in (("debiased", 1), ("debiased_multichannel", best)):
        plan, p_val, p_test, new_heads = made[m]
        out[label] = scores(p_test, plan.grid, z_test)
        _, step, p_after = photoz_calibrate(p_val, z_val, p_test, plan.grid)
        if keep is not None and label == "debiased_multichannel":
            keep.update(plan=plan, heads=new_heads, p_test=p_test, p_test_calibrated=p_after)
        out[f"{label}_calibrated"] = scores(p_after, plan.grid, z_test)
        out[f"{label}_calibration"] = step.calibrator.summary()
        log(f"[{name} seed {seed}] {label} (M={m}) (test): {headline(out[label])}")
        log(f"[{name} seed {seed}] {label} + photo-z calibration (test): {headline(out[f'{label}_calibrated'])}")
    return out


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation (ddof 1) over the seeds of every stage's metrics, and of the paired
    difference multi-channel − single-channel."""
    agg: dict[str, Any] = {}
    for stage in STAGES:
        agg[stage] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
                          "values": v}
                      for k in METRICS for v in [[float(s[stage][k]) for s in per_seed]]}
    for a, b in (("debiased_multichannel", "debiased"), ("debiased_multichannel_calibrated", "debiased_calibrated")):
        d = {k: [float(s[a][k]) - float(s[b][k]) for s in per_seed] for k in METRICS}
        agg[f"{a} - {b}"] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
                                 "values": v} for k, v in d.items()}
    agg["chosen_mag_channels"] = [s["chosen_mag_channels"] for s in per_seed]
    return agg


# --------------------------------------------------------------------------------------------
# the cases


def mgs_case(seeds: list[int], channels: tuple[int, ...], log) -> dict[str, Any] | None:
    """The magnitude network on SDSS MGS, split and trained for each seed as in ``bias_correction.mgs_case``."""
    if not MGS.is_dir():
        log(f"[sdss_mgs] {MGS} is not available (../shared is absent); skipped")
        return None
    from zpix.baselines.magnet import MagNetConfig, train_magnet
    from zpix.baselines.tables import load_magnitudes
    from zpix.debias.head import head_inputs, pdf_head

    per_seed = []
    for seed in seeds:
        grid_cfg = MagNetConfig(seed=seed)
        train_all = load_magnitudes(MGS / "SDSS_MGS.train", columns="sdss-mgs").labelled(grid_cfg.z_min,
                                                                                         grid_cfg.z_max)
        test = load_magnitudes(MGS / "SDSS_MGS.test", columns="sdss-mgs").labelled(grid_cfg.z_min, grid_cfg.z_max)
        perm = np.random.default_rng(seed).permutation(len(train_all))
        val_rows, fit_rows = np.sort(perm[:N_VAL_MGS]), np.sort(perm[N_VAL_MGS:])
        fit, val = train_all.subset(fit_rows), train_all.subset(val_rows)
        t0 = time.perf_counter()
        model, _ = train_magnet(fit, grid_cfg)
        log(f"[sdss_mgs seed {seed}] magnitude network trained on {len(fit)} objects in "
            f"{time.perf_counter() - t0:.0f} s")
        module = model.module
        ins = {k: [head_inputs(module, magnet_batches(model, t))]
               for k, t in (("train", fit), ("val", val), ("test", test))}
        r = list(train_all.bands).index("r")
        per_seed.append(one_seed("sdss_mgs", [pdf_head(module)], ins["train"], ins["val"], ins["test"],
                                 fit.z_spec.astype(np.float64), fit.dereddened()[:, r], val.z_spec.astype(np.float64),
                                 val.dereddened()[:, r], test.z_spec.astype(np.float64), model.grid, seed, channels,
                                 log))
    return {"data": {"catalogue": "SDSS MGS (MLZ SDSS_MGS.train / .test)", "model": "hybrid-mags (PDF head)",
                     "n_train": int(len(fit_rows)), "n_val": int(len(val_rows)), "n_test": int(len(test))},
            "base_config": BASE_CONFIG["sdss_mgs"], "seeds": per_seed, "summary": aggregate(per_seed)}


def mock_inputs(run: Path, cubes: Path, features: Path | None, work: Path, log):
    """The frozen head inputs of ``run`` on its train / val / test rows: ``bias_correction.py``'s cache
    (same file names, keyed by the checkpoints' mtimes) where present, else computed and cached in ``work``."""
    import torch

    from zpix.debias.head import HeadInputs, head_inputs
    from zpix.prediction.streaming import load_ensemble
    from zpix.runs import Split
    from zpix.store.dataset import CubeDataset

    split = Split.load(run / "split.npz")
    members = load_ensemble(run, "cpu", channels_last=True)
    ckpt_stamp = "-".join(f"{int(p.stat().st_mtime)}" for p in sorted(run.glob("member_*/best.ckpt")))
    out = {}
    for part, rows in (("train", split.train), ("val", split.val), ("test", split.test)):
        out[part] = []
        for k, m in enumerate(members):
            name = f"features_{part}{len(rows)}_member{k}_{ckpt_stamp}.npz"
            cache = next((d / name for d in (features, work) if d is not None and (d / name).is_file()), None)
            if cache is not None:
                with np.load(cache) as f:
                    h = HeadInputs(f["features"], f["ebv"] if f["ebv"].size else None, f["probs"], f["z"], f["index"])
                if not np.array_equal(h.index, rows):
                    raise ValueError(f"{cache}: its rows are not {run}'s {part} rows")
                log(f"[mock_sdss] {part} head inputs of member {k} read from {cache}")
            else:
                t0 = time.perf_counter()
                loader = torch.utils.data.DataLoader(CubeDataset(cubes, indices=rows), batch_size=128, num_workers=1)
                h = head_inputs(m, loader)
                work.mkdir(parents=True, exist_ok=True)
                np.savez(work / name, features=h.features, ebv=h.ebv if h.ebv is not None else np.empty(0),
                         probs=h.probs, z=h.z, index=h.index)
                log(f"[mock_sdss] {part} head inputs of member {k}: {len(rows)} objects, "
                    f"{time.perf_counter() - t0:.0f} s")
            out[part].append(h)
    return members, split, out


def mock_case(run: Path, cubes: Path, features: Path | None, work: Path, seeds: list[int], channels, log
              ) -> dict[str, Any]:
    from zpix.debias.api import r_magnitudes
    from zpix.debias.head import pdf_head
    from zpix.pdf import RedshiftGrid
    from zpix.store.cube_store import CubeStore

    members, split, ins = mock_inputs(run, cubes, features, work, log)
    grid = RedshiftGrid.from_dict(members[0].hparams.grid)
    with CubeStore(cubes, validate=False) as store:
        z_all = np.asarray(store.z_spec, dtype=np.float64)
    mag_train, mag_val = r_magnitudes(cubes, split.train), r_magnitudes(cubes, split.val)
    keep: dict[str, Any] = {}
    per_seed = [one_seed("mock_sdss", [pdf_head(m) for m in members], ins["train"], ins["val"], ins["test"],
                         z_all[split.train], mag_train, z_all[split.val], mag_val, z_all[split.test], grid, seed,
                         channels, log, keep if i == 0 else None) for i, seed in enumerate(seeds)]
    return {"data": {"cubes": str(cubes), "run": str(run), "model": members[0].hparams.model_name,
                     "n_train": int(len(split.train)), "n_val": int(len(split.val)), "n_test": int(len(split.test)),
                     "seed_varies": "balanced subset draw and head initialisation (the network is not retrained)"},
            "base_config": BASE_CONFIG["mock_sdss"], "seeds": per_seed, "summary": aggregate(per_seed),
            "run_directories": run_directory_check(run, cubes, work, members, split, keep, log)}


def run_directory_check(run: Path, cubes: Path, work: Path, members, split, keep: dict[str, Any], log
                        ) -> dict[str, Any]:
    """The first seed's multi-channel correction written as a ``zpix debias`` run directory, calibrated by
    ``zpix calibrate``'s function, and the first test rows predicted from both like any run: their PDF means
    must agree with the in-memory numbers above."""
    from zpix.calibration import calibrate
    from zpix.debias.api import module_with_head, write_debiased_run
    from zpix.pdf import pdf_mean
    from zpix.prediction.format import read_predictions
    from zpix.prediction.streaming import predict
    from zpix.store.cube_store import CubeStore

    try:  # the numbers above stand even if writing or predicting the run directories fails
        root = work / f"runs_{int(time.time())}"
        plan = keep["plan"]
        modules = [module_with_head(m, h) for m, h in zip(members, keep["heads"], strict=True)]
        debiased = write_debiased_run(run, root / "debiased_multichannel", modules,
                                      {**plan.to_dict(), "config_section": {"config": plan.config.to_dict(),
                                                                            "grid": plan.grid.to_dict()}})
        calibrated = root / "debiased_multichannel_photoz"
        calibrate(debiased, calibrated, ["photoz"], cubes=str(cubes), device="cpu")
        check = split.test[:N_PREDICT_CHECK]
        with CubeStore(cubes, validate=False) as store:
            order_mem = np.argsort(np.asarray(store.ids)[check])
        out: dict[str, Any] = {"rows": int(len(check)), "mag_channels": int(plan.config.mag_channels)}
        for label, path, probs in (("debiased", debiased, keep["p_test"]),
                                   ("calibrated", calibrated, keep["p_test_calibrated"])):
            pred = read_predictions(predict(path, cubes, root / f"pred_{label}", rows=check, num_workers=1,
                                            progress=False, device="cpu", precision="32"))
            z_dir = pred.catalog["z_mean"].to_numpy()[np.argsort(pred.catalog["id"].to_numpy())]
            z_mem = pdf_mean(probs[:len(check)], plan.grid)[order_mem]
            out[f"{label}_dir"] = str(path)
            out[f"{label}_max_abs_diff_z_mean"] = float(np.max(np.abs(z_dir - z_mem)))
            log(f"[mock_sdss] zpix predict on the {label} multi-channel run dir vs in-memory: max |Δz_mean| = "
                f"{out[f'{label}_max_abs_diff_z_mean']:.2e}")
        return out
    except Exception as err:  # noqa: BLE001 - recorded, not hidden
        log(f"[mock_sdss] writing / predicting the multi-channel run directories failed: {err!r}")
        return {"error": repr(err)}


# --------------------------------------------------------------------------------------------
# rendering


STAGE_LABELS = {"before": "before", "debiased": "debiased, single channel",
                "debiased_multichannel": "debiased, multi-channel (M on validation)",
                "debiased_calibrated": "… + photo-z calibration (single)",
                "debiased_multichannel_calibrated": "… + photo-z calibration (multi-channel)"}


def _pm(cell: dict[str, Any], digits: int, signed: bool = False) -> str:
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    s = fmt.format(cell["mean"])
    return s if cell["std"] is None else f"{s} ± {cell['std']:.{digits}f}"


def render(doc: dict[str, Any]) -> list[str]:
    """The markdown block of docs/bias_correction.md: mean ± std over the seeds, test rows."""
    digits = {"sigma_mad": 5, "spec_z_trend_amplitude": 4, "nz_ks": 4, "max_tomo_bias": 4}
    cases = doc["runs"]
    seeds = sorted({s["seed"] for r in cases.values() for s in r["seeds"]})
    lines = [f"*Generated by `benchmarks/bias_multichannel.py --docs` from `benchmarks/results/bias_multichannel.json` "
             f"({doc['date_utc'][:10]}, commit `{doc['commit']}`); test rows, mean ± std over seeds "
             f"{', '.join(map(str, seeds))}; M among {doc['channels']} chosen per seed on validation rows.*", "",
             "| case | stage | σ_MAD | spec-z trend amplitude | N(z) KS | max \\|Δ⟨z⟩\\| (5 bins) |",
             "|---|---|---|---|---|---|"]
    for name, res in cases.items():
        summ = res["summary"]
        cfg = ", ".join(f"{k} {v}" for k, v in res["base_config"].items())
        first = f"{name} ({res['data']['n_train']:,} train; {cfg}; M chosen: {summ['chosen_mag_channels']})"
        for i, stage in enumerate(STAGES):
            cells = [_pm(summ[stage][k], digits[k]) for k in METRICS]
            lines.append(f"| {first if i == 0 else ''} | {STAGE_LABELS[stage]} | " + " | ".join(cells) + " |")
        for key, label in (("debiased_multichannel - debiased", "multi − single (paired by seed)"),
                           ("debiased_multichannel_calibrated - debiased_calibrated",
                            "multi − single after calibration")):
            cells = [_pm(summ[key][k], digits[k], signed=True) for k in METRICS]
            lines.append(f"|  | {label} | " + " | ".join(cells) + " |")
    for name, res in cases.items():
        rd = res.get("run_directories") or {}
        if "debiased_max_abs_diff_z_mean" in rd:
            lines += ["", f"{name}: the first seed's multi-channel correction (M = {rd['mag_channels']}) written as a "
                      f"`zpix debias` run directory and then calibrated (`photoz`) predicts {rd['rows']:,} test rows "
                      f"with `zpix.prediction.predict` to within {rd['debiased_max_abs_diff_z_mean']:.1e} "
                      f"(debiased) and {rd['calibrated_max_abs_diff_z_mean']:.1e} (calibrated) of the in-memory "
                      "PDF means."]
        elif "error" in rd:
            lines += ["", f"{name}: writing / predicting the run directories failed: {rd['error']}"]
    return lines


def render_docs(results: Path) -> None:
    """Replace the block between the markers of docs/bias_correction.md with :func:`render` of ``results``."""
    doc = json.loads(results.read_text())
    text = DOCS.read_text()
    if DOCS_START not in text or DOCS_END not in text:
        raise SystemExit(f"{DOCS} has no {DOCS_START} ... {DOCS_END} block")
    head, rest = text.split(DOCS_START, 1)
    _, tail = rest.split(DOCS_END, 1)
    DOCS.write_text(f"{head}{DOCS_START}\n" + "\n".join(render(doc)) + f"\n{DOCS_END}{tail}")
    print(f"updated {DOCS}")


@click.command()
@click.option("--cases", default="sdss_mgs,mock_sdss", show_default=True)
@click.option("--run", type=click.Path(exists=True, file_okay=False), help="Trained image run (the mock case).")
@click.option("--cubes", type=click.Path(exists=True, dir_okay=False), help="Its cube store.")
@click.option("--features", type=click.Path(file_okay=False), default=None,
              help="bias_correction.py's feature cache (--work there), read only.")
@click.option("--work", default="runs/bench/bias_multichannel", show_default=True,
              help="Where features missing from --features are computed and cached.")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--channels", default=",".join(map(str, CHANNELS)), show_default=True,
              help="Candidate numbers of r-magnitude channels (chosen on validation rows).")
@click.option("--threads", default=1, show_default=True, help="torch threads (the machine is shared).")
@click.option("--out", default=str(RESULTS / "bias_multichannel.json"), show_default=True)
@click.option("--include", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Results file of an earlier invocation (same commit) whose cases are added to this one's.")
@click.option("--docs", "docs_only", is_flag=True, help="Only render the block of docs/bias_correction.md from --out.")
def main(cases: str, run: str | None, cubes: str | None, features: str | None, work: str, seeds: str,
         channels: str, threads: int, out: str, include: str | None, docs_only: bool) -> None:
    if docs_only:
        render_docs(Path(out))
        return
    import torch

    torch.set_num_threads(threads)
    seed_list = [int(s) for s in seeds.split(",")]
    chans = tuple(int(c) for c in channels.split(","))
    doc: dict[str, Any] = {**stamp(), "method": "Lin et al. 2022 multi-channel outputs (zpix.debias.multichannel) "
                           "against the single-channel head, same debias configuration",
                           "channels": list(chans), "seeds": seed_list, "sigma_tolerance": SIGMA_TOLERANCE,
                           "runs": {}, "log": []}

    def log(msg: str) -> None:
        print(msg, flush=True)
        doc["log"].append(msg)

    t0 = time.perf_counter()
    wanted = cases.split(",")
    if "sdss_mgs" in wanted:
        res = mgs_case(seed_list, chans, log)
        if res is not None:
            doc["runs"]["sdss_mgs"] = res
    if "mock_sdss" in wanted:
        if run is None or cubes is None:
            log("[mock_sdss] needs --run and --cubes; skipped")
        else:
            doc["runs"]["mock_sdss"] = mock_case(Path(run), Path(cubes), Path(features) if features else None,
                                                 Path(work), seed_list, chans, log)
    doc["seconds"] = time.perf_counter() - t0
    if include:
        other = load_same_commit(include, doc["commit"])
        for name, res in other["runs"].items():
            doc["runs"].setdefault(name, {**res, "from_invocation": {"date_utc": other["date_utc"],
                                                                     "seconds": other.get("seconds")}})
        doc["log"] = other.get("log", []) + doc["log"]
        doc["runs"] = {k: doc["runs"][k] for k in ("sdss_mgs", "mock_sdss") if k in doc["runs"]}
    write_json(Path(out), doc)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
