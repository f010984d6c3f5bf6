"""A heavier-tailed likelihood for regression heads: the Gaussian N(ẑ, σ) replaced by a Student-t.

A regression head (John William et al.; the KiDS hybrid) gives ẑ and σ, drawn on the grid as a
Gaussian (``zpix.training.module.regression_to_pdf``).  σ is trained by a Gaussian NLL, so it follows
the RMS of the residuals; with heavy-tailed residuals (a few catastrophic outliers) the core is then
too wide and the tails too thin: a hump-shaped PIT histogram with 68% coverage well above 0.683.

This step reads each PDF's centre and scale back from the binned PDF (the median and half the central
68% interval, which for a Gaussian are ẑ and σ) and redraws it as a Student-t with ν degrees of freedom
and scale s σ,

    P'_k = T_ν((e_{k+1} − ẑ) / (s σ)) − T_ν((e_k − ẑ) / (s σ)),   renormalised on the grid,

with (s, ν) fitted by the binned negative log-likelihood of z_spec on validation objects (ν = ∞ with s
alone is the "fitted σ scale").  It assumes unimodal PDFs: use ``temperature`` or ``pit`` for binned
classifier PDFs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import ndtr, stdtr

from zpix.calibration.base import PROB_FLOOR, Calibrator, check_probs, register_calibrator
from zpix.pdf import RedshiftGrid, binned_from_edge_cdf, pdf_quantiles

NU_BOUNDS = (1.0, 1000.0)
SCALE_BOUNDS = (0.05, 20.0)


def centre_scale(probs: np.ndarray, grid: RedshiftGrid) -> tuple[np.ndarray, np.ndarray]:
    """Median and half the central 68% interval of each binned PDF (floored at a tenth of a bin)."""
    q = pdf_quantiles(probs, grid, np.array([0.16, 0.5, 0.84]))
    return q[:, 1], np.maximum(0.5 * (q[:, 2] - q[:, 0]), 0.1 * grid.width)


def student_t_pdfs(mu: np.ndarray, sigma: np.ndarray, nu: float, grid: RedshiftGrid) -> np.ndarray:
    """Binned Student-t PDFs (ν = inf: Gaussian), truncated to the grid; all mass in the nearest end bin
    where none falls on the grid."""
    t = (grid.edges[None, :] - mu[:, None]) / sigma[:, None]
    return binned_from_edge_cdf(ndtr(t) if not np.isfinite(nu) else stdtr(nu, t), mu, grid)


@register_calibrator("student-t")
class StudentTRecalibration(Calibrator):
    """Redraw unimodal PDFs as Student-t(ν) with scale s σ; (s, ν) fitted by binned NLL."""

    def __init__(self, scale: float = 1.0, nu: float = float("inf"), fit_nu: bool = True,
                 grid: dict[str, Any] | None = None) -> None:
        self.scale, self.nu, self.fit_nu = float(scale), float(nu), bool(fit_nu)
        self.grid = None if grid is None else RedshiftGrid.from_dict(grid)

    def fit(self, *, probs: np.ndarray, z_spec: np.ndarray, grid: RedshiftGrid, **context: Any) -> None:
        p = check_probs(probs, grid)
        mu, sigma = centre_scale(p, grid)
        labels = grid.labels(z_spec)
        # the binned likelihood needs the CDF at four points per object only: the label bin's edges and
        # the grid's ends (the truncation's normalisation)
        e = grid.edges
        pts = np.stack([e[labels], e[labels + 1], np.full_like(mu, e[0]), np.full_like(mu, e[-1])], axis=1)
        u = (pts - mu[:, None]) / sigma[:, None]

        def nll(theta: np.ndarray) -> float:
            scale = float(np.exp(np.clip(theta[0], *np.log(SCALE_BOUNDS))))
            nu = float(np.exp(np.clip(theta[1], *np.log(NU_BOUNDS)))) if self.fit_nu else np.inf
            c = stdtr(nu, u / scale) if np.isfinite(nu) else ndtr(u / scale)
            q = (c[:, 1] - c[:, 0]) / np.maximum(c[:, 3] - c[:, 2], PROB_FLOOR)
            return float(-np.mean(np.log(np.maximum(q, PROB_FLOOR))))

        start = [np.array([0.0, np.log(5.0)]), np.array([np.log(0.7), np.log(50.0)])]
        bounds = [tuple(np.log(SCALE_BOUNDS)), tuple(np.log(NU_BOUNDS))]
        best = min((minimize(nll, s0, method="L-BFGS-B", bounds=bounds if self.fit_nu else bounds[:1])
                    for s0 in (start if self.fit_nu else [s[:1] for s in start[:1]])), key=lambda r: r.fun)
        self.scale = float(np.exp(np.clip(best.x[0], *np.log(SCALE_BOUNDS))))
        self.nu = float(np.exp(np.clip(best.x[1], *np.log(NU_BOUNDS)))) if self.fit_nu else float("inf")
        self.grid = grid

    def apply(self, probs: np.ndarray, **context: Any) -> np.ndarray:
        if self.grid is None:
            raise RuntimeError("StudentTRecalibration.apply before fit")
        p = check_probs(probs, self.grid)
        mu, sigma = centre_scale(p, self.grid)
        return student_t_pdfs(mu, self.scale * sigma, self.nu, self.grid)

    def to_dict(self) -> dict[str, Any]:
        if self.grid is None:
            raise RuntimeError("StudentTRecalibration.to_dict before fit")
        # JSON has no infinity: ν = inf is stored as null
        return {"scale": self.scale, "nu": self.nu if np.isfinite(self.nu) else None, "fit_nu": self.fit_nu,
                "grid": self.grid.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudentTRecalibration:
        nu = float("inf") if d.get("nu") is None else float(d["nu"])
        return cls(scale=float(d["scale"]), nu=nu, fit_nu=bool(d.get("fit_nu", True)), grid=d["grid"])

    def summary(self) -> str:
        return f"s = {self.scale:.4g}, nu = {self.nu:.4g}"
