"""Post-hoc calibration: each method flattens the PIT of a deliberately mis-calibrated synthetic model,
the fitted map survives save/load, and `zpix calibrate` writes a new calibrated run applied by predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_toy_cubes
from scipy.stats import kstest

from zpix.calibration import Calibration, available_calibrators, fit_calibration, load_calibration
from zpix.calibration.temperature import temper
from zpix.pdf import RedshiftGrid, cdf_at, gaussian_pdfs

GRID = RedshiftGrid(180, 0.0, 0.4)


def synthetic(n: int, width_factor: float, seed: int, tails: bool = False):
    """Gaussian PDFs of width ``width_factor`` x the true scatter 0.015 (< 1: over-confident)."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.05, 0.35, n)
    err = rng.standard_t(3, n) * 0.015 / np.sqrt(3) if tails else rng.normal(0, 0.015, n)
    return gaussian_pdfs(z + err, 0.015 * width_factor, GRID), z


def pit_ks(probs, z) -> float:
    return float(kstest(cdf_at(probs, GRID, z), "uniform").statistic)


def test_builtin_methods_are_registered():
    assert {"temperature", "pit", "pit-local", "pit-width", "student-t", "pit-affine", "pit-beta"} <= set(
        available_calibrators())


@pytest.mark.parametrize("method", ["temperature", "pit", "pit-local", "pit-width", "student-t", "pit-affine",
                                    "pit-beta"])
@pytest.mark.parametrize("width_factor", [0.5, 2.0])
def test_miscalibrated_model_gets_a_flat_pit(method, width_factor):
    val_p, val_z = synthetic(10_000, width_factor, seed=1)
    test_p, test_z = synthetic(10_000, width_factor, seed=2)
    assert pit_ks(test_p, test_z) > 0.1  # really mis-calibrated before
    chain = fit_calibration(val_p, val_z, GRID, [method])
    after = chain(test_p)
    np.testing.assert_allclose(after.sum(1), 1.0, rtol=1e-12)
    # 10k fitting + 10k test objects: the KS noise of a perfect map is ~0.01
    assert pit_ks(after, test_z) < 0.025
    inside = np.abs(cdf_at(after, GRID, test_z) - 0.5) <= 0.34
    assert abs(inside.mean() - 0.683) < 0.025


def test_temperature_recovers_a_known_temperature():
    # q ∝ p^(1/T): a model sharpened by T0 = 1/2.5 is undone by T = 2.5
    rng = np.random.default_rng(3)
    n = 6000
    logits = rng.normal(0, 2.0, (n, GRID.n_bins))
    true_p = np.exp(logits - logits.max(1, keepdims=True))
    true_p /= true_p.sum(1, keepdims=True)
    labels = np.array([rng.choice(GRID.n_bins, p=row) for row in true_p])
    z = GRID.centers[labels]
    model_p = temper(true_p, 1 / 2.5)
    t = fit_calibration(model_p, z, GRID, ["temperature"]).steps[0].calibrator.temperature
    assert t == pytest.approx(2.5, rel=0.05)


def test_student_t_fixes_gaussian_widths_on_heavy_tails():
    # regression head: σ fitted to the RMS of t3 residuals — the Gaussian core is too wide
    val_p, val_z = synthetic(4000, 1.0, seed=4, tails=True)
    test_p, test_z = synthetic(4000, 1.0, seed=5, tails=True)
    chain = fit_calibration(val_p, val_z, GRID, ["student-t"])
    step = chain.steps[0].calibrator
    assert step.nu < 10  # recovers heavy tails (true ν = 3)
    assert pit_ks(chain(test_p), test_z) < pit_ks(test_p, test_z)
    assert pit_ks(chain(test_p), test_z) < 0.03


def two_precisions(n: int, frac_sharp: float, seed: int):
    """A model whose sharp PDFs (bright objects, σ = 0.008) are 1.6x too wide and whose broad ones (faint,
    σ = 0.03) are 1.6x too narrow; ``frac_sharp`` of the objects are bright."""
    rng = np.random.default_rng(seed)
    sharp = rng.random(n) < frac_sharp
    sigma = np.where(sharp, 0.008, 0.03)
    z = rng.uniform(0.08, 0.32, n)
    zp = z + rng.normal(0, 1, n) * sigma
    return gaussian_pdfs(zp, np.where(sharp, sigma * 1.6, sigma / 1.6), GRID), z, sharp


