"""Per-object quality scores and flags: known values, determinism, save/load, and that they find outliers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from zpix.pdf import RedshiftGrid, gaussian_pdfs
from zpix.quality import FLAG_BITS, QualityModel, fit_quality, n_modes, outlier_probability

GRID = RedshiftGrid(180, 0.0, 0.4)


def test_outlier_probability_of_a_gaussian():
    # window 0.05 (1 + 0.2) = 0.06 = 3 sigma either side: 1 - 0.9973
    p = gaussian_pdfs(np.array([0.2]), 0.02, RedshiftGrid(4000, 0.0, 0.4))
    assert outlier_probability(p, RedshiftGrid(4000, 0.0, 0.4))[0] == pytest.approx(0.0027, abs=2e-4)


def test_n_modes_counts_separate_peaks():
    one = gaussian_pdfs(np.array([0.1]), 0.01, GRID)
    two = 0.6 * one + 0.4 * gaussian_pdfs(np.array([0.3]), 0.01, GRID)
    faint = 0.97 * one + 0.03 * gaussian_pdfs(np.array([0.3]), 0.01, GRID)  # below 10% of the main peak
    assert n_modes(np.vstack([one, two, faint])).tolist() == [1, 2, 1]


def _population(n: int, seed: int):
    """Objects whose learned features sit near the training cloud or far from it; far ones are outliers."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.05, 0.35, n)
    far = rng.random(n) < 0.1
    feats = rng.normal(0, 1, (n, 8)) + far[:, None] * 4.0
    zphot = z + rng.normal(0, 0.01, n) + far * rng.choice([-0.12, 0.12], n)
    # the PDFs do not know: same width for all, so only the features can tell
    probs = gaussian_pdfs(np.clip(zphot, 0.01, 0.39), 0.012, GRID)
    members = zphot[None, :] + rng.normal(0, 0.002, (3, n))
    return probs, z, feats, members, far


def test_quality_finds_what_the_pdf_width_cannot():
    probs, z, feats, members, _ = _population(3000, seed=0)
    train_feats = np.random.default_rng(1).normal(0, 1, (2000, 8))
    model = fit_quality(probs, z, GRID, features=feats, train_features=train_feats, member_zmean=members)
    assert model.score_names == ["p_outlier_pdf", "log_width68", "n_modes", "ens_std", "log_feat_knn"]
    tp, tz, tf, tm, far = _population(3000, seed=2)
    cols = model.columns(tp, features=tf, member_zmean=tm)
    outlier = np.abs(tp @ GRID.centers - tz) / (1 + tz) > 0.05
    assert roc_auc_score(outlier, cols["quality"]) > 0.95
    assert roc_auc_score(outlier, cols["feat_knn"]) > 0.95
    ood = (cols["flag"] & FLAG_BITS["ood"]) > 0
    assert ood[far].mean() > 0.9 and ood[~far].mean() < 0.05
    risky = (cols["flag"] & FLAG_BITS["risky"]) > 0
    assert risky.mean() == pytest.approx(0.10, abs=0.03)  # threshold: validation 90th percentile


def test_flags_are_deterministic_and_survive_save_load(tmp_path):
    probs, z, feats, members, _ = _population(1500, seed=3)
    train_feats = np.random.default_rng(4).normal(0, 1, (1000, 8))
    a = fit_quality(probs, z, GRID, features=feats, train_features=train_feats, member_zmean=members)
    b = fit_quality(probs, z, GRID, features=feats, train_features=train_feats, member_zmean=members)
    loaded = QualityModel.load(a.save(tmp_path / "quality.npz"))
    ca = a.columns(probs, features=feats, member_zmean=members)
    for other in (b, loaded):
        co = other.columns(probs, features=feats, member_zmean=members)
        assert set(co) == set(ca)
        for k in ca:
            # stored features are float32: distances agree to float32 precision, flags exactly
            np.testing.assert_allclose(co[k], ca[k], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(co["flag"], ca["flag"])


def test_missing_scores_give_a_clear_error():
    probs, z, feats, members, _ = _population(500, seed=5)
    model = fit_quality(probs, z, GRID, member_zmean=members)
    with pytest.raises(ValueError, match="ens_std"):
        model.columns(probs)  # fitted on an ensemble, applied without members


def test_evaluate_reports_cuts_by_the_quality_column(tmp_path):
    from zpix.evaluation.evaluate import evaluate
    from zpix.prediction.format import write_predictions

    rng = np.random.default_rng(6)
    n = 2000
    zs = rng.uniform(0.05, 0.35, n)
    bad = rng.random(n) < 0.08
    zp = zs + rng.normal(0, 0.01, n) + bad * 0.15
    # the risk score knows the outliers, the widths do not
    quality = np.where(bad, 0.9, 0.1) + rng.uniform(0, 0.05, n)
    path = write_predictions(tmp_path / "p", np.arange(n), gaussian_pdfs(np.clip(zp, 0, 0.39), 0.012, GRID), GRID,
                             zs, extra={"quality": quality}, method="cnn")
    m = evaluate(path, n_boot=10)["methods"]["cnn"]
    assert set(m["flag_cuts"]) == {"worst_flagged_5pct_removed", "worst_flagged_10pct_removed",
                                   "worst_flagged_20pct_removed"}
    assert m["overall"]["eta"] > 0.07
    assert m["flag_cuts"]["worst_flagged_10pct_removed"]["eta"] < 0.005
    assert m["flag_cuts"]["worst_flagged_10pct_removed"]["n"] == 1800
    assert m["quality_cuts"]["widest_10pct_removed"]["eta"] > 0.05
