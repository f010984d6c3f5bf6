"""Binned redshift PDFs: the bin grid, point estimates, quantiles and qp conversion.

A binned PDF is a row of ``n_bins`` probabilities, one per redshift bin, summing to 1
(Pasquet et al. 2019, Sect. 3: a softmax over 180 bins on 0 <= z <= 0.4).  Arrays of PDFs
have shape ``(N, n_bins)``.  Every function here works row by row and is vectorised, so it
can be called on any chunk of a catalogue and the results concatenated.

Inside a bin the probability is taken as uniformly spread, so the CDF is piecewise linear
between the bin edges.  This is the same convention as qp's ``hist`` representation, which
keeps our quantiles, PIT values and CRPS consistent with RAIL/qp tools on the same file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import ndtr

if TYPE_CHECKING:  # qp pulls in a lot; import it only where it is used
    import qp


@dataclass(frozen=True)
class RedshiftGrid:
    """Uniform redshift binning ``z_min <= z <= z_max`` in ``n_bins`` bins.

    The default is Pasquet et al. (2019), Sect. 3.2: 180 bins over 0-0.4, width 2.2e-3.
    """

    n_bins: int = 180
    z_min: float = 0.0
    z_max: float = 0.4

    def __post_init__(self) -> None:
        if int(self.n_bins) != self.n_bins or self.n_bins < 1:
            raise ValueError(f"RedshiftGrid: n_bins must be a positive integer, got {self.n_bins!r}")
        if not (np.isfinite(self.z_min) and np.isfinite(self.z_max) and self.z_max > self.z_min):
            raise ValueError(
                f"RedshiftGrid: need finite z_min < z_max, got z_min={self.z_min!r}, z_max={self.z_max!r}"
            )
        # Normalise the types so that equality and to_dict() do not depend on how it was built.
        object.__setattr__(self, "n_bins", int(self.n_bins))
        object.__setattr__(self, "z_min", float(self.z_min))
        object.__setattr__(self, "z_max", float(self.z_max))

    @property
    def edges(self) -> np.ndarray:
        """The ``n_bins + 1`` bin edges."""
        return np.linspace(self.z_min, self.z_max, self.n_bins + 1)

    @property
    def centers(self) -> np.ndarray:
        """The ``n_bins`` bin mid-points z_k (Pasquet Eq. 2 sums over these)."""
        e = self.edges
        return 0.5 * (e[:-1] + e[1:])

    @property
    def width(self) -> float:
        """The bin width (z_max - z_min) / n_bins."""
        return (self.z_max - self.z_min) / self.n_bins

    def labels(self, z: np.ndarray) -> np.ndarray:
        """Bin index of each redshift, clipped to ``[0, n_bins - 1]`` (int64).

        Redshifts outside the grid go to the first or last bin, as a classifier must put them
        somewhere.  NaN is refused because it has no bin.
        """
        z = np.asarray(z, dtype=np.float64)
        if np.isnan(z).any():
            raise ValueError("RedshiftGrid.labels: redshifts contain NaN; drop those objects first")
        # searchsorted on the edges avoids the floor((z - z_min) / width) rounding at exact edges.
        idx = np.searchsorted(self.edges, z, side="right") - 1
        return np.clip(idx, 0, self.n_bins - 1).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (for YAML/JSON)."""
        return {"n_bins": self.n_bins, "z_min": self.z_min, "z_max": self.z_max}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RedshiftGrid:
        """Inverse of :meth:`to_dict`; unknown keys are an error so typos do not pass silently."""
        unknown = set(d) - {"n_bins", "z_min", "z_max"}
        if unknown:
            raise ValueError(f"RedshiftGrid.from_dict: unknown keys {sorted(unknown)}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# helpers


def _as_pdfs(pdfs: np.ndarray, grid: RedshiftGrid | None = None) -> np.ndarray:
    p = np.asarray(pdfs, dtype=np.float64)
    if p.ndim == 1:
        p = p[None, :]
    if p.ndim != 2:
        raise ValueError(f"PDF array must have shape (N, n_bins), got {p.shape}")
    if grid is not None and p.shape[1] != grid.n_bins:
        raise ValueError(f"PDF array has {p.shape[1]} bins but the grid has {grid.n_bins}")
    return p


def normalize(pdfs: np.ndarray) -> np.ndarray:
    """Rescale each row to sum to 1: P_k <- P_k / sum_j P_j.

    Negative or non-finite values, and rows whose sum is not positive, are refused with the
    indices of the offending rows, because silently fixing them would hide a model bug.
    """
    p = _as_pdfs(pdfs)
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1)
    s = p.sum(axis=1)
    bad |= ~(s > 0)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"normalize: {rows.size} PDF row(s) are negative, non-finite or sum to 0 "
            f"(first rows: {rows[:10].tolist()}); check the model output"
        )
    return p / s[:, None]


