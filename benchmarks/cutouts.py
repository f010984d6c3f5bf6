"""Cutouts per second on the real SDSS field 2583/2/136 (issue 5).

Detects every source of the r frame with sep (about 4400), then times ``make_cutouts`` making
64x64x5 cubes for all of them from the five ``.fits.bz2`` frames, with the default Lanczos-3
backend at 1 and 2 worker processes, and with the ``interp`` (reproject) and ``swarp`` backends
on a subset. Frame decompression (once per run, into the work directory's cache) is included
in every timing, as a user would see it. Prints a table and writes
``benchmarks/results/cutouts.json`` with the machine description and its load average, since
our machines are shared.

    .venv/bin/python benchmarks/cutouts.py [--n-targets N] [--workers 1 2] [--subset 200]
    .venv/bin/python benchmarks/cutouts.py --figure docs/figures/real_cutouts.png   # the docs figure only
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED, stamp, write_json  # noqa: E402

FIELD = SHARED / "data" / "real" / "sdss_frame_2583_2_136"


def detect(field: Path, galaxies: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sky positions of the sources sep finds on the r frame (5 sigma, 10 pixels).

    With ``galaxies > 0``: only that many of the largest unsaturated, isolated sources away from the edges.
    """
    import sep
    from astropy.io import fits

    from zpix.ingest.frames import wcs_from_header

    with fits.open(field / "frame-r-002583-2-0136.fits.bz2") as hdul:
        data = hdul[0].data.astype(np.float64)
        wcs = wcs_from_header(hdul[0].header)
    bkg = sep.Background(data)
    sep.set_sub_object_limit(4096)
    objects = sep.extract(data - bkg.back(), 5.0, err=bkg.globalrms, minarea=10)
    if galaxies:
        from scipy.spatial import cKDTree

        sub = data - bkg.back()
        r50, _ = sep.flux_radius(sub, objects["x"], objects["y"], 6.0 * objects["a"], 0.5, subpix=5)
        xy = np.c_[objects["x"], objects["y"]]
        tree = cKDTree(xy)
        nearest = tree.query(xy, 2)[0][:, 1]
        # the field holds the globular cluster M2 (NGC 7089, 323.3626 -0.8233): skip it and crowded stamps
        crowd = np.array([len(n) for n in tree.query_ball_point(xy, 32.0)])
        ra_o, dec_o = wcs.pixel_to_world_values(objects["x"], objects["y"])
        far_from_m2 = np.hypot((ra_o - 323.3626) * np.cos(np.radians(-0.82)), dec_o + 0.8233) > 0.1
        ny, nx = data.shape
        ok = ((objects["flag"] == 0) & (nearest > 12) & (crowd <= 6) & far_from_m2
              & (objects["x"] > 40) & (objects["x"] < nx - 40)
              & (objects["y"] > 40) & (objects["y"] < ny - 40) & (objects["flux"] > 20) & (objects["flux"] < 800)
              & (r50 > 2.5))
        # no saturated star (or its bleed trails and spikes) anywhere in the stamp
        for k in np.flatnonzero(ok):
            x, y = int(objects["x"][k]), int(objects["y"][k])
            ok[k] = data[y - 32 : y + 32, x - 32 : x + 32].max() < 100
        idx = np.flatnonzero(ok)
        idx = idx[np.argsort(-objects["flux"][idx])][:galaxies]
        objects = objects[idx]
    ra, dec = wcs.pixel_to_world_values(objects["x"], objects["y"])
    return np.atleast_1d(ra), np.atleast_1d(dec)