def test_pit_width_follows_a_shift_in_precision_that_a_global_map_cannot():
    # fitted on a half-bright sample, applied to a 90%-bright one (a brighter survey than the calibration set):
    # the global map flattens the pooled validation PIT, not the bright objects', which now dominate
    val_p, val_z, _ = two_precisions(8000, 0.5, seed=11)
    test_p, test_z, sharp = two_precisions(8000, 0.9, seed=12)
    global_map = fit_calibration(val_p, val_z, GRID, ["pit"])(test_p)
    by_width = fit_calibration(val_p, val_z, GRID, ["pit-width"])(test_p)
    assert pit_ks(global_map, test_z) > 0.05
    assert pit_ks(by_width, test_z) < 0.025
    for part in (sharp, ~sharp):  # calibrated within each population, not only pooled
        inside = np.abs(cdf_at(by_width[part], GRID, test_z[part]) - 0.5) <= 0.34
        assert abs(inside.mean() - 0.683) < 0.04


@pytest.mark.parametrize("methods", [["temperature", "pit"], ["pit-local"], ["pit-width"], ["student-t"]])
def test_map_survives_save_and_load(tmp_path, methods):
    val_p, val_z = synthetic(2000, 0.6, seed=6)
    chain = fit_calibration(val_p, val_z, GRID, methods, fitted_on={"rows": "val"})
    path = chain.save(tmp_path / "calibration.json")
    doc = json.loads(path.read_text())
    assert [s["name"] for s in doc["steps"]] == methods
    assert doc["steps"][0]["fitted_on"] == {"n": 2000, "rows": "val"}
    again = Calibration.load(path)
    test_p, _ = synthetic(500, 0.6, seed=7)
    np.testing.assert_array_equal(again(test_p), chain(test_p))


def test_unknown_method_and_bad_file_give_clear_errors(tmp_path):
    val_p, val_z = synthetic(100, 1.0, seed=8)
    with pytest.raises(ValueError, match="unknown calibration method 'nope'.*temperature"):
        fit_calibration(val_p, val_z, GRID, ["nope"])
    bad = tmp_path / "calibration.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a zpix calibration file"):
        Calibration.load(bad)
    assert not load_calibration(tmp_path / "elsewhere")  # no file: the identity
    np.testing.assert_allclose(load_calibration(tmp_path / "elsewhere")(val_p), val_p)


def test_cli_calibrate_writes_a_new_run_that_predict_applies(tmp_path):
    import zpix
    from zpix.cli import main
    from zpix.prediction.format import read_predictions

    cubes = write_toy_cubes(tmp_path / "toy.h5", n=240, size=16)
    from test_training import tiny_config

    run = zpix.train(tiny_config(cubes, tmp_path / "run", max_epochs=1, val_fraction=0.4,
                                 calibrate=[])).run_dir
    assert not (run / "calibration.json").exists()  # switched off
    before = sorted(p.name for p in run.rglob("*"))
    res = CliRunner().invoke(main, ["calibrate", str(run), "--method", "temperature", "--out",
                                    str(tmp_path / "cal")])
    assert res.exit_code == 0, res.output
    assert "temperature: T =" in res.output
    assert sorted(p.name for p in run.rglob("*")) == before  # RUN untouched
    chain = load_calibration(tmp_path / "cal")
    assert [s.calibrator.name for s in chain.steps] == ["temperature"]
    out = {}
    for name in ("run", "cal"):
        res = CliRunner().invoke(main, ["predict", str(tmp_path / name), str(cubes), "--split", "test", "--out",
                                        str(tmp_path / f"pred_{name}"), "--num-workers", "0"])
        assert res.exit_code == 0, res.output
        out[name] = read_predictions(tmp_path / f"pred_{name}")
    np.testing.assert_allclose(out["cal"].pdfs, chain(out["run"].pdfs), atol=1e-6)
    assert (tmp_path / "cal" / "quality.npz").is_file()
    cat = out["cal"].catalog
    for col in ("p_outlier_pdf", "n_modes", "feat_knn", "quality", "flag"):
        assert col in cat.columns and cat[col].notna().all()
    assert "quality" not in out["run"].catalog.columns
    res = CliRunner().invoke(main, ["calibrate", str(run), "--out", str(tmp_path / "cal")])
    assert res.exit_code != 0 and "already exists" in res.output
    res = CliRunner().invoke(main, ["info", str(tmp_path / "cal")])
    assert res.exit_code == 0, res.output
    assert "1. temperature: T =" in res.output and "quality: logistic" in res.output
    # the default method on a run with few validation rows: no map, the reason stored and shown, quality fitted
    res = CliRunner().invoke(main, ["calibrate", str(run), "--out", str(tmp_path / "auto")])
    assert res.exit_code == 0, res.output
    from zpix.calibration.fit import MIN_AUTO
    from zpix.runs import Split

    n_val = len(Split.load(run / "split.npz").val)
    assert f"calibration: none (auto on {n_val} objects: {n_val} fitting objects < {MIN_AUTO}" in res.output
    assert not load_calibration(tmp_path / "auto") and (tmp_path / "auto" / "quality.npz").is_file()
    res = CliRunner().invoke(main, ["info", str(tmp_path / "auto")])
    assert f"calibration: none (auto on {n_val} objects" in res.output