def cdf_edges(pdfs: np.ndarray) -> np.ndarray:
    """CDF at the ``n_bins + 1`` bin edges: C_0 = 0, C_k = sum_{j<k} P_j (rows need not sum to 1)."""
    p = _as_pdfs(pdfs)
    c = np.zeros((p.shape[0], p.shape[1] + 1))
    np.cumsum(p, axis=1, out=c[:, 1:])
    return c


def cdf_at(pdfs: np.ndarray, grid: RedshiftGrid, z: np.ndarray) -> np.ndarray:
    """CDF_i(z_i) of each row at its own redshift, linear inside a bin; 0 below / 1 above the grid.

    This is Pasquet Eq. (3), ``int_0^{z_i} PDF_i(z) dz``, for a histogram PDF.
    """
    p = normalize(_as_pdfs(pdfs, grid))
    z = np.broadcast_to(np.asarray(z, dtype=np.float64), (p.shape[0],))
    c = cdf_edges(p)
    u = (z - grid.z_min) / grid.width
    k = np.clip(np.floor(u), 0, grid.n_bins - 1).astype(np.int64)
    t = np.clip(u - k, 0.0, 1.0)
    rows = np.arange(p.shape[0])
    out = c[rows, k] + t * p[rows, k]
    out = np.where(z <= grid.z_min, 0.0, out)
    out = np.where(z >= grid.z_max, 1.0, out)
    return np.where(np.isnan(z), np.nan, out)


# --------------------------------------------------------------------------------------------
# point estimates


def pdf_mean(pdfs: np.ndarray, grid: RedshiftGrid) -> np.ndarray:
    """Pasquet et al. (2019) Eq. (2): z_phot = sum_k z_k P(z_k), z_k the bin mid-points."""
    p = _as_pdfs(pdfs, grid)
    return (p @ grid.centers) / p.sum(axis=1)


def pdf_mode(pdfs: np.ndarray, grid: RedshiftGrid) -> np.ndarray:
    """Mid-point of the most probable bin (the first one on ties)."""
    p = _as_pdfs(pdfs, grid)
    return grid.centers[np.argmax(p, axis=1)]


def pdf_quantiles(pdfs: np.ndarray, grid: RedshiftGrid, q: float | np.ndarray) -> np.ndarray:
    """Quantiles z(q) with CDF(z) = q, inverting the piecewise-linear CDF on the bin edges.

    Returns shape (N,) for a scalar ``q`` and (N, len(q)) for an array.  For q = 0 (1) the
    lower (upper) end of the PDF's support is returned.
    """
    p = normalize(_as_pdfs(pdfs, grid))
    q_arr = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if q_arr.ndim != 1 or np.any((q_arr < 0) | (q_arr > 1)) or np.isnan(q_arr).any():
        raise ValueError(f"pdf_quantiles: q must be in [0, 1], got {q!r}")
    n, nb = p.shape
    c = cdf_edges(p)
    c[:, -1] = 1.0  # normalised; remove the last-ulp rounding so q = 1 finds the last bin
    # One searchsorted for all rows at once: offset row i by 2i so the rows' CDFs, each in [0, 1],
    # form one increasing array.  side="right" picks the bin k with C_k <= q < C_{k+1}, which skips
    # empty bins (zero width in CDF) automatically.
    offs = 2.0 * np.arange(n)
    flat = (c + offs[:, None]).ravel()
    pos = np.searchsorted(flat, (q_arr[None, :] + offs[:, None]).ravel(), side="right").reshape(n, -1)
    k = pos - 1 - (nb + 1) * np.arange(n)[:, None]
    k = np.clip(k, 0, nb - 1)
    rows = np.arange(n)[:, None]
    pk = p[rows, k]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(pk > 0, (q_arr[None, :] - c[rows, k]) / pk, 0.0)
    z = grid.edges[k] + np.clip(t, 0.0, 1.0) * grid.width
    return z[:, 0] if np.ndim(q) == 0 else z


def pdf_median(pdfs: np.ndarray, grid: RedshiftGrid) -> np.ndarray:
    """Median: z with CDF(z) = 0.5 (piecewise-linear CDF)."""
    return pdf_quantiles(pdfs, grid, 0.5)


def credible_interval(
    pdfs: np.ndarray, grid: RedshiftGrid, level: float = 0.68
) -> tuple[np.ndarray, np.ndarray]:
    """Central interval [z((1 - level)/2), z((1 + level)/2)].

    The "width" of Pasquet et al. (2019) Sect. 4.3 is the length of this interval for level=0.68
    ("chopping off their left and right wings in equal measure").
    """
    if not 0 < level < 1:
        raise ValueError(f"credible_interval: level must be in (0, 1), got {level}")
    z = pdf_quantiles(pdfs, grid, np.array([(1 - level) / 2, (1 + level) / 2]))
    return z[:, 0], z[:, 1]


