"""Near-balanced training subsets (Lin et al. 2022, Sect. 3.2; slides "construct a near-balanced subset").

The classifier's residuals against z_spec come largely from over-populated regions of the training
set: the softmax learns the training prior, which pulls every estimate towards the mode of n(z).  Lin
et al. divide the input space into two-dimensional cells in (z_spec, r magnitude) and draw at most
``N_th`` objects at random from each cell, so that the classification part is retrained on a subset
whose density is flat wherever cells hold at least ``N_th`` objects.

The draw is nested: each cell's objects are put in one random order (from ``seed``) and the first
``min(n_cell, N_th)`` are kept, so the subset for a smaller ``N_th`` is contained in the one for a
larger ``N_th`` (choosing ``N_th`` on validation data then needs features for one subset only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def regular_edges(values: np.ndarray, width: float, *, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Edges at multiples of ``width`` covering ``[lo, hi]`` (default: the finite range of ``values``)."""
    if not width > 0:
        raise ValueError(f"cell width must be > 0, got {width}")
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0 and (lo is None or hi is None):
        raise ValueError("regular_edges: no finite values to cover")
    lo = float(v.min()) if lo is None else float(lo)
    hi = float(v.max()) if hi is None else float(hi)
    start = np.floor(lo / width + 1e-9) * width
    stop = np.ceil(hi / width - 1e-9) * width
    n = max(1, int(round((stop - start) / width)))
    return start + width * np.arange(n + 1)


def cell_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value among ``edges``; values beyond the outer edges go to the first or last bin."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="right") - 1
    return np.clip(idx, 0, len(edges) - 2)


@dataclass(frozen=True)
class BalancedSubset:
    """The rows kept and the cell counts before and after capping.

    ``rows`` index the arrays given to :func:`balanced_subset`; ``counts`` and ``kept`` have shape
    (n_z_cells, n_mag_cells).
    """

    rows: np.ndarray
    counts: np.ndarray
    kept: np.ndarray
    z_edges: np.ndarray
    mag_edges: np.ndarray
    n_th: int

    def to_dict(self) -> dict:
        return {"n_th": self.n_th, "n_in": int(self.counts.sum()), "n_kept": int(self.kept.sum()),
                "z_edges": self.z_edges.tolist(), "mag_edges": self.mag_edges.tolist(),
                "counts": self.counts.tolist(), "kept": self.kept.tolist()}


def cell_order(z: np.ndarray, mag: np.ndarray, *, z_edges: np.ndarray, mag_edges: np.ndarray,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat (z, mag) cell of each object and its rank inside its cell in one random order."""
    z_cell = cell_index(z, z_edges)
    m_cell = cell_index(mag, mag_edges)
    flat = z_cell * (len(mag_edges) - 1) + m_cell
    rng = np.random.default_rng(seed)
    perm = rng.permutation(flat.size)
    # stable sort of the shuffled cells: inside each cell the objects keep the random order
    order = perm[np.argsort(flat[perm], kind="stable")]
    sorted_cells = flat[order]
    first = np.searchsorted(sorted_cells, sorted_cells, side="left")
    rank = np.empty(flat.size, dtype=np.int64)
    rank[order] = np.arange(flat.size) - first
    return flat, rank


def balanced_subset(
    z: np.ndarray,
    mag: np.ndarray,
    *,
    z_edges: np.ndarray,
    mag_edges: np.ndarray,
    n_th: int,
    seed: int = 0,
) -> BalancedSubset:
    """At most ``n_th`` objects drawn at random from each (z, mag) cell (Lin et al.: ``N ≤ N_th``).

    Objects beyond the outer edges count in the outermost cells.  Non-finite z or magnitudes are refused.
    """
    z = np.asarray(z, dtype=np.float64)
    mag = np.asarray(mag, dtype=np.float64)
    if z.shape != mag.shape or z.ndim != 1:
        raise ValueError(f"balanced_subset: z {z.shape} and mag {mag.shape} must be 1-d and of one length")
    if not (np.isfinite(z).all() and np.isfinite(mag).all()):
        raise ValueError("balanced_subset: z or magnitude is NaN/inf for some objects; drop them first")
    if int(n_th) < 1:
        raise ValueError(f"N_th must be >= 1, got {n_th}")
    z_edges = np.asarray(z_edges, dtype=np.float64)
    mag_edges = np.asarray(mag_edges, dtype=np.float64)
    flat, rank = cell_order(z, mag, z_edges=z_edges, mag_edges=mag_edges, seed=seed)
    keep = rank < int(n_th)
    shape = (len(z_edges) - 1, len(mag_edges) - 1)
    counts = np.bincount(flat, minlength=shape[0] * shape[1]).reshape(shape)
    kept = np.bincount(flat[keep], minlength=shape[0] * shape[1]).reshape(shape)
    return BalancedSubset(np.flatnonzero(keep), counts, kept, z_edges, mag_edges, int(n_th))
