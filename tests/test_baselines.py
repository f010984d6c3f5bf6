"""Catalogue baselines: k-NN local linear regression and the magnitude network (zpix.baselines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from conftest import write_toy_cubes

from zpix.baselines.knn import KNNPhotoZ, colour_features, run_knn
from zpix.baselines.magnet import MagNet, MagNetConfig, train_magnet
from zpix.baselines.tables import SDSS_MGS_NAMES, MagnitudeTable, load_magnitudes
from zpix.cli import main
from zpix.evaluation.metrics import crps, delta_z, sigma_mad
from zpix.pdf import RedshiftGrid, pdf_mean
from zpix.prediction.format import read_predictions


def true_z(r: np.ndarray, ug: np.ndarray, gr: np.ndarray) -> np.ndarray:
    """A smooth, non-linear redshift-colour relation with a weak magnitude term."""
    return 0.04 + 0.12 * gr + 0.05 * gr**2 + 0.03 * np.sin(2 * ug) + 0.01 * (r - 16)


def synthetic_catalogue(n: int, seed: int, noise: float = 0.002) -> MagnitudeTable:
    """ugriz magnitudes whose colours determine z (plus ``noise`` in z)."""
    rng = np.random.default_rng(seed)
    r = rng.uniform(14.0, 17.7, n)
    ug, gr = rng.uniform(0.8, 2.2, n), rng.uniform(0.3, 1.1, n)
    ri, iz = 0.2 + 0.3 * gr + rng.normal(0, 0.02, n), rng.uniform(0.1, 0.4, n)
    g = r + gr
    mags = np.stack([g + ug, g, r, r - ri, r - ri - iz], axis=1)
    z = true_z(r, ug, gr) + rng.normal(0, noise, n)
    return MagnitudeTable(ids=np.arange(n) + 10_000 * seed, z_spec=z, ebv=rng.uniform(0, 0.1, n), mags=mags,
                          bands=list("ugriz"), extra={"r_mag": r}, source=f"synthetic-{seed}")


def _write_parquet(table: MagnitudeTable, path: Path) -> Path:
    cols = {"id": table.ids, "z_spec": table.z_spec, "ebv": table.ebv}
    cols.update({f"mag_{b}": table.mags[:, j] for j, b in enumerate(table.bands)})
    pd.DataFrame(cols).to_parquet(path)
    return path


def test_colour_features_are_b16_space() -> None:
    mags = np.array([[19.0, 17.5, 16.8, 16.4, 16.1]])
    x, names = colour_features(mags, list("ugriz"))
    assert names == ["r", "u-g", "g-r", "r-i", "i-z"]
    np.testing.assert_allclose(x[0], [16.8, 1.5, 0.7, 0.4, 0.3])


def test_knn_recovers_smooth_colour_relation() -> None:
    train, test = synthetic_catalogue(4000, 0), synthetic_catalogue(800, 1, noise=0.0)
    model = KNNPhotoZ(k=50).fit(train)
    res = model.predict(test)
    np.testing.assert_allclose(res.pdfs.sum(axis=1), 1.0, atol=1e-9)
    assert (res.pdfs >= 0).all()
    dz_fit = delta_z(res.z_fit, test.z_spec)
    dz_pdf = delta_z(pdf_mean(res.pdfs, res.grid), test.z_spec)
    # the training noise is 0.002 in z: a local *linear* fit must get close to it, the PDF mean too
    assert sigma_mad(dz_fit) < 0.004
    assert sigma_mad(dz_pdf) < 0.005
    # the residual-based PDFs are about as wide as the noise, not the whole redshift range
    assert np.median(res.z_err) < 0.006


def test_knn_handles_missing_bands_and_degenerate_neighbourhoods() -> None:
    train = synthetic_catalogue(600, 0)
    test = synthetic_catalogue(20, 1)
    test.mags[0, 0] = np.nan  # u missing: matched on r, g-r, r-i, i-z
    test.mags[1, :] = np.nan  # nothing observed: the training prior
    res = KNNPhotoZ(k=30).fit(train).predict(test)
    assert np.isfinite(res.pdfs).all() and np.isfinite(res.z_fit).all()
    assert abs(res.z_fit[0] - test.z_spec[0]) < 0.03
    np.testing.assert_allclose(res.z_fit[1], train.z_spec.mean())
    # every neighbour at the same point: the fit falls back to the neighbours' mean, no NaN
    same = MagnitudeTable(ids=np.arange(40), z_spec=np.linspace(0.1, 0.11, 40), ebv=np.zeros(40),
                          mags=np.tile([19.0, 17.5, 16.8, 16.4, 16.1], (40, 1)), bands=list("ugriz"))
    r = KNNPhotoZ(k=10).fit(same).predict(same.subset(np.arange(3)))
    assert np.isfinite(r.z_fit).all() and (np.abs(r.z_fit - 0.105) < 0.01).all()


def test_knn_prediction_directory_save_reload_and_evaluate(tmp_path: Path) -> None:
    from zpix.evaluation.evaluate import evaluate

    train, test = synthetic_catalogue(1500, 0), synthetic_catalogue(300, 1)
    info = run_knn(train, test, tmp_path / "knn", model_path=tmp_path / "knn.npz", k=40)
    assert info["n_train"] == 1500 and info["n_test"] == 300
    pred = read_predictions(tmp_path / "knn")
    assert pred.method == "knn" and len(pred) == 300
    np.testing.assert_array_equal(pred.catalog["id"], test.ids)
    np.testing.assert_allclose(pred.pdfs.sum(axis=1), 1.0, atol=1e-9)
    # RAIL's habit: reload the saved model, rerun, and get the same estimates
    again = KNNPhotoZ.load(tmp_path / "knn.npz").predict(test)
    np.testing.assert_allclose(again.pdfs, pred.pdfs, atol=1e-6)  # the directory stores float64 densities
    result = evaluate(tmp_path / "knn", out=tmp_path / "metrics.json", n_boot=5)
    overall = result["methods"]["knn"]["overall"]
    assert overall["n"] == 300 and overall["sigma_mad"] < 0.006 and 0 <= overall["pit_ks"] < 0.2


def test_magnet_learns_better_than_the_prior_and_reruns_identically(tmp_path: Path) -> None:
    train, test = synthetic_catalogue(2000, 0), synthetic_catalogue(400, 1)
    cfg = MagNetConfig(max_epochs=12, patience=12, seed=3, batch_size=64)
    model, summary = train_magnet(train, cfg, work_dir=tmp_path / "a")
    assert summary["n_train"] + summary["n_val"] == 2000
    pdfs = model.predict(test)
    grid = model.grid
    np.testing.assert_allclose(pdfs.sum(axis=1), 1.0, atol=1e-5)
    prior = np.histogram(train.z_spec, bins=grid.edges)[0] + 1e-9
    prior_pdfs = np.tile(prior / prior.sum(), (len(test), 1))
    dz = delta_z(pdf_mean(pdfs, grid), test.z_spec)
    dz_prior = delta_z(pdf_mean(prior_pdfs, grid), test.z_spec)
    assert sigma_mad(dz) < 0.5 * sigma_mad(dz_prior)
    assert crps(pdfs, grid, test.z_spec).mean() < 0.5 * crps(prior_pdfs, grid, test.z_spec).mean()
    # save, reload, rerun: identical; retrain with the same seed: identical predictions
    model.save(tmp_path / "magnet.ckpt")
    np.testing.assert_array_equal(MagNet.load(tmp_path / "magnet.ckpt").predict(test), pdfs)
    model_b, _ = train_magnet(train, cfg, work_dir=tmp_path / "b")
    np.testing.assert_array_equal(model_b.predict(test), pdfs)
    model_c, _ = train_magnet(train, MagNetConfig(max_epochs=2, patience=12, seed=4, batch_size=64))
    assert not np.array_equal(model_c.predict(test), pdfs)  # another seed: another network


def test_magnet_trains_through_the_training_stage(tmp_path: Path) -> None:
    """The magnitude network is a run of zpix.training: config (with the table it read) beside the
    split and the member checkpoints, the training loop's summaries, and its refusals."""
    from zpix.runs import Split
    from zpix.training.api import train_table
    from zpix.training.config import TrainConfig
    from zpix.training.data import TableData

    train = synthetic_catalogue(300, 0)
    cfg = MagNetConfig(max_epochs=2, patience=5, seed=1)
    model, summary = train_magnet(train, cfg, work_dir=tmp_path / "run")
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["model"] == "hybrid-mags" and saved["train"]["calibrate"] == []
    assert saved["table"]["source"] == "synthetic-0" and saved["table"]["n_rows"] == 300
    assert saved["table"]["inputs"][:2] == ["mag_u", "mag_g"] and saved["table"]["inputs"][-1] == "i-z"
    assert (run / ".zpix-run").is_file() and (run / "split.npz").is_file()
    assert (run / "member_0" / "best.ckpt").is_file() and (run / "member_0" / "last.ckpt").is_file()
    assert model.checkpoint == run / "member_0" / "best.ckpt"
    assert summary["epochs"] == 2 and summary["n_train"] + summary["n_val"] == 300
    assert model.module.model.zpix_config["n_mags"] == 9 and model.module.model.use_images is False
    # the temporary run directory of a train_magnet without work_dir goes with its model
    model_t, _ = train_magnet(train, cfg)
    temporary = model_t.checkpoint.parents[1]
    assert temporary.is_dir()
    del model_t
    import gc

    gc.collect()
    assert not temporary.exists()

    data = TableData(np.zeros((10, 2)), np.zeros(10), np.linspace(0.1, 0.3, 10), ["mag_g", "mag_r"], "t.csv")
    split = Split(np.arange(8), np.arange(8, 10), np.empty(0, dtype=np.int64))
    base = cfg.train_config(out=tmp_path / "bad", use_ebv=False)
    with pytest.raises(ValueError, match="t.csv: .*set calibrate=\\[\\]"):
        train_table(base, data, split, calibrate=["auto"])
    with pytest.raises(ValueError, match="choose hybrid-mags"):
        train_table(TrainConfig.from_dict({**base.to_dict(), "model": "hybrid", "model_args": {"head": "pdf"}}),
                    data, split)
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 10\)"):
        train_table(base, data, Split(np.arange(8), np.array([12]), np.empty(0, dtype=np.int64)))
    assert not (tmp_path / "bad").exists()  # refused before any file was written


