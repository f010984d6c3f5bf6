"""Redshift distributions N(z): stacked PDFs against the spectroscopic histogram.

For a set of galaxies the stacked PDF N(z) = (1/n) Σ_i PDF_i(z) estimates their redshift
distribution, which is what weak-lensing and clustering analyses use in tomographic bins of
photo-z.  Its mean <z> must match the true mean to |Δ<z>| < 0.002 in each photo-z bin (the
Euclid-like requirement quoted by Pasquet et al. 2019 Sect. 4.2 and by Lin et al.).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zpix.pdf import RedshiftGrid

#: |<z>_stack − <z>_spec| below which a tomographic bin meets the requirement.
NZ_REQUIREMENT = 0.002


def tomographic_edges(z_phot: np.ndarray, n_bins: int = 5) -> np.ndarray:
    """Equal-population tomographic bin edges in z_phot (quantiles), from min to max."""
    z = np.asarray(z_phot, dtype=np.float64)
    z = z[np.isfinite(z)]
    if z.size == 0:
        raise ValueError("tomographic_edges: no finite z_phot")
    if n_bins < 1:
        raise ValueError(f"tomographic_edges: need >= 1 bin, got {n_bins}")
    edges = np.quantile(z, np.linspace(0, 1, n_bins + 1))
    edges[-1] = np.nextafter(edges[-1], np.inf)  # keep the maximum inside the last bin
    return np.unique(edges)


def tomographic_index(z_phot: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Tomographic bin of each object (-1 outside the edges); bins are [e_j, e_{j+1})."""
    idx = np.searchsorted(edges, np.asarray(z_phot, dtype=np.float64), side="right") - 1
    idx[(idx < 0) | (idx >= len(edges) - 1)] = -1
    return idx


def nz_compare(
    stack_sum: np.ndarray,
    z_spec: np.ndarray,
    z_phot: np.ndarray,
    grid: RedshiftGrid,
    requirement: float = NZ_REQUIREMENT,
) -> dict[str, Any]:
    """Compare one sample's stacked PDF with its spec-z histogram.

    ``stack_sum`` is Σ_i P_i over the sample's binned PDFs (probabilities per bin).  Returns n,
    mean_z_spec (± its standard error), mean_z_stack = Σ_k z_k N_k, mean_z_phot,
    delta_mean_z = mean_z_stack − mean_z_spec (the N(z) requirement quantity),
    delta_mean_z_point = mean_z_phot − mean_z_spec, meets_requirement, and the two
    distributions as densities per unit z on the grid (nz_stack, nz_spec).
    """
    zs = np.asarray(z_spec, dtype=np.float64)
    n = zs.size
    if n == 0:
        return {"n": 0, "meets_requirement": None}
    stack = np.asarray(stack_sum, dtype=np.float64)
    norm = stack.sum()
    nz_stack = stack / norm / grid.width
    counts, _ = np.histogram(zs, bins=grid.edges)
    mean_stack = float(np.sum(grid.centers * stack) / norm)
    mean_spec = float(zs.mean())
    delta = mean_stack - mean_spec
    return {
        "n": int(n),
        "mean_z_spec": mean_spec,
        "mean_z_spec_err": float(zs.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "mean_z_stack": mean_stack,
        "mean_z_phot": float(np.mean(z_phot)),
        "delta_mean_z": float(delta),
        "delta_mean_z_point": float(np.mean(z_phot) - mean_spec),
        "requirement": float(requirement),
        "meets_requirement": bool(abs(delta) < requirement),
        "n_spec_outside_grid": int(n - counts.sum()),
        "nz_stack": nz_stack.tolist(),
        "nz_spec": (counts / n / grid.width).tolist(),
    }


def nz_ks(z_phot: np.ndarray, z_spec: np.ndarray) -> float:
    """Two-sample KS distance sup|F_phot − F_spec| between the z_phot and z_spec distributions.

    Mode collapse (Lin et al.: several true redshifts estimated as one) piles z_phot up where z_spec
    is spread, which this distance measures; 0 when the two distributions coincide.
    """
    from scipy.stats import ks_2samp

    zp, zs = np.asarray(z_phot, dtype=np.float64), np.asarray(z_spec, dtype=np.float64)
    ok = np.isfinite(zp) & np.isfinite(zs)
    if not ok.any():
        return float("nan")
    return float(ks_2samp(zp[ok], zs[ok]).statistic)


def tomographic_bias(z_phot: np.ndarray, z_spec: np.ndarray, n_bins: int = 5) -> dict[str, Any]:
    """Δ⟨z⟩ = ⟨z_phot⟩ − ⟨z_spec⟩ in ``n_bins`` equal-count z_phot bins, and its largest absolute value.

    With z_phot the PDF mean, ⟨z_phot⟩ of a bin is the mean of its stacked PDF, so this is the N(z)
    requirement quantity of :func:`nz_compare` (|Δ⟨z⟩| < 0.002) on this sample's own equal-count bins.
    """
    zp, zs = np.asarray(z_phot, dtype=np.float64), np.asarray(z_spec, dtype=np.float64)
    ok = np.isfinite(zp) & np.isfinite(zs)
    zp, zs = zp[ok], zs[ok]
    edges = tomographic_edges(zp, n_bins)
    idx = tomographic_index(zp, edges)
    deltas, counts = [], []
    for j in range(edges.size - 1):
        sel = idx == j
        counts.append(int(sel.sum()))
        deltas.append(float(zp[sel].mean() - zs[sel].mean()) if sel.any() else float("nan"))
    finite = [abs(d) for d in deltas if np.isfinite(d)]
    return {"edges": edges.tolist(), "n": counts, "delta_mean_z": deltas,
            "max_abs": float(max(finite)) if finite else float("nan")}
