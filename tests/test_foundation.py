"""Issue 11 part B: outputs never lose data, runs know their inputs, evaluation never scores training rows,
configs are validated before anything is written.  Each test fails on the code before the fix."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import write_toy_cubes
from test_training import tiny_config as training_config

import zpix
from zpix.cli import main
from zpix.pdf import RedshiftGrid
from zpix.prediction.format import read_predictions, write_predictions
from zpix.runs import INPUT_SPEC_FILE, Split
from zpix.training.config import TrainConfig

TINY = {"stem_width": 8, "modules": [[8, 8, 8, 8]], "pool_after": [0], "final_pool_size": 2, "fc_widths": [16]}


def tiny_config(cubes, out, **kw) -> TrainConfig:
    """test_training's tiny config, smaller still: one epoch of a one-module network on 20 bins."""
    return training_config(cubes, out, **{"model_args": TINY, "n_bins": 20, "max_epochs": 1, "batch_size": 16, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("found")
    cubes = write_toy_cubes(root / "toy.h5", n=80, size=16)
    result = zpix.train(tiny_config(cubes, root / "run"))
    return root, cubes, result


def _invoke(args, cwd=None):
    runner = CliRunner()
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return runner.invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)


def _one_error(res, *needles):
    """A command that failed with one message (a ClickException), no traceback."""
    assert res.exit_code != 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in res.output, (needle, res.output)


def _small_predictions(path, rows_meta=None):
    grid = RedshiftGrid(10)
    rng = np.random.default_rng(0)
    pdfs = rng.random((30, 10))
    meta = {"rows": rows_meta} if rows_meta else None
    return write_predictions(path, np.arange(30), pdfs, grid, z_spec=rng.uniform(0, 0.4, 30), meta=meta)


# -- 1. destructive writes -------------------------------------------------------------------------------


def test_report_out_dot_deletes_nothing(tmp_path):
    pred = _small_predictions(tmp_path / "pred")
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("keep me")
    (work / "sub").mkdir()
    for out in (".", "..", str(work)):
        res = _invoke(["report", pred, "--out", out, "--n-boot", "2", "--overwrite"], cwd=work)
        _one_error(res, "never replaces")
    assert (work / "precious.txt").read_text() == "keep me" and (work / "sub").is_dir()
    assert sorted(p.name for p in work.iterdir()) == ["precious.txt", "sub"]


def test_outputs_replace_only_their_own_kind(run, tmp_path):
    root, cubes, result = run
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    pred = _small_predictions(tmp_path / "pred")
    # a directory zpix did not write, and a run directory, are never replaced, even with --overwrite
    for target in (foreign, result.run_dir):
        res = _invoke(["report", pred, "--out", target, "--overwrite", "--n-boot", "2"])
        _one_error(res, str(target))
        res = _invoke(["predict", result.run_dir, cubes, "--out", target, "--overwrite", "--workers", "0",
                       "--no-progress"])
        _one_error(res, str(target))
    assert (foreign / "notes.txt").exists() and (result.run_dir / "config.yaml").exists()
    assert (result.run_dir / "member_0" / "best.ckpt").exists()
    # an older prediction directory is replaced with --overwrite only
    out = tmp_path / "p"
    assert _invoke(["predict", result.run_dir, cubes, "--out", out, "--workers", "0", "--no-progress"]
                   ).exit_code == 0
    _one_error(_invoke(["predict", result.run_dir, cubes, "--out", out, "--workers", "0", "--no-progress"]),
               "--overwrite")
    assert _invoke(["predict", result.run_dir, cubes, "--out", out, "--workers", "0", "--no-progress",
                    "--overwrite"]).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "p", "pred"]


# -- 2. the run's input spec --------------------------------------------------------------------------


