"""`zpix sdss-frames` against a local HTTP server that serves the real SDSS frames of field 2583/2/136.

The server lays the files out as the SAS does ({rerun}/{run}/{camcol}/frame-...fits.bz2) and can
misbehave on request (server errors, truncated bodies, corrupt bytes, missing files), so that
retries and checks are exercised without the internet.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import http.server
import os
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from zpix.cli.ingest import sdss_frames_command
from zpix.ingest.sdss_frames import (
    DEFAULT_BASE_URL,
    Field,
    FrameDownloadError,
    download_frame,
    fetch_frames,
    frame_url,
    parse_fields,
    read_checksums,
    verify_frame_file,
)

REAL_FIELD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "sdss_frame_2583_2_136"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files; ``mode`` makes the first ``fail_first`` requests of each path misbehave."""

    mode = "ok"
    fail_first = 0
    seen: Counter = Counter()

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).seen[self.path] += 1
        failing = type(self).seen[self.path] <= type(self).fail_first
        if failing and self.mode == "error503":
            self.send_error(503, "try later")
            return
        if failing and self.mode in ("truncate", "corrupt"):
            path = self.translate_path(self.path)
            body = Path(path).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.mode == "truncate":
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
            else:
                mid = len(body) // 2
                self.wfile.write(body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1 :])
            return
        super().do_GET()


@pytest.fixture(scope="module")
def sas_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not REAL_FIELD.is_dir():
        pytest.skip("../shared/data/real/sdss_frame_2583_2_136 is not available beside the project")
    root = tmp_path_factory.mktemp("sas")
    target = root / "301" / "2583" / "2"
    target.mkdir(parents=True)
    for band in "ugriz":
        name = f"frame-{band}-002583-2-0136.fits.bz2"
        os.symlink(REAL_FIELD / name, target / name)
    return root


@pytest.fixture
def server(sas_tree: Path):
    _Handler.mode, _Handler.fail_first, _Handler.seen = "ok", 0, Counter()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(sas_tree)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_url_follows_the_sas_pattern() -> None:
    assert frame_url(2583, 2, 136, "r") == (
        "https://data.sdss.org/sas/dr17/eboss/photoObj/frames/301/2583/2/frame-r-002583-2-0136.fits.bz2")
    assert frame_url(94, 6, 7, "u", rerun=301, base_url="http://mirror/x/").endswith(
        "/x/301/94/6/frame-u-000094-6-0007.fits.bz2")
    assert DEFAULT_BASE_URL.startswith("https://data.sdss.org/sas/dr17/")
    with pytest.raises(ValueError, match="band"):
        frame_url(2583, 2, 136, "y")


def test_parse_fields_accepts_triples_and_tokens() -> None:
    assert parse_fields(["2583", "2", "136"]) == [Field(2583, 2, 136)]
    assert parse_fields(["2583/2/136", "94-1-12"]) == [Field(2583, 2, 136), Field(94, 1, 12)]
    with pytest.raises(ValueError, match="triples"):
        parse_fields(["2583", "2"])
    with pytest.raises(ValueError, match="camcol"):
        parse_fields(["2583", "9", "136"])


def test_fetch_all_bands_from_local_server(server: str, tmp_path: Path) -> None:
    results = fetch_frames([Field(2583, 2, 136)], tmp_path / "frames", base_url=server, progress=False, workers=3)
    assert [r.status for r in results] == ["downloaded"] * 5
    for band, result in zip("ugriz", results, strict=True):
        original = REAL_FIELD / f"frame-{band}-002583-2-0136.fits.bz2"
        assert result.path.name == original.name
        assert result.path.read_bytes() == original.read_bytes()
    # no temporary files are left behind
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == sorted(r.path.name for r in results)
    with fits.open(results[2].path) as hdul:
        assert hdul[0].header["FILTER"].strip() == "r"
    # a second run finds them and downloads nothing
    again = fetch_frames([Field(2583, 2, 136)], tmp_path / "frames", bands="ri", base_url=server, progress=False)
    assert [r.status for r in again] == ["present", "present"]


