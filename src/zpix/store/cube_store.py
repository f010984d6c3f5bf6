"""The cube store: one HDF5 format for every image set zpix reads or writes.

Layout (format version 1; see ``docs/cube_store.md``)::

    /images      float32 (N, bands, H, W), chunked per object
    /z_spec      float64 (N,)   NaN where unknown
    /ebv         float32 (N,)   Galactic E(B-V), mag
    /ids         int64 or UTF-8 string (N,)
    /n_bad       int32 (N,)     non-finite pixels per object (written by CubeWriter)
    /mags        float32 (N, M) optional catalogue magnitudes (NaN / >= 90: missing)
    /mag_errs    float32 (N, M) optional
    /catalog/<c> (N,)           optional 1-D per-object columns (r_mag, axis_ratio, ...)
    attrs: bands, pixel_scale_arcsec, survey, zpix_format_version, mag_names, ...

Writing goes to ``.<name>.partial-<token>`` (:func:`zpix.atomic.temp_path`) and is renamed into
place only when the writer closes cleanly, so a file with the final name is always complete.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from zpix.atomic import partial_paths, temp_path

FORMAT_VERSION = 1
REQUIRED = ("images", "z_spec", "ebv", "ids")
OnBad = Literal["error", "drop", "zero"]
#: The one default of every command that reads cubes: stop at NaN/inf pixels, saying how to go on.
ON_BAD_DEFAULT: OnBad = "error"


class CubeStoreError(ValueError):
    """A cube store file is missing, malformed or holds bad data; the message says how to fix it."""


def _as_1d(name: str, values: Any, n: int, dtype: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype).reshape(-1)
    if arr.shape[0] != n:
        raise CubeStoreError(f"'{name}' has {arr.shape[0]} rows but 'images' has {n}; pass one value per object")
    return arr


class CubeWriter:
    """Append image cubes and their per-object data to a new cube store, in bounded memory.

    Use as a context manager; the file appears under its final name only on a clean exit.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        bands: Sequence[str],
        image_shape: tuple[int, int],
        pixel_scale_arcsec: float,
        survey: str,
        mag_names: Sequence[str] | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = True,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise CubeStoreError(f"{self.path} exists; choose another --out or allow overwriting")
        self.bands = tuple(str(b) for b in bands)
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.mag_names = tuple(str(m) for m in mag_names) if mag_names else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_path(self.path)
        self._file = h5py.File(self._tmp, "w")
        self._file.attrs.update(
            {
                "bands": list(self.bands),
                "pixel_scale_arcsec": float(pixel_scale_arcsec),
                "survey": str(survey),
                "zpix_format_version": FORMAT_VERSION,
            }
        )
        if self.mag_names:
            self._file.attrs["mag_names"] = list(self.mag_names)
        for key, value in (attrs or {}).items():
            self._file.attrs[key] = value
        self.n = 0
        self._catalog_keys: tuple[str, ...] | None = None
        self._closed = False

    # -- dataset creation on first append, so dtypes follow the data -------------------------
    def _create(self, ids: np.ndarray, catalog: Mapping[str, np.ndarray]) -> None:
        f = self._file
        nb, (h, w) = len(self.bands), self.image_shape
        f.create_dataset("images", shape=(0, nb, h, w), maxshape=(None, nb, h, w), dtype="f4",
                         chunks=(1, nb, h, w))
        for name, dtype in (("z_spec", "f8"), ("ebv", "f4"), ("n_bad", "i4")):
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,))
        id_dtype = h5py.string_dtype() if ids.dtype.kind in "USO" else "i8"
        f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=id_dtype, chunks=(4096,))
        if self.mag_names:
            m = len(self.mag_names)
            for name in ("mags", "mag_errs"):
                f.create_dataset(name, shape=(0, m), maxshape=(None, m), dtype="f4", chunks=(4096, m))
        group = f.create_group("catalog")
        for key, col in catalog.items():
            dtype = h5py.string_dtype() if col.dtype.kind in "USO" else col.dtype
            group.create_dataset(key, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,))
        self._catalog_keys = tuple(catalog)

    def append(
        self,
        images: np.ndarray,
        z_spec: np.ndarray,
        ebv: np.ndarray,
        ids: np.ndarray,
        mags: np.ndarray | None = None,
        mag_errs: np.ndarray | None = None,
        catalog: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Append ``n`` objects; ``images`` is (n, bands, H, W)."""
        images = np.asarray(images, dtype=np.float32)
        expected = (len(self.bands), *self.image_shape)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise CubeStoreError(f"images of shape {images.shape} do not match (n, {expected}) of {self.path}")
        n = images.shape[0]
        ids = np.asarray(ids).reshape(-1)
        _as_1d("ids", ids, n, ids.dtype)
        cat = {k: np.asarray(v).reshape(-1) for k, v in (catalog or {}).items()}
        for key, col in cat.items():
            _as_1d(f"catalog/{key}", col, n, col.dtype)
        if self._catalog_keys is None:
            self._create(ids, cat)
        elif set(cat) != set(self._catalog_keys):
            raise CubeStoreError(
                f"catalog columns {sorted(cat)} differ from the first append's {sorted(self._catalog_keys)}"
            )
        if (mags is None) != (self.mag_names is None):
            raise CubeStoreError("pass mags if and only if the writer was created with mag_names")
        columns: dict[str, np.ndarray] = {
            "images": images,
            "z_spec": _as_1d("z_spec", z_spec, n, np.float64),
            "ebv": _as_1d("ebv", ebv, n, np.float32),
            "ids": ids.astype(str).astype(object) if ids.dtype.kind in "USO" else ids.astype(np.int64),
            "n_bad": (~np.isfinite(images)).reshape(n, -1).sum(axis=1).astype(np.int32),
        }
        if self.mag_names is not None:
            m = len(self.mag_names)
            columns["mags"] = np.asarray(mags, dtype=np.float32).reshape(n, m)
            errs = np.full((n, m), np.nan, np.float32) if mag_errs is None else mag_errs
            columns["mag_errs"] = np.asarray(errs, dtype=np.float32).reshape(n, m)
        for key, col in cat.items():
            columns[f"catalog/{key}"] = col.astype(str).astype(object) if col.dtype.kind in "USO" else col
        start = self.n
        for name, values in columns.items():
            ds = self._file[name]
            ds.resize(start + n, axis=0)
            ds[start : start + n] = values
        self.n += n

    def close(self) -> Path:
        """Finish the file and move it to its final name."""
        if self._closed:
            return self.path
        if self._catalog_keys is None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._closed = True
            raise CubeStoreError(f"no objects were written to {self.path}; nothing to save")
        self._file.attrs["n_objects"] = self.n
        self._file.close()
        os.replace(self._tmp, self.path)
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Drop everything written so far."""
        if not self._closed:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._closed = True

    def __enter__(self) -> CubeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class CubeStore:
    """Read a cube store, validating it on open.

    ``on_bad`` decides what happens to objects with non-finite pixels: ``error`` stops with
    a message that counts them, ``drop`` leaves them out of :attr:`valid_index`, ``zero``
    keeps them and :meth:`images` returns them with those pixels set to 0.
    """

    def __init__(self, path: str | os.PathLike, on_bad: OnBad = ON_BAD_DEFAULT, validate: bool = True) -> None:
        self.path = Path(path)
        if on_bad not in ("error", "drop", "zero"):
            raise ValueError(f"on_bad must be 'error', 'drop' or 'zero', not {on_bad!r}")
        self.on_bad = on_bad
        if not self.path.exists():
            partial = partial_paths(self.path) + [self.path.with_name(self.path.name + ".partial")]
            hint = ""
            if any(p.exists() for p in partial):
                name = next(p for p in partial if p.exists()).name
                hint = f" ({name} exists: the run that writes it has not finished, or was killed; rerun it)"
            raise CubeStoreError(f"cube store {self.path} not found{hint}")
        try:
            self._file: h5py.File | None = h5py.File(self.path, "r")
        except OSError as err:
            raise CubeStoreError(f"{self.path} is not a readable HDF5 cube store ({err}); "
                                 "re-create it with `zpix import` or `zpix simulate`") from err
        if validate:
            with self._reading("its datasets"):
                self._validate()

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """Turn a read that a damaged file breaks (h5py raises OSError, KeyError or RuntimeError from
        deep inside HDF5) into one CubeStoreError naming the file."""
        try:
            yield
        except CubeStoreError:
            raise
        except (OSError, KeyError, RuntimeError) as err:
            raise CubeStoreError(f"{self.path}: cannot read {what} ({err}): the file is damaged or truncated; "
                                 "re-create it with `zpix import` or `zpix simulate`") from err

    # -- validation ---------------------------------------------------------------------------
    def _fail(self, what: str, fix: str) -> None:
        raise CubeStoreError(f"{self.path}: {what}. {fix}")

    def _validate(self) -> None:
        f = self._file
        missing = [name for name in REQUIRED if name not in f]
        if missing:
            self._fail(f"missing required dataset(s) {missing}",
                       "A cube store needs images, z_spec, ebv and ids; write it with zpix.CubeWriter")
        images = f["images"]
        if images.ndim != 4:
            self._fail(f"'images' has shape {images.shape}, expected (N, bands, H, W)",
                       "If your cubes are channels-last (N, H, W, bands), import them with `zpix import`")
        if images.dtype != np.float32:
            self._fail(f"'images' has dtype {images.dtype}, expected float32", "Convert with `zpix import`")
        n, nb = images.shape[:2]
        bands = list(f.attrs.get("bands", []))
        if len(bands) != nb:
            self._fail(f"attribute 'bands' lists {len(bands)} bands {bands} but images have {nb}",
                       "Set the 'bands' attribute to one name per image plane")
        for name in REQUIRED[1:]:
            if f[name].shape[0] != n:
                self._fail(f"'{name}' has {f[name].shape[0]} rows but 'images' has {n}",
                           "Every dataset needs one row per object")
        if "mags" in f and f["mags"].shape[0] != n:
            self._fail(f"'mags' has {f['mags'].shape[0]} rows but 'images' has {n}", "One row per object")
        n_bad = self._count_bad()
        bad_objects = np.flatnonzero(n_bad)
        if bad_objects.size and self.on_bad == "error":
            self._fail(
                f"{int(n_bad.sum())} NaN/inf pixels in {bad_objects.size} of {n} objects "
                f"(first rows: {bad_objects[:5].tolist()})",
                "Pass --on-bad drop to leave those objects out or --on-bad zero to set the pixels to 0",
            )
        self.n_bad = n_bad
        keep = np.ones(n, bool) if self.on_bad != "drop" else n_bad == 0
        self.valid_index = np.flatnonzero(keep)

    def _count_bad(self, block: int = 1024) -> np.ndarray:
        if "n_bad" in self._file:
            return self._file["n_bad"][:]
        # files from elsewhere: scan in blocks so memory stays bounded
        images = self._file["images"]
        counts = np.empty(images.shape[0], np.int32)
        for start in range(0, images.shape[0], block):
            chunk = images[start : start + block]
            counts[start : start + len(chunk)] = (~np.isfinite(chunk)).reshape(len(chunk), -1).sum(axis=1)
        return counts

    # -- metadata -----------------------------------------------------------------------------
    @property
    def file(self) -> h5py.File:
        if self._file is None:
            raise CubeStoreError(f"{self.path} is closed")
        return self._file

    def __len__(self) -> int:
        return int(self.file["images"].shape[0])

    @property
    def bands(self) -> list[str]:
        return [str(b) for b in self.file.attrs["bands"]]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.file["images"].shape[1:])  # type: ignore[return-value]

    @property
    def pixel_scale_arcsec(self) -> float:
        return float(self.file.attrs.get("pixel_scale_arcsec", np.nan))

    @property
    def survey(self) -> str:
        return str(self.file.attrs.get("survey", "unknown"))

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.file.attrs)

    @property
    def has_mags(self) -> bool:
        return "mags" in self.file

    @property
    def mag_names(self) -> list[str]:
        return [str(m) for m in self.file.attrs.get("mag_names", [])]

    @property
    def catalog_columns(self) -> list[str]:
        return sorted(self.file["catalog"]) if "catalog" in self.file else []

    # -- data ---------------------------------------------------------------------------------
    def images(self, index: slice | Sequence[int] | np.ndarray) -> np.ndarray:
        """Images for rows ``index`` (a slice or sorted/unsorted integer rows)."""
        with self._reading("'images'"):
            ds = self.file["images"]
            if isinstance(index, slice):
                out = ds[index]
            else:
                rows = np.asarray(index, dtype=np.int64).reshape(-1)
                out = np.empty((len(rows), *ds.shape[1:]), np.float32)
                if len(rows):
                    # h5py fancy indexing wants increasing unique rows
                    uniq, inverse = np.unique(rows, return_inverse=True)
                    out[:] = ds[uniq][inverse]
        if self.on_bad == "zero":
            out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        return out

    def column(self, name: str) -> np.ndarray:
        """A whole 1-D or 2-D per-object dataset (z_spec, ebv, ids, mags, mag_errs, catalog/<c>)."""
        if name not in self.file:
            raise CubeStoreError(f"{self.path} has no '{name}'; available: {self.available()}")
        with self._reading(f"'{name}'"):
            values = self.file[name][:]
        if values.dtype.kind == "O":
            values = values.astype(str)
        return values

    def available(self) -> list[str]:
        names = [k for k in self.file if k != "catalog"]
        return sorted(names) + [f"catalog/{c}" for c in self.catalog_columns]

    @property
    def z_spec(self) -> np.ndarray:
        return self.column("z_spec")

    @property
    def ebv(self) -> np.ndarray:
        return self.column("ebv")

    @property
    def ids(self) -> np.ndarray:
        return self.column("ids")

    def catalog_table(self):
        """ids, z_spec, ebv, magnitudes and catalogue columns as a pandas DataFrame."""
        import pandas as pd

        table: dict[str, np.ndarray] = {"id": self.ids, "z_spec": self.z_spec, "ebv": self.ebv}
        if self.has_mags:
            mags, errs = self.column("mags"), self.column("mag_errs")
            for j, name in enumerate(self.mag_names):
                table[f"mag_{name}"] = mags[:, j]
                table[f"magerr_{name}"] = errs[:, j]
        for c in self.catalog_columns:
            table.setdefault(c, self.column(f"catalog/{c}"))
        return pd.DataFrame(table)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> CubeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # h5py handles do not pickle; reopen lazily in the receiving process
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._file = h5py.File(self.path, "r")

    def summary(self) -> str:
        z = self.z_spec
        known = np.isfinite(z)
        lines = [
            f"{self.path}: {len(self)} objects, survey {self.survey}",
            f"  images {self.image_shape} bands {self.bands} at {self.pixel_scale_arcsec:.3f} arcsec/pixel",
            f"  z_spec known for {known.sum()}"
            + (f": median {np.median(z[known]):.4f}, range {z[known].min():.4f}-{z[known].max():.4f}"
               if known.any() else ""),
            f"  E(B-V) median {np.median(self.ebv):.4f}; objects with non-finite pixels: {(self.n_bad > 0).sum()}",
        ]
        if self.has_mags:
            lines.append(f"  magnitudes: {self.mag_names}")
        if self.catalog_columns:
            lines.append(f"  catalogue columns: {', '.join(self.catalog_columns)}")
        return "\n".join(lines)