def test_run_records_its_input_spec(run):
    _, cubes, result = run
    spec = json.loads((result.run_dir / INPUT_SPEC_FILE).read_text())
    assert spec["bands"] == list("ugriz") and spec["pixel_scale_arcsec"] == pytest.approx(0.396)
    assert spec["image_shape"] == [5, 16, 16] and spec["mag_names"] is None and spec["use_ebv"] is True
    assert spec["survey"] == "toy" and spec["store"]["n_rows"] == 80 and len(spec["store"]["digest"]) == 16
    assert spec["split"]["n_test"] == len(result.split.test) == 16


def _store_like(path, bands, scale=0.396, n=40, seed=5):
    write_toy_cubes(path, n=n, size=16, bands=bands, seed=seed)
    if scale != 0.396:
        with h5py.File(path, "r+") as f:
            f.attrs["pixel_scale_arcsec"] = scale
    return path


def test_predict_refuses_other_bands_and_pixel_scale(run, tmp_path):
    _, _, result = run
    hsc = _store_like(tmp_path / "hsc.h5", "grizy", scale=0.2)
    res = _invoke(["predict", result.run_dir, hsc, "--out", tmp_path / "p", "--workers", "0"])
    _one_error(res, "bands ['g', 'r', 'i', 'z', 'y']", "pixel scale 0.2 arcsec")
    four = _store_like(tmp_path / "four.h5", "griz")
    res = _invoke(["predict", result.run_dir, four, "--out", tmp_path / "p", "--workers", "0"])
    _one_error(res, "bands ['g', 'r', 'i', 'z']")
    assert "build" not in res.output.lower()  # no advice to rebuild a trained model
    assert not (tmp_path / "p").exists()


def test_predict_split_on_another_store_is_a_clear_error(run, tmp_path):
    _, _, result = run
    other = _store_like(tmp_path / "other.h5", "ugriz", n=20, seed=9)  # fewer rows than the split's indices
    res = _invoke(["predict", result.run_dir, other, "--out", tmp_path / "p", "--split", "test",
                   "--workers", "0"])
    _one_error(res, "--split test", "predict it whole with --split all")
    bigger = _store_like(tmp_path / "big.h5", "ugriz", n=120, seed=9)  # would silently take wrong rows before
    _one_error(_invoke(["predict", result.run_dir, bigger, "--out", tmp_path / "p", "--split", "test",
                        "--workers", "0"]), "--split test")


def test_hybrid_images_run_predicts_on_its_store_without_magnitudes(tmp_path):
    cubes = write_toy_cubes(tmp_path / "nomags.h5", n=60, size=16, with_mags=False)
    args = {"stem_width": 8, "modules": [[8, 8, 8, 8]], "pool_after": [0], "final_pool_size": 2,
            "head_widths": [16], "n_bands": 5, "image_size": 16}
    result = zpix.train(tiny_config(cubes, tmp_path / "run", model="hybrid-images", model_args=args))
    out = zpix.predict(result.run_dir, cubes, tmp_path / "p", num_workers=0, progress=False)
    assert len(read_predictions(out)) == len(result.split.test)


def test_init_from_checks_the_source_runs_inputs(run, tmp_path):
    _, _, result = run
    four = _store_like(tmp_path / "four.h5", "griz", n=40)
    with pytest.raises(ValueError, match=r"init_from .*bands \['g', 'r', 'i', 'z'\]"):
        zpix.train(tiny_config(four, tmp_path / "tuned", init_from=[str(result.run_dir)]))
    assert not (tmp_path / "tuned").exists()


# -- 3. leak-proof evaluation ---------------------------------------------------------------------------


def test_predict_defaults_to_the_test_rows_of_the_runs_own_store(run, tmp_path):
    _, cubes, result = run
    own = read_predictions(zpix.predict(result.run_dir, cubes, tmp_path / "own", num_workers=0, progress=False))
    np.testing.assert_array_equal(np.sort(own.catalog["id"]), result.split.test)  # toy ids equal rows
    rows = own.meta["meta"]["rows"]
    assert rows["split"] == "test" and rows["run_store"] and rows["n_training_rows"] == 0
    other = _store_like(tmp_path / "other.h5", "ugriz", n=30, seed=3)
    foreign = read_predictions(zpix.predict(result.run_dir, other, tmp_path / "o", num_workers=0, progress=False))
    assert len(foreign) == 30 and foreign.meta["meta"]["rows"]["split"] == "all"


