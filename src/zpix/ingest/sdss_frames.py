"""Fetch SDSS corrected frames from the Science Archive Server, verified and written atomically.

Pasquet et al. (2019, Sect. 2) built their cubes from the SDSS "corrected frames"
(calibrated, sky-subtracted images in nanomaggies with a TAN WCS) downloaded from the SDSS
Science Archive Server. Their documented location (SDSS data model, ``frame``) is::

    {base}/{rerun}/{run}/{camcol}/frame-{band}-{run:06d}-{camcol}-{field:04d}.fits.bz2

with ``base = https://data.sdss.org/sas/dr17/eboss/photoObj/frames`` and rerun 301 for
DR8 and later. Every file is streamed to a temporary name while its size (against the
``Content-Length``), bzip2 stream (decompressed on the fly to its end) and FITS structure
(primary header readable, size a whole number of 2880-byte blocks and at least header +
data) are checked, with an optional MD5 from a ``md5sum``-style list; only a file that
passes is renamed to its final name, so a file with that name is always complete. Network
failures, server errors and bad files are retried with exponential backoff; a 404 is not.
"""

from __future__ import annotations

import bz2
import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits

from zpix.atomic import temp_path
from zpix.ingest.frames import _data_bytes

DEFAULT_BASE_URL = "https://data.sdss.org/sas/dr17/eboss/photoObj/frames"
DEFAULT_RERUN = 301
SDSS_BANDS = "ugriz"
CHUNK = 1 << 20
USER_AGENT = "zpix-sdss-frames"


class FrameDownloadError(RuntimeError):
    """A frame could not be fetched or failed its checks; the message says which and why."""


class _Retryable(Exception):
    """A failure worth another try (network, server error, truncated or corrupt transfer)."""


@dataclass(frozen=True)
class Field:
    """One SDSS imaging field: run, camera column, field number."""

    run: int
    camcol: int
    field: int

    def __str__(self) -> str:
        return f"{self.run}/{self.camcol}/{self.field}"


@dataclass
class FetchResult:
    """Outcome for one file: ``status`` is ``downloaded``, ``present`` (already there) or ``failed``."""

    url: str
    path: Path
    status: str
    attempts: int = 0
    size: int = 0
    error: str = ""


def frame_filename(run: int, camcol: int, field: int, band: str) -> str:
    """``frame-{band}-{run:06d}-{camcol}-{field:04d}.fits.bz2`` (SDSS data model)."""
    return f"frame-{band}-{int(run):06d}-{int(camcol)}-{int(field):04d}.fits.bz2"


def frame_url(run: int, camcol: int, field: int, band: str, rerun: int = DEFAULT_RERUN,
              base_url: str = DEFAULT_BASE_URL) -> str:
    """URL of one corrected frame on the SAS (or a mirror with the same layout under ``base_url``)."""
    if band not in SDSS_BANDS:
        raise ValueError(f"SDSS band must be one of {SDSS_BANDS!r}, not {band!r}")
    return f"{base_url.rstrip('/')}/{rerun}/{int(run)}/{int(camcol)}/{frame_filename(run, camcol, field, band)}"


def parse_fields(items: Sequence[str]) -> list[Field]:
    """Fields from ``RUN CAMCOL FIELD`` triples or ``RUN/CAMCOL/FIELD`` / ``RUN-CAMCOL-FIELD`` tokens."""
    tokens: list[str] = []
    for item in items:
        tokens.extend(t for t in re.split(r"[\s,/-]+", str(item).strip()) if t)
    if len(tokens) % 3:
        raise ValueError(f"fields come as RUN CAMCOL FIELD triples; got {len(tokens)} numbers: {' '.join(tokens)}")
    try:
        numbers = [int(t) for t in tokens]
    except ValueError as err:
        raise ValueError(f"fields must be whole numbers (RUN CAMCOL FIELD): {err}") from err
    fields = [Field(*numbers[i : i + 3]) for i in range(0, len(numbers), 3)]
    for f in fields:
        if not 1 <= f.camcol <= 6:
            raise ValueError(f"field {f}: camcol must be 1-6")
    return fields


def read_field_list(path: str | os.PathLike) -> list[Field]:
    """Fields from a text file, one ``RUN CAMCOL FIELD`` per line (``#`` starts a comment)."""
    lines = [line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines()]
    return parse_fields([line for line in lines if line])


def read_checksums(path: str | os.PathLike) -> dict[str, str]:
    """``md5sum``-style lines (``<hex>  <name>``) as {file name: md5}."""
    sums: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and re.fullmatch(r"[0-9a-fA-F]{32}", parts[0]):
            sums[os.path.basename(parts[-1].lstrip("*"))] = parts[0].lower()
    return sums


