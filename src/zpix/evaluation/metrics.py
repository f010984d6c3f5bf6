"""Photometric-redshift metrics as plain numpy functions.

Notation: Δz = (z_phot − z_spec)/(1 + z_spec) (Cohen et al. 2000, used by Pasquet et al. 2019
Sect. 4.1 and John William et al. Sect. 4); δz = z_phot − z_spec (John William Eq. 3).

Point metrics take 1-d arrays and ignore nothing: the caller removes objects without a
spectroscopic redshift (NaN) first, because a silently smaller sample changes every number.
PDF metrics take binned PDFs ``(N, n_bins)`` on a :class:`~zpix.pdf.RedshiftGrid`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from zpix.pdf import RedshiftGrid, _as_pdfs, cdf_at, cdf_edges, normalize

#: The paper's (and qp's) Gaussian consistency constant for the MAD, 1.4826 ≈ 1/Φ⁻¹(3/4); scipy's
#: median_abs_deviation divides by its ``scale``, so every σ_MAD is computed there with 1/MAD_SCALE.
MAD_SCALE = 1.4826


def _pair(z_phot: np.ndarray, z_spec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    zp = np.asarray(z_phot, dtype=np.float64).ravel()
    zs = np.asarray(z_spec, dtype=np.float64).ravel()
    if zp.shape != zs.shape:
        raise ValueError(f"z_phot has {zp.size} values but z_spec has {zs.size}")
    if zp.size == 0:
        raise ValueError("no objects: the metrics need at least one (z_phot, z_spec) pair")
    if not (np.isfinite(zp).all() and np.isfinite(zs).all()):
        raise ValueError("z_phot/z_spec contain NaN or inf: keep only objects with a known z_spec")
    return zp, zs


def _dz(dz: np.ndarray) -> np.ndarray:
    d = np.asarray(dz, dtype=np.float64).ravel()
    if d.size == 0:
        raise ValueError("no residuals given")
    if not np.isfinite(d).all():
        raise ValueError("residuals contain NaN or inf: keep only objects with a known z_spec")
    return d


# --------------------------------------------------------------------------------------------
# point metrics


def delta_z(z_phot: np.ndarray, z_spec: np.ndarray) -> np.ndarray:
    """Normalised residual Δz = (z_phot − z_spec)/(1 + z_spec) (Pasquet 2019 Sect. 4.1; KiDS Eq. 4)."""
    zp, zs = _pair(z_phot, z_spec)
    return (zp - zs) / (1.0 + zs)


def delta_z_raw(z_phot: np.ndarray, z_spec: np.ndarray) -> np.ndarray:
    """Un-normalised residual δz = z_phot − z_spec (John William et al., KiDS, Eq. 3)."""
    zp, zs = _pair(z_phot, z_spec)
    return zp - zs


def bias(dz: np.ndarray) -> float:
    """Prediction bias <Δz>, the mean residual (Pasquet 2019 Sect. 4.1)."""
    return float(np.mean(_dz(dz)))


def mean_delta_z_raw(z_phot: np.ndarray, z_spec: np.ndarray) -> float:
    """<δz> = mean(z_phot − z_spec), the KiDS "bias" (John William et al. Eq. 3, Table 1)."""
    return float(np.mean(delta_z_raw(z_phot, z_spec)))


def sigma_mad(dz: np.ndarray) -> float:
    """σ_MAD = 1.4826 × median(|Δz − median(Δz)|) (Pasquet 2019 Sect. 4.1).

    The same quantity is called SMAD(Δz) by John William et al. (KiDS Eq. 5).
    """
    return float(stats.median_abs_deviation(_dz(dz), scale=1 / MAD_SCALE))


smad = sigma_mad


def nmad(dz: np.ndarray) -> float:
    """NMAD = 1.4826 × median(|Δz|), *without* subtracting the median residual.

    This is the modified version of Ilbert et al. (2006); Pasquet 2019 footnote 5 points out
    that it differs from their σ_MAD.  The two agree when the median residual is 0.
    """
    return float(stats.median_abs_deviation(_dz(dz), center=_zero, scale=1 / MAD_SCALE))


def _zero(x: np.ndarray, axis: int | None = None) -> float:
    """The centre NMAD measures from (scipy's median_abs_deviation ``center``)."""
    return 0.0


def sigma_std(dz: np.ndarray) -> float:
    """σ(Δz): the standard deviation of Δz (population form, ddof=0; KiDS Table 1)."""
    return float(np.std(_dz(dz)))


def outlier_fraction(dz: np.ndarray, threshold: float = 0.05) -> float:
    """η = fraction of objects with |Δz| > threshold (0.05 in Pasquet 2019 Sect. 4.1).

    Returned as a fraction in [0, 1]; Pasquet's Table 2 quotes it in per cent.
    """
    if threshold <= 0:
        raise ValueError(f"outlier threshold must be > 0, got {threshold}")
    return float(np.mean(np.abs(_dz(dz)) > threshold))


def mse(z_phot: np.ndarray, z_spec: np.ndarray) -> float:
    """Mean squared error (1/n) Σ (z_phot − z_spec)² in redshift units (John William et al. Sect. 4)."""
    return float(np.mean(delta_z_raw(z_phot, z_spec) ** 2))


def mae(z_phot: np.ndarray, z_spec: np.ndarray) -> float:
    """Mean absolute error (1/n) Σ |z_phot − z_spec| in redshift units (John William et al. Sect. 4)."""
    return float(np.mean(np.abs(delta_z_raw(z_phot, z_spec))))


def r2(z_phot: np.ndarray, z_spec: np.ndarray) -> float:
    """Coefficient of determination R² = 1 − Σ (z_spec − z_phot)² / Σ (z_spec − <z_spec>)² (KiDS Eq. 1).

    NaN when all z_spec are equal (no variance to explain).
    """
    zp, zs = _pair(z_phot, z_spec)
    ss_tot = np.sum((zs - zs.mean()) ** 2)
    if ss_tot == 0:
        return float("nan")
    return float(1.0 - np.sum((zs - zp) ** 2) / ss_tot)


def point_metrics(
    z_phot: np.ndarray, z_spec: np.ndarray, outlier_thresholds: tuple[float, ...] = (0.05, 0.15)
) -> dict[str, float]:
    """All point metrics at once: n, bias, mean_dz_raw, sigma_std, sigma_mad, nmad, eta_<t>, mse, mae, r2.

    ``eta_0.05`` etc. are fractions (not per cent).
    """
    dz = delta_z(z_phot, z_spec)
    out: dict[str, float] = {
        "n": int(dz.size),
        "bias": bias(dz),
        "mean_dz_raw": mean_delta_z_raw(z_phot, z_spec),
        "sigma_std": sigma_std(dz),
        "sigma_mad": sigma_mad(dz),
        "nmad": nmad(dz),
    }
    for t in outlier_thresholds:
        out[f"eta_{t:g}"] = outlier_fraction(dz, t)
    out.update(mse=mse(z_phot, z_spec), mae=mae(z_phot, z_spec), r2=r2(z_phot, z_spec))
    return out


# --------------------------------------------------------------------------------------------
# PDF metrics


def pit(pdfs: np.ndarray, grid: RedshiftGrid, z_spec: np.ndarray) -> np.ndarray:
    """Probability integral transform PIT_i = CDF_i(z_spec,i) = ∫_0^{z_i} PDF_i(z) dz (Pasquet Eq. 3).

    The CDF is piecewise linear inside the bins (histogram PDF); 0 below and 1 above the grid.
    A flat PIT histogram means calibrated PDFs (Pasquet Sect. 4.3, Fig. 10).
    """
    zs = np.asarray(z_spec, dtype=np.float64).ravel()
    p = _as_pdfs(pdfs, grid)
    if zs.size != p.shape[0]:
        raise ValueError(f"pit: {p.shape[0]} PDFs but {zs.size} z_spec values")
    return cdf_at(p, grid, zs)


def crps(pdfs: np.ndarray, grid: RedshiftGrid, z_spec: np.ndarray) -> np.ndarray:
    """Continuous ranked probability score per object (Pasquet 2019 Eq. 4; Hersbach 2000).

    CRPS_i = ∫_{-∞}^{z_i} CDF_i(z)² dz + ∫_{z_i}^{+∞} (CDF_i(z) − 1)² dz,

    in redshift units.  Pasquet's Eq. 4 is *not* divided by (1 + z_spec), and neither is this
    (their Table 2 mean is 0.00674); no normalised variant is defined there.

    Evaluated exactly for the histogram PDF, whose CDF F is linear in each bin from F_k to
    F_{k+1}.  Writing H for the step at z_i and c = z_i clipped to the grid:
    ∫ (F − H)² = ∫ F² − 2 ∫_c^{z_max} F + (z_max − c) over the grid, with
    ∫_bin F² = w (F_k² + F_k F_{k+1} + F_{k+1}²)/3; plus |z_i − c| from outside the grid,
    where (F − H)² = 1.
    """
    p = normalize(_as_pdfs(pdfs, grid))
    zs = np.asarray(z_spec, dtype=np.float64).ravel()
    if zs.size != p.shape[0]:
        raise ValueError(f"crps: {p.shape[0]} PDFs but {zs.size} z_spec values")
    if not np.isfinite(zs).all():
        raise ValueError("crps: z_spec contains NaN or inf; keep only objects with a known z_spec")
    w = grid.width
    c = cdf_edges(p)
    a, b = c[:, :-1], c[:, 1:]
    int_f2 = w * np.sum(a * a + a * b + b * b, axis=1) / 3.0
    # G_k = ∫_{z_min}^{e_k} F dz at each edge
    g = np.zeros_like(c)
    np.cumsum(w * 0.5 * (a + b), axis=1, out=g[:, 1:])
    zc = np.clip(zs, grid.z_min, grid.z_max)
    u = (zc - grid.z_min) / w
    k = np.clip(np.floor(u), 0, grid.n_bins - 1).astype(np.int64)
    t = np.clip(u - k, 0.0, 1.0)
    rows = np.arange(p.shape[0])
    f_k = c[rows, k]
    f_z = f_k + t * p[rows, k]
    int_f_below = g[rows, k] + w * t * 0.5 * (f_k + f_z)  # ∫_{z_min}^{c} F
    int_f_above = g[:, -1] - int_f_below
    inside = int_f2 - 2.0 * int_f_above + (grid.z_max - zc)
    outside = np.abs(zs - zc)
    # rounding can leave -1e-17 where the score is ~0
    return np.maximum(inside, 0.0) + outside


def gaussian_crps(mu: np.ndarray, sigma: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Closed-form CRPS of a Gaussian N(mu, sigma²) at z (Gneiting & Raftery 2007):

    CRPS = σ [x (2Φ(x) − 1) + 2φ(x) − 1/√π],  x = (z − μ)/σ.
    """
    mu, sigma, z = (np.asarray(v, dtype=np.float64) for v in (mu, sigma, z))
    x = (z - mu) / sigma
    return sigma * (x * (2 * stats.norm.cdf(x) - 1) + 2 * stats.norm.pdf(x) - 1 / np.sqrt(np.pi))


def interval_coverage(pit_values: np.ndarray, level: float) -> float:
    """Fraction of objects whose z_spec lies in their central ``level`` credible interval.

    z_spec ∈ [z((1−level)/2), z((1+level)/2)] ⇔ |PIT − 1/2| ≤ level/2 for a continuous CDF, so this
    is computed from the PIT values.  Calibrated PDFs give ≈ level.
    """
    u = _pit(pit_values)
    return float(np.mean(np.abs(u - 0.5) <= level / 2))


def _pit(pit_values: np.ndarray) -> np.ndarray:
    u = np.asarray(pit_values, dtype=np.float64).ravel()
    if u.size == 0 or not np.isfinite(u).all():
        raise ValueError("PIT values must be a non-empty finite array")
    return u


def pit_ks(pit_values: np.ndarray) -> dict[str, float]:
    """Kolmogorov-Smirnov distance of the PIT from U(0, 1): D = sup_u |F_n(u) − u|, with its p-value."""
    test = stats.kstest(_pit(pit_values), "uniform")
    return {"statistic": float(test.statistic), "pvalue": float(test.pvalue)}


def pit_cvm(pit_values: np.ndarray) -> dict[str, float]:
    """Cramér-von Mises distance of the PIT from U(0, 1).

    ω² = ∫ (F_n(u) − u)² du (the distance) and the test statistic
    T = n ω² = 1/(12n) + Σ_i ((2i − 1)/(2n) − u_(i))² with its asymptotic p-value (scipy).
    """
    u = _pit(pit_values)
    test = stats.cramervonmises(u, "uniform")
    return {"statistic": float(test.statistic), "distance": float(test.statistic / u.size),
            "pvalue": float(test.pvalue)}


def pit_histogram(pit_values: np.ndarray, n_bins: int = 20) -> dict[str, list[float]]:
    """PIT histogram on [0, 1]: edges, counts and density (1 everywhere for calibrated PDFs)."""
    u = _pit(pit_values)
    counts, edges = np.histogram(np.clip(u, 0, 1), bins=n_bins, range=(0.0, 1.0))
    density = counts / (u.size / n_bins)
    return {"edges": edges.tolist(), "counts": counts.tolist(), "density": density.tolist()}


def pdf_metrics(pdfs: np.ndarray, grid: RedshiftGrid, z_spec: np.ndarray) -> dict[str, Any]:
    """Mean CRPS, PIT-uniformity distances and 68%/95% coverage for one set of PDFs."""
    u = pit(pdfs, grid, z_spec)
    return pit_summary(u) | {"crps": float(np.mean(crps(pdfs, grid, z_spec)))}


def pit_summary(pit_values: np.ndarray) -> dict[str, float]:
    """KS and CvM of the PIT from uniform, the PIT outlier rate and the 68%/95% coverages."""
    u = _pit(pit_values)
    ks, cvm = pit_ks(u), pit_cvm(u)
    return {
        "pit_ks": ks["statistic"],
        "pit_ks_pvalue": ks["pvalue"],
        "pit_cvm": cvm["statistic"],
        "pit_cvm_pvalue": cvm["pvalue"],
        # PIT at the very ends: z_spec outside (almost) all the PDF's mass (qp's default bounds)
        "pit_outlier_rate": float(np.mean((u < 1e-4) | (u > 1 - 1e-4))),
        "coverage68": interval_coverage(u, 0.68),
        "coverage95": interval_coverage(u, 0.95),
    }


def summary(
    z_phot: np.ndarray,
    z_spec: np.ndarray,
    pdfs: np.ndarray | None = None,
    grid: RedshiftGrid | None = None,
    outlier_thresholds: tuple[float, ...] = (0.05, 0.15),
) -> dict[str, float]:
    """Flat dict of the point metrics and, when PDFs are given, the PDF metrics.

    Keys: n, bias, mean_dz_raw, sigma_std, sigma_mad, nmad, eta (= eta_0.05, Pasquet's η),
    eta_<threshold>, mse, mae, r2, and with PDFs crps (mean), pit_ks, pit_cvm, coverage68, ...
    """
    out: dict[str, float] = point_metrics(z_phot, z_spec, outlier_thresholds)
    out["eta"] = outlier_fraction(delta_z(z_phot, z_spec), 0.05)
    if pdfs is not None:
        if grid is None:
            raise ValueError("summary: PDFs need their RedshiftGrid")
        out.update(pdf_metrics(pdfs, grid, z_spec))
    return out