def test_evaluate_refuses_training_rows(run, tmp_path):
    _, cubes, result = run
    everything = zpix.predict(result.run_dir, cubes, tmp_path / "all", split="all", num_workers=0, progress=False)
    assert read_predictions(everything).meta["meta"]["rows"]["n_training_rows"] == 64
    res = _invoke(["evaluate", everything, "--out", tmp_path / "m.json", "--n-boot", "2"])
    _one_error(res, "64 of its 80 objects were used to train or validate", "--allow-training-rows")
    assert not (tmp_path / "m.json").exists()
    res = _invoke(["evaluate", everything, "--out", tmp_path / "m.json", "--n-boot", "2", "--allow-training-rows"])
    assert res.exit_code == 0, res.output
    test_only = zpix.predict(result.run_dir, cubes, tmp_path / "test", num_workers=0, progress=False)
    assert _invoke(["evaluate", test_only, "--out", tmp_path / "t.json", "--n-boot", "2"]).exit_code == 0


def test_baseline_split_trains_on_the_runs_training_rows(run, tmp_path):
    _, cubes, result = run
    res = _invoke(["baseline", "knn", "--split", result.run_dir, "--out", tmp_path / "knn", "--k", "10"])
    assert res.exit_code == 0, res.output
    pred = read_predictions(tmp_path / "knn")
    np.testing.assert_array_equal(np.sort(pred.catalog["id"]), result.split.test)
    assert pred.meta["meta"]["rows"]["n_training_rows"] == 0
    assert pred.meta["meta"]["n_train"] == len(result.split.train) + len(result.split.val)
    # the whole file for both: every test object was a training object, and evaluate says so
    res = _invoke(["baseline", "knn", "--train", cubes, "--test", cubes, "--out", tmp_path / "leaky", "--k", "10"])
    assert res.exit_code == 0, res.output
    assert read_predictions(tmp_path / "leaky").meta["meta"]["rows"]["n_training_rows"] == 80
    _one_error(_invoke(["evaluate", tmp_path / "leaky", "--out", tmp_path / "m.json"]), "--allow-training-rows")


# -- 4. configuration -----------------------------------------------------------------------------------


def test_set_lr_in_exponent_notation_is_a_float(tmp_path):
    cubes = write_toy_cubes(tmp_path / "toy.h5", n=40, size=16)
    cfg = tiny_config(cubes, tmp_path / "run")
    cfg.save(tmp_path / "cfg.yaml")
    res = _invoke(["train", "--config", tmp_path / "cfg.yaml", "--set", "lr=3e-4", "--no-progress"])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]
    assert saved["lr"] == 3e-4 and isinstance(saved["lr"], float)


@pytest.mark.parametrize("bad, message", [
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--set", "lr=abc"], "option lr"),
    (["--set", "test_fraction=1.5"], "test_fraction must lie in (0, 1)"),
    (["--set", "on_bad=skip"], "option on_bad"),
])
def test_invalid_config_writes_nothing(tmp_path, bad, message):
    cubes = write_toy_cubes(tmp_path / "toy.h5", n=40, size=16)
    res = _invoke(["train", "--cubes", cubes, "--out", tmp_path / "run", *bad])
    _one_error(res, message)
    assert not (tmp_path / "run").exists()


