"""Calibration against photo-z (Lin et al. 2022, Sect. 5; step 4 of the bias correction, issue 12).

Residuals can be read as a function of z_spec or of z_phot, and the two readings are incompatible: a
model unbiased at fixed z_spec is biased at fixed z_phot (and the reverse) whenever the redshift
distribution is not flat.  Lin et al. therefore correct the spec-z biases first (balanced subset, soft
labels, edge shift: :mod:`zpix.debias`) and then, separately, calibrate the photo-z: a map
q̃(z″ | z_phot), fitted on held-out objects, such that the mean residual in z_phot bins vanishes —
what a tomographic analysis needs (|Δ⟨z⟩| < 0.002 per photo-z bin for Euclid-like surveys).

Here q̃ is a shift of each PDF by b(z_phot), z_phot the PDF mean (Pasquet Eq. 2):

    b(z) = g(z) − z,   g = the isotonic (monotone) fit of ⟨z_spec⟩ against ⟨z_phot⟩ in equal-count z_phot bins,

interpolated linearly between the bins' mean z_phot and held constant beyond the outer ones.  Because g
is monotone, a z_phot bin after calibration is a z_phot bin before it, in which ⟨z_spec⟩ = ⟨g(z_phot)⟩
up to the interpolation: the mean residual per photo-z bin vanishes.  Shifting (not re-shaping) keeps
each PDF's width; mass shifted beyond the grid is kept in the end bins.

The bin size trades resolution against noise: each bin's ⟨z_spec⟩ carries an error std(z_spec − z_phot)/√n.
For the tomographic requirement the noise does not depend on the bin size as long as the bins are no larger
than a tomographic bin: Δ⟨z⟩ of a tomographic bin holding N fitting objects is corrected by (about) the mean
of the bin means inside it, whose error is std/√N for 25 or for 300 objects per bin.  What the bin size
changes is resolution (coarser maps interpolate between fewer knots) and, weakly, the isotonic pooling; so
candidates differ by much less than the noise and a single K-fold CV picks among them by chance
(``docs/bias_correction.md``).  With ``min_per_bin_grid`` the size is chosen by

1. *resolution first*: only candidates whose map has at least ``knots_per_cv_bin`` knots per each of the
   ``cv_bins`` equal-count bins on a CV fitting set (n·(K−1)/K rows) are eligible, so that every tomographic
   bin gets its own shift and a slope inside it (a map of 3 knots cannot correct 5 bins independently);
2. *the target's own score, averaged*: ``cv_repeats`` × ``cv_folds``-fold CV (a new random partition each
   repeat); in each held-out fold the calibrated photo-z are cut into ``cv_bins`` equal-count bins and the
   fold's score is the mean over bins of Δ⟨z⟩² = (⟨z″⟩ − ⟨z_spec⟩)²; a candidate's score is the mean over
   all repeats and folds (``cv_scores`` holds its square root, the RMS Δ⟨z⟩);
3. *ties go to the smoother map*: every candidate whose mean score exceeds the best one's by at most one
   standard error of the paired fold-by-fold difference (std over the R·K differences / √K: the K folds of
   a partition are the independent pieces of data, repeats reuse them) counts as tied with it, and the
   largest bin size among them wins (the one-standard-error rule, Hastie, Tibshirani & Friedman 2009,
   §7.10); then the map is refitted on all rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression

from zpix.calibration.base import Calibrator, check_probs, register_calibrator
from zpix.pdf import RedshiftGrid, cdf_edges, pdf_mean


def shift_pdfs(probs: np.ndarray, grid: RedshiftGrid, delta: np.ndarray) -> np.ndarray:
    """Each row's PDF moved by ``delta_i`` in z: CDF′_i(e) = CDF_i(e − δ_i) at the bin edges, piecewise
    linear inside bins (the grid's convention); mass moved off the grid stays in the end bins."""
    p = np.asarray(probs, dtype=np.float64)
    c = cdf_edges(p)
    u = (grid.edges[None, :] - np.asarray(delta, dtype=np.float64)[:, None] - grid.z_min) / grid.width
    k = np.clip(np.floor(u), 0, grid.n_bins - 1).astype(np.int64)
    t = np.clip(u - k, 0.0, 1.0)
    rows = np.arange(p.shape[0])[:, None]
    shifted = c[rows, k] + t * (c[rows, k + 1] - c[rows, k])
    shifted = np.where(u <= 0, 0.0, np.where(u >= grid.n_bins, 1.0, shifted))
    shifted[:, 0], shifted[:, -1] = 0.0, 1.0
    return np.maximum(np.diff(shifted, axis=1), 0.0)


#: candidate bin sizes (objects per z_phot bin) of the cross-validated choice
MIN_PER_BIN_GRID = (25, 50, 100, 200, 400)
#: random K-fold partitions averaged by the choice
CV_REPEATS = 20
#: a candidate must give at least this many knots per tomographic (``cv_bins``) bin to be eligible
KNOTS_PER_CV_BIN = 2


def choose_bin_size(z_phot: np.ndarray, z_spec: np.ndarray, *, grid: list[int] | tuple[int, ...] = MIN_PER_BIN_GRID,
                    folds: int = 5, repeats: int = CV_REPEATS, cv_bins: int = 5,
                    knots_per_cv_bin: int = KNOTS_PER_CV_BIN, max_bins: int = 100, seed: int = 0) -> dict[str, Any]:
    """The bin size of the photo-z calibration chosen on the fitting rows (module docstring, steps 1-3).

    Returns ``chosen`` (objects per bin), ``scores`` (RMS held-out Δ⟨z⟩ of each eligible candidate),
    ``score_se`` (the standard error of its difference to the best), ``tied`` (the candidates within it)
    and ``excluded`` (candidates too coarse to resolve ``cv_bins`` bins).
    """
    zp, zs = np.asarray(z_phot, dtype=np.float64), np.asarray(z_spec, dtype=np.float64)
    if folds < 2 or repeats < 1 or cv_bins < 1:
        raise ValueError("photoz calibration: need cv_folds >= 2, cv_repeats >= 1 and cv_bins >= 1")
    n_fold_fit = zp.size - -(-zp.size // folds)  # rows a CV fit sees (the largest fold held out)
    need = knots_per_cv_bin * cv_bins
    eligible = sorted(int(m) for m in grid if n_fold_fit // int(m) >= need)
    excluded = sorted(int(m) for m in grid if int(m) not in eligible)
    if not eligible:  # too few rows for any candidate to resolve the bins: the finest one
        eligible, excluded = [min(int(m) for m in grid)], [int(m) for m in grid if int(m) != min(grid)]
    rng = np.random.default_rng(seed)
    fold_scores = {m: np.empty(repeats * folds) for m in eligible}
    for r in range(repeats):
        part = rng.permutation(zp.size) % folds
        for j in range(folds):
            held = part == j
            for m in eligible:
                knots, targets = _isotonic_map(zp[~held], zs[~held], m, max_bins)
                out = zp[held] + np.interp(zp[held], knots, np.asarray(targets) - np.asarray(knots))
                # bins within the held-out fold: pooling folds would let each object's noise into the
                # corrections of its bin-mates (fitted on the other folds) and cancel it
                bins = np.array_split(np.argsort(out, kind="stable"), cv_bins)
                fold_scores[m][r * folds + j] = np.mean([np.mean(out[g] - zs[held][g]) ** 2 for g in bins])
    mean = {m: float(v.mean()) for m, v in fold_scores.items()}
    best = min(eligible, key=lambda m: (mean[m], -m))
    se = {m: float(np.std(fold_scores[m] - fold_scores[best], ddof=1) / np.sqrt(folds)) if m != best and
          fold_scores[m].size > 1 else 0.0 for m in eligible}
    tied = [m for m in eligible if mean[m] - mean[best] <= se[m]]
    return {"chosen": max(tied), "best_score": best, "scores": {m: float(np.sqrt(v)) for m, v in mean.items()},
            "score_se": se, "tied": tied, "excluded": excluded}


@register_calibrator("photoz")
class PhotoZCalibration(Calibrator):
    """z″ = g(z_phot): PDFs shifted so that the mean residual in z_phot bins vanishes (Lin et al. step 4).

    ``min_per_bin`` sets the equal-count z_phot bins of the fit (at most ``max_bins``): fewer objects per
    bin follow the residual trend more closely but put more noise (σ/√n) into each bin's mean.  By default
    it is chosen among ``min_per_bin_grid`` on the fitting rows by :func:`choose_bin_size` (module
    docstring); ``min_per_bin_grid=None`` uses ``min_per_bin`` as given.
    """

    def __init__(self, knots: list[float] | None = None, targets: list[float] | None = None,
                 min_per_bin: int = 50, max_bins: int = 100, z_range: tuple[float, float] = (0.0, 0.4),
                 min_per_bin_grid: list[int] | tuple[int, ...] | None = MIN_PER_BIN_GRID, cv_folds: int = 5,
                 cv_bins: int = 5, seed: int = 0, cv_repeats: int = CV_REPEATS,
                 knots_per_cv_bin: int = KNOTS_PER_CV_BIN) -> None:
        self.knots = [float(x) for x in (knots or [])]
        self.targets = [float(x) for x in (targets or [])]
        if len(self.knots) != len(self.targets):
            raise ValueError("photoz calibration: knots and targets differ in length")
        if int(min_per_bin) < 1 or int(max_bins) < 1:
            raise ValueError("photoz calibration: min_per_bin and max_bins must be >= 1")
        self.min_per_bin, self.max_bins = int(min_per_bin), int(max_bins)
        self.min_per_bin_grid = [int(x) for x in min_per_bin_grid] if min_per_bin_grid else None
        if self.min_per_bin_grid is not None and min(self.min_per_bin_grid) < 1:
            raise ValueError("photoz calibration: min_per_bin_grid values must be >= 1")
        if int(cv_folds) < 2 or int(cv_bins) < 1 or int(cv_repeats) < 1 or int(knots_per_cv_bin) < 0:
            raise ValueError("photoz calibration: cv_folds must be >= 2, cv_bins and cv_repeats >= 1, "
                             "knots_per_cv_bin >= 0")
        self.cv_folds, self.cv_bins, self.seed = int(cv_folds), int(cv_bins), int(seed)
        self.cv_repeats, self.knots_per_cv_bin = int(cv_repeats), int(knots_per_cv_bin)
        self.cv_scores: dict[int, float] = {}
        self.cv_choice: dict[str, Any] = {}
        # the z range of the grid the PDFs are on (their bin count comes with them): set by fit
        self.z_range = (float(z_range[0]), float(z_range[1]))

    def fit(self, *, probs: np.ndarray, z_spec: np.ndarray, grid: RedshiftGrid, **context: Any) -> None:
        p = check_probs(probs, grid)
        zp = pdf_mean(p, grid)
        zs = np.asarray(z_spec, dtype=np.float64)
        if zs.shape != zp.shape:
            raise ValueError(f"photoz calibration: {zp.size} PDFs but z_spec has shape {zs.shape}")
        if self.min_per_bin_grid:
            c = choose_bin_size(zp, zs, grid=self.min_per_bin_grid, folds=self.cv_folds, repeats=self.cv_repeats,
                                cv_bins=self.cv_bins, knots_per_cv_bin=self.knots_per_cv_bin, max_bins=self.max_bins,
                                seed=self.seed)
            self.min_per_bin, self.cv_scores = c["chosen"], c["scores"]
            self.cv_choice = {"best_score": c["best_score"], "tied": c["tied"], "excluded": c["excluded"],
                              "score_se": {str(k): v for k, v in c["score_se"].items()}}
        self.knots, self.targets = _isotonic_map(zp, zs, self.min_per_bin, self.max_bins)
        self.z_range = (grid.z_min, grid.z_max)

    def shift(self, z_phot: np.ndarray) -> np.ndarray:
        """b(z_phot) = g(z_phot) − z_phot (constant beyond the outer knots)."""
        if not self.knots:
            return np.zeros_like(np.asarray(z_phot, dtype=np.float64))
        k = np.asarray(self.knots)
        return np.interp(z_phot, k, np.asarray(self.targets) - k)

    def apply(self, probs: np.ndarray, **context: Any) -> np.ndarray:
        p = check_probs(probs)
        grid = RedshiftGrid(p.shape[1], *self.z_range)
        return shift_pdfs(p, grid, self.shift(pdf_mean(p, grid)))

    def to_dict(self) -> dict[str, Any]:
        d = {"knots": self.knots, "targets": self.targets, "min_per_bin": self.min_per_bin,
             "max_bins": self.max_bins, "z_range": list(self.z_range)}
        if self.min_per_bin_grid:
            d.update(min_per_bin_grid=self.min_per_bin_grid, cv_folds=self.cv_folds, cv_bins=self.cv_bins,
                     seed=self.seed, cv_repeats=self.cv_repeats, knots_per_cv_bin=self.knots_per_cv_bin,
                     cv_scores={str(k): v for k, v in self.cv_scores.items()}, cv_choice=self.cv_choice)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhotoZCalibration:
        new = cls(d.get("knots"), d.get("targets"), int(d.get("min_per_bin", 50)), int(d.get("max_bins", 100)),
                  tuple(d.get("z_range", (0.0, 0.4))), d.get("min_per_bin_grid") or None, int(d.get("cv_folds", 5)),
                  int(d.get("cv_bins", 5)), int(d.get("seed", 0)), int(d.get("cv_repeats", CV_REPEATS)),
                  int(d.get("knots_per_cv_bin", KNOTS_PER_CV_BIN)))
        new.cv_scores = {int(k): float(v) for k, v in (d.get("cv_scores") or {}).items()}
        new.cv_choice = dict(d.get("cv_choice") or {})
        return new

    def summary(self) -> str:
        if not self.knots:
            return "identity (not fitted)"
        b = np.asarray(self.targets) - np.asarray(self.knots)
        chosen = (f" (bin size {self.min_per_bin} chosen by {self.cv_repeats}x{self.cv_folds}-fold CV, ties to the "
                  "smoother)" if self.cv_scores else "")
        return f"{len(self.knots)} z_phot bins{chosen}, shift {b.min():+.4f} to {b.max():+.4f}"


def _isotonic_map(zp: np.ndarray, zs: np.ndarray, min_per_bin: int, max_bins: int) -> tuple[list[float], list[float]]:
    """Knots (mean z_phot of equal-count bins) and targets (isotonic fit of their mean z_spec)."""
    n_bins = int(np.clip(zp.size // min_per_bin, 1, max_bins))
    groups = np.array_split(np.argsort(zp, kind="stable"), n_bins)
    mean_p = np.array([zp[g].mean() for g in groups])
    mean_s = np.array([zs[g].mean() for g in groups])
    weights = np.array([len(g) for g in groups], dtype=np.float64)
    # monotone g keeps the order of the photo-z, so binning after calibration is binning before it
    fitted = isotonic_regression(mean_s, weights=weights).x
    return mean_p.tolist(), np.asarray(fitted).tolist()
