"""Survey frames + a catalogue -> aligned multi-band cubes in a cube store.

This is the data preparation of Pasquet et al. (2019, Sect. 2): for every galaxy, the
frames that overlap it are found per band, resampled onto one gnomonic (TAN) grid centred
on the galaxy at the native pixel scale with a Lanczos-3 kernel, and stacked, without
background subtraction, into a ``bands x size x size`` cube aligned with the local
celestial axes. Frames are found through :mod:`zpix.ingest.frames`, resampled and co-added
through :mod:`zpix.ingest.resample`, and the cubes written with
:class:`zpix.store.cube_store.CubeWriter`.

The run is split into blocks of targets. Each block is processed by a worker process and
written to a part file in a work directory; a rerun with the same inputs and options
skips the blocks already there, and the cube store is assembled from the parts only at
the end (so an interrupted run leaves no half-written store, and loses at most the blocks
in flight). Memory is bounded by the block size and the workers' LRU of memory-mapped frames.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from zpix.atomic import atomic_file, write_text
from zpix.ingest.frames import FrameIndex, FrameInfo, FrameReader, expand_frame_paths, order_bands, scan_frames
from zpix.ingest.resample import BACKENDS, find_swarp, resample_band, target_wcs

# Bits of the per-object ``flags`` catalogue column.
FLAG_PARTIAL = 1  # some band covers only part of the stamp
FLAG_MISSING_BAND = 2  # some band has no data at all for this object
FLAG_FRAME_ERROR = 4  # a frame that overlaps the object could not be read or resampled

RA_NAMES = ("ra", "ra_deg", "raj2000", "alpha_j2000", "ra_icrs", "alpha")
DEC_NAMES = ("dec", "dec_deg", "dej2000", "decj2000", "delta_j2000", "dec_icrs", "delta")
ID_NAMES = ("id", "objid", "object_id", "source_id", "specobjid", "objectid")
Z_NAMES = ("z_spec", "zspec", "zs", "z", "redshift", "specz")
EBV_NAMES = ("ebv", "e_bv", "e(b-v)", "ebv_sfd", "extinction_ebv")
MAX_MESSAGES = 20


class CutoutError(ValueError):
    """The inputs cannot give any cube; the message says what to change."""


@dataclass
class CutoutReport:
    """What a :func:`make_cutouts` run did."""

    out: Path
    n_targets: int
    n_written: int
    bands: list[str]
    pixel_scale_arcsec: float
    n_outside: int = 0
    n_below_coverage: int = 0
    n_flagged: int = 0
    missing_band_counts: dict[str, int] = field(default_factory=dict)
    skipped_frames: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    blocks_total: int = 0
    blocks_reused: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{self.out}: {self.n_written} of {self.n_targets} targets as {len(self.bands)}-band cubes "
                 f"({','.join(self.bands)}) at {self.pixel_scale_arcsec:.4f} arcsec/pixel in {self.seconds:.1f} s"]
        if self.blocks_reused:
            lines.append(f"  resumed: {self.blocks_reused} of {self.blocks_total} blocks were already done")
        if self.n_outside:
            lines.append(f"  {self.n_outside} targets lie outside every frame: left out")
        if self.n_below_coverage:
            lines.append(f"  {self.n_below_coverage} targets below --min-coverage: left out")
        if self.n_flagged:
            lines.append(f"  {self.n_flagged} written targets are flagged (partial coverage, a missing band or a "
                         "frame error; see catalog/flags and catalog/coverage_<band>)")
        for band, count in self.missing_band_counts.items():
            if count:
                lines.append(f"  band {band}: no data for {count} targets")
        lines.extend(f"  skipped frame: {msg}" for msg in self.skipped_frames[:MAX_MESSAGES])
        if len(self.skipped_frames) > MAX_MESSAGES:
            lines.append(f"  ... and {len(self.skipped_frames) - MAX_MESSAGES} more skipped frames")
        lines.extend(f"  {msg}" for msg in self.messages[:MAX_MESSAGES])
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# catalogue


def _find_column(columns: Mapping[str, np.ndarray], wanted: str | None, names: Sequence[str], what: str,
                 required: bool) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise CutoutError(f"catalogue has no column {wanted!r} for {what}; it has {sorted(columns)[:30]}")
        return wanted
    lower = {c.lower(): c for c in columns}
    for name in names:
        if name in lower:
            return lower[name]
    if required:
        raise CutoutError(f"catalogue has no {what} column (looked for {', '.join(names)}); "
                          f"name it with --{what}-col. Columns: {sorted(columns)[:30]}")
    return None


def read_catalog(catalog: Any) -> dict[str, np.ndarray]:
    """Columns of a catalogue as numpy arrays (masked values become NaN / empty strings).

    Accepts a file astropy can read (FITS, ECSV, CSV, whitespace text, Parquet), an astropy
    Table, a pandas DataFrame, a numpy structured array or a mapping of column -> values.
    """
    from astropy.table import Table

    if isinstance(catalog, str | os.PathLike):
        path = str(catalog)
        if not os.path.isfile(path):
            raise CutoutError(f"catalogue {path} not found")
        formats = {".csv": "ascii.csv", ".parquet": "parquet", ".pq": "parquet", ".txt": "ascii", ".dat": "ascii",
                   ".ecsv": "ascii.ecsv"}
        fmt = formats.get(Path(path).suffix.lower())
        try:
            table = Table.read(path, format=fmt) if fmt else Table.read(path)
        except Exception as err:  # astropy raises many types for unreadable files
            raise CutoutError(f"cannot read catalogue {path} ({type(err).__name__}: {err}); "
                              "give a FITS, ECSV, CSV or Parquet table") from err
        catalog = table
    if isinstance(catalog, Table):
        columns = {}
        for name in catalog.colnames:
            col = catalog[name]
            if getattr(col, "ndim", 1) != 1:
                continue
            if hasattr(col, "mask") and np.any(col.mask):
                col = col.filled(np.nan if col.dtype.kind == "f" else (0 if col.dtype.kind in "iu" else ""))
            columns[name] = np.asarray(col)
        return columns
    if hasattr(catalog, "to_dict") and hasattr(catalog, "columns"):  # pandas
        return {str(c): catalog[c].to_numpy() for c in catalog.columns}
    if isinstance(catalog, np.ndarray) and catalog.dtype.names:
        return {name: np.asarray(catalog[name]) for name in catalog.dtype.names}
    if isinstance(catalog, Mapping):
        return {str(k): np.asarray(v) for k, v in catalog.items()}
    raise CutoutError(f"cannot use a {type(catalog).__name__} as a catalogue; give a path, Table or DataFrame")


def _split(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


# --------------------------------------------------------------------------------------------
# workers

_STATE: dict[str, Any] = {}


@dataclass(frozen=True)
class _Options:
    size: int
    bands: tuple[str, ...]
    pixel_scale_arcsec: float
    backend: str
    weight_type: str
    fill_value: float
    cache_dir: str
    swarp: str | None


def _init_worker(frames: list[FrameInfo], options: _Options) -> None:
    # silence astropy's per-frame WCS fix-up notices in workers; problems are reported explicitly
    warnings.filterwarnings("ignore", module="astropy")
    _STATE.clear()
    _STATE.update(options=options, index=FrameIndex(frames), reader=FrameReader(frames, options.cache_dir))


def _run_block(block: int, rows: np.ndarray, ra: np.ndarray, dec: np.ndarray, part: str) -> dict[str, Any]:
    """Cut the stamps of one block of targets and write them to ``part`` (atomically)."""
    opts: _Options = _STATE["options"]
    index: FrameIndex = _STATE["index"]
    reader: FrameReader = _STATE["reader"]
    n, nb, size = len(rows), len(opts.bands), opts.size
    images = np.full((n, nb, size, size), opts.fill_value, np.float32)
    coverage = np.zeros((n, nb), np.float32)
    n_frames = np.zeros((n, nb), np.int16)
    errors = np.zeros(n, bool)
    messages: list[str] = []
    # a frame may overlap the stamp if its centre is within its radius plus the stamp's half-diagonal
    stamp_radius = np.sqrt(2.0) * size / 2.0 * opts.pixel_scale_arcsec / 3600.0 * 1.05
    candidates = [index.candidates(ra, dec, band, stamp_radius) for band in opts.bands]
    for i in range(n):
        wcs_out = target_wcs(ra[i], dec[i], size, opts.pixel_scale_arcsec)
        for j in range(nb):
            try:
                res = resample_band(reader, candidates[j][i], wcs_out, size, backend=opts.backend,
                                    weight_type=opts.weight_type, fill_value=opts.fill_value, swarp=opts.swarp)
            except (OSError, ValueError) as err:
                errors[i] = True
                if len(messages) < MAX_MESSAGES:
                    messages.append(f"row {rows[i]} band {opts.bands[j]}: {err}")
                continue
            images[i, j] = res.image
            coverage[i, j] = res.coverage
            n_frames[i, j] = res.n_frames
            if res.problems:
                errors[i] = True
                messages.extend(f"row {rows[i]} band {opts.bands[j]}: {p}" for p in res.problems
                                if len(messages) < MAX_MESSAGES)
    with atomic_file(part) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, rows=rows, images=images, coverage=coverage, n_frames=n_frames, errors=errors,
                 messages=np.array(messages, dtype=str))
    return {"block": block, "n": n}


# --------------------------------------------------------------------------------------------
# driver


def _digest(*items: Any) -> str:
    h = hashlib.sha256()
    for item in items:
        if isinstance(item, np.ndarray):
            h.update(np.ascontiguousarray(item).tobytes())
        else:
            h.update(json.dumps(item, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def _mag_columns(columns: Mapping[str, np.ndarray], bands: Sequence[str], mag_cols: list[str] | None,
                 mag_err_cols: list[str] | None) -> tuple[list[str] | None, list[str] | None]:
    if mag_cols is None:
        # use magnitudes only when every output band has an obvious column
        lower = {c.lower(): c for c in columns}
        for pattern in ("{b}", "mag_{b}", "{b}_mag", "modelmag_{b}", "cmodelmag_{b}"):
            names = [lower.get(pattern.format(b=b.lower())) for b in bands]
            if all(names):
                mag_cols = [str(n) for n in names]
                break
        if mag_cols is not None and mag_err_cols is None:
            for pattern in ("e{b}", "err_{b}", "{b}_err", "magerr_{b}", "modelmagerr_{b}", "cmodelmagerr_{b}"):
                names = [lower.get(pattern.format(b=b.lower())) for b in bands]
                if all(names):
                    mag_err_cols = [str(n) for n in names]
                    break
    for name in (mag_cols or []) + (mag_err_cols or []):
        if name not in columns:
            raise CutoutError(f"catalogue has no magnitude column {name!r}")
    if mag_cols and mag_err_cols and len(mag_cols) != len(mag_err_cols):
        raise CutoutError(f"{len(mag_cols)} magnitude columns but {len(mag_err_cols)} error columns")
    return mag_cols, mag_err_cols


def make_cutouts(
    frames: str | os.PathLike | Iterable[str | os.PathLike],
    catalog: Any,
    size: int = 64,
    out: str | os.PathLike = "cubes.h5",
    *,
    bands: str | Sequence[str] | None = None,
    pixel_scale_arcsec: float | None = None,
    backend: str = "lanczos3",
    band_key: str = "FILTER",
    band_map: str | Mapping[str, str] | None = None,
    hdu: int | None = None,
    cube_bands: str | Sequence[str] | None = None,
    weight_hdu: int | None = None,
    weight_suffix: str | None = None,
    weight_type: str = "ivar",
    id_col: str | None = None,
    ra_col: str | None = None,
    dec_col: str | None = None,
    z_col: str | None = None,
    ebv_col: str | None = None,
    mag_cols: str | Sequence[str] | None = None,
    mag_err_cols: str | Sequence[str] | None = None,
    keep_cols: str | Sequence[str] | None = None,
    min_coverage: float = 0.0,
    fill_value: float = 0.0,
    survey: str | None = None,
    workers: int = 1,
    block_size: int = 256,
    work_dir: str | os.PathLike | None = None,
    keep_work: bool = False,
    progress: bool = True,
) -> CutoutReport:
    """Cut ``size`` x ``size`` multi-band cubes around every catalogue position and write a cube store.

    Follows Pasquet et al. (2019, Sect. 2): per target and band, every overlapping frame is
    resampled onto a TAN grid centred on the target (north up, east left, target at pixel
    ``((size-1)/2, (size-1)/2)``) at the native pixel scale and co-added; see
    :mod:`zpix.ingest.resample` for the kernels (``backend``: ``lanczos3`` default, ``interp``,
    ``swarp``) and the co-add (plain mean, or inverse-variance weighted when weight maps are
    given through ``weight_hdu`` / ``weight_suffix``).

    Per object the store gets ``ra``, ``dec``, ``row`` (catalogue row), ``flags`` (bits
    ``FLAG_PARTIAL``, ``FLAG_MISSING_BAND``, ``FLAG_FRAME_ERROR``), ``coverage_<band>`` (fraction
    of the stamp with data) and ``nframes_<band>`` as catalogue columns, plus ``z_spec``, ``ebv``,
    ids and magnitudes from the catalogue. Targets outside every frame are left out, as are
    those whose coverage in some band is below ``min_coverage``; uncovered pixels hold ``fill_value``.

    Returns a :class:`CutoutReport`; raises :class:`CutoutError` when nothing can be made.
    """
    started = time.perf_counter()
    if backend not in BACKENDS:
        raise CutoutError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    swarp = find_swarp() if backend == "swarp" else None
    if backend == "swarp" and swarp is None:
        raise CutoutError("--backend swarp needs SWarp on PATH (Debian/Ubuntu: apt-get install swarp); "
                          "the default lanczos3 backend gives the same Lanczos-3 resampling without it")
    if weight_type not in ("ivar", "variance"):
        raise CutoutError(f"--weight-type must be 'ivar' or 'variance', not {weight_type!r}")
    if size < 4:
        raise CutoutError(f"--size {size} is too small; stamps need at least 4 pixels a side")
    if not 0.0 <= min_coverage <= 1.0:
        raise CutoutError(f"--min-coverage {min_coverage} must lie between 0 and 1")
    out = Path(out)
    work = Path(work_dir) if work_dir is not None else out.with_name(out.name + ".work")

    # -- catalogue --------------------------------------------------------------------------
    columns = read_catalog(catalog)
    ra_name = _find_column(columns, ra_col, RA_NAMES, "ra", True)
    dec_name = _find_column(columns, dec_col, DEC_NAMES, "dec", True)
    ra_all = np.asarray(columns[ra_name], np.float64)
    dec_all = np.asarray(columns[dec_name], np.float64)
    n_targets = ra_all.size
    if n_targets == 0:
        raise CutoutError("the catalogue has no rows")
    bad_pos = ~(np.isfinite(ra_all) & np.isfinite(dec_all) & (np.abs(dec_all) <= 90))
    if bad_pos.any():
        raise CutoutError(f"{bad_pos.sum()} catalogue rows have missing or impossible ra/dec "
                          f"(first rows {np.flatnonzero(bad_pos)[:5].tolist()}); fix or remove them")

    # -- frames -----------------------------------------------------------------------------
    paths = expand_frame_paths(frames)
    if not paths:
        raise CutoutError(f"no frame files match {frames!r}")
    cube_band_list = _split(cube_bands)
    stats = [(os.stat(p).st_size, os.stat(p).st_mtime_ns) if os.path.exists(p) else None for p in paths]
    scan_key = _digest(paths, stats, band_key,
                       band_map, hdu, cube_band_list, weight_hdu, weight_suffix)
    work.mkdir(parents=True, exist_ok=True)
    scan_file = work / f"frames-{scan_key}.json"
    if scan_file.exists():
        cached = json.loads(scan_file.read_text())
        frame_list = [FrameInfo(**{**f, "shape": tuple(f["shape"])}) for f in cached["frames"]]
        skipped = list(cached["skipped"])
    else:
        frame_list, skipped = scan_frames(paths, band_key=band_key, band_map=band_map, hdu=hdu,
                                          cube_bands=cube_band_list, weight_hdu=weight_hdu,
                                          weight_suffix=weight_suffix, workers=workers,
                                          progress=progress and len(paths) > 100)
        write_text(scan_file, json.dumps({"frames": [asdict(f) for f in frame_list], "skipped": skipped}))
    if not frame_list:
        raise CutoutError("none of the frames can be used:\n  " + "\n  ".join(skipped[:MAX_MESSAGES]))
    found_bands = order_bands(f.band for f in frame_list)
    band_list = _split(bands) or found_bands
    absent = [b for b in band_list if b not in found_bands]
    messages: list[str] = []
    if absent:
        messages.append(f"no frame has band(s) {absent} (bands found: {found_bands}); those planes are "
                        f"{fill_value} and flagged")
    scale = float(pixel_scale_arcsec) if pixel_scale_arcsec else float(
        np.median([f.pixel_scale_arcsec for f in frame_list if f.band in band_list] or [np.nan]))
    if not np.isfinite(scale) or scale <= 0:
        raise CutoutError("cannot tell the pixel scale from the frames; pass --pixel-scale (arcsec)")

    # -- blocks and resume ------------------------------------------------------------------
    options = _Options(size=int(size), bands=tuple(band_list), pixel_scale_arcsec=scale, backend=backend,
                       weight_type=weight_type, fill_value=float(fill_value), cache_dir=str(work / "frame_cache"),
                       swarp=swarp)
    run_key = _digest(scan_key, ra_all, dec_all, {k: v for k, v in asdict(options).items() if k != "cache_dir"},
                      block_size)
    parts_dir = work / "parts"
    state_file = work / "state.json"
    previous = json.loads(state_file.read_text()).get("key") if state_file.exists() else None
    if parts_dir.exists() and previous != run_key:
        # parts from a run with other inputs or options cannot be reused
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"key": run_key, "out": str(out)}))
    starts = list(range(0, n_targets, block_size))
    part_paths = [str(parts_dir / f"block_{b:06d}.npz") for b in range(len(starts))]
    todo = [b for b, p in enumerate(part_paths) if not os.path.exists(p)]
    reused = len(starts) - len(todo)
    todo_set = set(todo)
    reused_targets = sum(min(block_size, n_targets - s) for b, s in enumerate(starts) if b not in todo_set)

    def block_args(b: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, str]:
        rows = np.arange(starts[b], min(starts[b] + block_size, n_targets))
        return b, rows, ra_all[rows], dec_all[rows], part_paths[b]

    from tqdm.auto import tqdm

    with tqdm(total=n_targets, initial=reused_targets, unit="target", desc="cutouts",
              disable=not progress) as bar:
        if workers <= 1 or len(todo) <= 1:
            with warnings.catch_warnings():
                _init_worker(frame_list, options)
                try:
                    for b in todo:
                        bar.update(_run_block(*block_args(b))["n"])
                finally:
                    _STATE["reader"].close()
                    _STATE.clear()
        else:
            # spawn: workers start clean (no inherited locks or open HDF5 handles from the caller)
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                     initializer=_init_worker, initargs=(frame_list, options)) as pool:
                pending: set = set()
                queue = list(todo)
                while queue or pending:
                    # keep a bounded number of blocks in flight, so memory does not grow with the catalogue
                    while queue and len(pending) < 2 * workers:
                        pending.add(pool.submit(_run_block, *block_args(queue.pop(0))))
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        bar.update(fut.result()["n"])

    # -- assemble the cube store ------------------------------------------------------------
    report = CutoutReport(out=out, n_targets=n_targets, n_written=0, bands=list(band_list),
                          pixel_scale_arcsec=scale, skipped_frames=list(skipped), messages=messages,
                          blocks_total=len(starts), blocks_reused=reused,
                          missing_band_counts={b: 0 for b in band_list})
    _write_store(out, part_paths, columns, report, options, frame_list,
                 id_col=id_col, z_col=z_col, ebv_col=ebv_col, ra_name=ra_name, dec_name=dec_name,
                 mag_cols=_split(mag_cols), mag_err_cols=_split(mag_err_cols), keep_cols=_split(keep_cols) or [],
                 min_coverage=min_coverage, survey=survey)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    return report


def _write_store(out: Path, part_paths: list[str], columns: dict[str, np.ndarray], report: CutoutReport,
                 options: _Options, frame_list: list[FrameInfo], *, id_col: str | None, z_col: str | None,
                 ebv_col: str | None, ra_name: str, dec_name: str, mag_cols: list[str] | None,
                 mag_err_cols: list[str] | None, keep_cols: list[str], min_coverage: float,
                 survey: str | None) -> None:
    from zpix.store.cube_store import CubeStoreError, CubeWriter

    bands = list(options.bands)
    n = report.n_targets
    id_name = _find_column(columns, id_col, ID_NAMES, "id", False)
    z_name = _find_column(columns, z_col, Z_NAMES, "z", False)
    ebv_name = _find_column(columns, ebv_col, EBV_NAMES, "ebv", False)
    ids = columns[id_name] if id_name else np.arange(n)
    z_spec = np.asarray(columns[z_name], np.float64) if z_name else np.full(n, np.nan)
    ebv = np.asarray(columns[ebv_name], np.float64) if ebv_name else np.zeros(n)
    mag_cols, mag_err_cols = _mag_columns(columns, bands, mag_cols, mag_err_cols)
    for name in keep_cols:
        if name not in columns:
            raise CutoutError(f"--keep-cols: catalogue has no column {name!r}")
    units = sorted({f.bunit for f in frame_list if f.band in bands and f.bunit})
    origins = sorted({f.origin.lower() for f in frame_list if f.origin})
    attrs = {
        "source": "zpix cutouts (Pasquet et al. 2019, Sect. 2)",
        "projection": "TAN, north up, east left, centred on the target",
        "centre_pixel": (options.size - 1) / 2.0,
        "resampling": {"lanczos3": "Lanczos-3 (zpix)", "interp": "reproject_interp bicubic",
                       "swarp": "SWarp Lanczos-3"}[options.backend],
        "backend": options.backend,
        "coadd": "inverse-variance weighted mean" if any(f.weight_path for f in frame_list) else "mean",
        "bunit": units[0] if len(units) == 1 else ",".join(units),
        "fill_value": options.fill_value,
        "min_coverage": min_coverage,
        "ebv_source": ebv_name or "not in the catalogue: set to 0",
        "z_spec_source": z_name or "not in the catalogue: NaN",
        "frames_used": len(frame_list),
        "frames_skipped": len(report.skipped_frames),
    }
    survey_name = survey or (origins[0] if len(origins) == 1 else "unknown")
    try:
        with CubeWriter(out, bands=bands, image_shape=(options.size, options.size),
                        pixel_scale_arcsec=options.pixel_scale_arcsec, survey=survey_name,
                        mag_names=bands[: len(mag_cols)] if mag_cols and len(mag_cols) == len(bands) else mag_cols,
                        attrs=attrs) as writer:
            for part in part_paths:
                with np.load(part) as data:
                    rows, coverage = data["rows"], data["coverage"]
                    errors, n_frames = data["errors"], data["n_frames"]
                    report.messages.extend(str(m) for m in data["messages"][: max(0, MAX_MESSAGES -
                                                                                     len(report.messages))])
                    outside = coverage.max(axis=1) <= 0
                    low = ~outside & (coverage.min(axis=1) < min_coverage)
                    keep = ~outside & ~low
                    report.n_outside += int(outside.sum())
                    report.n_below_coverage += int(low.sum())
                    for j, band in enumerate(bands):
                        report.missing_band_counts[band] += int(((coverage[:, j] <= 0) & ~outside).sum())
                    if not keep.any():
                        continue
                    images = data["images"][keep]
                rows, coverage, n_frames = rows[keep], coverage[keep], n_frames[keep]
                flags = (np.where((coverage < 1).any(axis=1) & (coverage > 0).any(axis=1), FLAG_PARTIAL, 0)
                         | np.where((coverage <= 0).any(axis=1), FLAG_MISSING_BAND, 0)
                         | np.where(errors[keep], FLAG_FRAME_ERROR, 0)).astype(np.int32)
                report.n_flagged += int((flags != 0).sum())
                cat: dict[str, np.ndarray] = {
                    "ra": np.asarray(columns[ra_name], np.float64)[rows],
                    "dec": np.asarray(columns[dec_name], np.float64)[rows],
                    "row": rows.astype(np.int64),
                    "flags": flags,
                }
                for j, band in enumerate(bands):
                    cat[f"coverage_{band}"] = coverage[:, j].astype(np.float32)
                    cat[f"nframes_{band}"] = n_frames[:, j].astype(np.int16)
                for name in keep_cols:
                    cat.setdefault(name, columns[name][rows])
                mags = np.stack([np.asarray(columns[c], np.float64)[rows] for c in mag_cols], 1) if mag_cols else None
                errs = (np.stack([np.asarray(columns[c], np.float64)[rows] for c in mag_err_cols], 1)
                        if mag_cols and mag_err_cols else None)
                writer.append(images=images, z_spec=z_spec[rows], ebv=ebv[rows], ids=ids[rows], mags=mags,
                              mag_errs=errs, catalog=cat)
                report.n_written += len(rows)
            if report.n_written == 0:
                raise CutoutError(
                    f"none of the {n} targets has data in the frames (outside every frame: {report.n_outside}, "
                    f"below --min-coverage: {report.n_below_coverage}); check the catalogue's ra/dec "
                    "against the frames, or lower --min-coverage")
    except CubeStoreError as err:
        raise CutoutError(str(err)) from err


# --------------------------------------------------------------------------------------------
# command line
