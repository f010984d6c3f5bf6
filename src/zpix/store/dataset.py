"""PyTorch access to a cube store.

The HDF5 file is opened lazily, once per DataLoader worker process (h5py handles must
not cross a fork), so the same Dataset works with 0 or many workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from zpix.store.cube_store import CubeStore, OnBad


class CubeDataset(Dataset):
    """Samples ``{"image", "ebv", "z", "index"[, "mags"]}`` from a cube store.

    ``indices`` selects rows of the file (default: all valid rows); ``z`` is NaN where
    the spectroscopic redshift is unknown.  Small per-object arrays are read once here;
    images are read per item from the worker's own file handle.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        indices: Sequence[int] | np.ndarray | None = None,
        use_mags: bool = False,
        on_bad: OnBad = "error",
    ) -> None:
        self.path = Path(path)
        self.on_bad: OnBad = on_bad
        with CubeStore(self.path, on_bad=on_bad) as store:
            valid = store.valid_index
            self.z = store.z_spec.astype(np.float32)
            self.ebv = store.ebv.astype(np.float32)
            self.image_shape = store.image_shape
            self.bands = store.bands
            if use_mags and not store.has_mags:
                raise ValueError(f"{self.path} holds no magnitudes; train without magnitude input "
                                 "or write 'mags' into the cube store")
            self.mags = store.column("mags").astype(np.float32) if use_mags else None
        if indices is None:
            self.indices = valid
        else:
            self.indices = np.asarray(indices, dtype=np.int64)
            if on_bad == "drop":
                self.indices = self.indices[np.isin(self.indices, valid)]
        self._store: CubeStore | None = None
        self._pid: int | None = None

    def _images(self) -> CubeStore:
        if self._store is None or self._pid != os.getpid():
            # validated once in __init__; each worker only needs a handle
            self._store = CubeStore(self.path, on_bad=self.on_bad, validate=False)
            self._pid = os.getpid()
        return self._store

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, positions: list[int]) -> list[dict[str, torch.Tensor]]:
        """A whole batch in one HDF5 read (the DataLoader calls this when it exists)."""
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        images = self._images().images(rows)
        return [
            {
                "image": torch.from_numpy(images[k]),
                "ebv": torch.tensor(self.ebv[row]),
                "z": torch.tensor(self.z[row]),
                "index": torch.tensor(row),
                **({"mags": torch.from_numpy(self.mags[row])} if self.mags is not None else {}),
            }
            for k, row in enumerate(rows)
        ]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_store"] = None
        return state
