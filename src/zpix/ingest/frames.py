"""Survey frames: find them, read their WCS, index their footprints on the sky, read pixels.

Pasquet et al. (2019, Sect. 2) index every SDSS frame with its celestial footprint and,
for each galaxy, query "the list of all images likely to overlap a given sky area" per
filter before resampling with SWarp. This module is that step for any survey whose
frames are FITS images with a celestial WCS (Calabretta & Greisen 2002), read through
``astropy.io.fits`` / ``astropy.wcs``:

* :func:`scan_frames` reads only headers (streaming through ``.bz2`` / ``.gz`` files) and
  returns one :class:`FrameInfo` per image plane, with its band, WCS and footprint;
  frames that cannot be used (no celestial WCS, no band, unreadable) are reported, not fatal.
* :class:`FrameIndex` holds, per band, a KD-tree on the unit vectors of frame centres so
  that the frames near a target are found in O(log n), not by testing every frame.
* :class:`FrameReader` opens frames lazily with memory mapping, decompressing compressed
  files once into a cache directory, and keeps a small LRU of open files (bounded memory).
"""

from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from scipy.spatial import cKDTree

from zpix.atomic import atomic_file

COMPRESSED_SUFFIXES = (".bz2", ".gz", ".fz")

# Effective wavelength order of common broad-band filter names, so that bands found in
# headers come out blue to red (u g r i z y J H K) whatever order the files were listed in.
WAVELENGTH_ORDER = ("u", "g", "r", "i", "z", "y", "Y", "J", "H", "K", "Ks")


class FrameError(ValueError):
    """A frame cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class FrameInfo:
    """One image plane with a celestial WCS, as found by :func:`scan_frames`.

    ``header`` is the celestial WCS of the plane as a FITS header string (cheap to pickle
    to worker processes); ``plane`` is the index along the first axis of a 3-D image
    (e.g. one band of an HSC ``Cut_HSC.fits`` cube), ``None`` for a plain 2-D image.
    """

    path: str
    hdu: int
    plane: int | None
    band: str
    shape: tuple[int, int]
    header: str
    ra: float
    dec: float
    radius_deg: float
    pixel_scale_arcsec: float
    bunit: str = ""
    origin: str = ""
    weight_path: str | None = None
    weight_hdu: int | None = None

    def wcs(self) -> WCS:
        return wcs_from_header(fits.Header.fromstring(self.header))


def wcs_from_header(header: fits.Header) -> WCS:
    """The celestial part of a header's WCS, with astropy's fix-up chatter silenced."""
    with warnings.catch_warnings():
        # SDSS frames use the deprecated RADECSYS keyword; astropy fixes it and warns each time
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, relax=True).celestial


def expand_frame_paths(frames: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Frame paths from glob pattern(s), directories (all FITS inside) or explicit paths, sorted."""
    items = [frames] if isinstance(frames, str | os.PathLike) else list(frames)
    found: list[str] = []
    for item in items:
        text = str(item)
        if os.path.isdir(text):
            for pattern in ("*.fits", "*.fit", "*.fts", "*.fits.bz2", "*.fits.gz", "*.fits.fz", "*.fit.gz"):
                found.extend(glob.glob(os.path.join(text, pattern)))
        elif any(ch in text for ch in "*?["):
            found.extend(glob.glob(text))
        else:
            found.append(text)
    return sorted(set(found))


