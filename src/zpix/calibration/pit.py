"""PIT-based recalibration of the CDF (Bordoloi, Lilly & Amara 2010, MNRAS 406, 881, Sect. 3).

The probability integral transform of a validation object is PIT_i = C_i(z_spec,i), its CDF at the true
redshift; for calibrated PDFs the PITs are uniform.  With F the cumulative distribution of the validation
PITs, every PDF's CDF is mapped through F,

    C'_i(z) = F(C_i(z)),        P'_ik = F(C_i(e_{k+1})) − F(C_i(e_k)),

which makes the PITs of objects like the validation ones uniform (Bordoloi et al. Eq. 9).  F is the
empirical CDF read at ``n_knots − 1`` equally spaced probability levels (its quantiles are the knots) and
interpolated between them in probit space (:func:`pit_map`): a monotone map with F(0) = 0,
F(1) = 1 whose noise is that of the ECDF at the knots, not of every single PIT.

``pit-local`` is the conditional variant: one map per equal-count bin of the photo-z (the PDF's mean
before this step), interpolated linearly in z_phot between the bins' median photo-z, so that a PDF
that is over-confident at low z and under-confident at high z is corrected at both ends (a binned form
of the local calibration of Dey et al. 2022, "Cal-PIT", with the photo-z as the conditioning input).
``pit-width`` is the same with the PDF's central 68% width (Pasquet et al. 2019 Sect. 4.3) as the conditioning
input: the width follows the object's signal-to-noise, so a sample brighter or fainter than the validation
objects (a covariate shift in magnitude) still gets the map of objects with PDFs like its own.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from scipy.special import ndtr, ndtri

from zpix.calibration.base import Calibrator, check_probs, register_calibrator
from zpix.pdf import RedshiftGrid, cdf_at, cdf_edges, credible_interval, pdf_mean


def fit_pit_map(pit: np.ndarray, n_knots: int) -> tuple[np.ndarray, np.ndarray]:
    """Knots (x, y) of the monotone map F: x the PIT quantiles at the levels y = 1/K, ..., (K−1)/K.

    F(0) = 0 and F(1) = 1 are implied (see :func:`pit_map`).  Equal quantiles (many equal PITs) are
    spread by 1e-9 so that F stays a function.
    """
    pit = np.clip(np.asarray(pit, dtype=np.float64), 0.0, 1.0)
    k = int(n_knots)
    if pit.size < k:
        raise ValueError(f"PIT recalibration with {k} knots needs at least {k} validation objects, got {pit.size}")
    y = np.arange(1, k) / k
    x = np.clip(np.quantile(pit, y), 1e-9, 1 - 1e-9)
    x = np.maximum.accumulate(x + np.arange(x.size) * 1e-9)
    return np.clip(x, 1e-9, 1 - 1e-9), y


def pit_map(u: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """F(u), interpolated between the knots in probit space: g = Φ⁻¹∘F∘Φ is piecewise linear in Φ⁻¹(u),
    extended beyond the outer knots with the slopes of the outer segments.

    A Gaussian PDF whose width is off by a factor a and centre by b has exactly g(t) = a t + b, so a few
    knots follow it into both tails, where F has infinite or zero slope (straight lines in u between 10
    knots left KS ≈ 0.045 on a model over-confident by 2).
    """
    tx, ty = ndtri(x), ndtri(y)
    t = ndtri(np.clip(u, 0.0, 1.0))
    if tx.size == 1:  # one knot: a shift in probit space
        return ndtr(t + (ty[0] - tx[0]))
    lo = (ty[1] - ty[0]) / max(tx[1] - tx[0], 1e-12)
    hi = (ty[-1] - ty[-2]) / max(tx[-1] - tx[-2], 1e-12)
    with np.errstate(invalid="ignore"):
        g = np.interp(t, tx, ty)
        g = np.where(t < tx[0], ty[0] + lo * (t - tx[0]), g)
        g = np.where(t > tx[-1], ty[-1] + hi * (t - tx[-1]), g)
    return ndtr(g)


def apply_pit_map(probs: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P'_k = F(C(e_{k+1})) − F(C(e_k)) with F the map through the knots (x, y) (:func:`pit_map`)."""
    c = cdf_edges(probs)
    c[:, -1] = 1.0
    return np.clip(np.diff(pit_map(c, x, y), axis=1), 0.0, None)


