"""Residuals in bins of a per-object quantity, with bootstrap errors.

Pasquet et al. (2019) Fig. 8 (mean Δz against z_spec and z_phot), Fig. 11 (against E(B−V) and
inclination) and Sect. 6.5 (S/N); John William et al. Fig. 1c (against z_phot).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from zpix.evaluation.metrics import MAD_SCALE, sigma_mad

#: Above this many objects in a bin the bootstrap runs on a random subsample of this size and
#: its errors are scaled by sqrt(subsample / n): bootstrap standard errors of a mean or a
#: median-based scale go as 1/sqrt(n), and this bounds the cost for survey-size samples.
BOOTSTRAP_MAX_N = 20_000


def _sigma_mad_rows(x: np.ndarray) -> np.ndarray:
    return stats.median_abs_deviation(x, axis=1, scale=1 / MAD_SCALE)


def bootstrap_mean_sigma_mad(
    dz: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Bootstrap standard errors of mean(Δz) and σ_MAD(Δz): the std over ``n_boot`` resamples."""
    d = np.asarray(dz, dtype=np.float64)
    n = d.size
    if n < 2 or n_boot < 2:
        return float("nan"), float("nan")
    scale = 1.0
    if n > BOOTSTRAP_MAX_N:
        d = rng.choice(d, BOOTSTRAP_MAX_N, replace=False)
        scale = np.sqrt(BOOTSTRAP_MAX_N / n)
        n = BOOTSTRAP_MAX_N
    means, sigmas = [], []
    batch = max(1, 4_000_000 // n)  # keep each (batch, n) resample matrix to ~32 MB
    for start in range(0, n_boot, batch):
        b = min(batch, n_boot - start)
        sample = d[rng.integers(0, n, size=(b, n))]
        means.append(sample.mean(axis=1))
        sigmas.append(_sigma_mad_rows(sample))
    return float(np.std(np.concatenate(means)) * scale), float(np.std(np.concatenate(sigmas)) * scale)


def trend_edges(x: np.ndarray, n_bins: int = 12, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """Equal-width bins between the ``lo_pct`` and ``hi_pct`` percentiles of ``x``.

    Percentiles, not min/max, so that a handful of extreme values (a mis-measured magnitude,
    a catastrophic z_phot) do not squeeze the populated range into two bins.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("trend_edges: no finite values")
    lo, hi = np.percentile(x, [lo_pct, hi_pct])
    if hi <= lo:
        hi = lo + 1e-6 * max(1.0, abs(lo))
    return np.linspace(lo, hi, n_bins + 1)


def binned_trend(
    x: np.ndarray,
    dz: np.ndarray,
    edges: np.ndarray | None = None,
    n_bins: int = 12,
    n_boot: int = 200,
    min_count: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean Δz and σ_MAD(Δz) in bins of ``x``, with counts and bootstrap errors.

    Returns lists (JSON-ready): edges, center, n, mean_x, mean_dz, mean_dz_err, sigma_mad,
    sigma_mad_err.  Bins with fewer than ``min_count`` objects get NaN statistics; objects with
    non-finite ``x`` or outside the edges are left out (``n_outside`` counts them).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    dz = np.asarray(dz, dtype=np.float64).ravel()
    if x.shape != dz.shape:
        raise ValueError(f"binned_trend: {x.size} x values but {dz.size} residuals")
    if edges is None:
        edges = trend_edges(x, n_bins)
    edges = np.asarray(edges, dtype=np.float64)
    rng = np.random.default_rng(seed)
    finite = np.isfinite(x) & np.isfinite(dz)
    idx = np.searchsorted(edges, x, side="right") - 1
    idx[x == edges[-1]] = edges.size - 2  # the last bin is closed on the right
    inside = finite & (idx >= 0) & (idx < edges.size - 1)
    out: dict[str, list[float]] = {k: [] for k in ("n", "mean_x", "mean_dz", "mean_dz_err", "sigma_mad",
                                                   "sigma_mad_err")}
    for b in range(edges.size - 1):
        d = dz[inside & (idx == b)]
        xb = x[inside & (idx == b)]
        out["n"].append(int(d.size))
        if d.size < min_count:
            for k in ("mean_x", "mean_dz", "mean_dz_err", "sigma_mad", "sigma_mad_err"):
                out[k].append(float("nan"))
            continue
        e_mean, e_sig = bootstrap_mean_sigma_mad(d, n_boot, rng)
        out["mean_x"].append(float(xb.mean()))
        out["mean_dz"].append(float(d.mean()))
        out["mean_dz_err"].append(e_mean)
        out["sigma_mad"].append(sigma_mad(d))
        out["sigma_mad_err"].append(e_sig)
    return {
        "edges": edges.tolist(),
        "center": (0.5 * (edges[:-1] + edges[1:])).tolist(),
        **out,
        "n_outside": int(finite.sum() - inside.sum()),
        "n_boot": int(n_boot),
        "min_count": int(min_count),
    }


#: Width of the fixed z bins of the bias trends (mean Δz against z_spec and against z_phot).
BIAS_BIN_WIDTH = 0.02
#: Bins with fewer objects do not count towards the spec-z trend amplitude.
BIAS_MIN_COUNT = 100


def fixed_edges(x: np.ndarray, width: float = BIAS_BIN_WIDTH) -> np.ndarray:
    """Edges at multiples of ``width`` covering the finite values of ``x`` (the same for every method
    scored on the same objects, unlike percentile edges)."""
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("fixed_edges: no finite values")
    lo = np.floor(v.min() / width) * width
    hi = max(np.ceil(v.max() / width) * width, lo + width)
    return lo + width * np.arange(int(round((hi - lo) / width)) + 1)


def bias_summary(
    z_phot: np.ndarray,
    z_spec: np.ndarray,
    *,
    width: float = BIAS_BIN_WIDTH,
    min_count: int = BIAS_MIN_COUNT,
    n_tomo: int = 5,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """The numbers of Lin et al.'s two biases, for one method on its objects.

    * ``spec_z_trend`` / ``phot_z_trend``: mean Δz = (z_phot − z_spec)/(1 + z_spec) in fixed bins of
      z_spec and of z_phot (multiples of ``width``), with bootstrap errors (:func:`binned_trend`);
    * ``spec_z_trend_amplitude``: the largest |mean Δz| over the z_spec bins holding ≥ ``min_count``
      objects (residuals as a function of spec-z: the pull towards the training set's mode);
    * ``nz_ks``: KS distance between the z_phot and z_spec distributions (mode collapse);
    * ``tomographic`` and ``max_tomo_bias``: Δ⟨z⟩ in ``n_tomo`` equal-count z_phot bins and its
      largest absolute value (the |Δ⟨z⟩| < 0.002 requirement).
    """
    from zpix.evaluation.metrics import delta_z
    from zpix.evaluation.nz import nz_ks, tomographic_bias

    zp, zs = np.asarray(z_phot, dtype=np.float64), np.asarray(z_spec, dtype=np.float64)
    dz = delta_z(zp, zs)
    spec = binned_trend(zs, dz, edges=fixed_edges(zs, width), n_boot=n_boot, seed=seed)
    phot = binned_trend(zp, dz, edges=fixed_edges(zp, width), n_boot=n_boot, seed=seed)
    counted = [abs(m) for m, n in zip(spec["mean_dz"], spec["n"], strict=True) if n >= min_count and np.isfinite(m)]
    tomo = tomographic_bias(zp, zs, n_tomo)
    return {
        "spec_z_trend": spec,
        "phot_z_trend": phot,
        "spec_z_trend_amplitude": float(max(counted)) if counted else float("nan"),
        "trend_min_count": int(min_count),
        "nz_ks": nz_ks(zp, zs),
        "tomographic": tomo,
        "max_tomo_bias": tomo["max_abs"],
    }
