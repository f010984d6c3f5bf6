"""Soft labels and the edge shift of Lin et al. (2022, Sect. 3.3-3.4; slides "introduce dispersion to
labels", "correction of under-population-induced residuals").

Soft labels against mode collapse
    One-hot labels let a classifier collapse several true redshifts onto one estimate.  The label of
    an object at z becomes the Gaussian q̃(z′|z) = N(z′; z, σ), integrated over each redshift bin.  σ is
    fitted, one value per r-magnitude bin and the same along z, by comparing the spec-z histogram
    p_spec with the histogram p_photo of the photo-z of the first (step-1) model:

        σ̂ = argmin_σ  −Σ_k p_spec,k · log (p_photo ∗ N(0, σ))_k

    i.e. the Gaussian dispersion that turns the (collapsed) photo-z distribution into the spec-z one.

Under-populated edges
    Where the training density n(z) falls (the ends of the redshift range, or cells holding fewer than
    N_th objects), a classifier's estimate is pulled towards the populated side.  For an object at z
    with neighbourhood width w, the distribution the estimate is averaged over is the Gaussian modified
    by the density, m(z′) ∝ N(z′; z, w) n(z′); its centre of mass c(z) sits on the populated side.  The
    label is relocated by the same amount the other way, μ = z − (c(z) − z), so that the pulled
    estimate lands on z; the output range is extended beyond the data so that relocated labels near
    the edges still fit on the grid.  Where n is flat, c(z) = z and nothing moves.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import ndtr

from zpix.pdf import RedshiftGrid, gaussian_pdfs

#: Floor under the smoothed photo-z histogram before the logarithm (empty bins would give −inf).
HIST_FLOOR = 1e-9


def gaussian_kernel(sigma: float, width: float) -> np.ndarray:
    """N(0, σ) integrated over bins of ``width`` centred on 0, ±width, ... (a delta when σ = 0)."""
    if sigma <= 0:
        return np.ones(1)
    half = int(np.ceil(6 * sigma / width)) + 1
    e = (np.arange(-half, half + 2) - 0.5) * width
    k = np.diff(ndtr(e / sigma))
    return k / k.sum()


def smooth_histogram(p: np.ndarray, sigma: float, width: float) -> np.ndarray:
    """``p ∗ N(0, σ)`` on its own bins (mass carried off the ends is lost, as beyond a grid)."""
    p = np.asarray(p, dtype=np.float64)
    k = gaussian_kernel(sigma, width)  # odd length, centred
    start = (k.size - 1) // 2
    return np.convolve(p, k)[start:start + p.size]


def soft_label_objective(sigma: float, p_spec: np.ndarray, p_photo: np.ndarray, width: float) -> float:
    """−Σ_k p_spec,k log (p_photo ∗ N(0, σ))_k (Lin et al.'s criterion for the label dispersion)."""
    q = np.maximum(smooth_histogram(p_photo, sigma, width), HIST_FLOOR)
    return float(-np.sum(p_spec * np.log(q)))


def fit_sigma(z_spec: np.ndarray, z_photo: np.ndarray, edges: np.ndarray, sigma_max: float = 0.1) -> float:
    """The σ minimising :func:`soft_label_objective` between the two histograms on ``edges`` (uniform).

    A coarse scan over [0, σ_max] then a bounded Brent refinement around the best scan point (the
    objective has a flat region at σ below one bin, where a local optimiser alone could stall).
    """
    edges = np.asarray(edges, dtype=np.float64)
    width = float(edges[1] - edges[0])
    p_spec = np.histogram(z_spec, bins=edges)[0].astype(np.float64)
    p_photo = np.histogram(z_photo, bins=edges)[0].astype(np.float64)
    if p_spec.sum() == 0 or p_photo.sum() == 0:
        raise ValueError("fit_sigma: no object inside the histogram edges")
    p_spec /= p_spec.sum()
    p_photo /= p_photo.sum()
    scan = np.linspace(0.0, sigma_max, 81)
    values = [soft_label_objective(s, p_spec, p_photo, width) for s in scan]
    best = int(np.argmin(values))
    lo, hi = scan[max(best - 1, 0)], scan[min(best + 1, scan.size - 1)]
    if hi <= lo:
        return float(scan[best])
    res = minimize_scalar(soft_label_objective, bounds=(lo, hi), method="bounded",
                          args=(p_spec, p_photo, width), options={"xatol": 1e-5})
    return float(res.x) if res.fun <= values[best] else float(scan[best])


def fit_sigma_per_mag(
    z_spec: np.ndarray,
    z_photo: np.ndarray,
    mag: np.ndarray,
    *,
    mag_edges: np.ndarray,
    edges: np.ndarray,
    min_count: int = 100,
    sigma_max: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """One σ per magnitude bin (Lin et al.: the same along z for each r magnitude).

    Bins with fewer than ``min_count`` objects take the σ fitted on all objects.  Returns (σ per bin,
    objects per bin).
    """
    from zpix.debias.balance import cell_index

    m_bin = cell_index(mag, mag_edges)
    n_mag = len(mag_edges) - 1
    overall = fit_sigma(z_spec, z_photo, edges, sigma_max)
    sigmas = np.full(n_mag, overall)
    counts = np.bincount(m_bin, minlength=n_mag)
    for b in range(n_mag):
        if counts[b] >= min_count:
            sel = m_bin == b
            sigmas[b] = fit_sigma(z_spec[sel], z_photo[sel], edges, sigma_max)
    return sigmas, counts


def gaussian_labels(mu: np.ndarray, sigma: np.ndarray | float, grid: RedshiftGrid) -> np.ndarray:
    """Soft labels: N(μ_i, σ_i) integrated over each bin of ``grid``, renormalised to the grid.

    σ = 0 gives the one-hot label of the bin holding μ.  Shape (N, n_bins), float32.
    """
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), mu.shape)
    out = np.zeros((mu.size, grid.n_bins), dtype=np.float64)
    hard = sigma <= 0
    if hard.any():
        out[np.flatnonzero(hard), grid.labels(mu[hard])] = 1.0
    soft = ~hard
    if soft.any():
        out[soft] = gaussian_pdfs(mu[soft], sigma[soft], grid)
    return out.astype(np.float32)


