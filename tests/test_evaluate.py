"""Tests of `zpix evaluate` on constructed prediction directories with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from zpix.cli.evaluate import evaluate_command
from zpix.evaluation.evaluate import evaluate, load_truth, widest_removed
from zpix.evaluation.trends import binned_trend
from zpix.pdf import RedshiftGrid, gaussian_pdfs
from zpix.prediction.format import write_predictions

GRID = RedshiftGrid()
FAST = {"n_boot": 20}


def _zspec(n, seed):
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform(0.06, 0.3, n), 6), rng


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """1000 galaxies: Δz = +0.004 for 990 of them, 7 at Δz = +0.10 and 3 at Δz = −0.20; narrow PDFs."""
    n = 1000
    zs, rng = _zspec(n, 0)
    dz = np.full(n, 0.004)
    dz[:7] = 0.10
    dz[7:10] = -0.20
    # keep the outliers' wide PDFs well inside the grid, so their means are not truncated
    zs[:7] = rng.uniform(0.06, 0.15, 7)
    zs[7:10] = rng.uniform(0.34, 0.36, 3)
    mu = zs + dz * (1 + zs)
    p = gaussian_pdfs(mu, 0.004, GRID)
    # the outliers get the widest PDFs, so the 1% cut must remove exactly them
    p[:10] = gaussian_pdfs(mu[:10], 0.02, GRID)
    out = write_predictions(tmp_path_factory.mktemp("known") / "pred", np.arange(n), p, GRID, zs, method="cnn",
                            extra={"ebv": rng.uniform(0, 0.2, n)})
    return out, zs, mu


def test_known_bias_and_outliers(known):
    path, zs, mu = known
    res = evaluate(path, **FAST)
    m = res["methods"]["cnn"]["overall"]
    assert m["n"] == 1000
    dz_true = (mu - zs) / (1 + zs)
    assert m["bias"] == pytest.approx(dz_true.mean(), abs=2e-6)  # z_mean of a binned Gaussian ≈ its centre
    assert m["eta"] == pytest.approx(10 / 1000)
    assert m["eta_0.15"] == pytest.approx(3 / 1000)
    assert m["sigma_mad"] == pytest.approx(0.0, abs=2e-5)  # 99% of residuals identical
    assert m["nmad"] == pytest.approx(1.4826 * 0.004, rel=5e-3)  # median not subtracted
    assert m["mean_dz_raw"] == pytest.approx(np.mean(mu - zs), abs=2e-6)
    # removing the widest 1% removes exactly the 10 outliers
    cut = evaluate(path, quality_cuts=(0.01,), **FAST)["methods"]["cnn"]["quality_cuts"]["widest_1pct_removed"]
    assert cut["n"] == 990 and cut["eta"] == 0.0 and cut["eta_0.15"] == 0.0


def test_widest_removed_picks_the_widest():
    w = np.array([0.03, 0.01, 0.05, 0.02, 0.04, 0.06, 0.015, 0.035, 0.045, 0.025])
    keep = widest_removed(w, 0.2)
    assert keep.sum() == 8
    np.testing.assert_array_equal(np.flatnonzero(~keep), [2, 5])  # 0.05 and 0.06
    assert widest_removed(w, 0.0).all()
    with pytest.raises(ValueError):
        widest_removed(w, 1.0)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """3000 galaxies whose z_spec is a draw from their Gaussian PDF, and an over-confident copy."""
    n = 3000
    zs, rng = _zspec(n, 1)
    sig = rng.uniform(0.008, 0.02, n)
    mu = zs + rng.normal(0, sig)
    base = tmp_path_factory.mktemp("cal")
    ids = np.arange(n)
    r_mag = rng.uniform(14, 17.8, n)
    a = write_predictions(base / "cal", ids, gaussian_pdfs(mu, sig, GRID), GRID, zs, method="calibrated",
                          extra={"r_mag": r_mag})
    # second method on a shuffled subset, different id order, half-width PDFs, no extra columns
    sub = rng.permutation(n)[:2500]
    b = write_predictions(base / "narrow", ids[sub], gaussian_pdfs(mu[sub], sig[sub] / 2, GRID), GRID, zs[sub],
                          method="narrow")
    return a, b, zs, mu, sig


def test_calibrated_ensemble_has_flat_pit(calibrated):
    a, _, zs, mu, sig = calibrated
    res = evaluate(a, **FAST)["methods"]["calibrated"]
    d = np.array(res["pit_histogram"]["density"])
    assert d.size == 20
    assert np.all(np.abs(d - 1) < 0.3)  # 150 per bin: ±8% Poisson, 3.5σ
    o = res["overall"]
    assert o["pit_ks_pvalue"] > 0.01
    assert o["coverage68"] == pytest.approx(0.68, abs=0.03)
    assert o["coverage95"] == pytest.approx(0.95, abs=0.015)
    from zpix.evaluation.metrics import gaussian_crps

    assert o["crps"] == pytest.approx(np.mean(gaussian_crps(mu, sig, zs)), rel=0.01)


def test_compare_uses_shared_objects_and_detects_narrow_pdfs(calibrated, tmp_path):
    a, b, *_ = calibrated
    out = tmp_path / "m.json"
    res = evaluate(a, compare=[b], out=out, objects_out=tmp_path / "objects.parquet", **FAST)
    assert list(res["methods"]) == ["calibrated", "narrow"]
    assert res["n_common"] == 2500
    assert all(m["n_evaluated"] == 2500 for m in res["methods"].values())
    cal, nar = res["methods"]["calibrated"]["overall"], res["methods"]["narrow"]["overall"]
    # same point estimates -> same point metrics; only the PDF metrics differ
    assert nar["sigma_mad"] == pytest.approx(cal["sigma_mad"], rel=1e-9)
    assert nar["coverage68"] < 0.45 < cal["coverage68"]
    d = np.array(res["methods"]["narrow"]["pit_histogram"]["density"])
    assert d[0] > 2 and d[-1] > 2  # U-shaped
    assert res["comparison"]["sigma_mad"] == {"calibrated": cal["sigma_mad"], "narrow": nar["sigma_mad"]}
    # r_mag exists only in the first catalogue; the galaxies are the same, so both get the trend
    assert "r_mag" in res["methods"]["narrow"]["trends"]
    # strict JSON on disk
    text = out.read_text()
    assert "NaN" not in text
    assert json.loads(text)["n_common"] == 2500
    objs = pd.read_parquet(tmp_path / "objects.parquet")
    assert len(objs) == 5000 and set(objs["method"]) == {"calibrated", "narrow"}
    # rows line up across methods: same ids in the same order
    np.testing.assert_array_equal(objs.loc[objs.method == "calibrated", "id"].to_numpy(),
                                  objs.loc[objs.method == "narrow", "id"].to_numpy())


def test_against_qp_metrics(calibrated, tmp_path):
    """σ_MAD and PIT agree with qp's own implementations on the same files."""
    import qp
    from qp.metrics.pit import PIT
    from qp.metrics.point_estimate_metric_classes import PointSigmaMAD

    a, *_ = calibrated
    res = evaluate(a, objects_out=tmp_path / "o.parquet", **FAST)
    objs = pd.read_parquet(tmp_path / "o.parquet").sort_values("row")
    cat = pd.read_parquet(a / "catalog.parquet")
    assert res["methods"]["calibrated"]["overall"]["sigma_mad"] == pytest.approx(
        PointSigmaMAD().evaluate(cat["z_mean"].to_numpy(), cat["z_spec"].to_numpy()), rel=1e-12)
    ens = qp.read(str(a / "pdfs.hdf5"))
    q = PIT(ens, cat["z_spec"].to_numpy())
    np.testing.assert_allclose(objs["pit"].to_numpy(), q.pit_samps, atol=1e-9)
    assert res["methods"]["calibrated"]["overall"]["pit_ks"] == pytest.approx(q.evaluate_PIT_KS().statistic,
                                                                            rel=1e-9)


