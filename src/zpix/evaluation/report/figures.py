"""The report's figures, after Pasquet et al. (2019) Figs. 6-11, for one or several methods.

Every function takes the :class:`~zpix.evaluation.evaluate.MethodScores` of the methods (first = the
main one) and the metrics dictionary of :func:`zpix.evaluation.evaluate.run_evaluation`, and returns a
matplotlib ``Figure`` built on the Agg canvas directly (no pyplot, no global backend switch,
so the report can be made inside a notebook or a GUI session without side effects).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from scipy import stats

from zpix.evaluation.evaluate import TREND_COLUMNS, MethodScores, widest_removed
from zpix.evaluation.metrics import outlier_fraction, sigma_mad
from zpix.evaluation.nz import NZ_REQUIREMENT

#: The main method is red as the CNN in Pasquet's figures; compared methods follow.
COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
LABELS = {
    "z_spec": r"$z_\mathrm{spec}$",
    "z_phot": r"$z_\mathrm{phot}$",
    "r_mag": "r magnitude [mag]",
    "ebv": "E(B−V) [mag]",
    "snr_r": "S/N in r",
    "axis_ratio": "axis ratio b/a",
    "psf_fwhm_r": "PSF FWHM in r [arcsec]",
}
DZ = r"$\Delta z = (z_\mathrm{phot}-z_\mathrm{spec})/(1+z_\mathrm{spec})$"


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _text_box(ax: Any, text: str, loc: str = "upper left") -> None:
    x, ha = (0.03, "left") if "left" in loc else (0.97, "right")
    y, va = (0.97, "top") if "upper" in loc else (0.03, "bottom")
    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=8.5,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})


def _z_limit(scores: Sequence[MethodScores]) -> float:
    z = np.concatenate([np.r_[s.objects["z_spec"], s.objects["z_phot"]] for s in scores])
    hi = float(np.nanpercentile(z, 99.9))
    return min(scores[0].grid.z_max, max(hi * 1.08, 0.05))


def save(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG."""
    fig.savefig(path, dpi=110)
    return Path(path)


# --------------------------------------------------------------------------------- Fig. 7


def fig_zphot_zspec(scores: Sequence[MethodScores], result: dict[str, Any], eta_threshold: float = 0.05) -> Figure:
    """z_phot against z_spec as a density, with the 1:1 line and the outlier bounds (Fig. 7)."""
    n = len(scores)
    fig = _figure(4.6 * n + 0.6, 4.6)
    axes = fig.subplots(1, n, squeeze=False)[0]
    zmax = _z_limit(scores)
    bins = np.linspace(0, zmax, 90)
    zz = np.linspace(0, zmax, 50)
    im = None
    counts_max = max(np.histogram2d(s.objects["z_spec"], s.objects["z_phot"], bins=bins)[0].max() for s in scores)
    for s, ax in zip(scores, axes, strict=True):
        h, _, _ = np.histogram2d(s.objects["z_spec"], s.objects["z_phot"], bins=bins)
        h = np.ma.masked_equal(h.T, 0)
        im = ax.pcolormesh(bins, bins, h, norm=LogNorm(vmin=1, vmax=max(counts_max, 2)), cmap="viridis",
                           rasterized=True)
        ax.plot(zz, zz, color="k", lw=1, label="1:1")
        ax.plot(zz, zz + eta_threshold * (1 + zz), "k--", lw=0.9, label=rf"$|\Delta z|={eta_threshold:g}$")
        ax.plot(zz, zz - eta_threshold * (1 + zz), "k--", lw=0.9)
        ax.set_xlim(0, zmax)
        ax.set_ylim(0, zmax)
        ax.set_aspect("equal")
        ax.set_xlabel(LABELS["z_spec"])
        ax.set_ylabel(LABELS["z_phot"] + f" ({s.name}, {s.point})")
        m = result["methods"][s.name]["overall"]
        _text_box(ax, f"{s.name}\nN = {m['n']:,}\n$\\sigma_{{MAD}}$ = {m['sigma_mad']:.5f}\n"
                      f"bias = {m['bias']:+.5f}\n$\\eta$ = {100 * m['eta']:.2f}%")
        ax.legend(loc="lower right", fontsize=8)
    fig.colorbar(im, ax=list(axes), label="galaxies per cell", shrink=0.85)
    return fig


