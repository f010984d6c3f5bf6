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
With ``min_per_bin_grid`` it is chosen by K-fold cross-validation on the fitting rows themselves: each
candidate is fitted on K − 1 folds and applied to the held-out fold; the pooled out-of-fold photo-z are cut
into ``cv_bins`` equal-count bins and the candidate with the smallest root-mean-square Δ⟨z⟩ over them wins
(then refitted on all rows).
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


@register_calibrator("photoz")
class PhotoZCalibration(Calibrator):
    """z″ = g(z_phot): PDFs shifted so that the mean residual in z_phot bins vanishes (Lin et al. step 4).

    ``min_per_bin`` sets the equal-count z_phot bins of the fit (at most ``max_bins``): fewer objects per
    bin follow the residual trend more closely but put more noise (σ/√n) into each bin's mean.  By default
    it is chosen among ``min_per_bin_grid`` by cross-validation on the fitting rows (module docstring);
    ``min_per_bin_grid=None`` uses ``min_per_bin`` as given.
    """

    def __init__(self, knots: list[float] | None = None, targets: list[float] | None = None,
                 min_per_bin: int = 50, max_bins: int = 100, z_range: tuple[float, float] = (0.0, 0.4),
                 min_per_bin_grid: list[int] | tuple[int, ...] | None = MIN_PER_BIN_GRID, cv_folds: int = 5,
                 cv_bins: int = 5, seed: int = 0) -> None:
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
        if int(cv_folds) < 2 or int(cv_bins) < 1:
            raise ValueError("photoz calibration: cv_folds must be >= 2 and cv_bins >= 1")
        self.cv_folds, self.cv_bins, self.seed = int(cv_folds), int(cv_bins), int(seed)
        self.cv_scores: dict[int, float] = {}
        # the z range of the grid the PDFs are on (their bin count comes with them): set by fit
        self.z_range = (float(z_range[0]), float(z_range[1]))

    def fit(self, *, probs: np.ndarray, z_spec: np.ndarray, grid: RedshiftGrid, **context: Any) -> None:
        p = check_probs(probs, grid)
        zp = pdf_mean(p, grid)
        zs = np.asarray(z_spec, dtype=np.float64)
        if zs.shape != zp.shape:
            raise ValueError(f"photoz calibration: {zp.size} PDFs but z_spec has shape {zs.shape}")
        if self.min_per_bin_grid:
            self.min_per_bin, self.cv_scores = self._cross_validate(zp, zs)
        self.knots, self.targets = _isotonic_map(zp, zs, self.min_per_bin, self.max_bins)
        self.z_range = (grid.z_min, grid.z_max)

    def _cross_validate(self, zp: np.ndarray, zs: np.ndarray) -> tuple[int, dict[int, float]]:
        """The candidate bin size with the smallest out-of-fold RMS Δ⟨z⟩ over ``cv_bins`` equal-count bins."""
        folds = np.random.default_rng(self.seed).permutation(zp.size) % self.cv_folds
        scores: dict[int, float] = {}
        for m in self.min_per_bin_grid or []:
            sq = []
            for j in range(self.cv_folds):
                held = folds == j
                knots, targets = _isotonic_map(zp[~held], zs[~held], m, self.max_bins)
                out = zp[held] + np.interp(zp[held], knots, np.asarray(targets) - np.asarray(knots))
                # bins within the held-out fold: pooling folds would let each object's noise into the
                # corrections of its bin-mates (fitted on the other folds) and cancel it
                for g in np.array_split(np.argsort(out, kind="stable"), self.cv_bins):
                    sq.append(np.mean(out[g] - zs[held][g]) ** 2)
            scores[m] = float(np.sqrt(np.mean(sq)))
        return min(scores, key=lambda m: (scores[m], m)), scores

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
                     seed=self.seed, cv_scores={str(k): v for k, v in self.cv_scores.items()})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhotoZCalibration:
        new = cls(d.get("knots"), d.get("targets"), int(d.get("min_per_bin", 50)), int(d.get("max_bins", 100)),
                  tuple(d.get("z_range", (0.0, 0.4))), d.get("min_per_bin_grid") or None, int(d.get("cv_folds", 5)),
                  int(d.get("cv_bins", 5)), int(d.get("seed", 0)))
        new.cv_scores = {int(k): float(v) for k, v in (d.get("cv_scores") or {}).items()}
        return new

    def summary(self) -> str:
        if not self.knots:
            return "identity (not fitted)"
        b = np.asarray(self.targets) - np.asarray(self.knots)
        chosen = f" (bin size {self.min_per_bin} chosen by {self.cv_folds}-fold CV)" if self.cv_scores else ""
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
