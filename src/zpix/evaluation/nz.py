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
