"""`zpix report`: the evaluation as one self-contained HTML page plus its figures as PNG."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: (file stem, title, caption) of each figure, in page order.
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("zphot_zspec", "Photometric against spectroscopic redshift",
     "Density of galaxies; solid: 1:1 line; dashed: |Δz| = 0.05, beyond which galaxies count as outliers "
     "(Pasquet et al. 2019, Fig. 7)."),
    ("dz_hist", "Distribution of the residuals Δz",
     "Step: normalised Δz histogram; dashed: Gaussian with the measured σ_MAD and bias; hatched: outliers "
     "(Fig. 6). The log panel shows the tails."),
    ("residuals", "Mean residuals against z_spec and z_phot",
     "Mean Δz in bins with bootstrap errors; gold band |⟨Δz⟩| < 0.002; lower panels: the redshift "
     "distributions (Fig. 8). A trend against z_spec reflects the training prior; none should be seen "
     "against z_phot."),
    ("bias", "Biases against spec-z and photo-z (Lin et al.)",
     "Mean Δz in fixed 0.02-wide bins of z_spec (left; legend: the largest |mean Δz| over bins with ≥ 100 "
     "objects and the KS distance between the z_phot and z_spec distributions) and of z_phot (middle), and "
     "Δ⟨z⟩ in each method's 5 equal-count z_phot bins (right); gold band ±0.002. Compare a run before and "
     "after `zpix debias` / `zpix calibrate --method photoz`: the two readings of the residuals are "
     "incompatible, so correcting one moves the other."),
    ("pit", "Probability integral transform",
     "Histogram of CDF(z_spec). Flat: calibrated PDFs; U-shape: too narrow; hump: too wide. Dashed guides: "
     "a calibrated Gaussian model with residuals expanded (green) or shrunk (red) by 20% (Fig. 10)."),
    ("examples", "Example PDFs",
     "Random galaxies: colour image (Lupton et al. asinh RGB of i, r, g) and PDF; red dotted: z_spec; blue "
     "dotted: z_phot (Fig. 9)."),
    ("trends", "Trends with redshift and galaxy / observing properties",
     "Mean Δz (top) and σ_MAD (middle) in bins, with bootstrap errors, and the counts per bin (bottom); "
     "catalogue columns r_mag, ebv, snr_r, axis_ratio, psf_fwhm_r are shown when present (Fig. 11, Sect. 6)."),
    ("nz", "Redshift distributions N(z)",
     "Stacked PDFs against the spec-z histogram, for the whole sample and in tomographic z_phot bins; "
     "Δ⟨z⟩ = ⟨z⟩_stacked − ⟨z_spec⟩ checked against |Δ⟨z⟩| < 0.002."),
    ("width", "PDF widths and quality cuts",
     "Distribution of the central-68% widths; σ_MAD and η after removing the widest PDFs (Table 2 as a "
     "curve)."),
)


def make_report(
    predictions: str | Path,
    out: str | Path = "report",
    compare: Sequence[str | Path] = (),
    truth: str | Path | None = None,
    cubes: str | Path | None = None,
    n_examples: int = 12,
    seed: int = 0,
    overwrite: bool = False,
    **eval_kwargs: Any,
) -> Path:
    """Write ``out/index.html`` (self-contained), ``out/<figure>.png`` and ``out/metrics.json``.

    ``cubes`` is a cube store (HDF5 with ``images`` (N, bands, H, W) and ``ids``) for the galaxy
    images beside the example PDFs.  Other keyword arguments go to
    :func:`zpix.evaluation.evaluate.run_evaluation`.  The directory is built under a temporary name and
    renamed at the end, so a failed run leaves no half-made report; an existing ``out`` is replaced only
    if it is an older report (its ``.zpix-report`` marker) and ``overwrite`` (see :mod:`zpix.atomic`).
    Returns the HTML path.
    """
    from zpix.atomic import AtomicDir, check_replaceable
    from zpix.evaluation.evaluate import run_evaluation
    from zpix.evaluation.report import figures as F
    from zpix.evaluation.report.html import render_html

    out = Path(out)
    check_replaceable(out, "report", overwrite)  # before the work, not after it
    scores, result = run_evaluation(predictions, truth=truth, compare=compare, seed=seed, **eval_kwargs)
    eta_t = float(result["settings"]["outlier_thresholds"][0]) if result["settings"]["outlier_thresholds"] else 0.05
    makers = {
        "zphot_zspec": lambda: F.fig_zphot_zspec(scores, result, eta_t),
        "dz_hist": lambda: F.fig_dz_hist(scores, result, eta_t),
        "residuals": lambda: F.fig_residuals(scores, result),
        "bias": lambda: F.fig_bias(scores, result),
        "pit": lambda: F.fig_pit(scores, result),
        "examples": lambda: F.fig_examples(scores, result, cubes, n_examples, seed),
        "trends": lambda: F.fig_trends(scores, result),
        "nz": lambda: F.fig_nz(scores, result),
        "width": lambda: F.fig_width(scores, result, eta_t),
    }
    with AtomicDir(out, "report", overwrite=overwrite) as work:
        tmp = work.path
        written = []
        for stem, title, caption in FIGURES:
            fig = makers[stem]()
            F.save(fig, tmp / f"{stem}.png")
            fig.clear()
            written.append((title, caption, tmp / f"{stem}.png"))
        with open(tmp / "metrics.json", "w") as f:
            json.dump(result, f, indent=1, allow_nan=False)
        (tmp / "index.html").write_text(render_html(result, written), encoding="utf-8")
    return out / "index.html"