# --------------------------------------------------------------------------------- Fig. 6


def fig_dz_hist(scores: Sequence[MethodScores], result: dict[str, Any], eta_threshold: float = 0.05) -> Figure:
    """Normalised Δz distribution with the Gaussian of σ_MAD and bias, outliers hatched (Fig. 6).

    Left linear (the core), right logarithmic (the tails, where the outliers are).
    """
    fig = _figure(11, 4.6)
    axes = fig.subplots(1, 2)
    s_max = max(result["methods"][s.name]["overall"]["sigma_mad"] for s in scores)
    lim = np.ceil(max(0.1, 6 * s_max, 1.5 * eta_threshold) * 50) / 50  # a round axis limit
    bins = np.linspace(-lim, lim, 121)
    x = np.linspace(-lim, lim, 600)
    for ax, log in zip(axes, (False, True), strict=True):
        for i, s in enumerate(scores):
            m = result["methods"][s.name]["overall"]
            dz = s.objects["dz"].to_numpy()
            beyond = int(np.sum(np.abs(dz) > lim))
            # density of the whole sample (weights, not density=True) so the Gaussian compares fairly
            ax.hist(dz, bins=bins, weights=np.full(dz.size, 1 / (dz.size * (bins[1] - bins[0]))),
                    histtype="step", color=_color(i), lw=1.4,
                    label=f"{s.name} (N={m['n']:,}; {beyond} beyond ±{lim:.2f})")
            g = stats.norm.pdf(x, m["bias"], m["sigma_mad"])
            ax.plot(x, g, color=_color(i), ls="--", lw=1,
                    label=rf"Gaussian $\sigma_{{MAD}}$={m['sigma_mad']:.4f}, bias={m['bias']:+.4f}")
        for side in (-1, 1):
            ax.axvspan(*sorted((side * eta_threshold, side * lim)), fc="none", ec="0.6", hatch="///", lw=0)
        ax.set_xlim(-lim, lim)
        ax.set_xlabel(DZ)
        ax.set_ylabel("probability density")
        if log:
            ax.set_yscale("log")
            ax.set_ylim(bottom=0.5 / (len(scores[0].objects) * (bins[1] - bins[0])))
            ax.set_title(f"log scale: tails (|Δz| > {eta_threshold:g} hatched: outliers)", fontsize=9)
        else:
            ax.set_title("linear scale: core of the distribution", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8)
    return fig


# --------------------------------------------------------------------------------- Fig. 8


def fig_residuals(scores: Sequence[MethodScores], result: dict[str, Any]) -> Figure:
    """Mean Δz against z_spec and against z_phot with bootstrap errors, and the z histograms (Fig. 8).

    The shaded band is |<Δz>| < 0.002, the Euclid-like requirement in photo-z bins.
    """
    fig = _figure(11, 6)
    gs = fig.add_gridspec(2, 2, height_ratios=(2.3, 1))
    for col, var in enumerate(("z_spec", "z_phot")):
        ax = fig.add_subplot(gs[0, col])
        axh = fig.add_subplot(gs[1, col], sharex=ax)
        ax.axhspan(-NZ_REQUIREMENT, NZ_REQUIREMENT, color="gold", alpha=0.35, lw=0,
                   label=r"$|\langle\Delta z\rangle| < 0.002$")
        ax.axhline(0, color="k", lw=0.8)
        for i, s in enumerate(scores):
            t = result["methods"][s.name]["trends"][var]
            c = np.asarray(t["center"], dtype=float)
            y = np.asarray(t["mean_dz"], dtype=float)
            e = np.asarray(t["mean_dz_err"], dtype=float)
            ax.errorbar(c, y, yerr=e, color=_color(i), marker="o", ms=3.5, lw=1.3, capsize=2,
                        label=f"{s.name} (N={len(s.objects):,})")
            axh.stairs(t["n"], t["edges"], color=_color(i), lw=1.3)
        ax.set_ylabel(r"mean $\Delta z$")
        ax.set_title(f"residuals against {LABELS[var]}", fontsize=10)
        ax.legend(fontsize=8, loc="best")
        ax.tick_params(labelbottom=False)
        axh.set_xlabel(LABELS[var])
        axh.set_ylabel("galaxies per bin")
    return fig