def test_training_failure_before_a_checkpoint_leaves_no_run(tmp_path, monkeypatch):
    cubes = write_toy_cubes(tmp_path / "toy.h5", n=40, size=16)
    import lightning

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(lightning.Trainer, "fit", boom)
    with pytest.raises(RuntimeError):
        zpix.train(tiny_config(cubes, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_on_bad_has_one_default_and_train_accepts_it(tmp_path):
    cubes = write_toy_cubes(tmp_path / "toy.h5", n=40, size=16)
    with h5py.File(cubes, "r+") as f:
        img = f["images"][3]
        img[0, 0, 0] = np.nan
        f["images"][3] = img
        f["n_bad"][3] = 1
    _one_error(_invoke(["info", cubes]), "--on-bad drop")  # info agrees with train: a NaN store is not fine
    assert _invoke(["info", cubes, "--on-bad", "drop"]).exit_code == 0
    _one_error(_invoke(["train", "--cubes", cubes, "--out", tmp_path / "r", "--model", "pasquet2019-small",
                        "--max-epochs", "1"]), "--on-bad drop")
    res = _invoke(["train", "--cubes", cubes, "--out", tmp_path / "r", "--on-bad", "drop", "--workers", "0",
                   "--max-epochs", "1", "--no-progress", "--set", f"model_args={json.dumps(TINY)}",
                   "--set", "n_bins=20", "--batch-size", "16"])
    assert res.exit_code == 0, res.output
    split = Split.load(tmp_path / "r" / "split.npz")
    assert 3 not in np.concatenate([split.train, split.val, split.test])


def test_no_option_that_does_nothing():
    res = _invoke(["import", "x.npz", "--out", "y.h5", "--seed", "1"])
    assert res.exit_code != 0 and "No such option" in res.output
    res = _invoke(["predict", "--help"])
    assert "--seed" not in res.output and "--progress" in res.output


# -- 6. reproducibility ---------------------------------------------------------------------------------


def test_two_identical_training_runs_give_identical_predictions(tmp_path):
    cubes = write_toy_cubes(tmp_path / "toy.h5", n=64, size=16)
    preds = []
    for name in ("a", "b"):
        result = zpix.train(tiny_config(cubes, tmp_path / name, max_epochs=2, seed=7))
        preds.append(read_predictions(zpix.predict(result.run_dir, cubes, tmp_path / f"p{name}", num_workers=0,
                                                   progress=False, device="cpu")))
    np.testing.assert_array_equal(preds[0].pdfs, preds[1].pdfs)
    assert preds[0].catalog.equals(preds[1].catalog)
    # and the seed matters: another seed gives other numbers
    other = zpix.train(tiny_config(cubes, tmp_path / "c", max_epochs=2, seed=8, test_fraction=0.2))
    splits = [Split.load(tmp_path / name / "split.npz").test for name in ("a", "c")]
    assert not np.array_equal(*splits)
    assert other.summary["members"][0]["best_val_loss"] != result.summary["members"][0]["best_val_loss"]


def test_one_name_per_option_across_commands():
    """--workers, --progress/--no-progress, --on-bad and --<what>-col mean the same everywhere."""
    import click

    from zpix.cli import COMMANDS

    names: dict[str, set[str]] = {}
    for name in COMMANDS:
        command = main.get_command(click.Context(main), name)
        for p in command.params:
            if isinstance(p, click.Option) and not p.hidden:
                for opt in p.opts + p.secondary_opts:
                    names.setdefault(name, set()).add(opt)
    everything = set().union(*names.values())
    assert "--num-workers" not in everything and "--seed" not in names["predict"] | names["import"]
    assert not {"--id-column", "--z-column", "--ebv-column", "--mag-columns"} & everything
    for command in ("train", "kfold", "predict", "info"):
        assert "--on-bad" in names[command], command
    for command in ("train", "kfold", "predict"):
        assert {"--workers", "--progress", "--no-progress"} <= names[command], command


def test_resume_takes_the_runs_own_config(run, tmp_path):
    _, _, result = run
    _one_error(_invoke(["train", "--resume", result.run_dir, "--lr", "0.1"]), "--resume continues a run")
    (tmp_path / "empty").mkdir()
    _one_error(_invoke(["train", "--resume", tmp_path / "empty"]), "not a run directory")
    # a finished run resumes to itself: every member is kept as it is
    before = (result.run_dir / "member_0" / "best.ckpt").stat().st_mtime_ns
    res = _invoke(["train", "--resume", result.run_dir])
    assert res.exit_code == 0, res.output
    assert (result.run_dir / "member_0" / "best.ckpt").stat().st_mtime_ns == before