def edge_shift(
    z: np.ndarray,
    width: np.ndarray | float,
    *,
    density_z: np.ndarray,
    edges: np.ndarray,
) -> np.ndarray:
    """Relocated label centres μ = z − (c(z) − z), c the centre of mass of N(z′; z, w) n(z′).

    ``n`` is the histogram of ``density_z`` (the training labels, e.g. the balanced subset) on ``edges``.
    Objects with no training density within their neighbourhood keep μ = z.
    """
    z = np.asarray(z, dtype=np.float64)
    w = np.broadcast_to(np.asarray(width, dtype=np.float64), z.shape)
    if (w <= 0).any():
        raise ValueError("edge_shift: neighbourhood widths must be > 0")
    edges = np.asarray(edges, dtype=np.float64)
    n = np.histogram(density_z, bins=edges)[0].astype(np.float64)
    centers = 0.5 * (edges[:-1] + edges[1:])
    out = z.copy()
    for start in range(0, z.size, 4096):  # (chunk, bins) weight matrices stay a few MB
        zs, ws = z[start:start + 4096, None], w[start:start + 4096, None]
        kern = np.exp(-0.5 * ((centers[None, :] - zs) / ws) ** 2) * n[None, :]
        mass = kern.sum(axis=1)
        com = (kern * centers[None, :]).sum(axis=1) / np.maximum(mass, 1e-300)
        ok = mass > 1e-12
        out[start:start + 4096] = np.where(ok, 2 * zs[:, 0] - com, zs[:, 0])
    return out