def test_auto_picks_the_simplest_chain_that_flattens_the_pit():
    from zpix.calibration.fit import select_chain

    # calibrated already: no candidate beats the first (the baseline) beyond the noise, so it is kept
    good_p, good_z = synthetic(3000, 1.0, seed=8)
    chosen, record = select_chain(good_p, good_z, GRID, candidates=(("temperature",), ("pit",), ("pit-local",)))
    assert set(record["cv_pit_ks"]) == {"temperature", "pit", "pit-local"} and max(record["cv_pit_ks"].values()) < 0.03
    assert set(record["sd_vs_none"]) == {"pit", "pit-local"} and min(record["sd_vs_none"].values()) > 0
    assert chosen == ["temperature"]
    # too narrow by 2: auto fits a chain, recorded with the choice, that flattens the PIT on new objects
    val_p, val_z = synthetic(3000, 0.5, seed=9)
    chain = fit_calibration(val_p, val_z, GRID, ["auto"], fitted_on={"rows": "val"})
    auto = chain.notes["auto"]
    assert auto["chosen"] == [s.calibrator.name for s in chain.steps] != []
    assert auto["cv_pit_ks"]["none"] > 0.1 and auto["cv_crps"]["+".join(auto["chosen"])] < auto["cv_crps"]["none"]
    test_p, test_z = synthetic(10_000, 0.5, seed=10)
    assert pit_ks(chain(test_p), test_z) < 0.03


def test_auto_keeps_calibrated_pdfs_unchanged_and_says_why(tmp_path):
    # the demo's regression: a PIT map fitted on a few hundred validation objects of PDFs that were calibrated
    # already only adds its own noise (the demo's coverage68 went 0.69 -> 0.61); auto keeps the identity
    from zpix.calibration.fit import MIN_AUTO

    test_p, test_z = synthetic(20_000, 1.0, seed=12)
    for n, seed in ((320, 11), (MIN_AUTO, 13), (4000, 14)):
        val_p, val_z = synthetic(n, 1.0, seed=seed)
        chain = fit_calibration(val_p, val_z, GRID, ["auto"])
        assert not chain and chain.notes["auto"]["chosen"] == [] and chain.notes["auto"]["n"] == n
        assert ("too few" in chain.notes["auto"]["reason"]) == (n < MIN_AUTO)
        np.testing.assert_allclose(chain(test_p), test_p / test_p.sum(1, keepdims=True))
        # what a forced map would have done to the same PDFs: worse coverage, the bug this guards
        forced = cdf_at(fit_calibration(val_p, val_z, GRID, ["pit"])(test_p), GRID, test_z)
        if n < MIN_AUTO:
            assert abs((np.abs(forced - 0.5) <= 0.34).mean() - 0.683) > 0.01
    again = Calibration.load(chain.save(tmp_path / "calibration.json"))
    assert not again and again.notes == json.loads(json.dumps(chain.notes))
    assert "calibration: none (auto on 4000 objects: no chain beats" in again.describe()


def test_auto_below_the_floor_keeps_even_a_bad_model_but_an_explicit_method_fits():
    from zpix.calibration.fit import MIN_AUTO

    val_p, val_z = synthetic(MIN_AUTO - 1, 0.5, seed=15)
    chain = fit_calibration(val_p, val_z, GRID, ["auto"])
    assert not chain and "too few" in chain.notes["auto"]["reason"]
    assert [s.calibrator.name for s in fit_calibration(val_p, val_z, GRID, ["pit"]).steps] == ["pit"]