def point_estimates(pdfs: np.ndarray, grid: RedshiftGrid) -> dict[str, np.ndarray]:
    """The per-object summary columns of a prediction catalogue.

    Keys: z_mean (Pasquet Eq. 2), z_median, z_mode, z_lo68, z_hi68 (central 68% interval) and
    width68 = z_hi68 - z_lo68 (Pasquet Sect. 4.3).
    """
    p = normalize(_as_pdfs(pdfs, grid))
    qs = pdf_quantiles(p, grid, np.array([0.16, 0.5, 0.84]))
    return {
        "z_mean": pdf_mean(p, grid),
        "z_median": qs[:, 1],
        "z_mode": pdf_mode(p, grid),
        "z_lo68": qs[:, 0],
        "z_hi68": qs[:, 2],
        "width68": qs[:, 2] - qs[:, 0],
    }


# --------------------------------------------------------------------------------------------
# constructors and qp


def gaussian_pdfs(mu: np.ndarray, sigma: np.ndarray | float, grid: RedshiftGrid) -> np.ndarray:
    """Binned Gaussians: P_k = Phi((e_{k+1} - mu)/sigma) - Phi((e_k - mu)/sigma), renormalised on the grid.

    Gives a regression model (a single z and an error) a PDF on the common grid, and gives the
    tests PDFs with known CRPS and PIT.  The mass outside the grid is folded back by the
    renormalisation, i.e. the Gaussian is truncated to [z_min, z_max].
    """
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), mu.shape)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError("gaussian_pdfs: mu and sigma must be finite")
    if np.any(sigma <= 0):
        raise ValueError("gaussian_pdfs: sigma must be > 0")
    return binned_from_edge_cdf(ndtr((grid.edges[None, :] - mu[:, None]) / sigma[:, None]), mu, grid)


def binned_from_edge_cdf(cdf: np.ndarray, mu: np.ndarray, grid: RedshiftGrid) -> np.ndarray:
    """Bin probabilities from a location-scale CDF at the grid's edges (N, n_bins + 1), truncated to the grid.

    P_k = F(e_{k+1}) - F(e_k), renormalised over the grid; a distribution far off the grid (~0 mass on it)
    puts all its mass in the end bin nearest its location ``mu``.
    """
    p = np.clip(np.diff(cdf, axis=1), 0.0, None)
    s = p.sum(axis=1)
    far = ~(s > 1e-300)
    if far.any():
        p[far] = 0.0
        p[far, grid.labels(mu[far])] = 1.0
        s[far] = 1.0
    return p / s[:, None]


def to_qp(
    pdfs: np.ndarray,
    grid: RedshiftGrid,
    ancil: dict[str, np.ndarray] | None = None,
    dtype: np.dtype | str = np.float64,
) -> qp.Ensemble:
    """A qp ``hist`` Ensemble over the grid edges.

    qp's hist stores a density per unit z, so the probabilities are divided by the bin width.
    ``dtype`` is the density's storage type (float32 halves a file).
    """
    import qp

    p = normalize(_as_pdfs(pdfs, grid))
    dens = (p / grid.width).astype(dtype, copy=False)
    # Already normalised here; qp's own normalisation would promote float32 back to float64.
    ens = qp.Ensemble(qp.hist, data={"bins": grid.edges, "pdfs": dens, "norm": False})
    if ancil:
        ens.set_ancil({k: np.asarray(v) for k, v in ancil.items()})
    return ens


def from_qp(ens: qp.Ensemble, grid: RedshiftGrid | None = None) -> tuple[np.ndarray, RedshiftGrid]:
    """Binned PDFs ``(N, n_bins)`` and their grid from a qp Ensemble.

    A ``hist`` ensemble on uniform bins is read directly (density x width).  Any other
    representation (interp, mixmod, quant... as written by RAIL estimators), or a hist on
    another grid, is binned onto ``grid`` by differencing its CDF at the grid edges.
    """
    bins = None
    if ens.gen_class.name == "hist":
        bins = np.asarray(ens.metadata["bins"], dtype=np.float64).ravel()
    if bins is not None:
        b_grid = RedshiftGrid(n_bins=bins.size - 1, z_min=bins[0], z_max=bins[-1])
        uniform = np.allclose(bins, b_grid.edges, rtol=0, atol=1e-9 * (bins[-1] - bins[0]))
        if uniform and (grid is None or grid == b_grid):
            dens = np.asarray(ens.objdata["pdfs"], dtype=np.float64).reshape(ens.npdf, -1)
            return normalize(dens * np.diff(bins)[None, :]), b_grid
    if grid is None:
        raise ValueError(
            f"from_qp: a {ens.gen_class.name!r} ensemble without uniform bins needs an explicit grid"
        )
    c = np.asarray(ens.cdf(grid.edges[None, :]), dtype=np.float64).reshape(ens.npdf, -1)
    p = np.clip(np.diff(c, axis=1), 0.0, None)
    return normalize(p), grid