@pytest.mark.parametrize("mode", ["error503", "truncate", "corrupt"])
def test_retries_recover_from_bad_transfers(server: str, tmp_path: Path, mode: str) -> None:
    _Handler.mode, _Handler.fail_first = mode, 2
    url = frame_url(2583, 2, 136, "g", base_url=server)
    result = download_frame(url, tmp_path / "g.fits.bz2", retries=3, backoff=0.01)
    assert result.status == "downloaded", result.error
    assert result.attempts == 3
    assert result.path.read_bytes() == (REAL_FIELD / "frame-g-002583-2-0136.fits.bz2").read_bytes()


def test_gives_up_with_a_message_and_leaves_nothing(server: str, tmp_path: Path) -> None:
    _Handler.mode, _Handler.fail_first = "corrupt", 100
    url = frame_url(2583, 2, 136, "g", base_url=server)
    result = download_frame(url, tmp_path / "g.fits.bz2", retries=2, backoff=0.01)
    assert result.status == "failed" and result.attempts == 3
    assert "corrupt bzip2" in result.error or "CRC" in result.error or "bzip2" in result.error
    assert list(tmp_path.iterdir()) == []


def test_missing_frame_is_not_retried(server: str, tmp_path: Path) -> None:
    url = frame_url(2583, 2, 999, "r", base_url=server)
    result = download_frame(url, tmp_path / "x.fits.bz2", retries=3, backoff=0.01)
    assert result.status == "failed" and result.attempts == 1
    assert "404" in result.error and "run/camcol/field" in result.error


def test_checksum_mismatch_is_caught(server: str, tmp_path: Path) -> None:
    url = frame_url(2583, 2, 136, "u", base_url=server)
    bad = download_frame(url, tmp_path / "u.fits.bz2", retries=1, backoff=0.01, md5="0" * 32)
    assert bad.status == "failed" and "MD5" in bad.error
    good_md5 = hashlib.md5((REAL_FIELD / "frame-u-002583-2-0136.fits.bz2").read_bytes()).hexdigest()
    good = download_frame(url, tmp_path / "u.fits.bz2", md5=good_md5)
    assert good.status == "downloaded"
    sums = tmp_path / "MD5SUMS"
    sums.write_text(f"{good_md5}  some/dir/frame-u-002583-2-0136.fits.bz2\nnot a line\n")
    assert read_checksums(sums) == {"frame-u-002583-2-0136.fits.bz2": good_md5}


def test_verify_frame_file_rejects_truncated_and_non_fits(tmp_path: Path) -> None:
    if not REAL_FIELD.is_dir():
        pytest.skip("../shared/data/real is not available")
    original = (REAL_FIELD / "frame-z-002583-2-0136.fits.bz2").read_bytes()
    cut = tmp_path / "cut.fits.bz2"
    cut.write_bytes(original[: len(original) - 5000])
    with pytest.raises(FrameDownloadError, match="truncated|corrupt"):
        verify_frame_file(cut)
    text = tmp_path / "text.fits.bz2"
    text.write_bytes(bz2.compress(b"<html>not found</html>" * 200))
    with pytest.raises(FrameDownloadError, match="not a FITS"):
        verify_frame_file(text)
    short = tmp_path / "short.fits.bz2"
    header = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 2, "NAXIS1": 100, "NAXIS2": 100})
    short.write_bytes(bz2.compress(header.tostring().encode() + np.zeros(2880, np.uint8).tobytes()))
    with pytest.raises(FrameDownloadError, match="shorter"):
        verify_frame_file(short)


def test_cli_fetches_and_reports_failures(server: str, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "frames"
    result = runner.invoke(sdss_frames_command, ["2583", "2", "136", "--bands", "r", "--out", str(out),
                                                 "--base-url", server, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "1 downloaded" in result.output
    assert (out / "frame-r-002583-2-0136.fits.bz2").exists()
    listing = tmp_path / "fields.txt"
    listing.write_text("# run camcol field\n2583 2 136\n2583 2 137  # not on the server\n")
    result = runner.invoke(sdss_frames_command, ["--list", str(listing), "--bands", "r", "--out", str(out),
                                                 "--base-url", server, "--retries", "0", "--no-progress"])
    assert result.exit_code != 0
    assert "1 already present" in result.output and "1 failed" in result.output
    assert "frame-r-002583-2-0137" in result.output
    result = runner.invoke(sdss_frames_command, ["2583", "2", "--out", str(out)])
    assert result.exit_code != 0 and "triples" in result.output