def figure(path: Path) -> None:
    """A few real cutouts as Lupton et al. (2004) RGB composites (i, r, g), and the five bands of one."""
    import h5py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import AsinhStretch, ImageNormalize, make_lupton_rgb

    from zpix.ingest.cutouts import make_cutouts

    ra, dec = detect(FIELD, galaxies=5)
    with tempfile.TemporaryDirectory(prefix="zpix-fig-") as tmpdir:
        out = Path(tmpdir) / "fig.h5"
        make_cutouts(str(FIELD / "frame-*.fits.bz2"), {"ra": ra, "dec": dec}, size=64, out=out, progress=False)
        with h5py.File(out) as f:
            cubes, bands = f["images"][:], [str(b) for b in f.attrs["bands"]]
    fig, axes = plt.subplots(2, 5, figsize=(11, 5.9))
    for k, ax in enumerate(axes[0]):
        if k >= len(cubes):
            ax.axis("off")
            continue
        i, r, g = (cubes[k, bands.index(b)] for b in "irg")
        ax.imshow(make_lupton_rgb(i, r, g * 1.3, minimum=-0.02, stretch=0.4, Q=6), origin="lower")
        ax.set_title(f"{ra[k]:.4f} {dec[k]:+.4f}", fontsize=8)
    for j, (band, ax) in enumerate(zip(bands, axes[1], strict=False)):
        # each band on its own asinh scale: u is much fainter than z for these red galaxies
        norm = ImageNormalize(cubes[0, j], stretch=AsinhStretch(0.1), vmin=-0.05,
                              vmax=np.percentile(cubes[0, j], 99.9))
        ax.imshow(cubes[0, j], origin="lower", cmap="gray", norm=norm)
        ax.axhline(31.5, color="tab:red", lw=0.4)
        ax.axvline(31.5, color="tab:red", lw=0.4)
        ax.set_title(f"{band} (first galaxy)", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.text(0.5, 0.01, "SDSS run 2583 camcol 2 field 136; 64 x 64 pixels of 0.396\" on a TAN grid centred on each "
             "galaxy (north up, east left), Lanczos-3. Top: RGB = i, r, g (Lupton et al. 2004). Bottom: the five "
             "bands of the first galaxy, each on its own asinh scale; red lines cross at the stamp centre.",
             ha="center", fontsize=7.5, wrap=True)
    fig.suptitle("zpix cutouts from real SDSS frames (Pasquet et al. 2019, Sect. 2)", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"-> {path}")


def time_run(ra: np.ndarray, dec: np.ndarray, backend: str, workers: int, tmp: Path) -> dict:
    from zpix.ingest.cutouts import make_cutouts

    out = tmp / f"{backend}-{workers}-{len(ra)}.h5"
    # CPU time too (this process and its finished worker processes): the machine is shared, so
    # wall-clock rates depend on what else runs, CPU-time rates much less
    cpu0 = time.process_time() + _children_cpu()
    start = time.perf_counter()
    report = make_cutouts(str(FIELD / "frame-*.fits.bz2"), {"ra": ra, "dec": dec}, size=64, out=out,
                          backend=backend, workers=workers, progress=False, work_dir=tmp / f"work-{out.stem}")
    seconds = time.perf_counter() - start
    cpu = time.process_time() + _children_cpu() - cpu0
    out.unlink()
    return {"backend": backend, "workers": workers, "n_targets": len(ra), "n_written": report.n_written,
            "n_flagged": report.n_flagged, "seconds": round(seconds, 2),
            "cutouts_per_s": round(len(ra) / seconds, 1), "cpu_seconds": round(cpu, 2),
            "cutouts_per_cpu_s": round(len(ra) / cpu, 1)}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-targets", type=int, default=0, help="0: every detected source")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--subset", type=int, default=200, help="targets for the interp and swarp backends")
    parser.add_argument("--out", type=Path, default=RESULTS / "cutouts.json")
    parser.add_argument("--figure", type=Path, default=None, help="only draw the docs figure to this path")
    args = parser.parse_args()
    if not FIELD.is_dir():
        print(f"not available: {FIELD} (the real SDSS field lives in ../shared beside the project)")
        return 0
    warnings.filterwarnings("ignore", module="astropy")
    if args.figure is not None:
        figure(args.figure)
        return 0
    from zpix.ingest.resample import find_swarp

    load_at_start = os.getloadavg()
    ra, dec = detect(FIELD)
    if args.n_targets:
        ra, dec = ra[: args.n_targets], dec[: args.n_targets]
    runs = []
    with tempfile.TemporaryDirectory(prefix="zpix-bench-cutouts-") as tmpdir:
        tmp = Path(tmpdir)
        for workers in args.workers:
            runs.append(time_run(ra, dec, "lanczos3", workers, tmp))
            print(runs[-1], flush=True)
        sub = slice(0, min(args.subset, len(ra)))
        backends = ["interp", "lanczos3"] + (["swarp"] if find_swarp() else [])
        for backend in backends:
            runs.append(time_run(ra[sub], dec[sub], backend, 1, tmp))
            print(runs[-1], flush=True)
    doc = {
        **stamp(),
        "what": "zpix cutouts on SDSS field 2583/2/136: 64x64x5 cubes from five .fits.bz2 frames, "
                "decompression and indexing included",
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "swarp": find_swarp(),
        "runs": runs,
    }
    write_json(args.out, doc)
    print(f"\n{'backend':9s} {'workers':>7s} {'targets':>7s} {'seconds':>8s} {'cutouts/s':>9s} {'per CPU-s':>9s}")
    for r in runs:
        print(f"{r['backend']:9s} {r['workers']:7d} {r['n_targets']:7d} {r['seconds']:8.1f} {r['cutouts_per_s']:9.1f} "
              f"{r['cutouts_per_cpu_s']:9.1f}")
    print(f"load average at start {load_at_start}, at end {os.getloadavg()} on {os.cpu_count()} cores")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
