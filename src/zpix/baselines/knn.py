"""k-nearest-neighbour local linear regression on magnitude and colours: the classical baseline.

Beck et al. (2016, MNRAS 460, 1371; "B16" in Pasquet et al. 2019, Sect. 5) estimate SDSS photometric
redshifts with the local linear regression of Csabai et al. (2007): in the 5-d space of the r
magnitude and the u−g, g−r, r−i, i−z colours (de-reddened), take the k nearest training galaxies of
each object and fit a hyperplane

    z ≈ β_0 + β · (x − x_q)

to their redshifts; the estimate is the fit at the object, ẑ = β_0.  Here the fit is weighted by a
tricube kernel of the neighbour distance (Cleveland 1979, the LOESS weight, so the farthest neighbours
count least) and repeated once without the neighbours whose residual exceeds ``clip_sigma`` times the
weighted rms (B16 also reject outlying neighbours).  sklearn's KD-tree does the neighbour search.

The redshift PDF comes from the neighbours themselves: each neighbour j contributes its fit residual
r_j = z_j − ẑ(x_j) around the estimate, z = ẑ + r_j √(n_eff/(n_eff − p)) (the factor undoes the
shrinking of in-sample residuals, p = d + 1 fitted coefficients), smoothed by a Gaussian kernel of
Silverman's width and binned on the :class:`~zpix.pdf.RedshiftGrid`:

    P_k ∝ Σ_j w_j [Φ((e_{k+1} − μ_j)/h) − Φ((e_k − μ_j)/h)],   μ_j = ẑ + r_j √(n_eff/(n_eff − p)),
    h = max(1.06 σ_w n_eff^(−1/5), δz_grid),  n_eff = (Σ w)² / Σ w².

Objects with missing bands are matched on the features they have (one KD-tree per pattern of
missing features); objects with none get the training redshift distribution.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import ndtr

from zpix.baselines.tables import MagnitudeTable
from zpix.pdf import RedshiftGrid


def colour_features(mags: np.ndarray, bands: Sequence[str], ref_band: str = "r") -> tuple[np.ndarray, list[str]]:
    """(N, M) magnitudes -> (N, M) features [m_ref, m_1 − m_2, m_2 − m_3, ...] (adjacent colours).

    For SDSS ugriz with ``ref_band="r"`` these are B16's r, u−g, g−r, r−i, i−z.  A missing magnitude
    (NaN) makes its own feature and the colours that use it NaN.
    """
    bands = list(bands)
    if ref_band not in bands:
        raise ValueError(f"reference band {ref_band!r} is not among the bands {bands}")
    m = np.asarray(mags, dtype=np.float64)
    ref = bands.index(ref_band)
    feats = [m[:, ref]] + [m[:, j] - m[:, j + 1] for j in range(len(bands) - 1)]
    names = [ref_band] + [f"{bands[j]}-{bands[j + 1]}" for j in range(len(bands) - 1)]
    return np.stack(feats, axis=1), names


@dataclass
class KNNConfig:
    """Options of :class:`KNNPhotoZ`.

    ``k`` and ``scale`` were chosen by 4-fold cross-validation on the SDSS MGS *training* file:
    σ_MAD 0.0149 (raw B16 space) vs 0.0146 (standardised) at k = 100; k = 50 gave 0.0151, k = 200
    0.0144 at twice the cost and a less local fit on small training sets.
    """

    k: int = 100
    ref_band: str = "r"
    scale: str = "std"  # "std": each feature divided by its training std; "none": B16's raw space
    clip_sigma: float = 3.0
    ridge: float = 1e-6  # Tikhonov term on the slopes: keeps degenerate neighbourhoods solvable
    n_bins: int = 180
    z_min: float = 0.0
    z_max: float = 0.4
    chunk_size: int = 512  # objects per vectorised block (memory ~ chunk × k × n_bins × 8 bytes)

    @property
    def grid(self) -> RedshiftGrid:
        return RedshiftGrid(self.n_bins, self.z_min, self.z_max)


@dataclass
class KNNResult:
    """PDFs (N, n_bins) on ``grid``, the local-fit estimate ẑ and the weighted rms of the fit residuals."""

    pdfs: np.ndarray
    z_fit: np.ndarray
    z_err: np.ndarray
    grid: RedshiftGrid


def _tricube(d: np.ndarray) -> np.ndarray:
    """w = (1 − (d/d_max)³)³ with d_max a hair above the k-th distance, so the last neighbour keeps a little weight."""
    dmax = d.max(axis=1, keepdims=True)
    u = np.where(dmax > 0, d / np.maximum(dmax, 1e-300) / 1.05, 0.0)
    return (1.0 - np.clip(u, 0, 1) ** 3) ** 3


def _weighted_fit(a: np.ndarray, z: np.ndarray, w: np.ndarray, ridge: float) -> np.ndarray:
    """Batched weighted least squares: β = (Aᵀ W A + λ I')⁻¹ Aᵀ W z, I' without the intercept.

    ``a`` (B, k, p), ``z`` (B, k), ``w`` (B, k) -> β (B, p).  A singular system (all neighbours on one
    point) gets the pseudo-inverse, i.e. β_0 = the weighted mean.
    """
    aw = a * w[:, :, None]
    g = np.einsum("bki,bkj->bij", aw, a)
    reg = np.eye(a.shape[2]) * ridge
    reg[0, 0] = 0.0
    g = g + reg[None]
    rhs = np.einsum("bki,bk->bi", aw, z)
    try:
        return np.linalg.solve(g, rhs[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        return np.einsum("bij,bj->bi", np.linalg.pinv(g), rhs)


class KNNPhotoZ:
    """k-NN local linear regression photo-z (Beck et al. 2016 style) with neighbour-based PDFs.

    ``fit`` stores the training features; ``predict`` returns PDFs and estimates.  :meth:`save` /
    :meth:`load` round-trip the fitted model through one ``.npz`` file.
    """

    def __init__(self, config: KNNConfig | None = None, **options: Any) -> None:
        self.config = config or KNNConfig(**options)
        if self.config.scale not in ("none", "std"):
            raise ValueError(f"scale must be 'none' or 'std', got {self.config.scale!r}")
        if self.config.k < 3:
            raise ValueError(f"k must be >= 3, got {self.config.k}")
        self.bands: list[str] = []
        self.feature_names: list[str] = []
        self.x: np.ndarray | None = None
        self.z: np.ndarray | None = None
        self.scale = np.ones(0)
        self._trees: dict[tuple[bool, ...], Any] = {}

    # -- training ---------------------------------------------------------------------------
    def fit(self, table: MagnitudeTable) -> KNNPhotoZ:
        """Keep the labelled objects of ``table`` with all features finite as the reference set."""
        x, names = colour_features(table.dereddened(), table.bands, self.config.ref_band)
        keep = np.isfinite(x).all(axis=1) & np.isfinite(table.z_spec)
        if keep.sum() < self.config.k:
            raise ValueError(f"{table.source}: only {int(keep.sum())} training objects with z_spec and all of "
                             f"{table.bands} observed; k-NN with k={self.config.k} needs at least k")
        self._set(table.bands, names, x[keep], table.z_spec[keep])
        return self

    def _set(self, bands: list[str], names: list[str], x: np.ndarray, z: np.ndarray) -> None:
        self.bands, self.feature_names = list(bands), list(names)
        self.x, self.z = np.ascontiguousarray(x, dtype=np.float64), np.asarray(z, dtype=np.float64)
        self.scale = self.x.std(axis=0) if self.config.scale == "std" else np.ones(self.x.shape[1])
        self.scale = np.where(self.scale > 0, self.scale, 1.0)
        self._trees = {}

    def _tree(self, pattern: tuple[bool, ...]) -> Any:
        from sklearn.neighbors import NearestNeighbors

        if pattern not in self._trees:
            cols = np.flatnonzero(pattern)
            nn = NearestNeighbors(n_neighbors=self.config.k, algorithm="kd_tree")
            self._trees[pattern] = nn.fit(self.x[:, cols] / self.scale[cols])
        return self._trees[pattern]

    # -- prediction -------------------------------------------------------------------------
    def predict(self, table: MagnitudeTable) -> KNNResult:
        """PDFs and local-fit estimates for every object of ``table`` (in its order)."""
        if self.x is None:
            raise RuntimeError("KNNPhotoZ.predict: call fit() (or load()) first")
        if list(table.bands) != self.bands:
            raise ValueError(f"{table.source}: bands {table.bands} differ from the training bands {self.bands}")
        xq, _ = colour_features(table.dereddened(), table.bands, self.config.ref_band)
        grid = self.config.grid
        n = len(xq)
        pdfs = np.empty((n, grid.n_bins))
        z_fit = np.empty(n)
        z_err = np.empty(n)
        finite = np.isfinite(xq)
        patterns, inverse = np.unique(finite, axis=0, return_inverse=True)
        for p_idx, pattern in enumerate(patterns):
            rows = np.flatnonzero(inverse.ravel() == p_idx)
            if not pattern.any():  # nothing observed: the training redshift distribution
                prior = np.histogram(self.z, bins=grid.edges)[0].astype(np.float64) + 1e-12
                pdfs[rows] = prior / prior.sum()
                z_fit[rows], z_err[rows] = np.mean(self.z), np.std(self.z)
                continue
            cols = np.flatnonzero(pattern)
            tree = self._tree(tuple(bool(b) for b in pattern))
            for s in range(0, rows.size, self.config.chunk_size):
                r = rows[s : s + self.config.chunk_size]
                q = xq[np.ix_(r, cols)]
                dist, idx = tree.kneighbors(q / self.scale[cols])
                pdfs[r], z_fit[r], z_err[r] = self._local(q, self.x[idx][:, :, cols], self.z[idx], dist, grid,
                                                          self.scale[cols])
        return KNNResult(pdfs, z_fit, z_err, grid)

    def _local(self, q: np.ndarray, xn: np.ndarray, zn: np.ndarray, dist: np.ndarray, grid: RedshiftGrid,
               scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local weighted linear fit around each query, then the residual-kernel PDF (module docstring)."""
        cfg = self.config
        b, k, d = xn.shape
        # centred (and scaled, so that the ridge treats features alike): β_0 is the fit at the query
        a = np.concatenate([np.ones((b, k, 1)), (xn - q[:, None, :]) / scale[None, None, :]], axis=2)
        w = _tricube(dist)
        beta = _weighted_fit(a, zn, w, cfg.ridge)
        resid = zn - np.einsum("bkp,bp->bk", a, beta)
        sigma = np.sqrt(np.sum(w * resid**2, axis=1) / np.sum(w, axis=1))
        if cfg.clip_sigma > 0:
            w = np.where(np.abs(resid) > cfg.clip_sigma * np.maximum(sigma, 1e-12)[:, None], 0.0, w)
            beta = _weighted_fit(a, zn, w, cfg.ridge)
            resid = zn - np.einsum("bkp,bp->bk", a, beta)
            sigma = np.sqrt(np.sum(w * resid**2, axis=1) / np.sum(w, axis=1))
        z_hat = beta[:, 0]
        # A hyperplane extrapolated far outside its neighbours' redshifts is not trusted (sparse or
        # degenerate neighbourhoods): fall back to the weighted neighbour mean there.
        wsum = np.sum(w, axis=1)
        z_mean = np.sum(w * zn, axis=1) / wsum
        lo = np.min(np.where(w > 0, zn, np.inf), axis=1) - sigma
        hi = np.max(np.where(w > 0, zn, -np.inf), axis=1) + sigma
        wild = (z_hat < lo) | (z_hat > hi) | ~np.isfinite(z_hat)
        z_hat = np.where(wild, z_mean, z_hat)
        resid = np.where(wild[:, None], zn - z_mean[:, None], resid)
        n_eff = wsum**2 / np.sum(w**2, axis=1)
        p = d + 1
        inflate = np.sqrt(n_eff / np.maximum(n_eff - p, 1.0))
        mu = z_hat[:, None] + resid * inflate[:, None]
        h = np.maximum(1.06 * sigma * inflate * n_eff ** (-0.2), grid.width)
        cdf = ndtr((grid.edges[None, None, :] - mu[:, :, None]) / h[:, None, None])
        pdf = np.einsum("bk,bkj->bj", w, np.diff(cdf, axis=2))
        total = pdf.sum(axis=1, keepdims=True)
        # all kernel mass off the grid (an estimate beyond z_max): the nearest end bin
        off = total[:, 0] <= 1e-300
        if off.any():
            pdf[off] = 0.0
            pdf[off, grid.labels(z_hat[off])] = 1.0
            total[off] = 1.0
        return pdf / total, z_hat, sigma * inflate

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted model (reference set + config) to one ``.npz`` file."""
        if self.x is None:
            raise RuntimeError("KNNPhotoZ.save: nothing fitted")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"config": asdict(self.config), "bands": self.bands, "feature_names": self.feature_names}
        from zpix.atomic import atomic_file

        with atomic_file(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, x=self.x, z=self.z, meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> KNNPhotoZ:
        """Inverse of :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            model = cls(KNNConfig(**meta["config"]))
            model._set(meta["bands"], meta["feature_names"], f["x"], f["z"])
        return model


def run_knn(
    train: MagnitudeTable,
    test: MagnitudeTable,
    out: str | os.PathLike,
    config: KNNConfig | None = None,
    model_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    split: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Fit on ``train``'s labelled objects, predict ``test`` into the prediction directory ``out``.

    The directory has the layout every zpix model writes (``method="knn"``), so ``zpix evaluate
    --compare`` puts it beside a CNN.  Returns timings and counts.
    """
    from zpix.baselines.tables import rows_record
    from zpix.prediction.format import write_predictions

    cfg = config or KNNConfig(**options)
    labelled = train.labelled(cfg.z_min, cfg.z_max)
    t0 = time.perf_counter()
    model = KNNPhotoZ(cfg).fit(labelled)
    model._tree(tuple([True] * len(model.feature_names)))  # build the main tree inside the training time
    train_s = time.perf_counter() - t0
    if model_path is not None:
        model.save(model_path)
    t0 = time.perf_counter()
    res = model.predict(test)
    predict_s = time.perf_counter() - t0
    extra = {"ebv": test.ebv, "z_knn_fit": res.z_fit, "z_knn_err": res.z_err, **test.extra}
    write_predictions(out, test.ids, res.pdfs, res.grid, z_spec=test.z_spec, extra=extra, method="knn",
                      overwrite=overwrite,
                      meta={"baseline": "knn", "config": asdict(cfg), "bands": train.bands,
                            "features": model.feature_names, "n_train": int(len(model.z)),
                            "train": train.source, "test": test.source,
                            "model": None if model_path is None else str(model_path),
                            "rows": rows_record(train, test, split)})
    return {"train_s": train_s, "predict_s": predict_s, "n_train": int(len(model.z)), "n_test": len(test)}
