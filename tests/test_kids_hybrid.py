"""The KiDS-bright preset end to end (John William et al.): mock shapes, config, both heads, missing
magnitudes, and the Table-1 metrics from ``zpix evaluate``."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import zpix
from zpix.evaluation.evaluate import evaluate
from zpix.evaluation.metrics import delta_z, mean_delta_z_raw, r2, sigma_mad, sigma_std
from zpix.mock.simulate import simulate
from zpix.prediction.format import read_predictions
from zpix.prediction.streaming import load_ensemble, predict
from zpix.runs import Split
from zpix.store.cube_store import CubeStore
from zpix.training.config import TrainConfig
from zpix.training.splits import random_split

CONFIG = Path(__file__).resolve().parents[1] / "src" / "zpix" / "configs" / "kids_hybrid.yaml"
KIDS_MAGS = ["u", "g", "r", "i", "Z", "Y", "J", "H", "Ks"]
N_MOCK = 80
#: a few-thousand-weight hybrid: the preset's structure (36x36 ugri CNN + 9-magnitude MLP), CPU-test sized
TINY = {"stem_width": 8, "modules": [[8, 8, 8, 8], [8, 8, 8, 0]], "pool_after": [0], "final_pool_size": 2,
        "mag_widths": [16, 16], "head_widths": [32]}


@pytest.fixture(scope="module")
def kids_cubes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kids") / "kids.h5"
    simulate(N_MOCK, path, survey="kids", seed=11, workers=1, progress=False)
    return path


def kids_config(cubes: Path, out: Path, head: str = "regression", **kw) -> TrainConfig:
    """configs/kids_hybrid.yaml with a tiny network and a few optimiser steps."""
    cfg = TrainConfig.from_yaml(CONFIG)
    args = {**cfg.model_args, **TINY, "head": head}
    base = dict(cubes=str(cubes), out=str(out), model_args=args, max_epochs=1, max_steps=3, batch_size=16,
                num_workers=0, progress=False, accelerator="cpu", devices=1, channels_last=False)
    base.update(kw)
    return replace(cfg, **base)


@pytest.fixture(scope="module")
def trained(kids_cubes, tmp_path_factory) -> dict[str, tuple[zpix.training.api.TrainResult, Path]]:
    """Both heads trained a few steps on the mock, each with its test-set predictions."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for head in ("regression", "pdf"):
        result = zpix.train(kids_config(kids_cubes, root / head, head))
        pred = predict(result.run_dir, kids_cubes, root / f"pred_{head}", rows=result.split.test, num_workers=0,
                       device="cpu", progress=False)
        runs[head] = (result, pred)
    return runs


def test_preset_shapes(kids_cubes):
    with CubeStore(kids_cubes) as store:
        assert store.image_shape == (4, 36, 36)
        assert store.bands == ["u", "g", "r", "i"]
        assert store.pixel_scale_arcsec == pytest.approx(0.2)
        assert store.survey == "kids"
        assert store.mag_names == KIDS_MAGS
        mags = store.column("mags")
        assert mags.shape == (N_MOCK, 9)
        images = store.images(np.arange(4))
        assert images.shape == (4, 4, 36, 36) and np.isfinite(images).all()
        # r_auto < 20: the selection band is observed for every object and the mock is bright
        assert np.isfinite(mags[:, 2]).all() and np.nanmax(mags[:, 2]) < 21
        z = store.z_spec
        assert np.isfinite(z).all() and z.min() > 0 and z.max() < 0.8