class _StreamCheck:
    """Checks a .fits.bz2 as its bytes go by: MD5, complete bzip2 stream(s), FITS block structure."""

    def __init__(self) -> None:
        self.md5 = hashlib.md5()
        self.nbytes = 0
        self.decompressed = 0
        self._dec = bz2.BZ2Decompressor()
        self._mid_stream = False
        self._head = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        self.nbytes += len(chunk)
        data = chunk
        while data:
            try:
                out = self._dec.decompress(data)
            except OSError as err:
                raise _Retryable(f"corrupt bzip2 data ({err})") from err
            self._mid_stream = True
            self.decompressed += len(out)
            if len(self._head) < 2880 * 64:
                self._head.extend(out[: 2880 * 64 - len(self._head)])
            if self._dec.eof:
                # files made by parallel bzip2 tools hold several streams back to back
                data = self._dec.unused_data
                self._dec = bz2.BZ2Decompressor()
                self._mid_stream = False
            else:
                data = b""

    def finish(self) -> None:
        if self.nbytes == 0:
            raise _Retryable("empty file")
        if self._mid_stream:
            raise _Retryable("bzip2 stream ends early (truncated transfer)")
        head = bytes(self._head)
        if not head.startswith(b"SIMPLE  ="):
            raise _Retryable("not a FITS file (no SIMPLE card at the start)")
        if self.decompressed % 2880:
            raise _Retryable(f"FITS size {self.decompressed} is not a whole number of 2880-byte blocks")
        end = next((m for m in re.finditer(rb"END {77}", head) if m.start() % 80 == 0), None)
        if end is None:
            raise _Retryable("FITS primary header has no END card in its first blocks")
        header = fits.Header.fromstring(head[: end.end()].decode("ascii", "replace"))
        header_bytes = -(-end.end() // 2880) * 2880
        if header_bytes + _data_bytes(header) > self.decompressed:
            raise _Retryable("FITS file is shorter than its primary header says")


def verify_frame_file(path: str | os.PathLike, md5: str | None = None) -> None:
    """Raise :class:`FrameDownloadError` unless ``path`` is a complete, readable ``.fits.bz2`` frame."""
    check = _StreamCheck()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            try:
                check.feed(chunk)
            except _Retryable as err:
                raise FrameDownloadError(f"{path}: {err}") from err
    try:
        check.finish()
    except _Retryable as err:
        raise FrameDownloadError(f"{path}: {err}") from err
    if md5 and check.md5.hexdigest() != md5.lower():
        raise FrameDownloadError(f"{path}: MD5 {check.md5.hexdigest()} differs from the expected {md5}")


def download_frame(url: str, dest: str | os.PathLike, *, retries: int = 4, backoff: float = 1.0,
                   timeout: float = 60.0, md5: str | None = None, overwrite: bool = False) -> FetchResult:
    """Fetch one ``.fits.bz2`` frame to ``dest`` with checks and retries (see the module docstring).

    Never raises for a failed download: the result says ``failed`` and why, so a batch goes on.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        return FetchResult(url, dest, "present", 0, dest.stat().st_size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    error = ""
    attempt = 0
    for attempt in range(1, retries + 2):
        try:
            size = _fetch_once(url, tmp, timeout, md5)
            os.replace(tmp, dest)
            return FetchResult(url, dest, "downloaded", attempt, size)
        except urllib.error.HTTPError as err:
            tmp.unlink(missing_ok=True)
            error = f"HTTP {err.code} {err.reason}"
            if err.code == 404:
                return FetchResult(url, dest, "failed", attempt, 0,
                                   "not found (HTTP 404): check run/camcol/field, --rerun and --base-url")
            if err.code < 500 and err.code not in (408, 429):
                return FetchResult(url, dest, "failed", attempt, 0, error)
        except (_Retryable, urllib.error.URLError, http.client.HTTPException, ConnectionError,
                TimeoutError) as err:
            tmp.unlink(missing_ok=True)
            error = f"{type(err).__name__}: {err}" if not isinstance(err, _Retryable) else str(err)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if attempt <= retries:
            time.sleep(backoff * 2 ** (attempt - 1))
    return FetchResult(url, dest, "failed", attempt, 0, f"gave up after {attempt} attempts: {error}")


def _fetch_once(url: str, tmp: Path, timeout: float, md5: str | None) -> int:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    check = _StreamCheck()
    with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as fh:
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        while True:
            try:
                chunk = response.read(CHUNK)
            except http.client.IncompleteRead as err:
                raise _Retryable(f"connection closed after {check.nbytes + len(err.partial)} of {expected} bytes") \
                    from err
            if not chunk:
                break
            fh.write(chunk)
            check.feed(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    if expected is not None and check.nbytes != expected:
        raise _Retryable(f"received {check.nbytes} bytes but Content-Length is {expected}")
    check.finish()
    if md5 and check.md5.hexdigest() != md5.lower():
        raise _Retryable(f"MD5 {check.md5.hexdigest()} differs from the expected {md5}")
    return check.nbytes


def fetch_frames(
    fields: Iterable[Field] | Field,
    out_dir: str | os.PathLike = "sdss_frames",
    bands: str | Sequence[str] = SDSS_BANDS,
    *,
    rerun: int = DEFAULT_RERUN,
    base_url: str = DEFAULT_BASE_URL,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 60.0,
    workers: int = 4,
    checksums: Mapping[str, str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[FetchResult]:
    """Download the frames of ``fields`` in ``bands`` into ``out_dir`` (flat: file names are unique).

    Downloads run in ``workers`` threads (the work is network-bound); files already present
    are kept (they were renamed into place only after passing their checks) unless ``overwrite``.
    """
    from tqdm.auto import tqdm

    field_list = [fields] if isinstance(fields, Field) else list(fields)
    jobs = []
    for f in field_list:
        for band in bands:
            url = frame_url(f.run, f.camcol, f.field, band, rerun=rerun, base_url=base_url)
            name = frame_filename(f.run, f.camcol, f.field, band)
            jobs.append((url, Path(out_dir) / name, (checksums or {}).get(name)))
    results: list[FetchResult] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(jobs), unit="frame", desc="sdss-frames", disable=not progress) as bar:
        futures = [pool.submit(download_frame, url, dest, retries=retries, backoff=backoff, timeout=timeout,
                               md5=md5, overwrite=overwrite) for url, dest, md5 in jobs]
        for fut in futures:
            results.append(fut.result())
            bar.update(1)
    return results