def test_trend_recovers_a_known_reddening_bias(tmp_path):
    n = 4000
    zs, rng = _zspec(n, 2)
    ebv = rng.uniform(0, 0.3, n)
    dz = 0.05 * ebv + rng.normal(0, 0.01, n)
    mu = zs + dz * (1 + zs)
    path = write_predictions(tmp_path / "p", np.arange(n), gaussian_pdfs(mu, 0.01, GRID), GRID, zs,
                             extra={"ebv": ebv})
    t = evaluate(path, n_boot=100)["methods"]["p"]["trends"]["ebv"]
    x = np.array(t["mean_x"], dtype=float)
    y = np.array(t["mean_dz"], dtype=float)
    err = np.array(t["mean_dz_err"], dtype=float)
    assert sum(t["n"]) + t["n_outside"] == n
    ok = np.isfinite(y)
    assert ok.sum() >= 10
    # z_mean of binned PDFs differs from mu by < 1e-5, far below the trend
    np.testing.assert_allclose(y[ok], 0.05 * x[ok], atol=4 * np.nanmax(err) + 1e-4)
    # bootstrap error of a mean ≈ σ/√n
    n_bin = np.array(t["n"])[ok]
    np.testing.assert_allclose(err[ok], 0.01 / np.sqrt(n_bin), rtol=0.35)


def test_binned_trend_small_bins_are_nan():
    t = binned_trend(np.array([0.1, 0.2, 0.3, 0.9]), np.zeros(4), edges=np.array([0.0, 0.5, 1.0]), min_count=2)
    assert t["n"] == [3, 1]
    assert t["mean_dz"][0] == 0.0 and np.isnan(t["mean_dz"][1])


