"""Per-object quality: how far each PDF can be trusted, as catalogue columns.

Columns (all per object; docs/prediction_format.md):

* ``p_outlier_pdf`` — the PDF's own probability of a catastrophic outlier, 1 − ∫ p(z) dz over
  |z − z_mean| ≤ 0.05 (1 + z_mean): for a calibrated PDF, the chance that |Δz| > 0.05 (the ODDS
  parameter of Benítez 2000 with the outlier window);
* ``n_modes`` — separate peaks holding ≥ 10% of the highest one (multi-modality);
* ``ens_std`` — standard deviation of the members' z_mean over (1 + z_mean) (ensembles only);
* ``feat_knn`` — mean Euclidean distance of the object's learned features (the network's penultimate
  activations, as their 32 leading whitened principal components over the training rows) to its k nearest
  neighbours in a stored subsample of the training set's features:
  large where the network has not seen the like of the object (Lee et al. 2018 use a feature-space
  distance for the same purpose);
* ``quality`` — the probability of |Δz| > 0.05 predicted from the scores above by a logistic regression
  fitted on the run's validation objects (higher is worse);
* ``flag`` — a bit mask: 1 wide PDF (width68 above the validation 95th percentile), 2 multi-modal,
  4 ensemble disagreement (above the validation 95th percentile), 8 out of distribution (``feat_knn``
  above the 99th percentile of the stored training features' own k-NN distances), 16 risky (``quality``
  above the validation 90th percentile).

The fitted parts (the training-feature subsample, standardisation, thresholds, logistic coefficients)
live in the run directory as ``quality.npz`` and are applied by `zpix predict` with the calibration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zpix.pdf import RedshiftGrid, cdf_at, normalize, pdf_mean

QUALITY_FILE = "quality.npz"
FORMAT_VERSION = 1
OUTLIER_DZ = 0.05
FLAG_BITS = {"wide": 1, "multimodal": 2, "ensemble": 4, "ood": 8, "risky": 16}
#: Scores the logistic regression may use, in this order, where available.
SCORE_NAMES = ("p_outlier_pdf", "log_width68", "n_modes", "ens_std", "log_feat_knn")


def outlier_probability(probs: np.ndarray, grid: RedshiftGrid, dz: float = OUTLIER_DZ) -> np.ndarray:
    """1 − P(|z − z_mean| ≤ dz (1 + z_mean)) under each PDF (piecewise-linear CDF)."""
    p = normalize(probs)
    zm = pdf_mean(p, grid)
    half = dz * (1 + zm)
    inside = cdf_at(p, grid, zm + half) - cdf_at(p, grid, zm - half)
    return np.clip(1.0 - inside, 0.0, 1.0)


def n_modes(probs: np.ndarray, rel_height: float = 0.1, smooth: int = 3) -> np.ndarray:
    """Number of separate peaks of each PDF reaching ``rel_height`` of its highest (after a ``smooth``-bin
    running mean): a peak is a run of bins above the threshold, so noise on one peak does not count twice."""
    p = np.asarray(probs, dtype=np.float64)
    if smooth > 1:
        kernel = np.ones(smooth) / smooth
        p = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, p)
    above = p >= rel_height * p.max(axis=1, keepdims=True)
    starts = above[:, 1:] & ~above[:, :-1]
    return (starts.sum(axis=1) + above[:, 0]).astype(np.int16)


def width68(probs: np.ndarray, grid: RedshiftGrid) -> np.ndarray:
    from zpix.pdf import pdf_quantiles

    q = pdf_quantiles(probs, grid, np.array([0.16, 0.84]))
    return q[:, 1] - q[:, 0]


def ensemble_std(member_zmean: np.ndarray | None) -> np.ndarray | None:
    """std over members of z_mean / (1 + mean z_mean); None for a single model. ``member_zmean`` (M, N)."""
    if member_zmean is None or len(member_zmean) < 2:
        return None
    zm = np.asarray(member_zmean, dtype=np.float64)
    return zm.std(axis=0, ddof=1) / (1 + zm.mean(axis=0))


@dataclass
class QualityModel:
    """The fitted quality scores of one run (see the module docstring)."""

    grid: RedshiftGrid
    score_names: list[str]
    coef: np.ndarray  # logistic regression on the standardised scores
    intercept: float
    score_mean: np.ndarray
    score_std: np.ndarray
    thresholds: dict[str, float]
    k: int = 10
    feat_mean: np.ndarray | None = None  # PCA of the training features: mean (F,)
    feat_proj: np.ndarray | None = None  # (n_components, F) principal axes
    feat_std: np.ndarray | None = None  # (n_components,) their standard deviations (whitening)
    train_features: np.ndarray | None = None  # whitened principal components of a training-row subsample
    info: dict[str, Any] = field(default_factory=dict)
    _tree: Any = None

    # -- scores ---------------------------------------------------------------------------
    def feature_distance(self, features: np.ndarray) -> np.ndarray:
        """Mean distance to the ``k`` nearest stored training features (whitened principal components)."""
        if self.train_features is None or self.feat_mean is None or self.feat_std is None or self.feat_proj is None:
            raise ValueError("this quality model stores no training features")
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.train_features)
        x = self.project(features)
        d, _ = self._tree.query(x, k=self.k)
        return np.asarray(d, dtype=np.float64).reshape(len(x), -1).mean(axis=1)

    def project(self, features: np.ndarray) -> np.ndarray:
        """Whitened principal components of learned features (N, F) -> (N, n_components)."""
        assert self.feat_mean is not None and self.feat_proj is not None and self.feat_std is not None
        return ((np.asarray(features, dtype=np.float64) - self.feat_mean) @ self.feat_proj.T) / self.feat_std

    def raw_scores(self, probs: np.ndarray, *, features: np.ndarray | None = None,
                   member_zmean: np.ndarray | None = None) -> dict[str, np.ndarray]:
        return raw_scores(probs, self.grid, features=features if self.train_features is not None else None,
                          member_zmean=member_zmean, distance=self.feature_distance)

    def columns(self, probs: np.ndarray, *, features: np.ndarray | None = None,
                member_zmean: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The catalogue columns p_outlier_pdf, n_modes, [ens_std], [feat_knn], quality, flag."""
        s = self.raw_scores(probs, features=features, member_zmean=member_zmean)
        missing = [n for n in self.score_names if n not in s]
        if missing:
            raise ValueError(f"quality: the model was fitted with scores {self.score_names} but {missing} are "
                             "not available here (ensemble size or features differ from the fitted run)")
        x = np.stack([s[n] for n in self.score_names], axis=1)
        logit = ((x - self.score_mean) / self.score_std) @ self.coef + self.intercept
        quality = 1.0 / (1.0 + np.exp(-logit))
        t = self.thresholds
        flag = np.zeros(len(quality), dtype=np.int16)
        flag |= np.where(s["width68"] > t["width68"], FLAG_BITS["wide"], 0).astype(np.int16)
        flag |= np.where(s["n_modes"] > 1, FLAG_BITS["multimodal"], 0).astype(np.int16)
        if "ens_std" in s and "ens_std" in t:
            flag |= np.where(s["ens_std"] > t["ens_std"], FLAG_BITS["ensemble"], 0).astype(np.int16)
        if "feat_knn" in s and "feat_knn" in t:
            flag |= np.where(s["feat_knn"] > t["feat_knn"], FLAG_BITS["ood"], 0).astype(np.int16)
        flag |= np.where(quality > t["quality"], FLAG_BITS["risky"], 0).astype(np.int16)
        out = {"p_outlier_pdf": s["p_outlier_pdf"], "n_modes": s["n_modes"].astype(np.int16)}
        for name in ("ens_std", "feat_knn"):
            if name in s:
                out[name] = s[name]
        out["quality"] = quality
        out["flag"] = flag
        return out

    # -- storage --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        import json

        path = Path(path)
        arrays: dict[str, Any] = {"coef": self.coef, "score_mean": self.score_mean, "score_std": self.score_std}
        for name in ("feat_mean", "feat_proj", "feat_std", "train_features"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = value
        meta = {"format_version": FORMAT_VERSION, "grid": self.grid.to_dict(), "score_names": self.score_names,
                "intercept": self.intercept, "thresholds": self.thresholds, "k": self.k, "info": self.info}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> QualityModel:
        import json

        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                arrays = {k: f[k] for k in f.files if k != "meta"}
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"{path}: not a zpix quality file ({err!r}); refit it with `zpix calibrate`") from err
        return cls(grid=RedshiftGrid.from_dict(meta["grid"]), score_names=list(meta["score_names"]),
                   coef=arrays["coef"], intercept=float(meta["intercept"]), score_mean=arrays["score_mean"],
                   score_std=arrays["score_std"], thresholds={k: float(v) for k, v in meta["thresholds"].items()},
                   k=int(meta["k"]), feat_mean=arrays.get("feat_mean"), feat_proj=arrays.get("feat_proj"),
                   feat_std=arrays.get("feat_std"),
                   train_features=arrays.get("train_features"), info=dict(meta.get("info", {})))

    def describe(self) -> str:
        terms = ", ".join(f"{n} {c:+.3g}" for n, c in zip(self.score_names, self.coef, strict=True))
        nf = 0 if self.train_features is None else len(self.train_features)
        return (f"quality: logistic P(|dz| > {OUTLIER_DZ}) on standardised [{terms}], intercept {self.intercept:+.3g}; "
                f"{nf} training features stored (k = {self.k}); flag thresholds "
                + ", ".join(f"{k} {v:.4g}" for k, v in self.thresholds.items()))