def test_tables_cube_store_and_mgs_header_quirk(tmp_path: Path) -> None:
    cubes = write_toy_cubes(tmp_path / "toy.h5", n=30)
    table = load_magnitudes(cubes)
    assert table.bands == list("ugriz") and len(table) == 30 and np.isfinite(table.z_spec).all()
    # an MGS-like text file whose header names 18 columns while the rows have 19
    rng = np.random.default_rng(0)
    rows = np.round(rng.uniform(0.01, 20, (5, len(SDSS_MGS_NAMES))), 5)
    header = "#" + " ".join(n for n in SDSS_MGS_NAMES if n != "eu")
    text = tmp_path / "mgs.train"
    text.write_text(header + "\n" + "\n".join(" ".join(f"{v:.5f}" for v in r) for r in rows) + "\n")
    with pytest.raises(ValueError, match="sdss-mgs"):
        load_magnitudes(text)
    mgs = load_magnitudes(text, columns="sdss-mgs")
    np.testing.assert_allclose(mgs.z_spec, rows[:, 0])
    np.testing.assert_allclose(mgs.mags[:, 2], rows[:, 3])  # r is the 4th column
    np.testing.assert_allclose(mgs.mag_errs[:, 0], rows[:, 10])  # eu


def test_mgs_real_catalogue_reads(real_data: Path) -> None:
    folder = real_data / "sdss_mgs_catalog"
    train = load_magnitudes(folder / "SDSS_MGS.train", columns="sdss-mgs")
    test = load_magnitudes(folder / "SDSS_MGS.test", columns="sdss-mgs")
    assert len(train) == len(test) == 5000
    assert 0.0 < train.z_spec.min() and train.z_spec.max() < 0.3 and np.isfinite(train.mags).all()


