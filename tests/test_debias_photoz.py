"""Lin et al. step 4, calibration against photo-z: a known shifted model is calibrated back."""

from __future__ import annotations

import json

import numpy as np

from zpix.calibration import Calibration, get_calibrator
from zpix.calibration.photoz import shift_pdfs
from zpix.evaluation.nz import tomographic_edges, tomographic_index
from zpix.pdf import RedshiftGrid, gaussian_pdfs, pdf_mean


def _photoz_known_shift(n, rng):
    z_spec = rng.uniform(0.05, 0.3, n)
    z_phot = z_spec + 0.01 + 0.004 * np.sin(20 * z_spec) + rng.normal(0, 0.01, n)
    grid = RedshiftGrid(180, 0.0, 0.4)
    return grid, gaussian_pdfs(z_phot, 0.015, grid), z_spec


def test_photoz_calibration_removes_a_known_shift_on_held_out_objects():
    rng = np.random.default_rng(5)
    grid, p_fit, zs_fit = _photoz_known_shift(6000, rng)
    _, p_test, zs_test = _photoz_known_shift(6000, rng)
    chain = Calibration(grid)
    chain.fit_step("photoz", probs=p_fit, z_spec=zs_fit)
    out = chain(p_test)
    np.testing.assert_allclose(out.sum(1), 1, atol=1e-9)

    def max_tomo(p):
        zp = pdf_mean(p, grid)
        idx = tomographic_index(zp, tomographic_edges(zp, 5))
        return max(abs(zp[idx == j].mean() - zs_test[idx == j].mean()) for j in range(5))

    assert max_tomo(p_test) > 0.006
    assert max_tomo(out) < 0.002
    # the stored chain reapplies identically
    again = Calibration.from_dict(json.loads(json.dumps(chain.to_dict())))
    np.testing.assert_allclose(again(p_test), out)
    assert get_calibrator("photoz").__name__ == "PhotoZCalibration"


def test_shift_pdfs_moves_the_mean_by_delta():
    grid = RedshiftGrid(180, 0.0, 0.4)
    p = gaussian_pdfs(np.array([0.1, 0.2]), 0.02, grid)
    out = shift_pdfs(p, grid, np.array([0.0133, -0.021]))
    np.testing.assert_allclose(pdf_mean(out, grid) - pdf_mean(p, grid), [0.0133, -0.021], atol=2e-5)


def test_photoz_bin_size_chosen_by_cross_validation_prefers_pooling_pure_noise():
    """With no residual trend at fixed photo-z (z_spec = z_phot + noise, so E[z_spec | z_phot] = z_phot),
    every bin mean is noise: cross-validation must pick the largest bin size offered, and the chain must
    record the choice and its scores."""
    from zpix.calibration.photoz import PhotoZCalibration

    rng = np.random.default_rng(11)
    grid = RedshiftGrid(180, 0.0, 0.4)
    z_phot = rng.uniform(0.05, 0.3, 3000)
    z_spec = z_phot + rng.normal(0, 0.03, z_phot.size)
    p = gaussian_pdfs(z_phot, 0.02, grid)
    chain = Calibration(grid)
    step = chain.fit_step(PhotoZCalibration(min_per_bin_grid=[10, 3000]), probs=p, z_spec=z_spec)
    d = step.to_dict()
    assert step.calibrator.min_per_bin == 3000
    assert json.loads(json.dumps(chain.to_dict()))["steps"][0] == d
    again = Calibration.from_dict(json.loads(json.dumps(chain.to_dict())))
    assert again.steps[0].calibrator.cv_scores == step.calibrator.cv_scores
    assert step.calibrator.cv_scores[10] > step.calibrator.cv_scores[3000]


def test_photoz_bin_size_chosen_by_cross_validation_follows_a_real_trend():
    """A steep residual trend needs resolution: the one-bin candidate (a constant shift) loses."""
    from zpix.calibration.photoz import PhotoZCalibration

    rng = np.random.default_rng(12)
    grid = RedshiftGrid(180, 0.0, 0.4)
    z_spec = rng.uniform(0.05, 0.3, 4000)
    z_phot = 0.17 + 0.5 * (z_spec - 0.17) + rng.normal(0, 0.005, z_spec.size)  # strong pull to the middle
    cal = PhotoZCalibration(min_per_bin_grid=[50, 4000])
    Calibration(grid).fit_step(cal, probs=gaussian_pdfs(z_phot, 0.01, grid), z_spec=z_spec)
    assert cal.min_per_bin == 50
