"""Reproducible train / validation / test and k-fold splits over the rows of a cube store."""

from __future__ import annotations

import numpy as np

from zpix.runs import Split


def labelled_rows(z_spec: np.ndarray, valid: np.ndarray, z_min: float, z_max: float) -> np.ndarray:
    """Rows with a finite spectroscopic redshift inside the grid, among ``valid`` rows."""
    z = z_spec[valid]
    return valid[np.isfinite(z) & (z >= z_min) & (z <= z_max)]


def random_split(rows: np.ndarray, test_fraction: float, val_fraction: float, seed: int,
                 max_train: int | None = None) -> Split:
    """Shuffle ``rows`` with ``seed``; the first ``test_fraction`` is the test set, then ``val_fraction``
    of the remainder is validation (Pasquet 2019 Sect. 3.6: 80/20 train/test, a validation subset)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(rows)
    n_test = int(round(test_fraction * len(perm)))
    rest = perm[n_test:]
    n_val = max(1, int(round(val_fraction * len(rest))))
    train = rest[n_val:]
    if max_train is not None:
        train = train[:max_train]
    return Split(np.sort(train), np.sort(rest[:n_val]), np.sort(perm[:n_test]))


def kfold_splits(rows: np.ndarray, k: int, val_fraction: float, seed: int) -> list[Split]:
    """k folds: fold i is the test set of split i; the other k-1 folds give training + validation."""
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    rng = np.random.default_rng(seed)
    folds = np.array_split(rng.permutation(rows), k)
    splits = []
    for i in range(k):
        rest = rng.permutation(np.concatenate([f for j, f in enumerate(folds) if j != i]))
        n_val = max(1, int(round(val_fraction * len(rest))))
        splits.append(Split(np.sort(rest[n_val:]), np.sort(rest[:n_val]), np.sort(folds[i])))
    return splits