def test_baseline_cli_knn(tmp_path: Path) -> None:
    train = _write_parquet(synthetic_catalogue(800, 0), tmp_path / "train.parquet")
    test = _write_parquet(synthetic_catalogue(100, 1), tmp_path / "test.parquet")
    out = tmp_path / "pred"
    result = CliRunner().invoke(main, ["baseline", "knn", "--train", str(train), "--test", str(test),
                                       "--out", str(out), "--k", "30"])
    assert result.exit_code == 0, result.output
    pred = read_predictions(out)
    assert pred.method == "knn" and len(pred) == 100 and pred.grid == RedshiftGrid()
    bad = CliRunner().invoke(main, ["baseline", "knn", "--train", str(train), "--test", str(test),
                                    "--out", str(out)])
    assert bad.exit_code != 0 and "already exists" in bad.output


def test_baseline_cli_magnet(tmp_path: Path) -> None:
    """`zpix baseline magnet` is a thin wrapper: the training stage fits, the saved model predicts the same PDFs."""
    train = _write_parquet(synthetic_catalogue(300, 0), tmp_path / "train.parquet")
    test_table = synthetic_catalogue(50, 1)
    test = _write_parquet(test_table, tmp_path / "test.parquet")
    out = tmp_path / "pred"
    result = CliRunner().invoke(main, ["baseline", "magnet", "--train", str(train), "--test", str(test),
                                       "--out", str(out), "--max-epochs", "2", "--seed", "5",
                                       "--model-out", str(tmp_path / "m.ckpt")])
    assert result.exit_code == 0, result.output
    pred = read_predictions(out)
    meta = pred.meta["meta"]
    assert pred.method == "magnet" and len(pred) == 50 and meta["model_name"] == "hybrid-mags"
    assert meta["epochs"] == 2 and meta["config"]["seed"] == 5
    again = MagNet.load(tmp_path / "m.ckpt").predict(load_magnitudes(test))
    np.testing.assert_allclose(again, pred.pdfs, atol=1e-6)  # the directory stores float64 densities
