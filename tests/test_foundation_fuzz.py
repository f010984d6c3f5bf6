"""Readers fuzzed (hypothesis): corrupted or truncated cube stores, prediction directories, catalogue
tables and FITS frames.  Every case ends either in success or in one zpix error message (exit code 1,
no traceback), and a failed command leaves no output that looks complete."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner
from conftest import write_toy_cubes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zpix.cli import main
from zpix.pdf import RedshiftGrid
from zpix.prediction.format import write_predictions

FUZZ = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _run(args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def _clean_outcome(res) -> bool:
    """True on success; on failure assert it was one message, not a traceback."""
    if res.exit_code == 0:
        return True
    assert res.exit_code in (1, 2), (res.exit_code, res.output)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output and res.output.strip().startswith(("Error", "Usage")), res.output
    return False


def _corrupt(data: bytes, how: str, where: float, value: int) -> bytes:
    pos = int(where * max(len(data) - 1, 0))
    if how == "truncate":
        return data[:pos]
    if how == "flip":
        block = bytes((b ^ value) & 0xFF for b in data[pos:pos + 64])
        return data[:pos] + block + data[pos + 64:]
    if how == "zero":
        return data[:pos] + bytes(min(4096, len(data) - pos)) + data[pos + 4096:]
    return b""  # empty


def _damaged_copy(source: Path, target: Path, name: str | None, corruption) -> Path:
    """A fresh copy of ``source`` (a file, or a directory whose file ``name`` is damaged)."""
    shutil.rmtree(target, ignore_errors=True)
    if name is None:
        target.write_bytes(_corrupt(source.read_bytes(), *corruption))
        return target
    shutil.copytree(source, target)
    (target / name).write_bytes(_corrupt((target / name).read_bytes(), *corruption))
    return target


def _fails_cleanly_leaving_nothing(args, out: Path) -> None:
    """Run a command writing ``out``; if it fails, it failed with one message and wrote nothing."""
    if out.is_dir():
        shutil.rmtree(out)
    out.unlink(missing_ok=True)
    if not _clean_outcome(_run(args)):
        assert not out.exists() and not list(out.parent.glob(f".{out.name}.partial-*"))


CORRUPTION = st.tuples(st.sampled_from(["truncate", "flip", "zero", "empty"]), st.floats(0, 1),
                       st.integers(1, 255))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    cubes = write_toy_cubes(root / "toy.h5", n=30, size=8)
    grid = RedshiftGrid(12)
    rng = np.random.default_rng(1)
    pred = write_predictions(root / "pred", np.arange(30), rng.random((30, 12)), grid, z_spec=rng.uniform(0, .4, 30))
    table = root / "cat.csv"
    mags = rng.uniform(15, 20, (30, 3))
    table.write_text("id,z_spec,mag_g,mag_r,mag_i\n" + "".join(
        f"{i},{z:.4f},{m[0]:.3f},{m[1]:.3f},{m[2]:.3f}\n" for i, (z, m) in enumerate(zip(rng.uniform(0, .4, 30),
                                                                                         mags, strict=True))))
    frames = root / "frames"
    frames.mkdir()
    for i in range(4):
        fits.PrimaryHDU(rng.normal(size=(5, 8, 8)).astype(np.float32)).writeto(frames / f"c{i}.fits")
    Table({"file": [f"c{i}.fits" for i in range(4)], "id": np.arange(4), "z_spec": [.1, .2, .3, .1],
           "ebv": np.zeros(4)}).write(frames / "cat.fits")
    return root, cubes, pred, table, frames


@FUZZ
@given(CORRUPTION)
def test_corrupted_cube_store(pristine, tmp_path, corruption):
    _, cubes, *_ = pristine
    bad = _damaged_copy(cubes, tmp_path / "bad.h5", None, corruption)
    _clean_outcome(_run(["info", bad, "--on-bad", "zero"]))
    out = tmp_path / "knn"
    _fails_cleanly_leaving_nothing(["baseline", "knn", "--train", bad, "--test", bad, "--out", out, "--k", "5"], out)


@FUZZ
@given(st.sampled_from(["meta.yaml", "catalog.parquet", "pdfs.hdf5"]), CORRUPTION)
def test_corrupted_prediction_directory(pristine, tmp_path, name, corruption):
    _, _, pred, *_ = pristine
    bad = _damaged_copy(pred, tmp_path / "pred", name, corruption)
    out = tmp_path / "m.json"
    _fails_cleanly_leaving_nothing(["evaluate", bad, "--out", out, "--n-boot", "2"], out)


@FUZZ
@given(CORRUPTION)
def test_corrupted_catalogue_table(pristine, tmp_path, corruption):
    _, _, _, table, _ = pristine
    bad = _damaged_copy(table, tmp_path / "cat.csv", None, corruption)
    out = tmp_path / "knn"
    _fails_cleanly_leaving_nothing(["baseline", "knn", "--train", bad, "--test", table, "--out", out, "--k", "5"], out)


@FUZZ
@given(st.sampled_from(["cat.fits", "c0.fits", "c2.fits"]), CORRUPTION)
def test_corrupted_fits_frames(pristine, tmp_path, name, corruption):
    *_, frames = pristine
    bad = _damaged_copy(frames, tmp_path / "frames", name, corruption)
    out = tmp_path / "cubes.h5"
    _fails_cleanly_leaving_nothing(["import", bad / "cat.fits", "--out", out], out)
