"""Tests of `zpix report`: every figure is made and embedded, images come from the cube store."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from zpix.cli.evaluate import report_command
from zpix.evaluation.report import make_report
from zpix.evaluation.report.build import FIGURES
from zpix.evaluation.report.figures import lupton_rgb
from zpix.pdf import RedshiftGrid, gaussian_pdfs
from zpix.prediction.format import write_predictions

GRID = RedshiftGrid()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def preds(tmp_path_factory):
    base = tmp_path_factory.mktemp("rep")
    n = 600
    rng = np.random.default_rng(0)
    zs = np.clip(rng.gamma(6, 0.018, n), 0.01, 0.35)
    sig = rng.uniform(0.008, 0.02, n)
    mu = np.clip(zs + rng.normal(0, sig), 0.002, 0.398)
    ids = np.arange(100, 100 + n)
    extra = {"r_mag": rng.uniform(14, 17.8, n), "ebv": rng.uniform(0, 0.2, n), "axis_ratio": rng.uniform(0.2, 1, n),
             "snr_r": rng.uniform(10, 200, n), "psf_fwhm_r": rng.uniform(0.9, 1.8, n)}
    a = write_predictions(base / "cnn", ids, gaussian_pdfs(mu, sig, GRID), GRID, zs, extra=extra, method="cnn")
    mu2 = np.clip(zs + rng.normal(0, 1.5 * sig), 0.002, 0.398)
    # the baseline on a coarser grid: every figure must draw each method on its own grid
    coarse = RedshiftGrid(n_bins=90, z_min=0.0, z_max=0.4)
    b = write_predictions(base / "knn", ids[::-1], gaussian_pdfs(mu2, 1.5 * sig, coarse)[::-1], coarse, zs[::-1],
                          method="knn")
    # a tiny cube store: 5 bands (u g r i z), 16x16, a galaxy brighter in the red bands;
    # only the first 500 ids have images, so some examples must show the "no image" note
    m = 16
    yy, xx = np.mgrid[:m, :m] - m / 2
    prof = np.exp(-np.hypot(xx, yy) / 2.5).astype(np.float32)
    imgs = np.stack([prof * c for c in (0.2, 0.5, 1.0, 1.3, 1.5)])[None] * np.ones((500, 1, 1, 1), np.float32)
    with h5py.File(base / "cubes.h5", "w") as f:
        f["images"] = imgs.astype(np.float32)
        f["ids"] = ids[:500]
        f["z_spec"] = zs[:500]
        f["ebv"] = extra["ebv"][:500]
        f.attrs["bands"] = ["u", "g", "r", "i", "z"]
    return a, b, base / "cubes.h5"


def test_report_renders_with_all_figures(preds, tmp_path):
    a, b, cubes = preds
    page = make_report(a, tmp_path / "report", compare=[b], cubes=cubes, n_boot=10, n_examples=12)
    out = page.parent
    assert page.name == "index.html"
    stems = [s for s, _, _ in FIGURES]
    assert set(stems) == {"zphot_zspec", "dz_hist", "residuals", "bias", "pit", "examples", "trends", "nz", "width"}
    for s in stems:
        data = (out / f"{s}.png").read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, s
    html = page.read_text(encoding="utf-8")
    # self-contained: every figure embedded, nothing fetched from elsewhere
    assert len(re.findall(r'src="data:image/png;base64,', html)) == len(stems)
    assert "http://" not in html and "https://" not in html
    for text in ("σ_MAD", "cnn", "knn", "Quality cuts", "N(z) in tomographic bins", "coverage of the 68% interval"):
        assert text in html
    assert (out / "metrics.json").exists()
    assert not list(tmp_path.glob(".report.partial-*"))


def test_report_without_cubes_replaces_an_old_report(preds, tmp_path):
    a, _, _ = preds
    old = tmp_path / "r"
    make_report(a, old, n_boot=5, n_examples=4)
    (old / "stale.png").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_report(a, old, n_boot=5, n_examples=4)
    make_report(a, old, n_boot=5, n_examples=4, overwrite=True)
    assert not (old / "stale.png").exists()
    assert (old / "examples.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_report_bad_cubes_fails_cleanly(preds, tmp_path):
    a, _, _ = preds
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["ids"] = np.arange(3)
    with pytest.raises(ValueError, match=r"bad.h5: missing required dataset\(s\) \['images'"):
        make_report(a, tmp_path / "r", cubes=bad, n_boot=5)
    assert not (tmp_path / "r").exists()
    assert not list(tmp_path.glob(".r.partial-*"))


def test_lupton_rgb_uses_i_r_g_as_red_green_blue():
    cube = np.zeros((5, 8, 8), np.float32)
    cube[3, 2:6, 2:6] = 1.0  # light only in i (bands u g r i z)
    rgb = lupton_rgb(cube, ["u", "g", "r", "i", "z"])
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert rgb[4, 4, 0] > 100 and rgb[4, 4, 1] == 0 and rgb[4, 4, 2] == 0
    # without g, r, i: the three reddest bands (last plane is red)
    cube2 = np.zeros((4, 8, 8), np.float32)
    cube2[-1, 2:6, 2:6] = 1.0
    rgb2 = lupton_rgb(cube2, ["Y", "J", "H", "K"])
    assert rgb2[4, 4, 0] > 100 and rgb2[4, 4, 2] == 0


def test_report_cli(preds, tmp_path):
    a, b, cubes = preds
    r = CliRunner().invoke(report_command, [str(a), "--compare", str(b), "--cubes", str(cubes), "--out",
                                            str(tmp_path / "rep"), "--n-boot", "5", "--n-examples", "3"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "index.html").exists()