def _open_stream(path: str) -> IO[bytes]:
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _data_bytes(header: fits.Header) -> int:
    """Size in bytes of an HDU's data unit, padded to the FITS block (FITS standard 4.4.1)."""
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    dims = [int(header.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
    groups = bool(header.get("GROUPS", False)) and dims[0] == 0
    count = int(np.prod(dims[1:] if groups else dims))
    size = abs(int(header["BITPIX"])) // 8 * int(header.get("GCOUNT", 1)) * (int(header.get("PCOUNT", 0)) + count)
    return -(-size // 2880) * 2880


def iter_headers(path: str, max_hdus: int = 16) -> Iterator[fits.Header]:
    """Headers of a FITS file's HDUs, read without loading data.

    ``.bz2`` / ``.gz`` files are streamed and data units skipped by seeking forward, which
    costs a fraction of decompressing the whole file (astropy's ``fits.open`` decompresses
    everything it passes); tile-compressed ``.fz`` files go through astropy so that the
    image header (not the binary-table one) is returned.
    """
    if path.endswith(".fz"):
        with fits.open(path, lazy_load_hdus=True) as hdul:
            for i, hdu in enumerate(hdul):
                if i >= max_hdus:
                    break
                yield hdu.header.copy()
        return
    with _open_stream(path) as stream:
        for _ in range(max_hdus):
            try:
                header = fits.Header.fromfile(stream)
            except EOFError:
                return
            yield header
            skip = _data_bytes(header)
            if skip:
                stream.seek(skip, os.SEEK_CUR)


def _footprint(wcs: WCS, shape: tuple[int, int]) -> tuple[float, float, float]:
    """Centre (ra, dec) and radius (deg) of the circle from the centre through the farthest corner/edge."""
    ny, nx = shape
    xs = np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2, (nx - 1) / 2, 0, nx - 1], float)
    ys = np.array([0, 0, ny - 1, ny - 1, 0, ny - 1, (ny - 1) / 2, (ny - 1) / 2], float)
    ra_c, dec_c = wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
    ra, dec = wcs.pixel_to_world_values(xs, ys)
    centre = radec_to_unit(np.atleast_1d(ra_c), np.atleast_1d(dec_c))[0]
    cosang = np.clip(radec_to_unit(ra, dec) @ centre, -1.0, 1.0)
    return float(ra_c) % 360.0, float(dec_c), float(np.degrees(np.arccos(cosang)).max())


def radec_to_unit(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Unit vectors (n, 3) of sky positions, for chord-distance searches on the sphere."""
    ra, dec = np.radians(np.asarray(ra_deg, float)), np.radians(np.asarray(dec_deg, float))
    cd = np.cos(dec)
    return np.stack([cd * np.cos(ra), cd * np.sin(ra), np.sin(dec)], axis=-1)


def pixel_scale_arcsec(wcs: WCS) -> float:
    """Native pixel scale: the square root of the pixel's solid angle at the reference point."""
    return float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0)


def _parse_band_map(band_map: Mapping[str, str] | str | None) -> dict[str, str]:
    if band_map is None:
        return {}
    if isinstance(band_map, str):
        pairs = [item.split("=", 1) for item in band_map.split(",") if item.strip()]
        if any(len(p) != 2 for p in pairs):
            raise FrameError(f"--band-map {band_map!r}: write it as HEADERVALUE=band,... e.g. 'HSC-G=g,HSC-R=r'")
        return {k.strip(): v.strip() for k, v in pairs}
    return {str(k): str(v) for k, v in band_map.items()}


def weight_path_for(path: str, weight_suffix: str | None) -> str | None:
    """The weight file beside a frame: ``frame.fits[.bz2]`` -> ``frame{suffix}`` (e.g. ``.weight.fits``)."""
    if not weight_suffix:
        return None
    base = path
    for suffix in COMPRESSED_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    for suffix in (".fits", ".fit", ".fts"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base + weight_suffix


def scan_frames(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    band_key: str = "FILTER",
    band_map: Mapping[str, str] | str | None = None,
    hdu: int | None = None,
    cube_bands: Sequence[str] | None = None,
    weight_hdu: int | None = None,
    weight_suffix: str | None = None,
    workers: int = 1,
    progress: bool = False,
) -> tuple[list[FrameInfo], list[str]]:
    """Read the headers of frames and describe every usable image plane.

    Parameters
    ----------
    paths
        Glob pattern(s), directories or file paths (``.fits``, ``.fits.bz2``, ``.fits.gz``, ``.fits.fz``).
    band_key
        Header keyword naming the band (SDSS, HSC, DES: ``FILTER``); its value is stripped and,
        when ``band_map`` is given, translated (``{'HSC-G': 'g'}``).
    hdu
        HDU holding the science image; default: the first with a 2-D/3-D image and a celestial WCS.
    cube_bands
        Band names of the planes of a 3-D image (first numpy axis), e.g. ``g r i z y`` for HSC
        ``Cut_HSC.fits``, whose header has no per-plane band.
    weight_hdu, weight_suffix
        Where inverse-variance weight maps live: another HDU of the same file, or a file beside it.
    workers
        Processes reading headers in parallel (worth it for thousands of compressed frames).

    Returns
    -------
    frames, problems
        The usable planes, and one message per file that was skipped (the run goes on without it).
    """
    mapping = _parse_band_map(band_map)
    paths_list = expand_frame_paths(paths)
    job = partial(_scan_safe, band_key=band_key, band_map=mapping, hdu=hdu, cube_bands=cube_bands,
                  weight_hdu=weight_hdu, weight_suffix=weight_suffix)
    from tqdm.auto import tqdm

    frames: list[FrameInfo] = []
    problems: list[str] = []
    with tqdm(total=len(paths_list), unit="frame", desc="frame headers", disable=not progress) as bar:
        if workers > 1 and len(paths_list) > 4 * workers:
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                results = pool.map(job, paths_list, chunksize=max(1, min(64, len(paths_list) // (8 * workers))))
                for found, problem in results:
                    frames.extend(found)
                    problems.extend(problem)
                    bar.update(1)
        else:
            for path in paths_list:
                found, problem = job(path)
                frames.extend(found)
                problems.extend(problem)
                bar.update(1)
    return frames, problems


def _scan_safe(path: str, **kwargs) -> tuple[list[FrameInfo], list[str]]:
    """:func:`_scan_one` turning every failure into a message, so that one bad file never stops a scan."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _scan_one(path, **kwargs), []
    except FrameError as err:
        return [], [str(err)]
    except (OSError, ValueError, KeyError, EOFError) as err:
        return [], [f"{path}: cannot read as FITS ({type(err).__name__}: {err}); skipped"]


def _scan_one(
    path: str,
    band_key: str,
    band_map: dict[str, str],
    hdu: int | None,
    cube_bands: Sequence[str] | None,
    weight_hdu: int | None,
    weight_suffix: str | None,
) -> list[FrameInfo]:
    if not os.path.isfile(path):
        raise FrameError(f"{path}: no such file; skipped")
    # stop reading at the first usable HDU: for a compressed frame, every HDU passed costs decompression
    primary: fits.Header | None = None
    chosen: int | None = None
    header = fits.Header()
    saw_image = False
    for i, header in enumerate(iter_headers(path, max_hdus=(hdu + 1) if hdu is not None else 16)):
        if primary is None:
            primary = header
        if hdu is not None and i != hdu:
            continue
        if int(header.get("NAXIS", 0)) < 2 or header.get("XTENSION", "IMAGE").strip() not in ("IMAGE", ""):
            continue
        saw_image = True
        if wcs_from_header(header).has_celestial:
            chosen = i
            break
    if primary is None:
        raise FrameError(f"{path}: no FITS header found (truncated or not FITS?); skipped")
    if hdu is not None and chosen is None and not saw_image:
        raise FrameError(f"{path}: HDU {hdu} is missing or not an image; check --hdu")
    if chosen is None and not saw_image:
        raise FrameError(f"{path}: no image HDU (tables only, or no data); skipped")
    if chosen is None:
        raise FrameError(f"{path}: no celestial WCS (CTYPE/CRVAL/CD keywords); it cannot be placed on the sky, "
                         "skipped. Add an astrometric solution (e.g. astrometry.net) or pass --hdu")
    naxis = int(header["NAXIS"])
    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    wcs = wcs_from_header(header)
    celestial_header = wcs.to_header(relax=True).tostring()
    ra, dec, radius = _footprint(wcs, shape)
    scale = pixel_scale_arcsec(wcs)
    bunit = str(header.get("BUNIT", primary.get("BUNIT", ""))).strip()
    origin = str(primary.get("ORIGIN", primary.get("TELESCOP", ""))).strip()
    wpath = weight_path_for(path, weight_suffix) if weight_suffix else (path if weight_hdu is not None else None)
    if wpath is not None and not os.path.isfile(wpath):
        raise FrameError(f"{path}: weight map {wpath} not found; skipped (check --weight-suffix)")
    whdu = weight_hdu if weight_hdu is not None else (0 if wpath else None)

    planes: list[tuple[int | None, str]]
    extra = [int(header.get(f"NAXIS{k}", 1)) for k in range(3, naxis + 1)]
    n_planes = int(np.prod(extra)) if extra else 1
    if naxis >= 3 and n_planes > 1:
        if cube_bands is None:
            raise FrameError(f"{path}: a {naxis}-D image with {n_planes} planes and no band per plane; "
                             f"pass --cube-bands with {n_planes} names (e.g. g,r,i,z,y)")
        if len(cube_bands) != n_planes:
            raise FrameError(f"{path}: {n_planes} image planes but --cube-bands names {len(cube_bands)}")
        planes = [(k, str(b)) for k, b in enumerate(cube_bands)]
    else:
        raw = header.get(band_key, primary.get(band_key))
        if raw is None:
            raise FrameError(f"{path}: no '{band_key}' keyword to tell its band; pass --band-key "
                             "with the keyword your survey uses, or --band-map")
        value = str(raw).strip()
        planes = [(0 if naxis >= 3 else None, band_map.get(value, value))]
    return [
        FrameInfo(path=path, hdu=chosen, plane=plane, band=band, shape=shape, header=celestial_header,
                  ra=ra, dec=dec, radius_deg=radius, pixel_scale_arcsec=scale, bunit=bunit, origin=origin,
                  weight_path=wpath, weight_hdu=whdu)
        for plane, band in planes
    ]


def order_bands(bands: Iterable[str]) -> list[str]:
    """Bands sorted blue to red for known filter names, then the others alphabetically."""
    known = {b: i for i, b in enumerate(WAVELENGTH_ORDER)}
    return sorted(set(bands), key=lambda b: (known.get(b, len(known)), b))


class FrameIndex:
    """Per-band KD-trees on the unit vectors of frame centres.

    A frame can overlap a stamp only if the angle between their centres is at most the
    frame's radius plus the stamp's; the tree returns those candidates by chord distance
    (``2 sin(angle / 2)``), and :func:`zpix.ingest.resample.stamp_window` then checks the exact overlap.
    """

    def __init__(self, frames: Sequence[FrameInfo]) -> None:
        self.frames = list(frames)
        self.by_band: dict[str, np.ndarray] = {}
        self._trees: dict[str, cKDTree] = {}
        self._radius: dict[str, float] = {}
        for band in {f.band for f in self.frames}:
            ids = np.array([i for i, f in enumerate(self.frames) if f.band == band], dtype=np.int64)
            self.by_band[band] = ids
            xyz = radec_to_unit([self.frames[i].ra for i in ids], [self.frames[i].dec for i in ids])
            self._trees[band] = cKDTree(xyz)
            self._radius[band] = max(self.frames[i].radius_deg for i in ids)

    @property
    def bands(self) -> list[str]:
        return order_bands(self.by_band)

    def candidates(self, ra: np.ndarray, dec: np.ndarray, band: str, stamp_radius_deg: float) -> list[list[int]]:
        """For each target, the indices (into ``frames``) of the band's frames that may overlap its stamp."""
        ra, dec = np.atleast_1d(ra), np.atleast_1d(dec)
        if band not in self._trees:
            return [[] for _ in range(ra.size)]
        angle = np.radians(min(self._radius[band] + stamp_radius_deg, 180.0))
        chord = 2.0 * np.sin(angle / 2.0) * (1 + 1e-9)
        hits = self._trees[band].query_ball_point(radec_to_unit(ra, dec), r=chord)
        ids = self.by_band[band]
        return [sorted(int(ids[j]) for j in h) for h in hits]


def _cache_key(path: str, hdu: int) -> str:
    st = os.stat(path)
    text = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{hdu}"
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def materialize(path: str, hdu: int, cache_dir: str | os.PathLike) -> tuple[str, int]:
    """An uncompressed FITS file that holds HDU ``hdu`` of ``path``, for memory mapping.

    Plain FITS files are used in place. Compressed ones (``.bz2``, ``.gz``, tile-compressed
    ``.fz``) cannot be memory mapped, so the HDU is decompressed once into ``cache_dir``
    (written to a temporary name and renamed, so concurrent workers never read half a file).
    """
    if not path.endswith(COMPRESSED_SUFFIXES):
        return path, hdu
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{_cache_key(path, hdu)}.fits"
    if not target.exists():
        with fits.open(path) as hdul:
            src = hdul[hdu]
            header = src.header.copy()
            for key in ("XTENSION", "PCOUNT", "GCOUNT", "ZIMAGE", "BZERO", "BSCALE", "BLANK"):
                header.remove(key, ignore_missing=True)
            # astropy has already applied BZERO/BSCALE, so the copy holds physical values
            data = np.asarray(src.data)
            out = fits.PrimaryHDU(data=data, header=header)
            with atomic_file(target) as tmp:
                out.writeto(tmp, overwrite=True, output_verify="silentfix")
    return str(target), 0


class FrameReader:
    """Reads windows of frames (and their weight maps) through an LRU of memory-mapped files.

    Only the windows asked for are copied into memory, so memory stays bounded by
    ``max_open`` file handles plus the windows, whatever the frames' sizes.
    """

    def __init__(self, frames: Sequence[FrameInfo], cache_dir: str | os.PathLike, max_open: int = 32) -> None:
        self.frames = frames
        self.cache_dir = str(cache_dir)
        self.max_open = max_open
        self._open: OrderedDict[tuple[str, int], fits.HDUList] = OrderedDict()
        self._wcs: OrderedDict[int, WCS] = OrderedDict()

    def _array(self, path: str, hdu: int) -> np.ndarray:
        local, local_hdu = materialize(path, hdu, self.cache_dir)
        key = (local, local_hdu)
        if key in self._open:
            self._open.move_to_end(key)
        else:
            self._open[key] = fits.open(local, memmap=True, lazy_load_hdus=True)
            while len(self._open) > self.max_open:
                _, old = self._open.popitem(last=False)
                old.close()
        data = self._open[key][local_hdu].data
        if data is None:
            raise FrameError(f"{path}: HDU {hdu} holds no data")
        return data

    def wcs(self, index: int) -> WCS:
        if index not in self._wcs:
            self._wcs[index] = self.frames[index].wcs()
            while len(self._wcs) > 4 * self.max_open:
                self._wcs.popitem(last=False)
        else:
            self._wcs.move_to_end(index)
        return self._wcs[index]

    def window(self, index: int, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixels ``[y0:y1, x0:x1]`` of frame ``index`` as float64, and its weights (or ``None``)."""
        info = self.frames[index]
        data = self._array(info.path, info.hdu)
        if info.plane is not None:
            data = data.reshape(-1, *data.shape[-2:])[info.plane]
        sub = np.array(data[y0:y1, x0:x1], dtype=np.float64)
        weights = None
        if info.weight_path is not None and info.weight_hdu is not None:
            wdata = self._array(info.weight_path, info.weight_hdu)
            if wdata.shape[-2:] != tuple(info.shape):
                raise FrameError(f"{info.weight_path}: weight map shape {wdata.shape} differs from the frame's "
                                 f"{info.shape}")
            if wdata.ndim > 2 and info.plane is not None:
                wdata = wdata.reshape(-1, *wdata.shape[-2:])[info.plane]
            weights = np.array(wdata[y0:y1, x0:x1], dtype=np.float64)
        return sub, weights

    def close(self) -> None:
        for hdul in self._open.values():
            hdul.close()
        self._open.clear()
