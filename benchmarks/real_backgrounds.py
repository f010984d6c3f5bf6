"""Real backgrounds: how a CNN trained on the pure GalSim mock fares on galaxies in real SDSS frames.

Galaxies of the mock population are injected into the ten real SDSS fields of ``../shared`` by
``zpix inject`` (a cube store; ``--injected``).  Whole fields are held out: the test set is every
injected galaxy of ``--n-test-fields`` fields drawn with ``--seed`` (listed in the JSON), the
training set the galaxies of the other fields (a tenth of them for early stopping).  Then

* ``cnn_injected``: ``--model`` trained on the injected cutouts of the training fields;
* ``cnn_mock``: the same network and settings trained on as many pure ``zpix simulate`` galaxies
  (``--mock``, the shared SDSS-like mock) and tested on the same injected galaxies: the sim-to-real
  background gap;
* ``knn``: the k-NN (Beck et al. 2016) on the magnitudes *measured* on the injected frames (sep Kron
  apertures), trained on the training fields' injected galaxies;

each scored overall and per test field (σ_MAD, bias, η, CRPS, PIT KS), the CNNs as mean ± std over
``--seeds`` model seeds (and the cnn_mock − cnn_injected gap with Welch's t-test), and the measured −
true magnitudes of all injected galaxies are summarised per band and field.

Every (method, seed) result is a part in ``--work`` (``<method>/seed<s>/result.json``, keyed by the
split and training settings); a rerun reuses finished parts and each invocation merges all of them
into the JSON, so the work can be split into one invocation per method and seed:

    B="benchmarks/real_backgrounds.py --injected runs/bench/inject/injected_sdss.h5 --mock runs/bench/mock_sdss.h5"
    python $B --methods cnn_injected --seeds 0     # ... one per method and seed
    python $B --methods knn,cnn_mock_trained_run --seeds 0,1,2   # + merges every finished part
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED, stamp, write_json  # noqa: E402

BANDS = ("u", "g", "r", "i", "z")
OUTLIER_MAG = 0.3  # |measured − true| above this (or a non-positive flux) is a photometric outlier


def metrics_by_field(pred_dir: Path, fields: np.ndarray, ids_to_field: dict[int, str]) -> dict[str, Any]:
    """σ_MAD, bias, η, CRPS, PIT KS overall and per field of a prediction directory."""
    from zpix.evaluation.metrics import summary
    from zpix.prediction.format import read_predictions

    p = read_predictions(pred_dir)
    z_spec = p.catalog["z_spec"].to_numpy(np.float64)
    z_mean = p.catalog["z_mean"].to_numpy(np.float64)
    f = np.array([ids_to_field[int(i)] for i in p.catalog["id"].to_numpy()])
    keys = ("sigma_mad", "bias", "eta", "crps", "pit_ks", "coverage68", "n")

    def pick(sel: np.ndarray) -> dict[str, float]:
        m = summary(z_mean[sel], z_spec[sel], p.pdfs[sel], p.grid)
        return {k: (int(m[k]) if k == "n" else float(m[k])) for k in keys}

    out = pick(np.isfinite(z_spec))
    out["per_field"] = {str(fid): pick(np.isfinite(z_spec) & (f == fid)) for fid in fields}
    return out


def photometry_table(store_path: Path) -> dict[str, Any]:
    """measured − true magnitude per band, overall and per field: median, σ_MAD, outlier fraction.

    true = the injected total flux (Galactic extinction applied, as the frames see it); measured = the
    sep Kron flux on the injected frame, both as Pogson magnitudes (non-positive fluxes are outliers).
    """
    from scipy.stats import median_abs_deviation

    from zpix.store.cube_store import CubeStore

    with CubeStore(store_path, validate=False) as s:
        field = s.column("catalog/field")
        cols = {b: (s.column(f"catalog/flux_{b}"), s.column(f"catalog/inj_flux_{b}")) for b in BANDS}
        detected = s.column("catalog/detected")

    def stats(sel: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {"n": int(sel.sum()), "detected_fraction": float(detected[sel].mean())}
        for b in BANDS:
            meas, true = cols[b][0][sel], cols[b][1][sel]
            good = meas > 0
            d = np.full(meas.shape, np.inf)
            d[good] = -2.5 * np.log10(meas[good] / true[good])
            fin = np.isfinite(d)
            out[b] = {"median": float(np.median(d[fin])) if fin.any() else None,
                      "sigma_mad": float(median_abs_deviation(d[fin], scale="normal")) if fin.any() else None,
                      "outlier_fraction": float(np.mean(~fin | (np.abs(d - np.median(d[fin])) > OUTLIER_MAG)))}
        return out

    table = {"overall": stats(np.ones(len(field), bool))}
    table["per_field"] = {str(f): stats(field == f) for f in np.unique(field)}
    table["definition"] = (f"delta = -2.5 log10(sep Kron flux / injected total flux); outlier: |delta - median| > "
                           f"{OUTLIER_MAG} mag or flux <= 0")
    return table


def make_figure(work: Path, out_png: Path, seed: int = 3) -> dict[str, Any]:
    """The same mock galaxy injected into the fields of best, median and worst r seeing, beside its pure
    ``zpix simulate`` rendering (Lupton et al. 2004 RGB of i, r, g)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import make_lupton_rgb

    from zpix.inject.pipeline import run_copy
    from zpix.inject.psf import FieldCalibration
    from zpix.mock import simulate as sim
    from zpix.mock.population import population_model
    from zpix.mock.presets import get_preset
    from zpix.store.cube_store import CubeStore

    cal_dir = work / "fields"
    cals = {p.stem: FieldCalibration.load(cal_dir, p.stem) for p in sorted(cal_dir.glob("*.json"))}
    order = sorted(cals, key=lambda f: cals[f].bands["r"].fwhm_arcsec)
    picks = [order[0], order[len(order) // 2], order[-1]]
    preset = get_preset("sdss")
    pop = population_model(preset).sample(200, np.random.default_rng(seed))
    # a typical MGS disk galaxy (r ≈ 16.5-17.2, half-light radius 1.2-2.5") shows the seeing best
    hlr = pop["hlr_disk"] * (1 - pop["bulge_fraction"]) + pop["hlr_bulge"] * pop["bulge_fraction"]
    ok = (pop["sel_mag"] > 16.5) & (pop["sel_mag"] < 17.2) & (hlr > 1.2) & (hlr < 2.5) & (pop["bulge_fraction"] < 0.5)
    k = int(np.flatnonzero(ok)[0])
    gal = {key: v[k : k + 1] for key, v in pop.items()}
    gal["index"] = np.array([0])
    # the pure mock rendering: zpix simulate's renderer (Kolmogorov PSF at the preset's median seeing, its noise)
    dim = 10 ** (-0.4 * np.asarray(preset.extinction) * cals[picks[1]].ebv)
    batch = {"index": np.array([0]), "flux_bulge": gal["flux_bulge"] * dim, "flux_disk": gal["flux_disk"] * dim,
             "hlr_bulge": gal["hlr_bulge"], "hlr_disk": gal["hlr_disk"], "q_bulge": gal["q_bulge"],
             "q_disk": gal["q_disk"], "pa": gal["position_angle"], "psf": np.array([preset.psf_fwhm_median]),
             "sky": np.array([preset.sky_sigma]), "epn": np.array([preset.electrons_per_nmgy]),
             "offset": np.zeros((1, 2)), "nb_owner": np.zeros(0, int), "nb_pos": np.zeros((0, 2))}
    for key in ("nb_flux_bulge", "nb_flux_disk"):
        batch[key] = np.zeros((0, 5))
    for key in ("nb_hlr_bulge", "nb_hlr_disk", "nb_q_bulge", "nb_q_disk", "nb_pa"):
        batch[key] = np.zeros(0)
    panels = [("pure GalSim mock (zpix simulate)", sim.render_batch(batch, preset, seed=seed)[0])]
    fig_dir = work / "figure"
    for i, fid in enumerate(picks):
        part = fig_dir / f"{i}_{fid}.h5"
        if not part.exists():
            run_copy(cal_dir=str(cal_dir), field_id=fid, field_index=100 + i, copy=0, gal=gal, seed=seed, stamp=64,
                     render=96, copy_dir=str(fig_dir / f"{i}_{fid}.d"), part=str(part))
        with CubeStore(part, validate=False) as s:
            img = s.images(slice(None))[0]
        c = cals[fid].bands
        panels.append((f"{fid}: r FWHM {c['r'].fwhm_arcsec:.2f}\", r depth {c['r'].depth_5sigma:.1f}", img))
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    for ax, (title, img) in zip(axes, panels, strict=True):
        rgb = make_lupton_rgb(img[3], img[2], img[1], minimum=-0.02, stretch=0.25, Q=8)
        ax.imshow(rgb, origin="lower")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    z = float(gal["z"][0])
    r = float(22.5 - 2.5 * np.log10(gal["flux_bulge"][0, 2] + gal["flux_disk"][0, 2]))
    fig.suptitle(f"One mock galaxy (z = {z:.3f}, r = {r:.2f}) in its pure rendering and injected into three real "
                 "SDSS fields (i, r, g as RGB; 64 × 0.396\")", fontsize=10)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return {"fields": picks, "galaxy_z": z, "galaxy_r": r}


DOCS = ROOT / "docs" / "injection.md"
DOC_START, DOC_END = "<!-- injection-tables:start -->", "<!-- injection-tables:end -->"


def docs_tables(doc: dict[str, Any]) -> str:
    """The per-field PSF/depth table, the photometry table and the benchmark table, from the JSON."""
    lines = [f"*From `benchmarks/results/real_backgrounds.json` ({doc['date_utc'][:10]}, commit `{doc['commit']}`).*",
             "", "**Fields** (measured by `zpix inject`; FWHM of the ePSF's Moffat fit, depth = 5σ point source "
             "in the PSF's noise-equivalent area, E(B−V) = the stand-in):", "",
             "| field | E(B−V) | b (°) | stars r | " + " | ".join(f"FWHM {b} (\")" for b in BANDS) + " | "
             + " | ".join(f"depth {b}" for b in BANDS) + " | PSF |", "|" + "---|" * 15]
    for fid, f in sorted(doc["fields"].items()):
        bands = f["bands"]
        methods = "".join("E" if bands[b]["method"] == "epsf" else "M" for b in BANDS)
        lines.append(f"| {fid} | {f['ebv']:.3f} | {f['galactic_b']:+.1f} | {bands['r']['n_stars']} | "
                     + " | ".join(f"{bands[b]['fwhm_arcsec']:.2f}" for b in BANDS) + " | "
                     + " | ".join(f"{bands[b]['depth_5sigma']:.2f}" for b in BANDS) + f" | {methods} |")
    lines += ["", "PSF per band u g r i z: E = photutils ePSF, M = Moffat (fewer than 12 usable stars).", ""]
    ph = doc["photometry"]
    lines += [f"**Measured − true magnitude** (sep Kron flux on the injected frames vs injected flux; "
              f"{ph['definition']}): median / σ_MAD / outlier %", "",
              "| field | n | detected | " + " | ".join(BANDS) + " |", "|" + "---|" * 8]
    rows = [("all", ph["overall"])] + sorted(ph["per_field"].items())
    for fid, t in rows:
        cells = [f"{t[b]['median']:+.3f} / {t[b]['sigma_mad']:.3f} / {100 * t[b]['outlier_fraction']:.1f}"
                 for b in BANDS]
        lines.append(f"| {fid} | {t['n']} | {100 * t['detected_fraction']:.1f}% | " + " | ".join(cells) + " |")
    if doc.get("methods"):
        sp = doc["split"]
        cfg = doc["config"]
        lines += ["", f"**Held-out fields** {', '.join(sp['test_fields'])} ({sp['n_test']} galaxies); training "
                  f"{sp['n_train']} + {sp['n_val']} validation galaxies of the other fields"
                  + (f" (drawn from {sp['n_train_pool']})" if "n_train_pool" in sp else "")
                  + f"; CNNs: `{cfg['model']}`, at most {cfg['max_epochs']} epochs, patience {cfg['patience']}. "
                  "Mean ± standard deviation over the model seeds where there are several:", "",
                  "| method | field | n | seeds | σ_MAD | bias | η (%) | CRPS | PIT KS |", "|" + "---|" * 9]

        def cell(v: dict[str, Any], k: str, fmt: str, scale: float = 1.0) -> str:
            text = format(scale * v[k], fmt)
            std = v.get(f"{k}_std")
            return text + (f" ± {format(scale * std, fmt.lstrip('+'))}" if std is not None else "")

        for name, m in doc["methods"].items():
            rows = [("all", m)] + list(m.get("per_field", {}).items())
            if "on_pure_mock_test" in m:
                rows.append(("pure mock test rows", m["on_pure_mock_test"]))
            n_seeds = len(m["seeds"]) if "seeds" in m else 1
            for fid, v in rows:
                lines.append(f"| {name} | {fid} | {v['n']} | {n_seeds} | {cell(v, 'sigma_mad', '.4f')} | "
                             f"{cell(v, 'bias', '+.4f')} | {cell(v, 'eta', '.1f', 100)} | {cell(v, 'crps', '.4f')} | "
                             f"{cell(v, 'pit_ks', '.3f')} |")
        gap = doc.get("gap_mock_minus_injected")
        if gap:
            lines += ["", "**Gap** `cnn_mock` − `cnn_injected` (difference of the seed means; Welch's t-test p over "
                      "the seeds):", "", "| field | Δσ_MAD | p | Δbias | p | Δη (%) | p |", "|" + "---|" * 7]

            def p_text(p: float | None) -> str:
                return "–" if p is None else f"{p:.2g}"

            for fid, g in [("all", gap)] + list(gap["per_field"].items()):
                lines.append(f"| {fid} | {g['sigma_mad']['diff']:+.4f} | {p_text(g['sigma_mad']['welch_p'])} | "
                             f"{g['bias']['diff']:+.4f} | {p_text(g['bias']['welch_p'])} | "
                             f"{100 * g['eta']['diff']:+.1f} | {p_text(g['eta']['welch_p'])} |")
    return "\n".join(lines)


def write_docs(doc: dict[str, Any]) -> None:
    """Replace the block between the markers of docs/injection.md with :func:`docs_tables`."""
    text = DOCS.read_text()
    a, b = text.index(DOC_START) + len(DOC_START), text.index(DOC_END)
    DOCS.write_text(text[:a] + "\n" + docs_tables(doc) + "\n" + text[b:])


METRICS = ("sigma_mad", "bias", "eta", "crps", "pit_ks", "coverage68")
CNN_METHODS = ("cnn_injected", "cnn_mock")
ALL_METHODS = ("knn", *CNN_METHODS, "cnn_mock_trained_run")


def mean_std(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof = 1) over seeds of every metric, overall and per field."""

    def combine(items: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": int(items[0]["n"])}
        for k in METRICS:
            v = np.array([it[k] for it in items], np.float64)
            out[k] = float(v.mean())
            out[f"{k}_std"] = float(v.std(ddof=1)) if len(v) > 1 else None
        return out

    runs = [per_seed[s] for s in sorted(per_seed, key=int)]
    out = combine(runs)
    out["per_field"] = {f: combine([r["per_field"][f] for r in runs]) for f in runs[0]["per_field"]}
    return out


def gap_table(mock: dict[str, Any], injected: dict[str, Any]) -> dict[str, Any]:
    """cnn_mock − cnn_injected per metric, overall and per field, with Welch's t-test over the seeds."""
    from scipy.stats import ttest_ind

    def one(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in ("sigma_mad", "bias", "eta", "crps"):
            x, y = np.array([r[k] for r in a]), np.array([r[k] for r in b])
            p = float(ttest_ind(x, y, equal_var=False).pvalue) if min(len(x), len(y)) > 1 else None
            out[k] = {"diff": float(x.mean() - y.mean()), "welch_p": p}
        return out

    a = [mock["per_seed"][s] for s in sorted(mock["per_seed"], key=int)]
    b = [injected["per_seed"][s] for s in sorted(injected["per_seed"], key=int)]
    out = one(a, b)
    out["per_field"] = {f: one([r["per_field"][f] for r in a], [r["per_field"][f] for r in b])
                        for f in a[0]["per_field"]}
    out["definition"] = "cnn_mock minus cnn_injected (mean over seeds); welch_p: Welch's t-test over the seeds"
    return out


def _seed_list(text: str) -> list[int]:
    try:
        seeds = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError as err:
        raise click.BadParameter(f"--seeds {text!r}: comma-separated integers, e.g. 0,1,2") from err
    if not seeds:
        raise click.BadParameter("--seeds: at least one seed")
    return seeds


@click.command()
@click.option("--injected", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Cube store written by zpix inject (all ten fields).")
@click.option("--mock", type=click.Path(exists=True, dir_okay=False),
              default=str(ROOT / "runs" / "bench" / "mock_sdss.h5"), show_default=True,
              help="Pure zpix simulate SDSS mock for cnn_mock.")
@click.option("--seed", default=2019, show_default=True, help="Field hold-out draw and the training/validation draw.")
@click.option("--seeds", "seeds_text", default="0,1,2", show_default=True,
              help="Model seeds of the CNN methods (initialisation, batch order, augmentation); the JSON gives "
                   "mean ± std over them.  Finished (method, seed) parts in --work are reused.")
@click.option("--n-test-fields", default=3, show_default=True)
@click.option("--max-train", type=int, default=None,
              help="Training objects of the CNNs and the k-NN (a fixed draw of the training fields' galaxies; "
                   "cnn_mock gets as many pure mock galaxies) [default: all].")
@click.option("--max-val", type=int, default=None, help="Validation objects (early stopping) [default: a tenth].")
@click.option("--model", default="pasquet2019-small", show_default=True)
@click.option("--epochs", default=12, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--patience", default=4, show_default=True)
@click.option("--threads", default=2, show_default=True, help="torch threads (run under the shared lock: all cores).")
@click.option("--work", type=click.Path(file_okay=False), default=str(ROOT / "runs" / "bench" / "real_backgrounds"),
              show_default=True)
@click.option("--inject-command", default="", help="The zpix inject command that made --injected (recorded).")
@click.option("--inject-commit", default="", help="The commit that zpix inject ran at (recorded).")
@click.option("--results", type=click.Path(file_okay=False), default=str(RESULTS), show_default=True)
@click.option("--knn-k", default=100, show_default=True, help="Neighbours of the k-NN (its default).")
@click.option("--trained-mock-run", default=str(ROOT / "runs" / "bench" / "p19s_20k"), show_default=True,
              help="A network already trained on many pure mock galaxies (method cnn_mock_trained_run): predicted on "
                   "the injected test fields and on 1000 of its own mock test rows, the gap at a realistic size.")
@click.option("--methods", "only", default="knn,cnn_injected,cnn_mock", show_default=True,
              help="Methods to compute in this process (for --seeds); finished parts of every method in --work are "
                   "reused and merged into the JSON, so the work can be split into one invocation per method and seed.")
@click.option("--fresh", is_flag=True, help="Recompute the --methods parts even where finished ones exist.")
@click.option("--figure", "figure_work", type=click.Path(file_okay=False), default=None,
              help="Only draw docs/figures/injected.png from this zpix inject work directory (--keep-work).")
@click.option("--docs", is_flag=True, help="Only rewrite the tables of docs/injection.md from the results JSON.")
def main(injected: str, mock: str, seed: int, seeds_text: str, n_test_fields: int, max_train: int | None,
         max_val: int | None, model: str, epochs: int, batch_size: int, patience: int, threads: int, work: str,
         inject_command: str, inject_commit: str, results: str, knn_k: int, trained_mock_run: str, only: str,
         fresh: bool, figure_work: str | None, docs: bool) -> None:
    """Train/test on held-out real fields and write real_backgrounds.json."""
    if figure_work is not None:
        info = make_figure(Path(figure_work), ROOT / "docs" / "figures" / "injected.png")
        print(f"wrote docs/figures/injected.png: {info}")
        return
    if docs:
        write_docs(json.loads((Path(results) / "real_backgrounds.json").read_text()))
        print(f"rewrote the tables of {DOCS}")
        return
    import hashlib

    import torch

    from zpix.baselines.knn import run_knn
    from zpix.baselines.tables import load_magnitudes
    from zpix.prediction.streaming import predict
    from zpix.runs import Split
    from zpix.store.cube_store import CubeStore
    from zpix.training.api import train
    from zpix.training.config import TrainConfig

    if not SHARED.exists():
        print("../shared not available: nothing to benchmark")
        return
    if injected is None:
        raise click.UsageError("--injected (a zpix inject cube store) is required")
    seeds = _seed_list(seeds_text)
    wanted = [m.strip() for m in only.split(",") if m.strip()]
    unknown = sorted(set(wanted) - set(ALL_METHODS))
    if unknown:
        raise click.BadParameter(f"--methods: unknown {unknown}; known: {', '.join(ALL_METHODS)}")
    torch.set_num_threads(threads)
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    inj = Path(injected)
    with CubeStore(inj, validate=False) as s:
        field = s.column("catalog/field")
        ids = s.ids.astype(np.int64)
        z = s.z_spec
        fields_doc = json.loads(s.attrs["fields"])
        inj_attrs = {k: s.attrs[k] for k in ("generator", "seed", "n_requested", "per_copy")}
    fields = np.unique(field)
    rng = np.random.default_rng(seed)
    test_fields = np.sort(rng.permutation(fields)[:n_test_fields])
    labelled = np.isfinite(z) & (z >= 0) & (z < 0.4)
    test_rows = np.flatnonzero(labelled & np.isin(field, test_fields))
    pool = rng.permutation(np.flatnonzero(labelled & ~np.isin(field, test_fields)))
    n_val = max(1, len(pool) // 10) if max_val is None else min(max_val, len(pool) // 10)
    n_train = len(pool) - n_val if max_train is None else min(max_train, len(pool) - n_val)
    # nested draws: the validation rows are the permutation's head, the training rows the next n_train
    val_rows, train_rows = np.sort(pool[:n_val]), np.sort(pool[n_val : n_val + n_train])
    id_field = dict(zip(ids.tolist(), field.tolist(), strict=True))

    doc: dict[str, Any] = {
        **stamp(),
        "injected": {"cubes": str(inj), "n_objects": int(len(field)), **inj_attrs,
                     "command": inject_command, "commit": inject_commit},
        "mock": {"cubes": str(mock), "generator": "zpix simulate --survey sdss"},
        "split": {"seed": seed, "test_fields": test_fields.tolist(),
                  "train_fields": [str(f) for f in fields if f not in test_fields],
                  "n_train": int(len(train_rows)), "n_val": int(len(val_rows)), "n_test": int(len(test_rows)),
                  "n_train_pool": int(len(pool) - n_val), "z_range": [0.0, 0.4]},
        "config": {"model": model, "max_epochs": epochs, "batch_size": batch_size, "patience": patience,
                   "split_seed": seed, "model_seeds": seeds, "torch_threads": threads, "max_train": max_train,
                   "max_val": max_val, "knn_k": knn_k},
        "scale_note": (f"{len(field)} injected galaxies; the CNNs (and the k-NN) train on {len(train_rows)} of "
                       f"the {len(pool) - n_val} training-field galaxies ({len(val_rows)} more for early stopping), at "
                       f"most {epochs} epochs, to fit ~35 min of locked CPU for all trainings on a shared 2-core "
                       "machine"),
        "std_note": "x_std = sample standard deviation (ddof = 1) over the model seeds; knn and cnn_mock_trained_run "
                    "are deterministic (one value)",
        "fields": fields_doc,
        "status": "running",
        "methods": {},
    }
    out_json = Path(results) / "real_backgrounds.json"
    doc["photometry"] = photometry_table(inj)
    train_key = {k: doc["config"][k] for k in ("model", "max_epochs", "batch_size", "patience")}

    def part_key(name: str, model_seed: int | None) -> dict[str, Any]:
        key: dict[str, Any] = {"method": name, "split": doc["split"], "injected": str(inj)}
        if name in CNN_METHODS:
            key |= {"train": train_key, "model_seed": model_seed, "mock": str(mock) if name == "cnn_mock" else None}
        elif name == "knn":
            key["k"] = knn_k
        else:
            summary_file = Path(trained_mock_run, "summary.json")
            key |= {"run": str(trained_mock_run),
                    "run_summary_sha1": hashlib.sha1(summary_file.read_bytes()).hexdigest()[:12]
                    if summary_file.exists() else None}
        return key

    def part_dir(name: str, model_seed: int | None) -> Path:
        return work_dir / name / (f"seed{model_seed}" if model_seed is not None else "")

    def finished(name: str, model_seed: int | None) -> dict[str, Any] | None:
        f = part_dir(name, model_seed) / "result.json"
        if not f.exists():
            return None
        r = json.loads(f.read_text())
        return r["result"] if r.get("key") == part_key(name, model_seed) else None

    def keep(name: str, model_seed: int | None, result: dict[str, Any]) -> None:
        result = {**result, "commit": doc["commit"], "date_utc": doc["date_utc"]}
        write_json(part_dir(name, model_seed) / "result.json", {"key": part_key(name, model_seed), "result": result})

    def merge() -> None:
        # the JSON gathers every finished part that belongs to this split and configuration
        doc["methods"] = {}
        for name in ALL_METHODS:
            if name in CNN_METHODS:
                per_seed = {str(s): r for s in seeds if (r := finished(name, s)) is not None}
                if not per_seed:
                    continue
                first = next(iter(per_seed.values()))
                doc["methods"][name] = {
                    **mean_std(per_seed), "seeds": [int(s) for s in per_seed], "seeds_requested": seeds,
                    "n_train": first["n_train"], "n_val": first["n_val"], "trained_on": first["trained_on"],
                    "epochs": {s: r["epochs"] for s, r in per_seed.items()},
                    "train_s": {s: r["train_s"] for s, r in per_seed.items()},
                    "commits": sorted({r["commit"] for r in per_seed.values()}), "per_seed": per_seed}
            elif (r := finished(name, None)) is not None:
                doc["methods"][name] = r
        if all(m in doc["methods"] for m in CNN_METHODS):
            doc["gap_mock_minus_injected"] = gap_table(doc["methods"]["cnn_mock"], doc["methods"]["cnn_injected"])
        write_json(out_json, doc)

    merge()
    base = {"model": model, "max_epochs": epochs, "batch_size": batch_size, "patience": patience,
            "num_workers": 1, "accelerator": "cpu", "devices": 1, "progress": False}

    # knn on the measured magnitudes (train fields -> test fields), the CNNs' training + validation objects
    if "knn" in wanted and (fresh or finished("knn", None) is None):
        table = load_magnitudes(inj)
        d = part_dir("knn", None)
        t0 = time.perf_counter()
        run_knn(table.subset(np.sort(np.r_[train_rows, val_rows])), table.subset(test_rows), d / "predictions",
                overwrite=True, k=knn_k)
        r = {**metrics_by_field(d / "predictions", test_fields, id_field),
             "n_train": int(len(train_rows) + len(val_rows)), "k": knn_k, "seconds": time.perf_counter() - t0,
             "trained_on": "measured magnitudes, injected galaxies of the train fields (train + validation rows)"}
        keep("knn", None, r)
        print(f"[knn] {r['sigma_mad']:.4f}", flush=True)

    # the same network on injected cutouts and on pure mock galaxies (as many), one part per seed
    with CubeStore(mock, validate=False) as s:
        mz = s.z_spec
    mock_rows = np.random.default_rng(seed).permutation(np.flatnonzero(np.isfinite(mz) & (mz >= 0) & (mz < 0.4)))
    mock_val, mock_train = np.sort(mock_rows[:n_val]), np.sort(mock_rows[n_val : n_val + len(train_rows)])
    for model_seed in seeds:
        for name, cubes, split in (("cnn_injected", inj, Split(train_rows, val_rows, test_rows)),
                                   ("cnn_mock", Path(mock), Split(mock_train, mock_val, mock_val[:1]))):
            if name not in wanted or (not fresh and finished(name, model_seed) is not None):
                continue
            d = part_dir(name, model_seed)
            if d.exists():
                shutil.rmtree(d)  # an unfinished or outdated part of this script's own work folder
            cfg = TrainConfig(cubes=str(cubes), out=str(d / "run"), seed=model_seed, **base)
            t0 = time.perf_counter()
            result = train(cfg, split=split)
            train_s = time.perf_counter() - t0
            predict(result.run_dir, inj, d / "predictions", rows=test_rows, num_workers=1, progress=False)
            member = result.summary["members"][0]
            r = {**metrics_by_field(d / "predictions", test_fields, id_field),
                 "n_train": int(len(split.train)), "n_val": int(len(split.val)), "train_s": train_s,
                 "epochs": member["epochs"], "model_seed": model_seed,
                 "trained_on": "injected cutouts, train fields" if name == "cnn_injected"
                 else "pure zpix simulate mock"}
            keep(name, model_seed, r)
            print(f"[{name} seed {model_seed}] {r['sigma_mad']:.4f} ({train_s:.0f} s, {r['epochs']} epochs)",
                  flush=True)
    name = "cnn_mock_trained_run"
    if name in wanted and Path(trained_mock_run, "summary.json").exists() and (fresh or finished(name, None) is None):
        # the same architecture trained on ~20k pure mock galaxies by another run: its accuracy on pure mock
        # test rows against the injected test fields is the sim-to-real-background gap at a realistic size
        from zpix.evaluation.metrics import summary as metric_summary
        from zpix.prediction.format import read_predictions
        from zpix.runs import load_split

        d = part_dir(name, None)
        if d.exists():
            shutil.rmtree(d)
        predict(trained_mock_run, inj, d / "predictions", rows=test_rows, num_workers=1, progress=False)
        own = np.sort(load_split(trained_mock_run).test[:1000])
        predict(trained_mock_run, mock, d / "mock_predictions", rows=own, num_workers=1, progress=False)
        p = read_predictions(d / "mock_predictions")
        zs = p.catalog["z_spec"].to_numpy(np.float64)
        ref = metric_summary(p.catalog["z_mean"].to_numpy(), zs, p.pdfs, p.grid)
        run_summary = json.loads(Path(trained_mock_run, "summary.json").read_text())
        r = {**metrics_by_field(d / "predictions", test_fields, id_field),
             "run": str(trained_mock_run), "n_train": run_summary.get("n_train"),
             "epochs": run_summary["members"][0].get("epochs"),
             "on_pure_mock_test": {k: float(ref[k]) for k in ("sigma_mad", "bias", "eta", "crps", "pit_ks")}
             | {"n": int(len(own))},
             "trained_on": "pure zpix simulate mock (another run, see run)"}
        keep(name, None, r)
        print(f"[{name}] {r['sigma_mad']:.4f} on injected, {r['on_pure_mock_test']['sigma_mad']:.4f} on pure mock",
              flush=True)
    merge()
    complete = "knn" in doc["methods"] and all(
        m in doc["methods"] and doc["methods"][m]["seeds"] == seeds for m in CNN_METHODS)
    doc["status"] = "complete" if complete else "partial"
    write_json(out_json, doc)
    print(f"wrote {out_json} ({doc['status']})")


if __name__ == "__main__":
    main()