def _num(value: float | None, spec: str) -> str:
    """A legend number; "n/a" where the statistic is undefined (no z_spec bin holds enough objects)."""
    return "n/a" if value is None else format(value, spec)


def fig_bias(scores: Sequence[MethodScores], result: dict[str, Any]) -> Figure:
    """Lin et al.'s two biases, method by method (e.g. before / after ``zpix debias`` and the photo-z
    calibration): mean Δz in fixed bins of z_spec and of z_phot, and Δ⟨z⟩ in each method's 5 equal-count
    z_phot bins, with the spec-z trend amplitude, the N(z) KS distance and the largest |Δ⟨z⟩| in the legend."""
    fig = _figure(14, 4.2)
    axes = fig.subplots(1, 3)
    for ax in axes:
        ax.axhspan(-NZ_REQUIREMENT, NZ_REQUIREMENT, color="gold", alpha=0.35, lw=0)
        ax.axhline(0, color="k", lw=0.8)
    n = len(scores)
    for i, s in enumerate(scores):
        b = result["methods"][s.name].get("bias")
        if not b:
            continue
        for ax, key in zip(axes[:2], ("spec_z_trend", "phot_z_trend"), strict=True):
            t = b[key]
            ax.errorbar(np.asarray(t["center"], float) + (i - (n - 1) / 2) * 0.002, np.asarray(t["mean_dz"], float),
                        yerr=np.asarray(t["mean_dz_err"], float), color=_color(i), marker="o", ms=3, lw=1.2,
                        capsize=2, label=s.name if key == "phot_z_trend" else
                        f"{s.name}: amplitude {_num(b['spec_z_trend_amplitude'], '.4f')}, KS {_num(b['nz_ks'], '.3f')}")
        tomo = b["tomographic"]
        x = np.arange(len(tomo["delta_mean_z"])) + (i - (n - 1) / 2) * 0.8 / max(n, 1)
        axes[2].bar(x, tomo["delta_mean_z"], width=0.8 / max(n, 1), color=_color(i),
                    label=f"{s.name}: max {_num(b['max_tomo_bias'], '.4f')}")
    axes[0].set_xlabel(LABELS["z_spec"])
    axes[1].set_xlabel(LABELS["z_phot"])
    axes[0].set_ylabel(r"mean $\Delta z$")
    axes[0].set_title("residuals against spec-z (fixed bins)", fontsize=10)
    axes[1].set_title("residuals against photo-z (fixed bins)", fontsize=10)
    axes[2].set_xlabel("equal-count z_phot bin")
    axes[2].set_ylabel(r"$\langle z_\mathrm{phot}\rangle - \langle z_\mathrm{spec}\rangle$")
    axes[2].set_title("tomographic bias", fontsize=10)
    for ax in axes:
        ax.legend(fontsize=7, loc="best")
    return fig


# --------------------------------------------------------------------------------- Fig. 10


def _pit_guide(edges: np.ndarray, scale: float) -> np.ndarray:
    """PIT density per bin of a Gaussian model whose residuals are ``scale`` × the PDF width.

    With calibrated PDFs PIT = Φ(X), X ~ N(0, 1).  Expanding the residuals by 20% gives
    PIT = Φ(1.2 X): P(PIT < u) = Φ(Φ⁻¹(u)/1.2), U-shaped (PDFs too narrow); shrinking by 20%
    (0.8) gives a hump (PDFs too wide).  These are the dashed guides of Pasquet Fig. 10.
    """
    with np.errstate(divide="ignore"):
        cdf = stats.norm.cdf(stats.norm.ppf(edges) / scale)
    return np.diff(cdf) / np.diff(edges)