def test_config_is_the_paper_setup():
    cfg = TrainConfig.from_yaml(CONFIG)
    assert cfg.model == "hybrid" and cfg.model_args["head"] == "regression"
    assert cfg.loss == "auto" and cfg.huber_delta == pytest.approx(1e-4)
    assert cfg.use_mags and (cfg.z_min, cfg.z_max) == (0.0, 0.8)
    split = random_split(np.arange(20_000), cfg.test_fraction, cfg.val_fraction, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (14_000, 3_000, 3_000)


@pytest.mark.parametrize("head", ["regression", "pdf"])
def test_both_heads_train_and_write_predictions(trained, head):
    result, pred_dir = trained[head]
    module = load_ensemble(result.run_dir)[0]
    assert module.model.output_kind == head and module.loss_name == {"regression": "huber",
                                                                     "pdf": "cross_entropy"}[head]
    assert module.hparams.huber_delta == pytest.approx(1e-4)
    assert module.model.use_images and module.model.use_mags
    # the magnitude branch was standardised with the training set's statistics, not left at 0/1
    assert not torch.allclose(module.model.mag_net.mag_mean, torch.zeros(9))
    p = read_predictions(pred_dir)
    split = Split.load(result.run_dir / "split.npz")
    assert len(p.catalog) == len(split.test) == round(0.15 * N_MOCK)
    assert np.isfinite(p.pdfs).all() and np.allclose(p.pdfs.sum(axis=1), 1, atol=1e-4)
    assert p.grid.n_bins == 320 and (p.grid.z_min, p.grid.z_max) == (0.0, 0.8)
    z = p.catalog["z_mean"].to_numpy()
    assert np.isfinite(z).all() and (z >= 0).all() and (z <= 0.8).all()


def _with_mag(src: Path, dst: Path, row: int, band: int, value: float) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        mags = f["mags"][...]
        mags[row, band] = value
        f["mags"][...] = mags
    return dst


def test_missing_magnitudes_end_to_end(kids_cubes, trained, tmp_path):
    """NaN and the 99 sentinel are both 'missing': finite, identical predictions; and the mask input is
    used -- a missing band is not the same as a band observed at its mean value."""
    result, _ = trained["regression"]
    module = load_ensemble(result.run_dir)[0]
    band = 5  # Y (VIKING)
    with CubeStore(kids_cubes) as store:
        observed = np.isfinite(store.column("mags")[:, band])
    row = int(np.flatnonzero(observed)[0])
    mean_y = float(module.model.mag_net.mag_mean[band])
    variants = {name: _with_mag(kids_cubes, tmp_path / f"{name}.h5", row, band, value)
                for name, value in (("nan", np.nan), ("sentinel", 99.0), ("at_mean", mean_y))}
    rows = np.array([row])
    z = {}
    for name, cubes in variants.items():
        p = read_predictions(predict(result.run_dir, cubes, tmp_path / f"pred_{name}", rows=rows, num_workers=0,
                                     device="cpu", progress=False))
        assert np.isfinite(p.pdfs).all(), name
        z[name] = p.pdfs[0]
    np.testing.assert_allclose(z["nan"], z["sentinel"], rtol=0, atol=1e-7)
    # the (z, log sigma) outputs, not the PDFs: a barely trained network's PDFs are too wide to tell
    raw = {}
    for name, cubes in variants.items():
        with CubeStore(cubes) as store, torch.no_grad():
            raw[name] = module.model(torch.from_numpy(store.images(rows)), torch.from_numpy(store.ebv[rows]),
                                     torch.from_numpy(store.column("mags")[rows]))
    torch.testing.assert_close(raw["nan"], raw["sentinel"])
    assert not torch.equal(raw["nan"], raw["at_mean"])
    # why they differ: both put 0 in the standardised slot, but only the observed one sets its mask bit
    encoder, n = module.model.mag_net, len(KIDS_MAGS)
    with CubeStore(variants["nan"]) as a, CubeStore(variants["at_mean"]) as b:
        x_nan, x_mean = (encoder.inputs(torch.from_numpy(s.column("mags")[rows])) for s in (a, b))
    assert x_nan[0, band] == 0 and abs(float(x_mean[0, band])) < 1e-5
    assert (x_nan[0, n + band], x_mean[0, n + band]) == (0, 1)
    # every object of a store with holes everywhere (NaN and 99, whole VIKING blocks) gets a finite PDF
    holes = tmp_path / "holes.h5"
    shutil.copy(kids_cubes, holes)
    rng = np.random.default_rng(0)
    with h5py.File(holes, "r+") as f:
        mags = f["mags"][...]
        mags[rng.random(mags.shape) < 0.15] = np.nan
        mags[rng.random(mags.shape) < 0.15] = 99.0
        mags[: N_MOCK // 4, 4:] = np.nan  # outside the VIKING footprint
        f["mags"][...] = mags
    # the same objects as the run's store (same fingerprint): every row, not only the test rows
    p = read_predictions(predict(result.run_dir, holes, tmp_path / "pred_holes", num_workers=0, device="cpu",
                                 progress=False, split="all"))
    assert len(p.catalog) == N_MOCK and np.isfinite(p.pdfs).all()
    assert np.isfinite(p.catalog["z_mean"]).all()


def test_evaluate_gives_the_kids_metrics(trained, tmp_path):
    _, pred_dir = trained["regression"]
    res = evaluate(pred_dir, out=tmp_path / "metrics.json", n_boot=5)
    overall = next(iter(res["methods"].values()))["overall"]
    cat = read_predictions(pred_dir, load_pdfs=False).catalog
    zp, zs = cat["z_mean"].to_numpy(), cat["z_spec"].to_numpy()
    dz = delta_z(zp, zs)
    expected = {"mean_dz_raw": mean_delta_z_raw(zp, zs), "bias": float(dz.mean()), "sigma_std": sigma_std(dz),
                "sigma_mad": sigma_mad(dz), "mse": float(np.mean((zp - zs) ** 2)),
                "mae": float(np.mean(np.abs(zp - zs))), "r2": r2(zp, zs)}
    for key, value in expected.items():
        assert overall[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert (tmp_path / "metrics.json").exists()


def _tiny_hybrid(**kw) -> torch.nn.Module:
    torch.manual_seed(len(kw))
    return zpix.create_model("hybrid", **{**TINY, "use_ebv": True, **kw})


def test_fused_hybrid_starts_as_its_first_source():
    mags, images = _tiny_hybrid(use_images=False), _tiny_hybrid(use_mags=False)
    for model in (mags, images):  # "trained" weights: anything but the initial ones
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    mags.set_mag_normalization(np.full(9, 20.0), np.full(9, 1.5))
    hybrid = _tiny_hybrid(use_images=True, use_mags=True)
    copied = hybrid.init_from([mags, images])
    assert any(k.startswith("cnn.") for k in copied) and any(k.startswith("mag_net.") for k in copied)
    imgs, ebv = torch.randn(6, 4, 36, 36), torch.rand(6) * 0.1
    m = torch.full((6, 9), 20.0) + torch.randn(6, 9)
    m[0, 5:] = float("nan")  # missing NIR magnitudes go through the same masking in both models
    with torch.no_grad():
        torch.testing.assert_close(hybrid(imgs, ebv, m), mags(None, ebv, m))
        torch.testing.assert_close(hybrid.cnn(imgs), images.cnn(imgs))
    torch.testing.assert_close(hybrid.mag_net.mag_mean, torch.full((9,), 20.0))
    # the image columns start at zero but learn at once
    image_cols = hybrid.head.mlp[0].weight[:, hybrid.feature_columns()["cnn"]]
    assert torch.count_nonzero(image_cols) == 0
    hybrid(imgs, ebv, m)[:, 0].sum().backward()
    assert hybrid.head.mlp[0].weight.grad[:, hybrid.feature_columns()["cnn"]].abs().sum() > 0


def test_fusing_mismatched_models_is_refused():
    mags, images = _tiny_hybrid(use_images=False), _tiny_hybrid(use_mags=False)
    with pytest.raises(ValueError, match="lacks"):
        _tiny_hybrid(use_images=False).init_from([images])
    with pytest.raises(ValueError, match="head_widths"):
        _tiny_hybrid(head_widths=[16]).init_from([mags, images])
    with pytest.raises(ValueError, match="give this model nothing"):
        _tiny_hybrid().init_from([mags, images, _tiny_hybrid(use_mags=False)])
    with pytest.raises(ValueError, match="head kind"):
        _tiny_hybrid(head="pdf").init_from([mags, images])


def test_hybrid_fused_from_two_runs_predicts_like_the_magnitude_run(kids_cubes, tmp_path):
    cfg = kids_config(kids_cubes, tmp_path / "mags", model="hybrid-mags")
    split = random_split(np.arange(N_MOCK), cfg.test_fraction, cfg.val_fraction, 0)
    mags = zpix.train(cfg, split=split)
    images = zpix.train(replace(cfg, model="hybrid-images", use_mags=False, out=str(tmp_path / "images")), split=split)
    # lr = 0: the fused run keeps its initial weights, i.e. the magnitude run's function
    fused = zpix.train(replace(cfg, model="hybrid", out=str(tmp_path / "fused"), lr=0.0,
                               init_from=[str(mags.run_dir), str(images.run_dir)]), split=split)
    preds = {}
    for name, run in (("mags", mags), ("fused", fused)):
        preds[name] = read_predictions(predict(run.run_dir, kids_cubes, tmp_path / f"pred_{name}", rows=split.test,
                                               num_workers=0, device="cpu", progress=False)).catalog
    np.testing.assert_allclose(preds["fused"]["z_mean"], preds["mags"]["z_mean"], rtol=0, atol=1e-6)
