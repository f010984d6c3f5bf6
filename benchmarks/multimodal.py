"""Multimodal network (Ait Ouahmed et al. 2024) against the Pasquet et al. (2019) network, and the
modality-dropout study, on a subset of the shared SDSS-like mock.

1. ``multimodal-small`` (2-band first-order modalities u_g, g_r, r_i, i_z, early fusion) against
   ``pasquet2019-small``: the same split, the same budget (epochs, batch, Adam + cosine schedule),
   seeds 0, 1, 2 ...; test σ_MAD, η (|Δz| > 0.05), bias: mean ± std over the seeds and a Welch
   t-test of the σ_MAD difference (is it more than seed noise?).
2. Modality dropout (the slides' "multimodality dropout"): ``multimodal-small`` trained with
   ``modality_dropout`` p, then each modality switched off at test time
   (:meth:`MultimodalNet.set_modality_mask`): Δσ_MAD = σ_MAD(m off) − σ_MAD(all on) on the same
   test objects, with a paired bootstrap interval; also "m alone" (every other modality off), and
   the same switches on the networks trained without modality dropout for contrast.  Figure:
   ``docs/figures/multimodal_dropout.png``.

CPU budget (a 2-core machine shared by several jobs): the networks see the central ``--stamp`` x
``--stamp`` pixels of the mock's 64 x 64 stamps (32: 12.7", the bright MGS galaxies' light is
inside), ``--n-train`` training objects, ``--epochs`` epochs.  The subset is written once to
``<workdir>/subset_<stamp>.h5`` (rows chosen with ``--subset-seed``), so every model reads the
very same images.  Run from a clean checkout::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/multimodal.py --cubes runs/bench/mock_sdss.h5

Writes ``benchmarks/results/multimodal.json`` and the figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"pasquet2019_small": "pasquet2019-small", "multimodal_small": "multimodal-small"}


# -- helpers shared with domain_adaptation.py ----------------------------------------------------------
def write_subset(source: Path, out: Path, rows: np.ndarray, stamp: int, block: int = 512) -> Path:
    """Copy ``rows`` of the cube store ``source`` into ``out``, images cut to their central stamp x stamp."""
    from zpix.store.cube_store import CubeStore, CubeWriter

    rows = np.sort(np.asarray(rows, dtype=np.int64))
    if out.exists():
        with CubeStore(out, validate=False) as done:
            if len(done) == len(rows) and done.image_shape[1] == stamp and np.array_equal(
                    done.column("ids"), CubeStore(source, validate=False).column("ids")[rows]):
                print(f"reusing {out}", flush=True)
                return out
        raise SystemExit(f"{out} exists with other content; remove it or choose another --workdir")
    with CubeStore(source, validate=False) as src:
        size = src.image_shape[1]
        lo = (size - stamp) // 2
        mags, errs = src.column("mags"), src.column("mag_errs") if "mag_errs" in src.file else None
        z, ebv, ids = src.z_spec, src.ebv, src.column("ids")
        with CubeWriter(out, bands=src.bands, image_shape=(stamp, stamp), pixel_scale_arcsec=src.pixel_scale_arcsec,
                        survey=src.survey, mag_names=src.mag_names,
                        attrs={"subset_of": str(source), "stamp_cut_from": size}) as writer:
            for start in range(0, len(rows), block):
                r = rows[start:start + block]
                images = src.images(r)[:, :, lo:lo + stamp, lo:lo + stamp]
                writer.append(images, z[r], ebv[r], ids[r], mags=mags[r], mag_errs=None if errs is None else errs[r])
    return out


def predict_z(checkpoint: Path, cubes: Path, rows: np.ndarray | None = None, mask: list[bool] | None = None,
              batch: int = 256) -> np.ndarray:
    """PDF-mean redshifts (Pasquet et al. 2019 Eq. 2) of ``rows`` of ``cubes``, optional modality mask."""
    import torch

    from zpix.store.cube_store import CubeStore
    from zpix.training.module import PhotoZModule

    module = PhotoZModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    if mask is not None:
        module.model.set_modality_mask(mask)
    centres = torch.as_tensor(module.grid.centers, dtype=torch.float32)
    with CubeStore(cubes, validate=False) as store, torch.no_grad():
        rows = np.arange(len(store)) if rows is None else np.asarray(rows)
        ebv = store.ebv.astype(np.float32)
        out = []
        for start in range(0, len(rows), batch):
            r = rows[start:start + batch]
            probs = module({"image": torch.from_numpy(store.images(r)), "ebv": torch.from_numpy(ebv[r])})
            out.append((probs * centres).sum(1).numpy())
    return np.concatenate(out).astype(np.float64)


def point_metrics(z_phot: np.ndarray, z_spec: np.ndarray, n_tomo: int = 5) -> dict[str, float]:
    """σ_MAD, bias <Δz>, η(|Δz| > 0.05) and the largest |<z_phot> − <z_spec>| over ``n_tomo`` equal-count
    z_phot bins (a tomographic-bin mean-redshift error)."""
    from zpix.evaluation.metrics import bias, delta_z, outlier_fraction, sigma_mad

    dz = delta_z(z_phot, z_spec)
    order = np.argsort(z_phot, kind="stable")
    tomo = [float(np.mean(z_phot[b]) - np.mean(z_spec[b])) for b in np.array_split(order, n_tomo)]
    return {"sigma_mad": sigma_mad(dz), "bias": bias(dz), "eta": outlier_fraction(dz, 0.05),
            "max_tomo_bias": float(np.max(np.abs(tomo))), "tomo_bias": tomo, "n": int(len(dz))}


def paired_bootstrap(z_a: np.ndarray, z_b: np.ndarray, z_spec: np.ndarray, n_boot: int = 300, seed: int = 0
                     ) -> tuple[float, float, float]:
    """σ_MAD(b) − σ_MAD(a) on the same objects and its 16th/84th bootstrap percentiles."""
    from zpix.evaluation.metrics import delta_z, sigma_mad

    da, db = delta_z(z_a, z_spec), delta_z(z_b, z_spec)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(da), len(da))
        boots.append(sigma_mad(db[i]) - sigma_mad(da[i]))
    lo, hi = np.percentile(boots, [16, 84])
    return sigma_mad(db) - sigma_mad(da), float(lo), float(hi)


def code_commit() -> dict[str, Any]:
    import subprocess

    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(dirty)}


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def train_run(cubes: Path, out: Path, model: str, split: Any, seed: int, epochs: int, batch: int,
              model_args: dict[str, Any] | None = None, **extra: Any) -> tuple[Path, dict[str, Any]]:
    """One zpix training run (Adam, cosine schedule over ``epochs``, no early stop); reused when finished."""
    from zpix.training.api import train

    ckpt, done = out / "member_0" / "best.ckpt", out / "member_0" / "summary.json"
    if ckpt.is_file() and done.is_file():  # a finished member (zpix train writes its summary last)
        print(f"reusing {out}", flush=True)
        return ckpt, json.loads(done.read_text())
    start = time.perf_counter()
    result = train({"cubes": str(cubes), "out": str(out), "model": model, "model_args": model_args or {},
                    "max_epochs": epochs, "patience": epochs, "lr_schedule": "cosine", "batch_size": batch,
                    "seed": seed, "num_workers": 0, "progress": False,
                    # raw network PDFs are scored here: no post-hoc calibration fit after training
                    "calibrate": [], **extra}, split=split)
    member = result.summary["members"][0]
    print(f"  {out.name}: {member['epochs']} epochs, {member['steps']} steps, "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return result.checkpoints[0], member


# -- the benchmark ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cubes", type=Path, default=ROOT / "runs" / "bench" / "mock_sdss.h5")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "multimodal")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "multimodal.json")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "multimodal_dropout.png")
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--stamp", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modality-dropout", type=float, default=0.25)
    parser.add_argument("--subset-seed", type=int, default=2019)
    parser.add_argument("--replot", action="store_true", help="only redraw the figure from the --out JSON")
    args = parser.parse_args(argv)
    if args.replot:
        doc = json.loads(args.out.read_text())
        make_figure(doc["modality_dropout"], doc["modality_switch_without_dropout"], args.figure)
        return doc

    import torch
    from scipy import stats

    from zpix.models.multimodal import modality_names
    from zpix.runs import Split
    from zpix.store.cube_store import CubeStore
    from zpix.training.splits import labelled_rows

    torch.set_num_threads(1)
    code = code_commit()
    started = time.perf_counter()
    load_start = [round(v, 2) for v in __import__("os").getloadavg()]
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with CubeStore(args.cubes, validate=False) as store:
        rows = labelled_rows(store.z_spec, np.arange(len(store)), 0.0, 0.4)
        n_mock = len(store)
    n = args.n_train + args.n_val + args.n_test
    chosen = np.random.default_rng(args.subset_seed).choice(rows, n, replace=False)
    subset = write_subset(args.cubes, workdir / f"subset_{args.stamp}.h5", chosen, args.stamp)
    # one split of the subset for every model and seed
    perm = np.random.default_rng(args.subset_seed + 1).permutation(n)
    split = Split(np.sort(perm[:args.n_train]), np.sort(perm[args.n_train:args.n_train + args.n_val]),
                  np.sort(perm[args.n_train + args.n_val:]))
    with CubeStore(subset, validate=False) as store:
        z_test = store.z_spec[split.test]
        bands = store.bands

    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in MODELS}
    checkpoints: dict[str, list[Path]] = {key: [] for key in MODELS}
    for seed in args.seeds:
        for key, model in MODELS.items():
            ckpt, member = train_run(subset, workdir / f"{key}_s{seed}", model, split, seed, args.epochs,
                                     args.batch_size)
            z = predict_z(ckpt, subset, split.test)
            runs[key].append({"seed": seed, **point_metrics(z, z_test), "train_seconds": member["train_seconds"],
                              "steps": member["steps"]})
            checkpoints[key].append(ckpt)
            print(f"  {key} seed {seed}: sigma_MAD {runs[key][-1]['sigma_mad']:.5f}", flush=True)

    methods: dict[str, dict[str, Any]] = {}
    for key, per_seed in runs.items():
        doc: dict[str, Any] = {"model": MODELS[key], "n_seeds": len(per_seed)}
        for metric in ("sigma_mad", "eta", "bias", "max_tomo_bias"):
            values = np.array([r[metric] for r in per_seed])
            doc[f"{metric}_mean"] = float(values.mean())
            doc[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        doc["seeds"] = per_seed
        methods[key] = doc
    a = np.array([r["sigma_mad"] for r in runs["pasquet2019_small"]])
    b = np.array([r["sigma_mad"] for r in runs["multimodal_small"]])
    welch = stats.ttest_ind(b, a, equal_var=False) if len(a) > 1 else None
    gain = 1 - b.mean() / a.mean()
    noise = float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))) if len(a) > 1 else float("nan")
    comparison = {
        "sigma_mad_gain_of_multimodal": float(gain),
        "sigma_mad_difference": float(b.mean() - a.mean()),
        "difference_std_error": noise,
        "welch_t": float(welch.statistic) if welch else None,
        "welch_p": float(welch.pvalue) if welch else None,
        "exceeds_seed_noise": bool(welch is not None and welch.pvalue < 0.05),
        "paper_sdss_gain": {"sigma": 0.0174, "eta": 0.1088, "note": "full networks, 516.5k SDSS test galaxies"},
    }
    eta_a = np.array([r["eta"] for r in runs["pasquet2019_small"]])
    eta_b = np.array([r["eta"] for r in runs["multimodal_small"]])
    comparison["eta_gain_of_multimodal"] = float(1 - eta_b.mean() / eta_a.mean()) if eta_a.mean() > 0 else None

    # -- modality dropout --------------------------------------------------------------------------
    seed0 = args.seeds[0]
    ckpt, member = train_run(subset, workdir / f"multimodal_small_dropout{args.modality_dropout:g}_s{seed0}",
                             "multimodal-small", split, seed0, args.epochs, args.batch_size,
                             model_args={"modality_dropout": args.modality_dropout})
    from zpix.training.module import PhotoZModule

    modalities = PhotoZModule.load_from_checkpoint(ckpt, map_location="cpu").model.modalities
    names = modality_names(bands, modalities)

    def switch_table(checkpoint: Path) -> dict[str, Any]:
        z_all = predict_z(checkpoint, subset, split.test)
        table: dict[str, Any] = {"all_on": point_metrics(z_all, z_test), "off": {}, "alone": {}}
        for i, name in enumerate(names):
            off = [j != i for j in range(len(names))]
            alone = [j == i for j in range(len(names))]
            for label, mask in (("off", off), ("alone", alone)):
                z = predict_z(checkpoint, subset, split.test, mask=mask)
                delta, lo, hi = paired_bootstrap(z_all, z, z_test)
                table[label][name] = {**point_metrics(z, z_test), "delta_sigma_mad": delta,
                                      "delta_sigma_mad_16_84": [lo, hi]}
        return table

    dropout = {"modality_dropout": args.modality_dropout, "seed": seed0, "modalities": names,
               "train_seconds": member["train_seconds"], **switch_table(ckpt)}
    no_dropout = {"modality_dropout": 0.0, "seed": seed0, "modalities": names,
                  **switch_table(checkpoints["multimodal_small"][0])}

    figure = None
    try:
        figure = make_figure(dropout, no_dropout, args.figure)
    except ImportError as err:  # matplotlib missing: the table is still written
        print(f"no figure: {err}", flush=True)

    doc = {
        "benchmark": "multimodal",
        "paper": "Ait Ouahmed et al. 2024, A&A 683, A26 (multimodality, modality dropout)",
        "date_utc": __import__("datetime").datetime.now(__import__("datetime").UTC).isoformat(timespec="seconds"),
        "code": code,
        "loadavg_at_start": load_start,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "data": {"cubes": str(args.cubes), "n_mock": n_mock, "subset_seed": args.subset_seed,
                 "n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test,
                 "stamp": args.stamp, "stamp_note": f"central {args.stamp}x{args.stamp} pixels of the 64x64 stamps"},
        "budget": {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "Adam lr 1e-3",
                   "lr_schedule": "cosine over the epochs", "early_stopping": False,
                   "checkpoint": "lowest validation loss", "torch_threads": 1},
        "scaled_down": "CPU budget: a few thousand training objects, few epochs, 32x32 stamps; the paper's "
                       "networks are full size on 500k galaxies",
        "methods": methods,
        "comparison": comparison,
        "modality_dropout": dropout,
        "modality_switch_without_dropout": no_dropout,
        "figure": str(figure.relative_to(ROOT)) if figure and figure.is_relative_to(ROOT) else
        (str(figure) if figure else None),
    }
    write_json(args.out, doc)
    print(json.dumps({k: {m: v for m, v in d.items() if m != "seeds"} for k, d in methods.items()}, indent=1))
    print(json.dumps(comparison, indent=1))
    print(f"wrote {args.out}", flush=True)
    return doc


def make_figure(dropout: dict[str, Any], no_dropout: dict[str, Any], path: Path) -> Path:
    """Bars of Δσ_MAD per modality switched off (with dropout; without, hollow), bootstrap 16-84% bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = dropout["modalities"]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, kind, title in ((axes[0], "off", "modality switched off"), (axes[1], "alone", "modality alone")):
        for shift, table, style in ((-0.18, dropout, {"color": "C0"}),
                                    (0.18, no_dropout, {"facecolor": "none", "edgecolor": "C1", "hatch": "//"})):
            d = np.array([table[kind][m]["delta_sigma_mad"] for m in names])
            lo = np.array([table[kind][m]["delta_sigma_mad_16_84"][0] for m in names])
            hi = np.array([table[kind][m]["delta_sigma_mad_16_84"][1] for m in names])
            label = (f"trained with modality dropout p={table['modality_dropout']:g}"
                     if table["modality_dropout"] else "trained without modality dropout")
            ax.bar(x + shift, d, width=0.36, label=label, **style)
            ax.errorbar(x + shift, d, yerr=[d - lo, hi - d], fmt="none", ecolor="k", lw=1)
        ax.set_xticks(x, names)
        ax.set_yscale("symlog", linthresh=1e-3)
        top = max(max(t[kind][m]["delta_sigma_mad_16_84"][1] for m in names) for t in (dropout, no_dropout))
        bottom = min(min(t[kind][m]["delta_sigma_mad_16_84"][0] for m in names) for t in (dropout, no_dropout))
        ax.set_ylim(min(bottom * 1.5, -1e-3), top * 2.5)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(title)
        ax.set_ylabel("Δσ_MAD vs all modalities on")
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="lower center", ncol=2)
    fig.suptitle(f"multimodal-small, test σ_MAD all on: {dropout['all_on']['sigma_mad']:.4f} (dropout), "
                 f"{no_dropout['all_on']['sigma_mad']:.4f} (no dropout)", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


if __name__ == "__main__":
    main()
