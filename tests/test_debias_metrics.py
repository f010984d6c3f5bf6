"""The bias numbers of the evaluation (Lin et al.): spec-z trend amplitude, N(z) KS, tomographic bias."""

from __future__ import annotations

import numpy as np
import pytest

from zpix.evaluation.evaluate import run_evaluation
from zpix.evaluation.nz import nz_ks, tomographic_bias
from zpix.evaluation.trends import bias_summary, fixed_edges
from zpix.pdf import RedshiftGrid, gaussian_pdfs
from zpix.prediction.format import write_predictions


def test_spec_z_trend_amplitude_of_a_known_pull_towards_the_mean():
    rng = np.random.default_rng(0)
    zs = rng.uniform(0.02, 0.3, 20000)
    zp = zs + 0.3 * (0.16 - zs)  # pulled towards 0.16: residual -0.3 (zs - 0.16)
    b = bias_summary(zp, zs, n_boot=20)
    # bins of width 0.02 from 0.02 to 0.30, all populated: the outermost bin centres are 0.03 and 0.29
    expected = max(abs(0.3 * (0.16 - c)) / (1 + c) for c in (0.03, 0.29))
    assert b["spec_z_trend_amplitude"] == pytest.approx(expected, rel=0.05)
    assert b["spec_z_trend"]["edges"][0] == pytest.approx(0.02) and b["spec_z_trend"]["mean_dz_err"][3] > 0
    # a bin with fewer than 100 objects does not count
    few = np.concatenate([zs, [0.39] * 50])
    assert bias_summary(np.concatenate([zp, [0.2] * 50]), few, n_boot=5)["spec_z_trend_amplitude"] == pytest.approx(
        expected, rel=0.05)


def test_nz_ks_sees_mode_collapse_and_tomographic_bias_sees_an_offset():
    rng = np.random.default_rng(1)
    zs = rng.uniform(0.05, 0.3, 5000)
    assert nz_ks(zs + rng.normal(0, 1e-4, 5000), zs) < 0.02
    collapsed = np.full(5000, 0.12) + rng.normal(0, 0.005, 5000)
    assert nz_ks(collapsed, zs) > 0.5
    t = tomographic_bias(zs + 0.003, zs, 5)
    assert t["max_abs"] == pytest.approx(0.003) and t["n"] == [1000] * 5
    assert fixed_edges(np.array([0.031, 0.115]), 0.02) == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.10, 0.12])


def test_evaluation_reports_the_bias_numbers(tmp_path):
    rng = np.random.default_rng(2)
    grid = RedshiftGrid(180, 0.0, 0.4)
    zs = rng.uniform(0.05, 0.3, 3000)
    zp = zs + 0.2 * (0.17 - zs)
    path = write_predictions(tmp_path / "p", np.arange(3000), gaussian_pdfs(zp, 0.01, grid), grid, zs, method="cnn")
    _, result = run_evaluation(path, n_boot=10)
    m = result["methods"]["cnn"]
    assert m["overall"]["spec_z_trend_amplitude"] == pytest.approx(m["bias"]["spec_z_trend_amplitude"])
    assert m["overall"]["spec_z_trend_amplitude"] > 0.02
    assert m["overall"]["max_tomo_bias"] > 0.005 and 0 < m["overall"]["nz_ks"] < 1
    assert len(m["bias"]["phot_z_trend"]["mean_dz"]) == len(m["bias"]["phot_z_trend"]["edges"]) - 1
    assert "nz_ks" in result["comparison"]