def test_nz_requirement_flags(tmp_path):
    n = 2000
    zs, _ = _zspec(n, 3)
    p_good = gaussian_pdfs(zs, 0.003, GRID)
    p_bad = gaussian_pdfs(zs + 0.005, 0.003, GRID)
    a = write_predictions(tmp_path / "good", np.arange(n), p_good, GRID, zs, method="good")
    b = write_predictions(tmp_path / "bad", np.arange(n), p_bad, GRID, zs, method="bad")
    res = evaluate(a, compare=[b], n_tomo=4, **FAST)
    good, bad = res["methods"]["good"]["nz"], res["methods"]["bad"]["nz"]
    assert len(good["tomographic"]) == 4
    assert sum(t["n"] for t in good["tomographic"]) == n
    assert good["all_bins_meet_requirement"] is True
    assert bad["all_bins_meet_requirement"] is False
    for t in bad["tomographic"]:
        assert t["delta_mean_z"] == pytest.approx(0.005, abs=3e-4)
        assert t["meets_requirement"] is False
    assert abs(good["overall"]["delta_mean_z"]) < 1e-4
    # the stacked N(z) and the spec-z histogram are densities on the grid
    assert np.sum(good["overall"]["nz_stack"]) * GRID.width == pytest.approx(1.0)
    assert np.sum(good["overall"]["nz_spec"]) * GRID.width == pytest.approx(1.0)
    # explicit edges
    res2 = evaluate(a, tomo_edges=[0.05, 0.15, 0.35], **FAST)
    assert [t["z_phot_range"] for t in res2["methods"]["good"]["nz"]["tomographic"]] == [[0.05, 0.15],
                                                                                           [0.15, 0.35]]


def test_truth_table_supplies_z_spec_and_columns(tmp_path):
    n = 300
    zs, rng = _zspec(n, 4)
    ids = np.array([f"g{i}" for i in range(n)])
    path = write_predictions(tmp_path / "p", ids, gaussian_pdfs(zs, 0.01, GRID), GRID, None, method="cnn")
    with pytest.raises(ValueError, match="no object has a spectroscopic redshift"):
        evaluate(path, **FAST)
    truth = pd.DataFrame({"id": ids[::-1][:200], "z_spec": zs[::-1][:200], "ebv": rng.uniform(0, 0.1, 200)})
    truth.to_parquet(tmp_path / "truth.parquet")
    res = evaluate(path, truth=tmp_path / "truth.parquet", **FAST)
    assert res["methods"]["cnn"]["n_evaluated"] == 200
    assert "ebv" in res["methods"]["cnn"]["trends"]
    assert res["methods"]["cnn"]["overall"]["bias"] == pytest.approx(0.0, abs=1e-5)
    truth.drop(columns=["z_spec"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['z_spec'\]"):
        load_truth(tmp_path / "bad.csv")


def test_truth_from_a_cube_store(tmp_path):
    import h5py

    n = 200
    zs, _ = _zspec(n, 5)
    path = write_predictions(tmp_path / "p", np.arange(n), gaussian_pdfs(zs, 0.01, GRID), GRID, None)
    with h5py.File(tmp_path / "cubes.h5", "w") as f:
        f["images"] = np.zeros((n, 3, 4, 4), np.float32)
        f["ids"] = np.arange(n)
        f["z_spec"] = zs
        f["ebv"] = np.linspace(0, 0.2, n).astype(np.float32)
        f.attrs["bands"] = ["g", "r", "i"]
    res = evaluate(path, truth=tmp_path / "cubes.h5", **FAST)
    assert res["methods"]["p"]["n_evaluated"] == n
    assert "ebv" in res["methods"]["p"]["trends"]


def test_cli(calibrated, tmp_path):
    a, b, *_ = calibrated
    runner = CliRunner()
    out = tmp_path / "metrics.json"
    r = runner.invoke(evaluate_command, [str(a), "--compare", str(b), "--out", str(out), "--n-boot", "10",
                                         "--outlier-threshold", "0.03", "--quality-cut", "0.3"])
    assert r.exit_code == 0, r.output
    assert "sigma_mad" in r.output and "narrow" in r.output
    res = json.loads(out.read_text())
    assert "eta_0.03" in res["methods"]["calibrated"]["overall"]
    assert list(res["methods"]["calibrated"]["quality_cuts"]) == ["widest_30pct_removed"]
    # a catalogue file inside the directory is accepted as the directory
    r = runner.invoke(evaluate_command, [str(a / "catalog.parquet"), "--out", str(out), "--n-boot", "5"])
    assert r.exit_code == 0, r.output
    # an incomplete directory: one clear line, no traceback
    bad = tmp_path / "bad"
    bad.mkdir()
    r = runner.invoke(evaluate_command, [str(bad), "--out", str(out)])
    assert r.exit_code == 1
    assert "missing meta.yaml, catalog.parquet, pdfs.hdf5" in r.output
    assert "Traceback" not in r.output