def test_bootstrap_ks_matches_scipy():
    from zpix.calibration.fit import _ks_uniform

    for n, seed in ((7, 0), (500, 1)):
        u = np.random.default_rng(seed).uniform(size=n) ** 1.3
        assert _ks_uniform(u) == pytest.approx(kstest(u, "uniform").statistic, abs=1e-12)


@pytest.mark.parametrize("method", ["pit-affine", "pit-beta"])
def test_parametric_pit_map_recovers_a_known_shift_and_stretch(method, tmp_path):
    # Gaussian PDFs N(ẑ, σ) of objects whose true z ~ N(ẑ + 0.3σ, (1.5σ)²): over-confident by 1.5 and off-centre;
    # in probit space the exact map is a·t + b with a = 1/1.5, b = −0.3/1.5
    rng = np.random.default_rng(21)

    def sample(n):
        zhat = rng.uniform(0.08, 0.32, n)
        return gaussian_pdfs(zhat, 0.01, GRID), zhat + 0.003 + rng.normal(0, 0.015, n)

    val_p, val_z = sample(4000)
    test_p, test_z = sample(20_000)
    assert pit_ks(test_p, test_z) > 0.1
    chain = fit_calibration(val_p, val_z, GRID, [method])
    step = chain.steps[0].calibrator
    if method == "pit-affine":
        assert np.exp(step.theta[0]) == pytest.approx(1 / 1.5, rel=0.04)
        assert step.theta[1] == pytest.approx(-0.2, abs=0.04)
    after = chain(test_p)
    assert pit_ks(after, test_z) < 0.015
    again = Calibration.load(chain.save(tmp_path / "calibration.json"))
    np.testing.assert_array_equal(again(test_p[:300]), after[:300])
    assert again.steps[0].calibrator.to_dict() == step.to_dict()


def test_parametric_map_has_less_noise_than_the_ecdf_map_on_calibrated_pdfs():
    # what the few-parameter families are for: fitted on 2000 calibrated PDFs they move new objects' PITs less
    test_p, test_z = synthetic(20_000, 1.0, seed=22)
    extra = {"pit": [], "pit-affine": []}
    for r in range(6):
        val_p, val_z = synthetic(2000, 1.0, seed=100 + r)
        for m in extra:
            extra[m].append(pit_ks(fit_calibration(val_p, val_z, GRID, [m])(test_p), test_z))
    assert np.mean(extra["pit-affine"]) < np.mean(extra["pit"])


def test_keep_mean_leaves_the_point_estimates_unchanged(tmp_path):
    from zpix.pdf import pdf_mean

    # a PIT map that shifts as well as widens moves every PDF's mean (the KiDS regression head's sigma_MAD +1.3%);
    # with keep-mean the catalogue's z_mean is the uncalibrated one, only width and shape change
    val_p, val_z = synthetic(3000, 0.6, seed=23)
    test_p, _ = synthetic(2000, 0.6, seed=24)
    test_p = np.roll(test_p, 3, axis=1)  # centres off by 3 bins: the map learns no such shift, but apply keeps them
    shifted = fit_calibration(val_p, val_z + 0.004, GRID, ["student-t", "pit-affine"])
    kept = fit_calibration(val_p, val_z + 0.004, GRID, ["student-t", "pit-affine", "keep-mean"])
    z0 = pdf_mean(test_p, GRID)
    assert np.median(np.abs(pdf_mean(shifted(test_p), GRID) - z0)) > 1e-3  # the bug this guards
    np.testing.assert_allclose(pdf_mean(kept(test_p), GRID), z0, atol=2e-5)
    # the widths are those of the chain without keep-mean (a translation changes no width)
    from zpix.pdf import pdf_quantiles

    width = [np.diff(pdf_quantiles(c(test_p), GRID, np.array([0.16, 0.84])), axis=1).ravel() for c in (shifted, kept)]
    np.testing.assert_allclose(width[1], width[0], atol=GRID.width)
    assert np.median(width[0]) > 1.2 * np.median(np.diff(pdf_quantiles(test_p, GRID, np.array([0.16, 0.84])), axis=1))
    again = Calibration.load(kept.save(tmp_path / "calibration.json"))
    assert again.keep_mean and "keep-mean" in again.describe()
    np.testing.assert_array_equal(again(test_p), kept(test_p))
    with pytest.raises(ValueError, match="keep-mean must come once, after the last method"):
        fit_calibration(val_p, val_z, GRID, ["keep-mean", "pit"])


