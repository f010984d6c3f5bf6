"""What a training run reads: a cube store, or an in-memory table of magnitudes without images.

:func:`zpix.training.api.train_member` asks its data for three things and nothing else:

* ``model_inputs()``: the keyword arguments that size the model (``n_bands``, ``image_size``, ``n_mags``),
* ``mag_statistics(rows)``: mean and standard deviation of the magnitude inputs over the training rows
  (the magnitude branch standardises with them, ``m' = (m − mean) / std``),
* ``dataset(rows, train=...)``: a torch Dataset of ``{"image"?, "mags"?, "ebv", "z"}`` samples,

so a network on catalogue magnitudes (``hybrid-mags``, the ANNz2-like baseline of
:mod:`zpix.baselines.magnet`) trains through the very loop, checkpoints, early stopping and seed
handling as the image networks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zpix.training.config import TrainConfig


@dataclass
class CubeData:
    """The rows of ``cfg.cubes`` (images, and magnitudes when ``cfg.use_mags``)."""

    cfg: TrainConfig

    @property
    def workers(self) -> int:
        from zpix.hardware import loader_workers

        return loader_workers() if self.cfg.num_workers == "auto" else int(self.cfg.num_workers)

    def model_inputs(self) -> dict[str, int]:
        from zpix.store.cube_store import CubeStore

        with CubeStore(self.cfg.cubes, validate=False) as store:
            n_bands, size, _ = store.image_shape
            return {"n_bands": n_bands, "image_size": size,
                    "n_mags": len(store.mag_names) if self.cfg.use_mags else 0}

    def mag_statistics(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from zpix.models.hybrid import magnitude_statistics
        from zpix.store.cube_store import CubeStore

        with CubeStore(self.cfg.cubes, validate=False) as store:
            return magnitude_statistics(store.column("mags")[rows])

    def dataset(self, rows: np.ndarray, *, train: bool) -> Dataset:
        from zpix.store.dataset import CubeDataset

        cfg = self.cfg
        dataset = CubeDataset(cfg.cubes, indices=rows, use_mags=cfg.use_mags, on_bad=cfg.on_bad)  # type: ignore[arg-type]
        if cfg.target_cubes and train:  # training objects come with target-field partners (zpix.training.domain)
            from zpix.training.domain import domain_dataset

            dataset = domain_dataset(dataset, cfg.target_cubes, cfg.domain)
        return dataset


class MagnitudeDataset(Dataset):
    """In-memory ``{"mags", "ebv", "z"}`` samples: catalogue inputs (N, M), E(B−V) (N,), z (N,; NaN where unknown).

    :meth:`__getitems__` gathers a whole batch at once and :meth:`collate` passes it through, so a
    batch costs one indexing per column instead of B dictionaries.
    """

    def __init__(self, inputs: np.ndarray, ebv: np.ndarray, z: np.ndarray) -> None:
        self.mags = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
        self.ebv = torch.as_tensor(np.asarray(ebv, dtype=np.float32))
        self.z = torch.as_tensor(np.asarray(z, dtype=np.float32))
        if self.mags.ndim != 2 or not len(self.mags) == len(self.ebv) == len(self.z):
            raise ValueError(f"inputs must be (N, M) with N values of ebv and z, got {tuple(self.mags.shape)}, "
                             f"{tuple(self.ebv.shape)}, {tuple(self.z.shape)}")

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"mags": self.mags[i], "ebv": self.ebv[i], "z": self.z[i]}

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        i = torch.as_tensor(idx, dtype=torch.long)
        return {"mags": self.mags[i], "ebv": self.ebv[i], "z": self.z[i]}

    @staticmethod
    def collate(batch: Any) -> Any:
        """The DataLoader's collate function: a batch from :meth:`__getitems__` is already one."""
        return batch if isinstance(batch, dict) else torch.utils.data.default_collate(batch)


@dataclass
class TableData:
    """A catalogue held in memory: per object the magnitude inputs (N, M; NaN or ≥ 90 where missing),
    E(B−V) and z_spec; ``names`` name the M input columns, ``source`` the file they came from.
    No images: train it with a model without an image branch (``hybrid-mags``)."""

    inputs: np.ndarray
    ebv: np.ndarray
    z: np.ndarray
    names: list[str]
    source: str

    def __post_init__(self) -> None:
        self.inputs = np.asarray(self.inputs, dtype=np.float64)
        if self.inputs.ndim != 2 or self.inputs.shape[1] != len(self.names):
            raise ValueError(f"{self.source}: inputs of shape {self.inputs.shape} do not match the "
                             f"{len(self.names)} column names {self.names}")

    workers = 0  # in memory: a worker process would only copy the arrays

    def __len__(self) -> int:
        return len(self.inputs)

    def model_inputs(self) -> dict[str, int]:
        return {"n_mags": self.inputs.shape[1]}

    def mag_statistics(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from zpix.models.hybrid import magnitude_statistics

        return magnitude_statistics(self.inputs[rows])

    def dataset(self, rows: np.ndarray, *, train: bool) -> MagnitudeDataset:
        return MagnitudeDataset(self.inputs[rows], self.ebv[rows], self.z[rows])

    def describe(self) -> dict[str, Any]:
        """What a run trained on this table records in its config: source, columns, size, content digest."""
        h = hashlib.sha256()
        for column in (self.inputs, self.ebv, self.z):
            h.update(np.ascontiguousarray(column, dtype=np.float64).tobytes())
        return {"source": self.source, "inputs": list(self.names), "n_rows": len(self),
                "digest": h.hexdigest()[:16]}