def fig_pit(scores: Sequence[MethodScores], result: dict[str, Any]) -> Figure:
    """PIT histograms with the uniform line and the ±20% expand/shrink guides (Fig. 10)."""
    fig = _figure(6.8, 4.6)
    ax = fig.subplots()
    edges = np.asarray(result["methods"][scores[0].name]["pit_histogram"]["edges"])
    ax.axhline(1, color="k", lw=0.8, label="calibrated (flat)")
    ax.stairs(_pit_guide(edges, 1.2), edges, color="green", ls="--", lw=1.2,
              label="Δz expanded by 20% (PDFs too narrow)")
    ax.stairs(_pit_guide(edges, 0.8), edges, color="red", ls="--", lw=1.2,
              label="Δz shrunk by 20% (PDFs too wide)")
    for i, s in enumerate(scores):
        m = result["methods"][s.name]
        h = m["pit_histogram"]
        o = m["overall"]
        ax.stairs(h["density"], h["edges"], color=_color(i), lw=2,
                  label=f"{s.name} (N={o['n']:,}; KS={o['pit_ks']:.3f}, "
                        f"68% cov.={o['coverage68']:.2f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(2.0, ax.get_ylim()[1]))
    ax.set_xlabel(r"PIT = CDF$(z_\mathrm{spec})$")
    ax.set_ylabel("density (1 = uniform)")
    ax.legend(fontsize=7.5, loc="upper center")
    return fig


# --------------------------------------------------------------------------------- Fig. 9


def lupton_rgb(cube: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """Colour image of one (bands, H, W) cube: astropy's make_lupton_rgb on i, r, g (as R, G, B),
    or the three reddest bands when g, r, i are not all there (bands assumed blue to red)."""
    from astropy.visualization import make_lupton_rgb

    names = [str(b).lower() for b in bands]
    if all(b in names for b in ("g", "r", "i")):
        planes = [cube[names.index(b)] for b in ("i", "r", "g")]
    elif cube.shape[0] >= 3:
        planes = [cube[-1], cube[-2], cube[-3]]
    else:  # one or two bands: grey image
        planes = [cube[-1]] * 3
    planes = [np.nan_to_num(np.asarray(p, dtype=np.float64)) for p in planes]
    total = (planes[0] + planes[1] + planes[2]) / 3
    # stretch from the galaxy's own brightness so faint and bright galaxies are both visible
    peak = float(np.percentile(total, 99.7))
    stretch = max(peak, 1e-12) / 2
    with np.errstate(invalid="ignore", divide="ignore"):  # astropy divides 0/0 on empty sky pixels
        return make_lupton_rgb(*planes, minimum=0.0, stretch=stretch, Q=8)


def _read_cubes(cubes: str | Path, ids: np.ndarray) -> tuple[dict[Any, np.ndarray], list[str]]:
    """Images of the objects ``ids`` found in the cube store (NaN pixels shown as 0), and its bands."""
    from zpix.store.cube_store import CubeStore

    with CubeStore(cubes, on_bad="zero") as store:  # validated: a damaged store is one CubeStoreError
        file_ids = store.ids
        bands = store.bands
        want = np.asarray(ids)
        if want.dtype.kind in "iu" and file_ids.dtype.kind in "iu":
            keys_file, keys_want = file_ids.astype(np.int64), want.astype(np.int64)
        else:
            keys_file, keys_want = file_ids.astype(str), want.astype(str)
        lookup = {k: r for r, k in enumerate(keys_file.tolist())}
        rows = {w: lookup[k] for w, k in zip(want.tolist(), keys_want.tolist(), strict=True) if k in lookup}
        out = {}
        if rows:
            uniq = np.unique(list(rows.values()))
            imgs = store.images(uniq)
            by_row = {int(r): imgs[j] for j, r in enumerate(uniq)}
            out = {w: by_row[r] for w, r in rows.items()}
    return out, bands


def fig_examples(
    scores: Sequence[MethodScores],
    result: dict[str, Any],
    cubes: str | Path | None = None,
    n_examples: int = 12,
    seed: int = 0,
) -> Figure:
    """Random example PDFs with z_spec (red dotted) and z_phot (blue dotted), beside each galaxy's
    colour image when a cube store is given (Fig. 9).  Compared methods' PDFs are overlaid."""
    from zpix.prediction.format import read_pdf_rows

    main = scores[0]
    n_ex = min(n_examples, len(main.objects))
    pick = np.sort(np.random.default_rng(seed).choice(len(main.objects), n_ex, replace=False))
    objs = main.objects.iloc[pick]
    pdfs = [read_pdf_rows(s.path, s.objects["row"].to_numpy()[pick]) for s in scores]
    images: dict[Any, np.ndarray] = {}
    bands: list[str] = []
    if cubes is not None:
        images, bands = _read_cubes(cubes, objs["id"].to_numpy())
    with_img = cubes is not None
    ncols = 3 if with_img else 4
    nrows = int(np.ceil(n_ex / ncols))
    fig = _figure(4.4 * ncols if with_img else 3.4 * ncols, 2.3 * nrows + 0.4)
    widths = [1, 2.1] * ncols if with_img else [1] * ncols
    gs = fig.add_gridspec(nrows, len(widths), width_ratios=widths)
    zmax = _z_limit(scores)
    ids = objs["id"].to_numpy()  # keep the id's own type (iloc on a mixed row would make it float)
    for j in range(n_ex):
        r, c = divmod(j, ncols)
        o = objs.iloc[j]
        oid = ids[j]
        if with_img:
            axi = fig.add_subplot(gs[r, 2 * c])
            img = images.get(oid)
            if img is None:
                axi.text(0.5, 0.5, "no image\nfor this id", ha="center", va="center", fontsize=8)
            else:
                axi.imshow(lupton_rgb(img, bands), origin="lower")
            axi.set_xticks([])
            axi.set_yticks([])
            axi.set_title(f"id {oid}", fontsize=8)
            ax = fig.add_subplot(gs[r, 2 * c + 1])
        else:
            ax = fig.add_subplot(gs[r, c])
            ax.set_title(f"id {oid}", fontsize=8)
        for i, s in enumerate(scores):
            ax.plot(s.grid.centers, pdfs[i][j] / s.grid.width, color=_color(i), lw=1.2,
                    label=s.name if j == 0 else None)
        ax.axvline(o["z_spec"], color="red", ls=":", lw=1.5, label=r"$z_\mathrm{spec}$" if j == 0 else None)
        ax.axvline(o["z_phot"], color="blue", ls=":", lw=1.5,
                   label=rf"$z_\mathrm{{phot}}$ ({main.name})" if j == 0 else None)
        ax.set_xlim(0, zmax)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7)
        if r == nrows - 1:
            ax.set_xlabel("z", fontsize=8)
        if c == 0:
            ax.set_ylabel("p(z)", fontsize=8)
        ax.text(0.97, 0.95, f"$z_s$={o['z_spec']:.3f}\n$z_p$={o['z_phot']:.3f}", transform=ax.transAxes,
                ha="right", va="top", fontsize=7)
    fig.legend(loc="outside lower center", ncol=2 + len(scores), fontsize=8)
    fig.suptitle(f"{n_ex} random galaxies of {len(main.objects):,} (PDF density per unit z)", fontsize=10)
    return fig


# --------------------------------------------------------------------------------- trends


def fig_trends(scores: Sequence[MethodScores], result: dict[str, Any]) -> Figure:
    """Mean Δz and σ_MAD with bootstrap errors, and counts, in bins of each trend variable
    (z_spec, z_phot and the catalogue columns that exist: Pasquet Fig. 11, Sect. 6)."""
    trends0 = result["methods"][scores[0].name]["trends"]
    cols = [c for c in ("z_spec", "z_phot", *TREND_COLUMNS) if c in trends0]
    per_row = 4  # wrap so that each panel stays readable at page width
    n_blocks = int(np.ceil(len(cols) / per_row))
    ncol = min(len(cols), per_row)
    fig = _figure(3.3 * ncol + 0.4, 6.6 * n_blocks + 0.3)
    gs = fig.add_gridspec(3 * n_blocks, ncol, height_ratios=(1.6, 1.6, 0.8) * n_blocks)
    for k, col in enumerate(cols):
        blk, j = divmod(k, per_row)
        ax1 = fig.add_subplot(gs[3 * blk, j])
        ax2 = fig.add_subplot(gs[3 * blk + 1, j], sharex=ax1)
        ax3 = fig.add_subplot(gs[3 * blk + 2, j], sharex=ax1)
        ax1.axhline(0, color="k", lw=0.8)
        for i, s in enumerate(scores):
            t = result["methods"][s.name]["trends"].get(col)
            if t is None:
                continue
            c = np.asarray(t["center"], float)
            ax1.errorbar(c, np.asarray(t["mean_dz"], float), yerr=np.asarray(t["mean_dz_err"], float),
                         color=_color(i), marker="o", ms=3, lw=1.2, capsize=2, label=s.name)
            ax2.errorbar(c, np.asarray(t["sigma_mad"], float), yerr=np.asarray(t["sigma_mad_err"], float),
                         color=_color(i), marker="s", ms=3, lw=1.2, capsize=2)
            ax3.stairs(t["n"], t["edges"], color=_color(i), lw=1.2)
        ax1.set_title(f"{LABELS.get(col, col)}  (N={sum(trends0[col]['n']):,})", fontsize=9)
        ax1.tick_params(labelbottom=False, labelsize=8)
        ax2.tick_params(labelbottom=False, labelsize=8)
        ax3.tick_params(labelsize=8)
        ax3.set_xlabel(LABELS.get(col, col), fontsize=9)
        if j == 0:
            ax1.set_ylabel(r"mean $\Delta z$")
            ax2.set_ylabel(r"$\sigma_\mathrm{MAD}$")
            ax3.set_ylabel("N per bin")
        if k == 0:
            ax1.legend(fontsize=7.5)
    fig.suptitle("Residuals against redshift and galaxy / observing properties (error bars: bootstrap)",
                 fontsize=10)
    return fig


# --------------------------------------------------------------------------------- N(z)


def _display_rebin(n_bins: int, n_obj: int) -> int:
    """Merge factor for showing a spec-z histogram of ``n_obj`` galaxies: about 2√n bins
    (a divisor of n_bins so the merged bins stay aligned with the grid)."""
    target = min(n_bins, max(10, int(2 * np.sqrt(max(n_obj, 1)))))
    divisors = [d for d in range(1, n_bins + 1) if n_bins % d == 0]
    return min(divisors, key=lambda d: abs(n_bins / d - target))


def _rebin(density: Sequence[float], factor: int) -> np.ndarray:
    d = np.asarray(density, dtype=float)
    return d.reshape(-1, factor).mean(axis=1)


def fig_nz(scores: Sequence[MethodScores], result: dict[str, Any]) -> Figure:
    """Stacked PDFs against the spec-z histogram, overall and per tomographic z_phot bin,
    with Δ<z> = <z>_stack − <z>_spec checked against |Δ<z>| < 0.002."""
    main = result["methods"][scores[0].name]["nz"]
    n_t = len(main["tomographic"])
    fig = _figure(max(11, 2.6 * n_t), 7.2)
    gs = fig.add_gridspec(2, n_t, height_ratios=(1.3, 1))
    grid = scores[0].grid
    zmax = _z_limit(scores)
    ax = fig.add_subplot(gs[0, :])
    f_all = _display_rebin(grid.n_bins, main["overall"]["n"])
    ax.stairs(_rebin(main["overall"]["nz_spec"], f_all), grid.edges[::f_all], fill=True, color="0.8",
              label=f"spec-z histogram (N={main['overall']['n']:,})")
    lines = []
    for i, s in enumerate(scores):
        nz = result["methods"][s.name]["nz"]["overall"]
        ax.plot(s.grid.centers, nz["nz_stack"], color=_color(i), lw=1.6, label=f"stacked PDFs, {s.name}")
        lines.append(f"{s.name}: Δ<z> = {nz['delta_mean_z']:+.4f}")
    ax.set_xlim(0, zmax)
    ax.set_xlabel(LABELS["z_spec"] + " / z")
    ax.set_ylabel("N(z) [per unit z, normalised]")
    ax.legend(fontsize=8, loc="upper right")
    _text_box(ax, "\n".join(lines))
    for j in range(n_t):
        axt = fig.add_subplot(gs[1, j])
        t0 = main["tomographic"][j]
        lo, hi = t0["z_phot_range"]
        if t0["n"]:
            f_t = _display_rebin(grid.n_bins, t0["n"])
            axt.stairs(_rebin(t0["nz_spec"], f_t), grid.edges[::f_t], fill=True, color="0.8")
        txt = [f"N={t0['n']:,}"]
        for i, s in enumerate(scores):
            t = result["methods"][s.name]["nz"]["tomographic"][j]
            if not t["n"]:
                continue
            axt.plot(s.grid.centers, t["nz_stack"], color=_color(i), lw=1.3)
            flag = "ok" if t["meets_requirement"] else "FAIL"
            txt.append(f"{s.name}: {t['delta_mean_z']:+.4f} {flag}")
            if i == 0:
                axt.axvline(t["mean_z_spec"], color="k", lw=0.8, ls=":")
        axt.axvspan(lo, hi, color="gold", alpha=0.25, lw=0)
        axt.set_xlim(0, zmax)
        axt.set_ylim(bottom=0)
        axt.tick_params(labelsize=7)
        axt.set_title(f"{lo:.3f} ≤ $z_\\mathrm{{phot}}$ < {hi:.3f}", fontsize=8.5)
        axt.set_xlabel("z", fontsize=8)
        if j == 0:
            axt.set_ylabel("N(z)", fontsize=8)
        axt.text(0.97, 0.97, "Δ<z>:\n" + "\n".join(txt), transform=axt.transAxes, ha="right", va="top",
                 fontsize=6.5, bbox={"fc": "white", "ec": "0.8", "alpha": 0.85})
    fig.suptitle("N(z): stacked PDFs against the spec-z histogram. Top: whole sample; bottom: tomographic "
                 "z_phot bins (gold: the bin's z_phot range, dotted: its mean z_spec); requirement "
                 f"|Δ<z>| < {main['overall']['requirement']:g}", fontsize=9)
    return fig


# --------------------------------------------------------------------------------- widths


def fig_width(scores: Sequence[MethodScores], result: dict[str, Any], eta_threshold: float = 0.05) -> Figure:
    """PDF 68% widths with the 10%/20% cut thresholds, and σ_MAD and η as the widest PDFs are
    removed (Pasquet Sect. 4.3 and Table 2, extended to a curve)."""
    fig = _figure(12, 4.2)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    fracs = np.linspace(0, 0.5, 11)
    # one range for all methods so their histograms share bins
    hi = max(float(np.percentile(s.objects["width68"], 99.5)) for s in scores)
    for i, s in enumerate(scores):
        obj = s.objects
        w = obj["width68"].to_numpy()
        dz = obj["dz"].to_numpy()
        ax1.hist(np.clip(w, 0, hi), bins=50, range=(0, hi), histtype="step", color=_color(i), lw=1.4,
                 label=f"{s.name} (N={len(w):,})")
        for m in result["methods"][s.name]["quality_cuts"].values():
            ax1.axvline(m["width68_max_kept"], color=_color(i), ls=":", lw=1)
        sig = [sigma_mad(dz[widest_removed(w, f)]) for f in fracs]
        eta = [100 * outlier_fraction(dz[widest_removed(w, f)], eta_threshold) for f in fracs]
        ax2.plot(100 * fracs, sig, color=_color(i), marker="o", ms=3, label=s.name)
        ax3.plot(100 * fracs, eta, color=_color(i), marker="o", ms=3, label=s.name)
    ax1.set_xlabel("PDF width: central 68% interval (z units)")
    ax1.set_ylabel("galaxies")
    ax1.set_title("dotted: widths removed by the 10% / 20% cuts", fontsize=8.5)
    ax1.legend(fontsize=8)
    for ax, lab in ((ax2, r"$\sigma_\mathrm{MAD}$"), (ax3, rf"$\eta$ [%] ($|\Delta z|>{eta_threshold:g}$)")):
        ax.axvline(10, color="0.6", lw=0.8, ls="--")
        ax.axvline(20, color="0.6", lw=0.8, ls="--")
        ax.set_xlabel("widest PDFs removed [%]")
        ax.set_ylabel(lab)
        ax.legend(fontsize=8)
    ax2.set_title("scatter after removing the widest PDFs", fontsize=9)
    ax3.set_title("outlier rate after removing the widest PDFs", fontsize=9)
    return fig
