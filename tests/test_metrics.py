"""Tests of zpix.evaluation.metrics against hand-computed values, closed forms, scipy and qp."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from zpix.evaluation import metrics as M
from zpix.pdf import RedshiftGrid, gaussian_pdfs

GRID = RedshiftGrid()


def test_delta_z_and_bias_known_values():
    zs = np.array([0.1, 0.2, 0.3])
    zp = np.array([0.111, 0.2, 0.287])
    np.testing.assert_allclose(M.delta_z(zp, zs), [0.011 / 1.1, 0.0, -0.013 / 1.3])
    assert M.bias(M.delta_z(zp, zs)) == pytest.approx((0.01 + 0 - 0.01) / 3, abs=1e-15)
    assert M.mean_delta_z_raw(zp, zs) == pytest.approx((0.011 - 0.013) / 3)
    # a constant shift of Δz gives exactly that bias
    zs = np.linspace(0.05, 0.35, 101)
    zp = zs + 0.003 * (1 + zs)
    assert M.bias(M.delta_z(zp, zs)) == pytest.approx(0.003)
    assert M.sigma_mad(M.delta_z(zp, zs)) == pytest.approx(0.0, abs=1e-12)
    assert M.nmad(M.delta_z(zp, zs)) == pytest.approx(1.4826 * 0.003)


def test_sigma_mad_of_a_known_sample():
    dz = np.array([-0.03, -0.01, 0.0, 0.01, 0.02, 0.05, 0.2])
    # median 0.01; |dz - 0.01| = .04 .02 .01 0 .01 .04 .19 -> median 0.02
    assert M.sigma_mad(dz) == pytest.approx(1.4826 * 0.02)
    assert M.smad(dz) == M.sigma_mad(dz)
    # NMAD (Ilbert 2006) without the median: |dz| -> median 0.02 as well; shift to separate them
    assert M.nmad(dz + 0.01) == pytest.approx(1.4826 * 0.02)
    assert M.sigma_mad(dz + 0.01) == pytest.approx(1.4826 * 0.02)
    # Gaussian sample: σ_MAD estimates σ
    rng = np.random.default_rng(0)
    assert M.sigma_mad(rng.normal(0.001, 0.01, 200_000)) == pytest.approx(0.01, rel=0.01)


def test_sigma_mad_matches_qp():
    from qp.metrics.point_estimate_metric_classes import PointSigmaMAD

    rng = np.random.default_rng(3)
    zs = rng.uniform(0.02, 0.35, 5000)
    zp = zs + rng.normal(0.002, 0.015, zs.size) * (1 + zs)
    assert M.sigma_mad(M.delta_z(zp, zs)) == pytest.approx(PointSigmaMAD().evaluate(zp, zs), rel=1e-12)


def test_outlier_fraction_known_count():
    dz = np.array([0.0, 0.049, -0.049, 0.051, -0.2, 0.16, 0.01, 0.0, 0.0, 0.0])
    assert M.outlier_fraction(dz) == pytest.approx(3 / 10)
    assert M.outlier_fraction(dz, 0.15) == pytest.approx(2 / 10)
    with pytest.raises(ValueError):
        M.outlier_fraction(dz, 0.0)


def test_kids_metrics():
    zs = np.array([0.1, 0.2, 0.3, 0.4])
    zp = np.array([0.12, 0.18, 0.33, 0.4])
    assert M.mse(zp, zs) == pytest.approx((0.02**2 + 0.02**2 + 0.03**2) / 4)
    assert M.mae(zp, zs) == pytest.approx(0.07 / 4)
    ss_tot = np.sum((zs - 0.25) ** 2)
    assert M.r2(zp, zs) == pytest.approx(1 - (0.02**2 * 2 + 0.03**2) / ss_tot)
    assert M.r2(zs, zs) == 1.0
    assert M.sigma_std(M.delta_z(zp, zs)) == pytest.approx(np.std((zp - zs) / (1 + zs)))
    out = M.point_metrics(zp, zs)
    assert {"n", "bias", "mean_dz_raw", "sigma_std", "sigma_mad", "nmad", "eta_0.05", "eta_0.15"} <= set(out)
    assert out["n"] == 4


def test_nan_is_refused_with_a_message():
    with pytest.raises(ValueError, match="z_spec"):
        M.delta_z(np.array([0.1, 0.2]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="values"):
        M.delta_z(np.array([0.1, 0.2]), np.array([0.1]))


# ---------------------------------------------------------------------------- CRPS and PIT


def test_delta_pdf_at_truth_gives_crps_zero_and_pit_half():
    k = np.array([10, 90, 150])
    p = np.zeros((3, 180))
    p[np.arange(3), k] = 1.0
    zs = GRID.centers[k]
    np.testing.assert_allclose(M.pit(p, GRID, zs), 0.5, atol=1e-12)
    c = M.crps(p, GRID, zs)
    # all the mass in one bin spreads the CDF over that bin: CRPS = w (t³ + (1 − t)³)/3 = w/12
    np.testing.assert_allclose(c, GRID.width / 12, rtol=1e-9)
    assert np.all(c < 2e-4)  # ≈ 0 compared with Pasquet's 0.0067
    # off-centre inside the bin, t = 0.2
    zs2 = GRID.edges[k] + 0.2 * GRID.width
    np.testing.assert_allclose(M.crps(p, GRID, zs2), GRID.width * (0.2**3 + 0.8**3) / 3, rtol=1e-9)


def test_crps_gaussian_closed_form():
    mu = np.array([0.1, 0.2, 0.2, 0.25, 0.3])
    sig = np.array([0.01, 0.02, 0.02, 0.03, 0.015])
    zs = np.array([0.1, 0.21, 0.15, 0.33, 0.29])
    expect = M.gaussian_crps(mu, sig, zs)
    # Binning changes the distribution at order (bin width / σ)²: 0.4% for σ = 0.01 on Pasquet's grid ...
    p = gaussian_pdfs(mu, sig, GRID)
    np.testing.assert_allclose(M.crps(p, GRID, zs), expect, rtol=6e-3)
    # ... and the difference vanishes as the bins shrink (10x finer bins: 100x closer)
    fine = RedshiftGrid(n_bins=1800, z_min=0.0, z_max=0.4)
    np.testing.assert_allclose(M.crps(gaussian_pdfs(mu, sig, fine), fine, zs), expect, rtol=1e-4)


def test_crps_exact_against_fine_numerical_integration():
    rng = np.random.default_rng(4)
    g = RedshiftGrid(n_bins=12, z_min=0.1, z_max=0.5)
    p = rng.dirichlet(np.full(12, 0.5), size=6)
    zs = np.array([0.0, 0.1, 0.237, 0.33333, 0.5, 0.7])  # below, on and above the grid
    z = np.linspace(-0.1, 0.8, 900_001)
    c_edges = np.concatenate([np.zeros((6, 1)), np.cumsum(p, axis=1)], axis=1)
    for i in range(6):
        cdf = np.interp(z, g.edges, c_edges[i])
        integrand = (cdf - (z >= zs[i])) ** 2
        num = np.trapezoid(integrand, z)
        assert M.crps(p[i : i + 1], g, zs[i : i + 1])[0] == pytest.approx(num, rel=1e-5, abs=1e-8)


def test_crps_far_outside_grid_adds_distance():
    p = gaussian_pdfs(np.array([0.2]), 0.01, GRID)
    base = M.crps(p, GRID, np.array([0.4]))[0]
    assert M.crps(p, GRID, np.array([0.5]))[0] == pytest.approx(base + 0.1)


def test_pit_of_calibrated_gaussians_is_uniform_and_matches_qp():
    from qp.metrics.pit import PIT

    from zpix.pdf import to_qp

    rng = np.random.default_rng(5)
    n = 4000
    zs = rng.uniform(0.08, 0.32, n)
    sig = rng.uniform(0.01, 0.02, n)
    mu = zs + rng.normal(0, sig)  # the truth is a draw from each PDF: calibrated
    p = gaussian_pdfs(mu, sig, GRID)
    u = M.pit(p, GRID, zs)
    assert M.pit_ks(u)["pvalue"] > 0.01
    hist = M.pit_histogram(u, 10)
    assert np.all(np.abs(np.array(hist["density"]) - 1) < 0.2)
    assert M.interval_coverage(u, 0.68) == pytest.approx(0.68, abs=0.03)
    # qp's PIT on the same ensemble
    q = PIT(to_qp(p, GRID), zs)
    np.testing.assert_allclose(u, q.pit_samps, atol=1e-10)
    assert M.pit_ks(u)["statistic"] == pytest.approx(q.evaluate_PIT_KS().statistic, rel=1e-9)
    assert M.pit_cvm(u)["statistic"] == pytest.approx(q.evaluate_PIT_CvM().statistic, rel=1e-9)


def test_pit_detects_overconfident_pdfs():
    rng = np.random.default_rng(6)
    zs = rng.uniform(0.1, 0.3, 3000)
    mu = zs + rng.normal(0, 0.02, zs.size)
    u = M.pit(gaussian_pdfs(mu, 0.01, GRID), GRID, zs)  # PDFs half as wide as the scatter
    d = np.array(M.pit_histogram(u, 10)["density"])
    assert d[0] > 1.5 and d[-1] > 1.5 and d[5] < 0.8  # U-shaped, as Pasquet Sect. 4.3 says
    assert M.interval_coverage(u, 0.68) < 0.5
    assert M.pit_ks(u)["pvalue"] < 1e-6


def test_pit_ks_cvm_match_scipy():
    u = np.random.default_rng(7).beta(1.3, 1.0, 500)
    ks = stats.kstest(u, "uniform")
    assert M.pit_ks(u)["statistic"] == pytest.approx(ks.statistic, rel=1e-12)
    assert M.pit_ks(u)["pvalue"] == pytest.approx(ks.pvalue, rel=1e-6)
    cvm = stats.cramervonmises(u, "uniform")
    assert M.pit_cvm(u)["statistic"] == pytest.approx(cvm.statistic, rel=1e-12)
    assert M.pit_cvm(u)["distance"] == pytest.approx(cvm.statistic / 500, rel=1e-12)


def test_summary_keys_and_values():
    rng = np.random.default_rng(8)
    zs = rng.uniform(0.05, 0.3, 1000)
    mu = zs + 0.01 * rng.standard_normal(1000)
    p = gaussian_pdfs(mu, 0.01, GRID)
    s = M.summary(mu, zs, p, GRID)
    for key in ("bias", "sigma_mad", "eta", "crps", "pit_ks", "coverage68", "coverage95", "r2", "mse"):
        assert key in s
    assert s["eta"] == s["eta_0.05"]
    assert s["crps"] == pytest.approx(np.mean(M.crps(p, GRID, zs)))
    with pytest.raises(ValueError, match="RedshiftGrid"):
        M.summary(mu, zs, p)
