"""Bias correction (Lin et al.): each step on small synthetic cases with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_toy_cubes

import zpix
from zpix.cli import main
from zpix.debias.api import DebiasConfig, debias_run, extended_grid, module_with_head, prepare_labels, save_checkpoint
from zpix.debias.balance import balanced_subset, regular_edges
from zpix.debias.head import extended_head, head_inputs, head_probs, pdf_head, train_head
from zpix.debias.labels import edge_shift, fit_sigma, gaussian_labels
from zpix.pdf import RedshiftGrid, pdf_mean
from zpix.prediction.format import read_predictions
from zpix.prediction.streaming import load_ensemble
from zpix.training.config import TrainConfig
from zpix.training.module import PhotoZModule


def test_balanced_subset_caps_every_cell_and_keeps_small_cells_whole():
    rng = np.random.default_rng(1)
    # a crowded mode at z ~ 0.1 and faint magnitudes, a thin tail elsewhere
    z = np.concatenate([rng.normal(0.1, 0.02, 5000), rng.uniform(0.0, 0.35, 500)])
    mag = np.concatenate([rng.normal(17.2, 0.3, 5000), rng.uniform(14, 17.7, 500)])
    z_edges = regular_edges(z, 0.02)
    mag_edges = regular_edges(mag, 0.5)
    sub = balanced_subset(z, mag, z_edges=z_edges, mag_edges=mag_edges, n_th=40, seed=3)
    assert sub.kept.max() == 40 and sub.counts.max() > 400
    np.testing.assert_array_equal(sub.kept, np.minimum(sub.counts, 40))
    # recount the kept rows independently
    zi = np.clip(np.searchsorted(z_edges, z[sub.rows], side="right") - 1, 0, len(z_edges) - 2)
    mi = np.clip(np.searchsorted(mag_edges, mag[sub.rows], side="right") - 1, 0, len(mag_edges) - 2)
    recount = np.zeros_like(sub.kept)
    np.add.at(recount, (zi, mi), 1)
    np.testing.assert_array_equal(recount, sub.kept)
    assert len(np.unique(sub.rows)) == len(sub.rows)
    # nested: a smaller cap keeps a subset of the larger cap's objects
    small = balanced_subset(z, mag, z_edges=z_edges, mag_edges=mag_edges, n_th=10, seed=3)
    assert set(small.rows) <= set(sub.rows)


def test_fitted_sigma_recovers_a_known_smoothing():
    rng = np.random.default_rng(0)
    n = 200_000
    comp = rng.random(n) < 0.7
    z_photo = np.where(comp, rng.normal(0.10, 0.015, n), rng.normal(0.2, 0.01, n))
    # spec-z: the same (collapsed) distribution, widened by a known Gaussian
    comp2 = rng.random(n) < 0.7
    z_true = np.where(comp2, rng.normal(0.10, 0.015, n), rng.normal(0.2, 0.01, n))
    edges = np.linspace(0, 0.4, 91)
    for sigma0 in (0.01, 0.025):
        z_spec = z_true + rng.normal(0, sigma0, n)
        assert fit_sigma(z_spec, z_photo, edges) == pytest.approx(sigma0, rel=0.1)
    # no smoothing needed: sigma below one histogram bin
    assert fit_sigma(z_true, z_photo, edges) < 0.0045


def test_edge_shift_moves_labels_outward_at_the_edges_only():
    rng = np.random.default_rng(2)
    train = rng.uniform(0.02, 0.30, 20000)
    edges = np.linspace(-0.05, 0.45, 226)
    z = np.array([0.022, 0.03, 0.16, 0.29, 0.298])
    mu = edge_shift(z, 0.02, density_z=train, edges=edges)
    assert mu[0] < z[0] - 0.005 and mu[1] < z[1]  # low edge: down, towards the unpopulated side
    assert mu[-1] > z[-1] + 0.005 and mu[-2] > z[-2]  # high edge: up
    assert abs(mu[2] - z[2]) < 1e-3  # flat interior: unchanged
    assert mu[0] - z[0] < mu[1] - z[1]  # the nearer the edge, the larger the shift


def test_range_edge_density_moves_labels_only_near_the_range_edges():
    """edge_density="range": the neighbourhood is modified by the range edges alone, so a label in the
    middle of a steeply falling n(z) stays put, while the balanced density moves it (it slopes there)."""
    rng = np.random.default_rng(3)
    z = np.clip(rng.gamma(3, 0.03, 3000), 0.0, 0.38)
    mag = rng.uniform(15, 17.5, z.size)
    grid = RedshiftGrid(180, 0.0, 0.4)
    zphot = z + rng.normal(0, 0.02, z.size)
    plans = {d: prepare_labels(z_train=z, mag_train=mag, z_val=z, mag_val=mag, zphot_val=zphot, grid=grid,
                               config=DebiasConfig(n_th=10**6, edge_density=d, soft_labels=False))
             for d in ("balanced", "range")}
    zt = z[plans["range"].subset.rows]
    mid = (zt > 0.15) & (zt < 0.2)
    low = zt < 0.01
    shift = {d: p.mu - zt for d, p in plans.items()}
    assert np.abs(shift["range"][mid]).max() < 1e-3 < np.abs(shift["balanced"][mid]).mean()
    assert shift["range"][low].max() < -0.005  # low range edge: labels move below z
    with pytest.raises(ValueError, match="edge_density"):
        prepare_labels(z_train=z, mag_train=mag, z_val=z, mag_val=mag, zphot_val=zphot, grid=grid,
                       config=DebiasConfig(edge_density="flat"))


def test_soft_labels_on_an_extended_grid():
    grid = RedshiftGrid(40, 0.0, 0.4)
    big = extended_grid(grid, 0.03)
    assert big.width == pytest.approx(grid.width) and big.z_min == pytest.approx(-0.03)
    labels = gaussian_labels(np.array([0.005, 0.2]), np.array([0.02, 0.0]), big)
    np.testing.assert_allclose(labels.sum(1), 1, rtol=1e-6)
    assert labels[0, big.centers < 0].sum() > 0.3  # mass beyond z = 0 is kept, not folded back
    assert labels[1].max() == 1.0


def _mag_module(n_mags=5, n_bins=40):
    cfg = {"n_mags": n_mags, "head": "pdf", "use_ebv": True, "n_bins": n_bins, "z_min": 0.0, "z_max": 0.4,
           "mag_widths": [16], "head_widths": [16]}
    return PhotoZModule(model_name="hybrid-mags", model_config=cfg, grid=RedshiftGrid(n_bins, 0.0, 0.4).to_dict(),
                        augment=False)


def test_head_features_reproduce_the_network_and_survive_extension(tmp_path):
    torch.manual_seed(0)
    module = _mag_module()
    batch = {"mags": torch.randn(50, 5), "ebv": torch.rand(50) * 0.1, "z": torch.rand(50) * 0.3}
    inputs = head_inputs(module, [batch])
    np.testing.assert_allclose(head_probs(pdf_head(module), inputs.features, inputs.ebv), inputs.probs, atol=1e-6)
    big = extended_grid(module.grid, 0.03)
    head = extended_head(pdf_head(module), big)
    new = module_with_head(module, head)
    p_big = new(batch).detach().numpy()
    k = round(0.03 / module.grid.width)
    # the old bins keep their logits: the extended softmax, restricted and renormalised, is the old one
    part = p_big[:, k:k + 40] / p_big[:, k:k + 40].sum(1, keepdims=True)
    np.testing.assert_allclose(part, inputs.probs, atol=1e-5)
    path = save_checkpoint(new, tmp_path / "m" / "best.ckpt")
    loaded = PhotoZModule.load_from_checkpoint(path, map_location="cpu")
    loaded.eval()
    np.testing.assert_allclose(loaded(batch).detach().numpy(), p_big, atol=1e-6)
    assert loaded.grid == big


def test_retrained_head_learns_soft_labels_from_frozen_features():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    module = _mag_module()
    feats = rng.normal(size=(800, 16)).astype(np.float32)
    z = 0.2 + 0.05 * np.tanh(feats[:, 0])
    grid = module.grid
    targets = gaussian_labels(z, 0.01, grid)
    ebv = np.zeros(800, np.float32)
    head, hist = train_head(pdf_head(module), (feats, ebv, targets), (feats[:200], ebv[:200], targets[:200], None),
                            lr=3e-3, epochs=30, batch_size=32)
    zp = pdf_mean(head_probs(head, feats, np.zeros(800, np.float32)), grid)
    assert hist["val_loss"][-1] < hist["val_loss"][0]
    assert np.median(np.abs(zp - z)) < 0.01 < np.median(np.abs(z - 0.2))
    # early stopping ends a long run (converged); a run cut by the epoch limit says it is not
    _, long = train_head(pdf_head(module), (feats, ebv, targets), (feats[:200], ebv[:200], targets[:200], None),
                         lr=3e-2, epochs=200, patience=3, batch_size=32)
    _, short = train_head(pdf_head(module), (feats, ebv, targets), (feats[:200], ebv[:200], targets[:200], None),
                          lr=1e-4, epochs=2, batch_size=32)
    assert long["converged"] and long["epochs_run"] < 200
    assert not short["converged"] and short["epochs_run"] == 2


def test_prepare_labels_fits_sigma_per_magnitude_and_weights_validation_to_the_balanced_density():
    rng = np.random.default_rng(4)
    n = 6000
    z = np.clip(rng.gamma(4, 0.025, n), 0.005, 0.39)
    mag = rng.uniform(14, 17.7, n)
    zphot = z + rng.normal(0, 0.01 + 0.01 * (mag - 14) / 3.7, n)
    grid = RedshiftGrid(180, 0.0, 0.4)
    cfg = DebiasConfig(n_th=30, cell_dmag=1.0, sigma_min_count=200)
    plan = prepare_labels(z_train=z[:4000], mag_train=mag[:4000], z_val=z[4000:], mag_val=mag[4000:],
                          zphot_val=zphot[4000:], grid=grid, config=cfg)
    assert plan.subset.kept.max() <= 30
    assert len(plan.sigma) == len(plan.mag_edges) - 1
    assert plan.sigma[-1] > plan.sigma[0]  # fainter: broader collapse, wider labels
    assert plan.train_targets().shape == (len(plan.subset.rows), plan.grid.n_bins)
    # a validation object in a capped cell weighs less than one in an uncapped cell
    assert plan.val_weight.min() < 0.5 and plan.val_weight.max() == 1.0


TINY = {"stem_width": 8, "modules": [[8, 8, 8, 8], [8, 8, 8, 0]], "pool_after": [0, 1], "final_pool_size": 2,
        "fc_widths": [32, 32]}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("debias")
    cubes = write_toy_cubes(root / "toy.h5", n=400, size=16)
    cfg = TrainConfig(cubes=str(cubes), out=str(root / "run"), model="pasquet2019-small", model_args=TINY,
                      n_bins=40, max_epochs=3, batch_size=32, num_workers=0, progress=False, lr=3e-3,
                      accelerator="cpu", devices=1, val_fraction=0.3, calibrate=[],
                      debias={"n_th": 5, "cell_dz": 0.05, "cell_dmag": 1.0, "epochs": 2, "sigma_min_count": 20})
    result = zpix.train(cfg)
    return cubes, root, result


def test_train_with_a_debias_block_writes_the_debiased_calibrated_run(tiny_run):
    cubes, root, result = tiny_run
    out = root / "run-debiased"
    assert result.summary["debiased"]["run"] == str(out)
    assert json.loads((out / "debias.json").read_text())["cells"]["n_th"] == 5
    steps = json.loads((out / "calibration.json").read_text())["steps"]
    assert [s["name"] for s in steps] == ["photoz"]
    assert not (root / "run" / "calibration.json").exists()  # the block leaves the trained run as it was


def test_debias_run_writes_a_run_that_predict_reads(tiny_run):
    cubes, root, _ = tiny_run
    out = root / "run_debiased"
    info = debias_run(root / "run", out, config={"n_th": 5, "cell_dz": 0.05, "cell_dmag": 1.0, "epochs": 3,
                                                  "sigma_min_count": 20})
    saved = json.loads((out / "debias.json").read_text())
    assert saved["cells"]["n_th"] == 5 and max(max(r) for r in saved["cells"]["kept"]) <= 5
    assert len(saved["sigma_per_mag_bin"]) == len(saved["mag_edges"]) - 1
    assert info["n_subset"] == saved["cells"]["n_kept"]
    members = load_ensemble(out)
    assert RedshiftGrid.from_dict(members[0].hparams.grid).n_bins == 40 + 2 * round(0.03 / 0.01)
    res = CliRunner().invoke(main, ["predict", str(out), str(cubes), "--out", str(root / "p"), "--split", "test",
                                    "--num-workers", "0"])
    assert res.exit_code == 0, res.output
    assert len(read_predictions(root / "p")) == 80
    with pytest.raises(FileExistsError):
        debias_run(root / "run", out)


def test_cli_debias_options_and_errors(tiny_run):
    cubes, root, _ = tiny_run
    runner = CliRunner()
    res = runner.invoke(main, ["debias", str(root / "run"), "--out", str(root / "cli_out"), "--n-th", "4",
                               "--cell-dz", "0.05", "--cell-dmag", "1", "--no-soft-labels", "--no-edge-shift",
                               "--edge-scale", "0.5", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    saved = json.loads((root / "cli_out" / "debias.json").read_text())
    assert saved["config"]["soft_labels"] is False
    assert saved["config"]["edge_scale"] == 0.5
    assert saved["sigma_per_mag_bin"] == [0.0] * len(saved["sigma_per_mag_bin"])
    assert saved["grid"] == {"n_bins": 40, "z_min": 0.0, "z_max": 0.4}  # no edge shift: no extension
    info = runner.invoke(main, ["info", str(root / "cli_out")])
    assert info.exit_code == 0, info.output
    assert "N_th = 4" in info.output and "soft labels: off" in info.output and "edge shift: off" in info.output
    info = runner.invoke(main, ["info", str(root / "run-debiased")])
    assert "soft-label σ per r bin" in info.output and "photoz" in info.output
    bad = runner.invoke(main, ["debias", str(root / "nope"), "--out", str(root / "x")])
    assert bad.exit_code != 0 and "nope" in bad.output and "Traceback" not in bad.output