def write_held_out(path, grid, *, n: int, shift: float, n_training_rows: int = 0, seed: int = 0):
    """A prediction directory of ``n`` labelled objects whose PDFs sit ``shift`` above z_spec (σ 0.02)."""
    from zpix.prediction.format import PredictionWriter

    rng = np.random.default_rng(seed)
    z = rng.uniform(grid.z_min + 0.1 * (grid.z_max - grid.z_min), grid.z_max - 0.2 * (grid.z_max - grid.z_min), n)
    pdfs = gaussian_pdfs(z + shift + rng.normal(0, 0.02, n), 0.02, grid)
    rows = {"split": "test", "n_rows": n, "n_training_rows": n_training_rows}
    with PredictionWriter(path, grid, n, method="cnn", meta={"rows": rows}) as writer:
        writer.write(np.arange(n), pdfs, z)
    return path


def test_calibrate_fits_on_held_out_predictions_and_appends_to_the_run(tmp_path):
    # cross-fitting: a run calibrated against photo-z on out-of-fold PDFs (a `zpix kfold` predictions/) rather
    # than its own few validation rows; a known +0.03 offset of those PDFs is what the photoz step must remove
    from test_training import tiny_config

    import zpix
    from zpix.calibration.photoz import PhotoZCalibration
    from zpix.cli import main
    from zpix.prediction.streaming import load_ensemble

    cubes = write_toy_cubes(tmp_path / "toy.h5", n=240, size=16)
    run = zpix.train(tiny_config(cubes, tmp_path / "run", max_epochs=1, val_fraction=0.4, calibrate=[])).run_dir
    fit_calibration_steps = zpix.calibration.calibrate(run, tmp_path / "t", ["temperature"])  # a run's own chain
    grid = RedshiftGrid.from_dict(load_ensemble(tmp_path / "t", "cpu")[0].hparams.grid)
    held = write_held_out(tmp_path / "oof", grid, n=3000, shift=0.03)
    before = sorted(p.name for p in (tmp_path / "t").rglob("*"))
    res = CliRunner().invoke(main, ["calibrate", str(tmp_path / "t"), "--fit-on", str(held), "--method", "photoz",
                                    "--out", str(tmp_path / "cal")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "t").rglob("*")) == before  # RUN untouched
    chain = load_calibration(tmp_path / "cal")
    assert [s.calibrator.name for s in chain.steps] == ["temperature", "photoz"]
    assert chain.steps[0].to_dict() == fit_calibration_steps.steps[0].to_dict()  # the run's own step, kept
    assert chain.steps[1].fitted_on["predictions"] == [str(held)] and chain.steps[1].fitted_on["n"] == 3000
    photoz = chain.steps[1].calibrator
    assert isinstance(photoz, PhotoZCalibration)
    # inside the labelled range (at its ends E[z_spec | z_phot] is pulled in by the range itself, rightly)
    span = grid.z_max - grid.z_min
    np.testing.assert_allclose(photoz.shift(np.linspace(grid.z_min + 0.25 * span, grid.z_max - 0.35 * span, 4)),
                               -0.03, atol=0.006)
    assert (tmp_path / "cal" / "quality.npz").is_file()  # the run's own quality model, kept
    # objects the producing model trained on, another grid, too few labelled objects: one clear error each
    seen = write_held_out(tmp_path / "seen", grid, n=3000, shift=0.03, n_training_rows=2400)
    res = CliRunner().invoke(main, ["calibrate", str(run), "--fit-on", str(seen), "--method", "photoz", "--out",
                                    str(tmp_path / "x1")])
    assert res.exit_code != 0 and "2400 of its 3000 objects trained or validated" in res.output
    other = write_held_out(tmp_path / "other", RedshiftGrid(90, 0.0, 0.4), n=3000, shift=0.0)
    res = CliRunner().invoke(main, ["calibrate", str(run), "--fit-on", str(other), "--method", "photoz", "--out",
                                    str(tmp_path / "x2")])
    assert res.exit_code != 0 and "the run predicts on" in res.output
    few = [write_held_out(tmp_path / f"few{i}", grid, n=20, shift=0.0, seed=i) for i in (1, 2)]
    res = CliRunner().invoke(main, ["calibrate", str(run), "--fit-on", str(few[0]), "--fit-on", str(few[1]),
                                    "--method", "photoz", "--out", str(tmp_path / "x3")])
    assert res.exit_code != 0 and "40 objects with a z_spec" in res.output  # both read, too few together
    assert not any((tmp_path / f"x{i}").exists() for i in (1, 2, 3))