def raw_scores(probs: np.ndarray, grid: RedshiftGrid, *, features: np.ndarray | None = None,
               member_zmean: np.ndarray | None = None, distance: Any = None) -> dict[str, np.ndarray]:
    """Every available per-object score (the logistic inputs plus width68 and feat_knn themselves)."""
    p = normalize(probs)
    w = width68(p, grid)
    s: dict[str, np.ndarray] = {"p_outlier_pdf": outlier_probability(p, grid), "width68": w,
                                "log_width68": np.log(np.maximum(w, 0.1 * grid.width)),
                                "n_modes": n_modes(p).astype(np.float64)}
    e = ensemble_std(member_zmean)
    if e is not None:
        s["ens_std"] = e
    if features is not None and distance is not None:
        d = distance(features)
        s["feat_knn"] = d
        s["log_feat_knn"] = np.log(np.maximum(d, 1e-12))
    return s


def fit_quality(probs: np.ndarray, z_spec: np.ndarray, grid: RedshiftGrid, *,
                features: np.ndarray | None = None, train_features: np.ndarray | None = None,
                member_zmean: np.ndarray | None = None, k: int = 10, n_components: int = 32,
                seed: int = 0) -> QualityModel:
    """Fit the quality model on validation objects: ``probs`` (calibrated PDFs), ``z_spec``, optionally their
    learned ``features`` with ``train_features`` (a subsample of the training rows', stored in the model) and
    the members' z_mean (M, N).  The outlier label is |z_mean − z_spec| / (1 + z_spec) > 0.05."""
    from sklearn.linear_model import LogisticRegression

    p = normalize(probs)
    z = np.asarray(z_spec, dtype=np.float64)
    model = QualityModel(grid=grid, score_names=[], coef=np.zeros(0), intercept=0.0, score_mean=np.zeros(0),
                         score_std=np.ones(0), thresholds={}, k=int(k))
    if features is not None and train_features is not None:
        from sklearn.decomposition import PCA

        # distances in the raw (hundreds to thousands of) dimensions are dominated by many small noisy
        # directions; the leading whitened principal components of the training features carry the structure
        tf = np.asarray(train_features, dtype=np.float64)
        pca = PCA(n_components=min(n_components, tf.shape[0] - 1, tf.shape[1]), random_state=seed).fit(tf)
        keep = pca.explained_variance_ > 1e-12 * max(pca.explained_variance_[0], 1e-300)
        model.feat_mean = pca.mean_
        model.feat_proj = pca.components_[keep]
        model.feat_std = np.sqrt(pca.explained_variance_[keep])
        model.train_features = model.project(tf).astype(np.float32)
    s = raw_scores(p, grid, features=features if model.train_features is not None else None,
                   member_zmean=member_zmean, distance=model.feature_distance)
    model.score_names = [n for n in SCORE_NAMES if n in s]
    x = np.stack([s[n] for n in model.score_names], axis=1)
    model.score_mean = x.mean(axis=0)
    model.score_std = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    y = np.abs(pdf_mean(p, grid) - z) / (1 + z) > OUTLIER_DZ
    if y.all() or not y.any():
        # nothing to separate: the PDF's own outlier probability is the score (coefficient 1 on its z-score)
        model.coef = np.array([1.0 if n == "p_outlier_pdf" else 0.0 for n in model.score_names])
        model.intercept = float(np.log(max(y.mean(), 1e-3) / max(1 - y.mean(), 1e-3)))
    else:
        lr = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
        lr.fit((x - model.score_mean) / model.score_std, y)
        model.coef, model.intercept = lr.coef_[0].astype(np.float64), float(lr.intercept_[0])
    model.thresholds = {"width68": float(np.quantile(s["width68"], 0.95))}
    if "ens_std" in s:
        model.thresholds["ens_std"] = float(np.quantile(s["ens_std"], 0.95))
    if "feat_knn" in s:
        # the training features' own k-NN distances (each point's k nearest others): the validation rows may
        # hold unusual objects themselves, the training set defines what the network has seen
        d_self, _ = model._tree.query(model.train_features, k=model.k + 1)
        model.thresholds["feat_knn"] = float(np.quantile(d_self[:, 1:].mean(axis=1), 0.99))
    model.thresholds["quality"] = 1.0  # set below from the fitted scores themselves
    q = model.columns(p, features=features, member_zmean=member_zmean)["quality"]
    model.thresholds["quality"] = float(np.quantile(q, 0.90))
    model.info = {"n_val": int(len(z)), "n_outliers_val": int(y.sum()),
                  "n_train_features": 0 if model.train_features is None else int(len(model.train_features))}
    return model


def load_quality(run_dir: str | os.PathLike) -> QualityModel | None:
    """The quality model stored in a run directory (``run/quality.npz``), or None.

    Only a whole run has one: its scores (ensemble disagreement) need every member, so predicting from a
    single member's checkpoint gives no quality columns.
    """
    path = Path(run_dir)
    if not (path.is_dir() and (path / QUALITY_FILE).is_file()):
        return None
    return QualityModel.load(path / QUALITY_FILE)
