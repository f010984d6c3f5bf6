"""Tests of zpix.pdf: grid, point estimates, quantiles and qp conversion on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from zpix.pdf import (
    RedshiftGrid,
    cdf_at,
    credible_interval,
    from_qp,
    gaussian_pdfs,
    normalize,
    pdf_mean,
    pdf_median,
    pdf_mode,
    pdf_quantiles,
    point_estimates,
    to_qp,
)

GRID = RedshiftGrid()


def test_grid_defaults_are_pasquet():
    assert GRID.n_bins == 180
    assert GRID.edges.shape == (181,)
    assert GRID.centers.shape == (180,)
    assert GRID.width == pytest.approx(0.4 / 180)
    assert GRID.edges[0] == 0.0 and GRID.edges[-1] == pytest.approx(0.4)
    assert GRID.centers[0] == pytest.approx(0.2 / 180)


def test_grid_labels_edges_and_clipping():
    g = RedshiftGrid(n_bins=4, z_min=0.0, z_max=0.4)
    z = np.array([-0.1, 0.0, 0.05, 0.1, 0.0999999, 0.3999, 0.4, 0.9])
    np.testing.assert_array_equal(g.labels(z), [0, 0, 0, 1, 0, 3, 3, 3])
    assert g.labels(z).dtype == np.int64
    with pytest.raises(ValueError, match="NaN"):
        g.labels(np.array([0.1, np.nan]))


def test_grid_dict_roundtrip_and_validation():
    g = RedshiftGrid(n_bins=90, z_min=0.01, z_max=1.2)
    assert RedshiftGrid.from_dict(g.to_dict()) == g
    with pytest.raises(ValueError):
        RedshiftGrid(n_bins=0)
    with pytest.raises(ValueError):
        RedshiftGrid(z_min=0.5, z_max=0.4)
    with pytest.raises(ValueError, match="unknown"):
        RedshiftGrid.from_dict({"n_bins": 10, "zmax": 1.0})


def test_normalize_and_refusals():
    p = np.array([[1.0, 1.0, 2.0], [0.0, 3.0, 0.0]])
    np.testing.assert_allclose(normalize(p), [[0.25, 0.25, 0.5], [0, 1, 0]])
    with pytest.raises(ValueError, match="first rows: \\[1\\]"):
        normalize(np.array([[1.0, 0, 0], [0.0, 0, 0]]))
    with pytest.raises(ValueError):
        normalize(np.array([[1.0, -0.1, 0.1]]))
    with pytest.raises(ValueError):
        normalize(np.array([[1.0, np.nan, 0.1]]))


def test_point_estimates_of_a_two_bin_pdf():
    # 4 bins of width 0.1; mass 0.25 in bin 0, 0.75 in bin 2
    g = RedshiftGrid(n_bins=4, z_min=0.0, z_max=0.4)
    p = np.array([[0.25, 0.0, 0.75, 0.0]])
    assert pdf_mean(p, g)[0] == pytest.approx(0.25 * 0.05 + 0.75 * 0.25)
    assert pdf_mode(p, g)[0] == pytest.approx(0.25)
    # CDF: 0 at 0, 0.25 at 0.1, 0.25 at 0.2, 1 at 0.3.  Median: 0.2 + (0.5-0.25)/0.75*0.1
    assert pdf_median(p, g)[0] == pytest.approx(0.2 + 0.1 / 3)
    # q=0.25 falls on the flat part: the first z reaching it from the right side of the gap
    q = pdf_quantiles(p, g, np.array([0.0, 0.1, 0.25, 1.0]))[0]
    np.testing.assert_allclose(q, [0.0, 0.04, 0.2, 0.3], atol=1e-12)
    lo, hi = credible_interval(p, g, 0.5)
    assert lo[0] == pytest.approx(0.2)  # CDF = 0.25 on all of [0.1, 0.2]: the right end, as above
    assert hi[0] == pytest.approx(0.2 + 0.1 * (0.75 - 0.25) / 0.75)


def test_quantiles_match_gaussian_and_are_monotone():
    mu = np.array([0.1, 0.2, 0.25])
    sig = np.array([0.01, 0.02, 0.03])
    p = gaussian_pdfs(mu, sig, GRID)
    qs = np.array([0.05, 0.16, 0.5, 0.84, 0.95])
    z = pdf_quantiles(p, GRID, qs)
    expect = stats.norm.ppf(qs[None, :], mu[:, None], sig[:, None])
    # Linear interpolation of a Gaussian CDF between edges 2.2e-3 apart: error << a bin
    np.testing.assert_allclose(z, expect, atol=2e-4)
    assert np.all(np.diff(z, axis=1) > 0)
    est = point_estimates(p, GRID)
    assert set(est) == {"z_mean", "z_median", "z_mode", "z_lo68", "z_hi68", "width68"}
    np.testing.assert_allclose(est["z_mean"], mu, atol=1e-6)
    # each end within the quantile tolerance above
    np.testing.assert_allclose(est["width68"], 2 * sig * stats.norm.ppf(0.84), atol=3e-4)
    np.testing.assert_allclose(est["width68"], est["z_hi68"] - est["z_lo68"])


def test_quantiles_are_chunk_independent():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(180, 0.3), size=50)
    whole = pdf_quantiles(p, GRID, np.array([0.16, 0.5, 0.84]))
    parts = np.vstack([pdf_quantiles(p[i : i + 7], GRID, np.array([0.16, 0.5, 0.84])) for i in range(0, 50, 7)])
    np.testing.assert_array_equal(whole, parts)
    # the quantile really inverts the CDF
    np.testing.assert_allclose(cdf_at(p, GRID, whole[:, 1]), 0.5, atol=1e-12)


def test_gaussian_pdfs_mass_and_truncation():
    p = gaussian_pdfs(np.array([0.2, 0.0, 5.0]), 0.01, GRID)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    # a Gaussian far beyond the grid ends up in the last bin instead of producing NaN
    assert p[2, -1] == 1.0
    # centred on an edge at 0: half of it is folded back in by the truncation
    assert pdf_median(p[1:2], GRID)[0] == pytest.approx(stats.norm.ppf(0.75, 0, 0.01), abs=3e-4)
    with pytest.raises(ValueError):
        gaussian_pdfs(np.array([0.1]), 0.0, GRID)


def test_cdf_at_ends():
    p = gaussian_pdfs(np.array([0.2, 0.2, 0.2]), 0.02, GRID)
    np.testing.assert_allclose(cdf_at(p, GRID, np.array([-1.0, 0.2, 1.0])), [0.0, 0.5, 1.0], atol=1e-12)


def test_qp_roundtrip_hist_and_rebinning():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(180), size=20)
    ens = to_qp(p, GRID, ancil={"id": np.arange(20)})
    assert ens.npdf == 20
    # qp's own CDF at the edges agrees with ours
    np.testing.assert_allclose(ens.cdf(GRID.edges[None, 60])[:, 0], p[:, :60].sum(axis=1), atol=1e-12)
    back, g = from_qp(ens)
    assert g == GRID
    np.testing.assert_allclose(back, p, atol=1e-14)
    # onto a coarser grid: pairs of bins add up
    coarse = RedshiftGrid(n_bins=90, z_min=0.0, z_max=0.4)
    p2, g2 = from_qp(ens, coarse)
    assert g2 == coarse
    np.testing.assert_allclose(p2, p.reshape(20, 90, 2).sum(axis=2), atol=1e-12)


def test_from_qp_non_hist_needs_grid():
    import qp

    ens = qp.Ensemble(qp.stats.norm, data={"loc": np.array([[0.1], [0.2]]), "scale": np.array([[0.01], [0.02]])})
    with pytest.raises(ValueError, match="grid"):
        from_qp(ens)
    p, _ = from_qp(ens, GRID)
    np.testing.assert_allclose(p, gaussian_pdfs(np.array([0.1, 0.2]), np.array([0.01, 0.02]), GRID), atol=1e-12)