def _check_knots(n_knots: int | str) -> int | str:
    if n_knots == "auto":
        return n_knots
    if isinstance(n_knots, str) or int(n_knots) != n_knots or n_knots < 2:
        raise ValueError(f"n_knots must be an integer >= 2 or 'auto', got {n_knots!r}")
    return int(n_knots)


def auto_knots(n: int) -> int:
    """Knots for ``n`` fitting objects: sqrt(n)/5 within [4, 20] (6 for 1000, 9 for 2000, 20 for 10^4).

    More knots follow the map more closely but each carries the ECDF's noise, ~sqrt(y(1 − y)/n); on the
    real SDSS MGS k-NN (1000 fitting, 5000 test objects, 3 draws) 6 knots gave test PIT KS 0.013-0.020,
    20 knots 0.014-0.025 and 2 knots up to 0.028.
    """
    return int(np.clip(round(np.sqrt(n) / 5), 4, 20))


@register_calibrator("pit")
class PITRecalibration(Calibrator):
    """C' = F(C), F the ECDF of the validation PITs (Bordoloi et al. 2010)."""

    def __init__(self, n_knots: int | str = "auto", x: list[float] | None = None, y: list[float] | None = None
                 ) -> None:
        self.n_knots = _check_knots(n_knots)
        self.x = None if x is None else np.asarray(x, dtype=np.float64)
        self.y = None if y is None else np.asarray(y, dtype=np.float64)

    def fit(self, *, probs: np.ndarray, z_spec: np.ndarray, grid: RedshiftGrid, **context: Any) -> None:
        p = check_probs(probs, grid)
        k = auto_knots(len(p)) if self.n_knots == "auto" else int(self.n_knots)
        self.x, self.y = fit_pit_map(cdf_at(p, grid, z_spec), k)

    def apply(self, probs: np.ndarray, **context: Any) -> np.ndarray:
        if self.x is None or self.y is None:
            raise RuntimeError("PITRecalibration.apply before fit")
        return apply_pit_map(check_probs(probs), self.x, self.y)

    def to_dict(self) -> dict[str, Any]:
        if self.x is None or self.y is None:
            raise RuntimeError("PITRecalibration.to_dict before fit")
        return {"n_knots": len(self.x) + 1, "x": self.x.tolist(), "y": self.y.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PITRecalibration:
        return cls(n_knots=int(d["n_knots"]), x=d["x"], y=d["y"])

    def summary(self) -> str:
        if self.x is None:
            return "not fitted"
        return f"{len(self.x) + 1} knots, F(0.16) = {np.interp(0.16, self.x, self.y):.3f}, " \
               f"F(0.84) = {np.interp(0.84, self.x, self.y):.3f}"


@register_calibrator("pit-local")
class LocalPITRecalibration(Calibrator):
    """One PIT map per equal-count photo-z bin, interpolated in z_phot (conditional recalibration).

    ``n_groups`` bins are used, fewer where the validation set would leave fewer than ``min_per_group``
    objects in a bin.
    """

    #: what the maps are conditioned on, read from each PDF before this step (see :meth:`condition`)
    conditioned_on: ClassVar[str] = "z_phot"

    def condition(self, p: np.ndarray, grid: RedshiftGrid) -> np.ndarray:
        """The conditioning input of each PDF: its mean redshift."""
        return pdf_mean(p, grid)

    def __init__(self, n_groups: int = 4, n_knots: int | str = "auto", min_per_group: int = 300,
                 centers: list[float] | None = None, maps: list[dict[str, list[float]]] | None = None,
                 grid: dict[str, Any] | None = None) -> None:
        if int(n_groups) != n_groups or n_groups < 1:
            raise ValueError(f"n_groups must be a positive integer, got {n_groups!r}")
        self.n_groups, self.n_knots, self.min_per_group = int(n_groups), _check_knots(n_knots), int(min_per_group)
        self.centers = None if centers is None else np.asarray(centers, dtype=np.float64)
        self.maps = None if maps is None else [(np.asarray(m["x"], float), np.asarray(m["y"], float)) for m in maps]
        self.grid = None if grid is None else RedshiftGrid.from_dict(grid)

    def fit(self, *, probs: np.ndarray, z_spec: np.ndarray, grid: RedshiftGrid, **context: Any) -> None:
        p = check_probs(probs, grid)
        zp = self.condition(p, grid)
        pit = cdf_at(p, grid, z_spec)
        n_groups = max(1, min(self.n_groups, len(zp) // max(self.min_per_group, 1)))
        edges = np.quantile(zp, np.linspace(0, 1, n_groups + 1))
        group = np.clip(np.searchsorted(edges, zp, side="right") - 1, 0, n_groups - 1)
        self.centers = np.array([np.median(zp[group == g]) for g in range(n_groups)])
        self.maps = [fit_pit_map(pit[group == g], auto_knots(int((group == g).sum())) if self.n_knots == "auto"
                                 else int(self.n_knots)) for g in range(n_groups)]
        self.grid = grid

    def _weights(self, zp: np.ndarray) -> np.ndarray:
        """(n_groups, N) hat-function weights in the conditioning input; constant beyond the outer centres."""
        assert self.centers is not None
        eye = np.eye(len(self.centers))
        return np.stack([np.interp(zp, self.centers, eye[g]) for g in range(len(self.centers))])

    def apply(self, probs: np.ndarray, **context: Any) -> np.ndarray:
        if self.maps is None or self.grid is None:
            raise RuntimeError("LocalPITRecalibration.apply before fit")
        p = check_probs(probs, self.grid)
        w = self._weights(self.condition(p, self.grid))
        c = cdf_edges(p)
        c[:, -1] = 1.0
        f = np.zeros_like(c)
        for g, (x, y) in enumerate(self.maps):
            rows = w[g] > 0
            if rows.any():
                f[rows] += w[g, rows, None] * pit_map(c[rows], x, y)
        return np.clip(np.diff(f, axis=1), 0.0, None)

    def to_dict(self) -> dict[str, Any]:
        if self.maps is None or self.centers is None or self.grid is None:
            raise RuntimeError("LocalPITRecalibration.to_dict before fit")
        return {"n_groups": self.n_groups, "n_knots": self.n_knots, "min_per_group": self.min_per_group,
                "centers": self.centers.tolist(), "grid": self.grid.to_dict(),
                "maps": [{"x": x.tolist(), "y": y.tolist()} for x, y in self.maps]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LocalPITRecalibration:
        return cls(**d)

    def summary(self) -> str:
        if self.centers is None:
            return "not fitted"
        return f"{len(self.centers)} {self.conditioned_on} groups centred at {np.round(self.centers, 4).tolist()}, " \
               f"{[len(x) + 1 for x, _ in self.maps or []]} knots"


@register_calibrator("pit-width")
class WidthPITRecalibration(LocalPITRecalibration):
    """One PIT map per equal-count bin of the PDF's 68% width, interpolated in the width (conditional
    recalibration on the object's own precision; see the module docstring)."""

    conditioned_on: ClassVar[str] = "width68"

    def condition(self, p: np.ndarray, grid: RedshiftGrid) -> np.ndarray:
        """The conditioning input of each PDF: its central 68% interval's width."""
        lo, hi = credible_interval(p, grid, 0.68)
        return hi - lo


class ParametricPITMap(Calibrator):
    """C' = F_θ(C) with F_θ a monotone map of [0, 1] onto itself with a few parameters θ.

    θ is fitted by minimum Cramér–von Mises distance of the mapped validation PITs F_θ(PIT_i) from U(0, 1),
    W² = 1/(12n) + Σ_i (F_θ(PIT_(i)) − (2i − 1)/(2n))²: the same target as the nonparametric ``pit`` map, but
    with 2–3 numbers instead of K − 1 ECDF values its own noise is that of a 2–3 parameter estimate (about 1/√n
    in probit units), and a PIT of exactly 0 or 1 (z_spec off the PDF's support) pulls it no more than any
    other value.
    """

    #: starting parameters (the identity map) and the parameters' names in ``to_dict``
    start: ClassVar[tuple[float, ...]] = ()
    param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: float) -> None:
        unknown = set(params) - set(self.param_names)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameters {sorted(unknown)}; expected {self.param_names}")
        missing = [k for k in self.param_names if k not in params]
        if missing and len(missing) != len(self.param_names):
            raise ValueError(f"{self.name}: parameters {missing} missing")
        self.theta = None if missing else np.array([float(params[k]) for k in self.param_names])

    @staticmethod
    def _map(u: np.ndarray, theta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit(self, *, probs: np.ndarray, z_spec: np.ndarray, grid: RedshiftGrid, **context: Any) -> None:
        from scipy.optimize import minimize

        pit = np.sort(np.clip(cdf_at(check_probs(probs, grid), grid, z_spec), 0.0, 1.0))
        target = (2 * np.arange(1, pit.size + 1) - 1) / (2 * pit.size)
        # F_θ is monotone, so the mapped PITs stay sorted and W² needs no re-sorting
        res = minimize(lambda th: float(np.mean((self._map(pit, th) - target) ** 2)), np.array(self.start),
                       method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-12, "maxiter": 4000})
        self.theta = np.asarray(res.x, dtype=np.float64)

    def apply(self, probs: np.ndarray, **context: Any) -> np.ndarray:
        if self.theta is None:
            raise RuntimeError(f"{type(self).__name__}.apply before fit")
        c = cdf_edges(check_probs(probs))
        c[:, 0], c[:, -1] = 0.0, 1.0
        return np.clip(np.diff(self._map(c, self.theta), axis=1), 0.0, None)

    def to_dict(self) -> dict[str, Any]:
        if self.theta is None:
            raise RuntimeError(f"{type(self).__name__}.to_dict before fit")
        return {k: float(v) for k, v in zip(self.param_names, self.theta, strict=True)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParametricPITMap:
        return cls(**{k: float(v) for k, v in d.items()})

    def summary(self) -> str:
        if self.theta is None:
            return "not fitted"
        return ", ".join(f"{k} = {v:.4g}" for k, v in self.to_dict().items()) + \
            f"; F(0.16) = {float(self._map(np.array([0.16]), self.theta)[0]):.3f}, " \
            f"F(0.84) = {float(self._map(np.array([0.84]), self.theta)[0]):.3f}"


@register_calibrator("pit-affine")
class AffinePITMap(ParametricPITMap):
    """Shift and stretch in probit space: F(u) = Φ(a Φ⁻¹(u) + b), a = exp(log_a) > 0.

    Exact for Gaussian PDFs N(ẑ, σ) whose true distribution is N(ẑ + δ, λσ): then PIT = Φ((z − ẑ)/σ) and
    F(u) = Φ((Φ⁻¹(u) − δ/σ)/λ), i.e. a = 1/λ, b = −δ/(λσ) (δ/σ the same for every object).  a > 1 widens
    over-confident PDFs (PITs piled at 0 and 1), b moves the PDFs' centre.
    """

    start = (0.0, 0.0)
    param_names = ("log_a", "b")

    @staticmethod
    def _map(u: np.ndarray, theta: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return ndtr(np.exp(theta[0]) * ndtri(np.clip(u, 0.0, 1.0)) + theta[1])


@register_calibrator("pit-beta")
class BetaPITMap(ParametricPITMap):
    """Beta calibration of the PIT (Kull, Silva Filho & Flach 2017, Eq. 4):

        F(u) = 1 / (1 + 1 / (e^c u^a / (1 − u)^b)),   a = exp(log_a), b = exp(log_b) > 0,

    a monotone map with F(0) = 0, F(1) = 1 that can stretch the two tails of the PIT independently (three
    parameters: asymmetric under-/over-confidence that the probit shift and stretch cannot follow).
    """

    start = (0.0, 0.0, 0.0)
    param_names = ("log_a", "log_b", "c")

    @staticmethod
    def _map(u: np.ndarray, theta: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        u = np.clip(u, 0.0, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            logit = theta[2] + np.exp(theta[0]) * np.log(u) - np.exp(theta[1]) * np.log1p(-u)
        return np.where(u <= 0, 0.0, np.where(u >= 1, 1.0, expit(logit)))
