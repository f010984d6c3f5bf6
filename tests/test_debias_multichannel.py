"""Multi-channel (redshift × r magnitude) heads of the bias correction (zpix.debias.multichannel)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_toy_cubes

import zpix
from zpix.cli import main
from zpix.debias.api import DebiasConfig, debias_run, module_with_head, prepare_labels, retrain_heads, save_checkpoint
from zpix.debias.head import HeadInputs, head_probs, pdf_head
from zpix.debias.multichannel import (
    MagChannelPDFHead,
    channel_index,
    channel_probs,
    joint_targets,
    with_mag_channels,
)
from zpix.models.heads import BinnedPDFHead
from zpix.pdf import RedshiftGrid
from zpix.prediction.format import read_predictions
from zpix.prediction.streaming import load_ensemble
from zpix.training.config import TrainConfig
from zpix.training.module import PhotoZModule


def _mag_module(n_bins=40):
    cfg = {"n_mags": 5, "head": "pdf", "use_ebv": True, "n_bins": n_bins, "z_min": 0.0, "z_max": 0.4,
           "mag_widths": [16], "head_widths": [16]}
    return PhotoZModule(model_name="hybrid-mags", model_config=cfg, grid=RedshiftGrid(n_bins, 0.0, 0.4).to_dict(),
                        augment=False)


def test_marginal_is_a_normalised_pdf_and_the_sum_of_its_channels():
    torch.manual_seed(0)
    base = pdf_head(_mag_module())
    feats, ebv = torch.randn(64, 16), torch.rand(64) * 0.1
    head = with_mag_channels(base, n_channels=3, mag_edges=[15.0, 16.0])
    # split from a single-channel head: the marginal is that head's PDF before any retraining
    torch.testing.assert_close(torch.softmax(head(feats, ebv), 1), torch.softmax(base(feats, ebv), 1))
    with torch.no_grad():
        head.mlp[-1].weight.normal_(0, 1.0)
        head.mlp[-1].bias.normal_(0, 3.0)
    p = torch.softmax(head(feats, ebv), 1).detach().double().numpy()
    joint = channel_probs(head, feats.numpy(), ebv.numpy())
    assert p.shape == (64, 40) and joint.shape == (64, 3, 40)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(joint.sum((1, 2)), 1.0, atol=1e-6)
    # p(z|θ) = Σ_m p(m|θ) p(z|m,θ)
    p_m = joint.sum(2)
    cond = joint / p_m[:, :, None]
    np.testing.assert_allclose(p, (p_m[:, :, None] * cond).sum(1), atol=1e-6)
    assert p_m.min() < 0.2  # the channels really differ after the perturbation
    np.testing.assert_array_equal(channel_index([14.0, 15.0, 15.5, 16.0, 20.0], [15.0, 16.0]), [0, 1, 1, 2, 2])
    q = joint_targets(np.eye(4, dtype=np.float32), np.array([2, 0, 1, 2]), 3)
    assert q.shape == (4, 12) and q[0, 8] == 1 and q[1, 1] == 1 and q[2, 6] == 1 and q[3, 11] == 1


def _two_population_case(n: int, rng: np.random.Generator):
    """Features that say nothing about magnitude: faint objects (r 17-18) at z 0.08, bright ones (r 15-16) at
    z 0.25 (and the feature moves both by ±0.02)."""
    faint = np.arange(n) % 2 == 0  # exactly half: the equal-count channel edge falls between them
    mag = np.where(faint, rng.uniform(17, 18, n), rng.uniform(15, 16, n))
    f = rng.normal(size=(n, 4)).astype(np.float32)
    z = np.where(faint, 0.08, 0.25) + 0.02 * np.tanh(f[:, 0]) + rng.normal(0, 0.003, n)
    return f, mag, z, faint


def test_learns_a_redshift_distribution_that_differs_by_magnitude_channel():
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    grid = RedshiftGrid(40, 0.0, 0.4)
    f_tr, mag_tr, z_tr, _ = _two_population_case(3000, rng)
    f_va, mag_va, z_va, _ = _two_population_case(600, rng)
    cfg = DebiasConfig(n_th=10**9, soft_labels=False, edge_shift=False, mag_channels=2, lr=3e-3, epochs=80,
                       patience=8, batch_size=128, cell_dmag=1.0)
    plan = prepare_labels(z_train=z_tr, mag_train=mag_tr, z_val=z_va, mag_val=mag_va, zphot_val=z_va, grid=grid,
                          config=cfg)
    base = BinnedPDFHead(in_features=4, n_bins=40, z_min=0.0, z_max=0.4, hidden=(32,), use_ebv=False)

    def inputs(f, z):
        return HeadInputs(f, None, np.zeros((len(f), 40)), z, None)

    (head,), (hist,) = retrain_heads([base], [inputs(f_tr[plan.subset.rows], z_tr[plan.subset.rows])],
                                     [inputs(f_va, z_va)], plan)
    assert isinstance(head, MagChannelPDFHead) and head.n_channels == 2
    assert 16.0 < head.mag_edges[0] < 17.0  # equal-count channels split the two populations
    assert plan.to_dict()["mag_channels"]["train_counts"] == [int((mag_tr < head.mag_edges[0]).sum()),
                                                                int((mag_tr >= head.mag_edges[0]).sum())]
    assert hist["val_loss"][-1] < hist["val_loss"][0]
    f_te, _, _, _ = _two_population_case(500, rng)
    joint = channel_probs(head, f_te, None)
    p_m = joint.sum(2).mean(0)
    np.testing.assert_allclose(p_m, [0.5, 0.5], atol=0.05)  # the features cannot tell the channels apart
    cond_mean = (joint * grid.centers).sum(2) / joint.sum(2)
    # p(z|m,θ): the bright channel (m = 0) sits at 0.25, the faint one at 0.08, for every object
    np.testing.assert_allclose(np.median(cond_mean, 0), [0.25, 0.08], atol=0.015)
    marg = head_probs(head, f_te, None)
    np.testing.assert_allclose(marg, joint.sum(1), atol=1e-6)
    # the marginal is bimodal: half its mass on either side of z = 0.165
    lo = marg[:, grid.centers < 0.165].sum(1)
    np.testing.assert_allclose(np.median(lo), 0.5, atol=0.06)


def test_save_load_round_trip_predicts_identically(tmp_path):
    torch.manual_seed(2)
    module = _mag_module()
    head = with_mag_channels(pdf_head(module), n_channels=4, mag_edges=[15.0, 16.0, 17.0])
    with torch.no_grad():
        head.mlp[-1].weight.normal_(0, 0.5)
    new = module_with_head(module, head)
    assert new.hparams.head_channels == {"n_channels": 4, "mag_edges": [15.0, 16.0, 17.0]}
    batch = {"mags": torch.randn(30, 5), "ebv": torch.rand(30) * 0.1, "z": torch.rand(30) * 0.3}
    new.eval()
    before = new(batch).detach().numpy()
    path = save_checkpoint(new, tmp_path / "m" / "best.ckpt")
    loaded = PhotoZModule.load_from_checkpoint(path, map_location="cpu")
    loaded.eval()
    assert isinstance(loaded.model.head, MagChannelPDFHead) and loaded.model.head.mag_edges == [15.0, 16.0, 17.0]
    np.testing.assert_array_equal(loaded(batch).detach().numpy(), before)
    assert before.shape == (30, 40)
    np.testing.assert_allclose(before.sum(1), 1.0, atol=1e-6)


def test_defaults_are_the_single_channel_head():
    assert DebiasConfig().mag_channels == 1
    assert {f.name for f in dataclasses.fields(DebiasConfig)} >= {"mag_channels"}
    rng = np.random.default_rng(3)
    torch.manual_seed(3)
    grid = RedshiftGrid(40, 0.0, 0.4)
    f, mag, z, _ = _two_population_case(400, rng)
    cfg = DebiasConfig(n_th=10**9, edge_shift=False, soft_labels=False, epochs=2)
    plan = prepare_labels(z_train=z, mag_train=mag, z_val=z, mag_val=mag, zphot_val=z, grid=grid, config=cfg)
    assert "mag_channels" not in plan.to_dict()
    base = BinnedPDFHead(in_features=4, n_bins=40, z_min=0.0, z_max=0.4, hidden=(8,), use_ebv=False)
    h = HeadInputs(f, None, np.zeros((400, 40)), z, None)
    (head,), _ = retrain_heads([base], [h.take(plan.subset.rows)], [h], plan)
    assert type(head) is BinnedPDFHead
    module = _mag_module()
    assert module.hparams.head_channels is None and type(module.model.head) is BinnedPDFHead
    assert module_with_head(module, pdf_head(module)).hparams.head_channels is None
    # a multi-channel head is not debiased again
    multi = with_mag_channels(base, n_channels=2, mag_edges=[16.0])
    with pytest.raises(ValueError, match="already have magnitude channels"):
        retrain_heads([multi], [h.take(plan.subset.rows)], [h], plan)


TINY = {"stem_width": 8, "modules": [[8, 8, 8, 8], [8, 8, 8, 0]], "pool_after": [0, 1], "final_pool_size": 2,
        "fc_widths": [32, 32]}


def test_cli_debias_mag_channels_writes_a_run_that_predict_and_info_read(tmp_path):
    cubes = write_toy_cubes(tmp_path / "toy.h5", n=300, size=16)
    cfg = TrainConfig(cubes=str(cubes), out=str(tmp_path / "run"), model="pasquet2019-small", model_args=TINY,
                      n_bins=40, max_epochs=2, batch_size=32, num_workers=0, progress=False, lr=3e-3,
                      accelerator="cpu", devices=1, val_fraction=0.3, calibrate=[])
    zpix.train(cfg)
    runner = CliRunner()
    out = tmp_path / "mc"
    res = runner.invoke(main, ["debias", str(tmp_path / "run"), "--out", str(out), "--n-th", "5", "--cell-dz", "0.05",
                               "--cell-dmag", "1", "--epochs", "3", "--mag-channels", "3"])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "debias.json").read_text())
    assert saved["config"]["mag_channels"] == 3 and saved["mag_channels"]["n_channels"] == 3
    assert len(saved["mag_channels"]["mag_edges"]) == 2 and sum(saved["mag_channels"]["train_counts"]) == saved[
        "cells"]["n_kept"]
    (member,) = load_ensemble(out)
    assert isinstance(member.model.head, MagChannelPDFHead) and member.model.head.n_channels == 3
    n_bins = RedshiftGrid.from_dict(member.hparams.grid).n_bins
    assert n_bins == 40 + 2 * round(0.03 / 0.01)  # the marginal is on the debiased run's (extended) grid
    res = runner.invoke(main, ["predict", str(out), str(cubes), "--out", str(tmp_path / "p"), "--split", "test",
                               "--num-workers", "0"])
    assert res.exit_code == 0, res.output
    pred = read_predictions(tmp_path / "p")
    assert len(pred) == 60
    info = runner.invoke(main, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert "magnitude channels: 3" in info.output
    # from Python and as a config block: the same option
    info2 = debias_run(tmp_path / "run", tmp_path / "mc2", config={"n_th": 5, "cell_dz": 0.05, "cell_dmag": 1.0,
                                                                   "epochs": 2, "mag_channels": 2})
    assert info2["mag_channels"]["n_channels"] == 2
    bad = runner.invoke(main, ["debias", str(out), "--out", str(tmp_path / "again"), "--mag-channels", "2"])
    assert bad.exit_code != 0 and "already have magnitude channels" in bad.output
