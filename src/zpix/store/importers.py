"""Import image cubes from other layouts into the cube store.

* ``.npz`` in the layout of the public Pasquet et al. (2019) example file: ``data``
  (N, 64, 64, 5) channels-last, ``z`` and ``ebv``.  The array is streamed from the zip
  member in blocks, so files larger than memory import in bounded memory.
* FITS cubes (one file per object, an image HDU of shape (bands, H, W)) listed in a
  catalogue table that astropy can read (FITS, ECSV, CSV, VOTable, Parquet).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from zpix.store.cube_store import CubeStoreError, CubeWriter

SDSS_BANDS = ("u", "g", "r", "i", "z")


def _npz_member_blocks(path: Path, key: str, block: int) -> tuple[tuple[int, ...], np.dtype, Iterator[np.ndarray]]:
    """Shape, dtype and an iterator over ``block``-row pieces of array ``key`` in an npz file."""
    archive = zipfile.ZipFile(path)
    member = f"{key}.npy"
    if member not in archive.namelist():
        keys = [n.removesuffix(".npy") for n in archive.namelist()]
        archive.close()
        raise CubeStoreError(f"{path} has no array '{key}' (it has {keys}); "
                             "the Pasquet layout needs 'data', 'z' and 'ebv'")
    stream = archive.open(member)
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(stream)
    if fortran:
        raise CubeStoreError(f"{path}:{key} is stored in Fortran order; re-save it with np.savez (C order)")
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def blocks() -> Iterator[np.ndarray]:
        try:
            for start in range(0, shape[0], block):
                rows = min(block, shape[0] - start)
                buf = stream.read(rows * row_bytes)
                if len(buf) != rows * row_bytes:
                    raise CubeStoreError(f"{path}:{key} is truncated at row {start}; the file is incomplete")
                yield np.frombuffer(buf, dtype=dtype).reshape(rows, *shape[1:])
        finally:
            stream.close()
            archive.close()

    return tuple(shape), dtype, blocks()


def import_npz(
    npz_path: str | Path,
    out: str | Path,
    bands: Sequence[str] = SDSS_BANDS,
    pixel_scale_arcsec: float = 0.396,
    survey: str = "sdss",
    channels_last: bool = True,
    block: int = 512,
) -> Path:
    """Convert a Pasquet-layout ``.npz`` (``data`` (N, H, W, bands), ``z``, ``ebv``) to a cube store."""
    npz_path = Path(npz_path)
    with np.load(npz_path) as small:
        missing = [k for k in ("z", "ebv") if k not in small.files]
        if missing:
            raise CubeStoreError(f"{npz_path} lacks {missing}; the Pasquet layout has 'data', 'z' and 'ebv'")
        z = np.asarray(small["z"], dtype=np.float64).reshape(-1)
        ebv = np.asarray(small["ebv"], dtype=np.float32).reshape(-1)
        ids = np.asarray(small["ids"]).reshape(-1) if "ids" in small.files else np.arange(len(z))
    shape, _, blocks = _npz_member_blocks(npz_path, "data", block)
    if len(shape) != 4:
        raise CubeStoreError(f"{npz_path}:data has shape {shape}; expected 4 axes (N, H, W, bands)")
    n_bands = shape[3] if channels_last else shape[1]
    image_shape = shape[1:3] if channels_last else shape[2:4]
    if n_bands != len(bands):
        raise CubeStoreError(f"{npz_path}:data has {n_bands} bands but {len(bands)} band names were given "
                             f"({list(bands)}); pass --bands with one name per band")
    if len(z) != shape[0] or len(ebv) != shape[0]:
        raise CubeStoreError(f"{npz_path}: data has {shape[0]} objects but z has {len(z)} and ebv {len(ebv)}")
    start = 0
    with CubeWriter(out, bands=bands, image_shape=image_shape, pixel_scale_arcsec=pixel_scale_arcsec,
                    survey=survey, attrs={"source": str(npz_path)}) as writer:
        for chunk in blocks:
            images = np.moveaxis(chunk, 3, 1) if channels_last else chunk
            stop = start + len(chunk)
            writer.append(images, z[start:stop], ebv[start:stop], ids[start:stop])
            start = stop
    return Path(out)


def _read_errors() -> tuple[type[BaseException], ...]:
    """What astropy raises on damaged or foreign files (turned into one CubeStoreError)."""
    from astropy.io.registry import IORegistryError

    return (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, IORegistryError)


def _read_fits_cube(path: Path, n_bands: int) -> np.ndarray:
    try:
        with fits.open(path) as hdus:
            planes = [np.asarray(h.data) for h in hdus if getattr(h, "data", None) is not None and h.data.ndim >= 2]
    except _read_errors() as err:
        raise CubeStoreError(f"{path}: not a readable FITS image cube ({type(err).__name__}: {err}); "
                             "replace the file or leave it out of the catalogue") from None
    if len(planes) == 1 and planes[0].ndim == 3:
        cube = planes[0]
    elif planes and all(p.ndim == 2 for p in planes):
        cube = np.stack(planes)
    else:
        raise CubeStoreError(f"{path}: expected one (bands, H, W) image HDU or one 2-D HDU per band")
    if cube.shape[0] != n_bands:
        raise CubeStoreError(f"{path} has {cube.shape[0]} bands, expected {n_bands}")
    return np.asarray(cube, dtype=np.float32)


def import_fits(
    catalog_path: str | Path,
    out: str | Path,
    bands: Sequence[str] = SDSS_BANDS,
    pixel_scale_arcsec: float = 0.396,
    survey: str = "sdss",
    file_column: str = "file",
    id_column: str = "id",
    z_column: str = "z_spec",
    ebv_column: str | None = "ebv",
    mag_columns: Sequence[str] = (),
    block: int = 256,
) -> Path:
    """Build a cube store from per-object FITS cubes listed in a catalogue table.

    ``file_column`` holds each cube's path, relative to the catalogue's folder.  A
    missing E(B−V) column is an error unless ``ebv_column`` is None (then 0 is stored).
    """
    catalog_path = Path(catalog_path)
    try:
        table = Table.read(catalog_path)
    except _read_errors() as err:
        raise CubeStoreError(f"{catalog_path}: not a readable catalogue table ({type(err).__name__}: {err}); "
                             "give a FITS/CSV/ECSV table with one row per cube") from None
    needed = [file_column, id_column, z_column] + ([ebv_column] if ebv_column else []) + list(mag_columns)
    missing = [c for c in needed if c not in table.colnames]
    if missing:
        raise CubeStoreError(f"{catalog_path} lacks column(s) {missing} (it has {table.colnames}); "
                             "name them with --file-col/--id-col/--z-col/--ebv-col/--mag-cols")
    n = len(table)
    files = [catalog_path.parent / str(f).strip() for f in table[file_column]]
    first = _read_fits_cube(files[0], len(bands))
    ebv = np.asarray(table[ebv_column], np.float32) if ebv_column else np.zeros(n, np.float32)
    z = np.asarray(table[z_column].filled(np.nan) if hasattr(table[z_column], "filled") else table[z_column],
                   dtype=np.float64)
    mags = np.stack([np.asarray(table[c], np.float32) for c in mag_columns], axis=1) if mag_columns else None
    with CubeWriter(out, bands=bands, image_shape=first.shape[1:], pixel_scale_arcsec=pixel_scale_arcsec,
                    survey=survey, mag_names=list(mag_columns) or None,
                    attrs={"source": str(catalog_path)}) as writer:
        for start in range(0, n, block):
            stop = min(n, start + block)
            images = np.stack([_read_fits_cube(f, len(bands)) for f in files[start:stop]])
            writer.append(images, z[start:stop], ebv[start:stop], np.asarray(table[id_column][start:stop]),
                          mags=None if mags is None else mags[start:stop])
    return Path(out)
