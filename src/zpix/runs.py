"""The run directory: what `zpix train` writes and `zpix predict`, `kfold` and `init_from` read.

::

    run/config.yaml          the TrainConfig + library versions
    run/split.npz            train / val / test rows of the cube store
    run/member_<k>/best.ckpt best-validation checkpoint of ensemble member k (seed + k)
    run/summary.json         per-member validation scores and timings

Training writes it and prediction reads it; both import this module, never each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.npz"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def save(self, path) -> None:
        np.savez(path, train=self.train, val=self.val, test=self.test)

    @classmethod
    def load(cls, path) -> Split:
        with np.load(path) as f:
            return cls(f["train"], f["val"], f["test"])


def checkpoint_paths(model: str | os.PathLike) -> list[Path]:
    """The checkpoints behind MODEL: a ``.ckpt`` file, or a run directory with ``member_*/best.ckpt``."""
    path = Path(model)
    if path.is_file():
        return [path]
    found = sorted(path.glob("member_*/best.ckpt"))
    if not found:
        raise FileNotFoundError(f"{path}: no checkpoint; pass a .ckpt file or a run directory written by "
                                "`zpix train` (it holds member_<k>/best.ckpt)")
    return found
