from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import write_toy_cubes

import zpix
from zpix.cli import main
from zpix.evaluation.metrics import delta_z, sigma_mad
from zpix.pdf import RedshiftGrid, pdf_mean
from zpix.prediction.format import read_predictions
from zpix.prediction.streaming import load_ensemble
from zpix.runs import Split
from zpix.store.cube_store import CubeStore
from zpix.training.config import TrainConfig
from zpix.training.module import PhotoZModule, regression_to_pdf
from zpix.training.splits import kfold_splits, random_split

TINY = {"stem_width": 8, "modules": [[8, 8, 8, 8], [8, 8, 8, 0]], "pool_after": [0, 1], "final_pool_size": 2,
        "fc_widths": [32, 32]}


def tiny_config(cubes, out, **kw) -> TrainConfig:
    base = dict(cubes=str(cubes), out=str(out), model="pasquet2019-small", model_args=TINY, n_bins=40,
                max_epochs=2, batch_size=32, num_workers=0, progress=False, lr=3e-3, accelerator="cpu", devices=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    cubes = write_toy_cubes(root / "toy.h5", n=300, size=16)
    result = zpix.train(tiny_config(cubes, root / "run", ensemble=2, max_epochs=8))
    return cubes, result


def _batch(cubes, rows):
    with CubeStore(cubes) as store:
        return {"image": torch.from_numpy(store.images(rows)), "ebv": torch.from_numpy(store.ebv[rows]),
                "z": torch.from_numpy(store.z_spec[rows].astype(np.float32))}


def test_loss_falls_on_a_fixed_batch(toy_cubes):
    torch.manual_seed(0)
    cfg = tiny_config(toy_cubes, "unused", augment=False, lr_schedule="none")
    from zpix.training.api import build_module

    module = build_module(cfg, 5, 16, 0)
    opt = module.configure_optimizers()
    batch = _batch(toy_cubes, np.arange(32))
    losses = []
    for _ in range(40):
        loss = module.loss(module.raw_output(batch, True), batch["z"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * losses[0], losses[::10]


def test_run_directory_is_complete_and_reproducible(trained):
    cubes, result = trained
    run = result.run_dir
    assert len(result.checkpoints) == 2 and all(p.exists() for p in result.checkpoints)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["ensemble"] == 2 and "torch" in saved["versions"] and saved["n_test"] == 60
    assert TrainConfig.from_yaml(run / "config.yaml") == tiny_config(cubes, run, ensemble=2, max_epochs=8)
    split = Split.load(run / "split.npz")
    assert not set(split.train) & set(split.test) and not set(split.val) & set(split.test)
    assert len(split.train) + len(split.val) + len(split.test) == 300
    again = random_split(np.arange(300), 0.2, 0.1, seed=0)
    np.testing.assert_array_equal(again.test, split.test)


def test_checkpoint_reload_gives_identical_predictions(trained):
    cubes, result = trained
    module = PhotoZModule.load_from_checkpoint(result.checkpoints[0], map_location="cpu").eval()
    reloaded = PhotoZModule.load_from_checkpoint(result.checkpoints[0], map_location="cpu").eval()
    batch = _batch(cubes, np.arange(10))
    with torch.no_grad():
        torch.testing.assert_close(module(batch), reloaded(batch), rtol=0, atol=0)


def test_streaming_ensemble_prediction(trained, tmp_path):
    cubes, result = trained
    rows = np.arange(300)[::-1][:150]  # unsorted rows, many batches
    # fp32, like load_ensemble's default below ("auto" may pick bf16 on this machine)
    out = zpix.predict(result.run_dir, cubes, tmp_path / "pred", rows=rows, batch_size=16, num_workers=0,
                       progress=False, precision="32")
    pred = read_predictions(out)
    assert len(pred) == 150 and pred.pdfs.shape == (150, 40)
    np.testing.assert_array_equal(pred.catalog["id"], rows)  # ids of the toy store equal rows
    members = load_ensemble(result.run_dir)
    batch = _batch(cubes, rows[:20])
    with torch.no_grad():
        each = [m(batch).numpy() for m in members]
    assert not np.allclose(each[0], each[1])
    np.testing.assert_allclose(pred.pdfs[:20], np.mean(each, axis=0), atol=2e-6)
    grid = RedshiftGrid(40)
    np.testing.assert_allclose(pred.catalog["z_mean"][:20], pdf_mean(np.mean(each, axis=0), grid), atol=1e-5)
    with CubeStore(cubes) as store:
        np.testing.assert_allclose(pred.catalog["r_mag"], store.column("catalog/r_mag")[rows])
        np.testing.assert_allclose(pred.catalog["z_spec"], store.z_spec[rows].astype(np.float32), rtol=1e-6)


def test_prediction_is_atomic(trained, tmp_path, monkeypatch):
    cubes, result = trained
    import zpix.prediction.journal

    calls = {"n": 0}
    original = zpix.prediction.journal.ChunkJournal.commit

    def dying_commit(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(zpix.prediction.journal.ChunkJournal, "commit", dying_commit)
    with pytest.raises(KeyboardInterrupt):
        zpix.predict(result.run_dir, cubes, tmp_path / "pred", batch_size=16, num_workers=0, progress=False,
                     chunk_rows=16)
    # nothing that looks complete; only the hidden work directory with the two committed chunks
    assert [p.name for p in tmp_path.iterdir()] == [".pred.partial-resume"]
    assert len(list((tmp_path / ".pred.partial-resume" / "journal").glob("chunk-*.npz"))) == 2


def test_learns_redshift_better_than_the_prior(trained, tmp_path):
    cubes, result = trained
    pred = read_predictions(zpix.predict(result.run_dir, cubes, tmp_path / "p", rows=result.split.test,
                                         num_workers=0, progress=False))
    z = pred.catalog["z_spec"].to_numpy()
    learned = sigma_mad(delta_z(pred.catalog["z_mean"].to_numpy(), z))
    prior = sigma_mad(delta_z(np.full_like(z, np.median(z)), z))
    assert learned < 0.7 * prior, (learned, prior)


def test_regression_to_pdf_matches_the_gaussian():
    edges = torch.linspace(0, 0.4, 401)
    out = torch.tensor([[0.2, np.log(0.02)], [0.1, np.log(0.005)], [0.9, np.log(0.01)]])
    probs = regression_to_pdf(out, edges).numpy()
    centers = (edges[1:] + edges[:-1]).numpy() / 2
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    mean = probs @ centers
    std = np.sqrt(probs @ centers**2 - mean**2)
    np.testing.assert_allclose(mean[:2], [0.2, 0.1], atol=1e-4)
    np.testing.assert_allclose(std[:2], [0.02, 0.005], rtol=0.02)
    assert probs[2].argmax() == 399  # off-grid mass goes to the nearest edge bin


def test_hybrid_regression_with_huber_trains(tmp_path):
    cubes = write_toy_cubes(tmp_path / "toy.h5", n=200, size=16)
    result = zpix.train(tiny_config(cubes, tmp_path / "run", model="hybrid-mags", model_args={}, use_mags=True,
                                    max_epochs=3, lr=3e-3))
    module = load_ensemble(result.run_dir)[0]
    assert module.loss_name == "huber" and module.model.output_kind == "regression"
    pred = read_predictions(zpix.predict(result.run_dir, cubes, tmp_path / "p", num_workers=0, progress=False))
    assert np.isfinite(pred.pdfs).all() and np.allclose(pred.pdfs.sum(1), 1, atol=1e-5)


def test_kfold_predicts_every_object_once(tmp_path):
    cubes = write_toy_cubes(tmp_path / "toy.h5", n=120, size=16)
    splits = kfold_splits(np.arange(120), 3, 0.1, seed=1)
    assert sorted(np.concatenate([s.test for s in splits])) == list(range(120))
    doc = zpix.training.api.kfold(tiny_config(cubes, tmp_path / "kf", max_epochs=1), k=2)
    assert len(doc["folds"]) == 2 and set(doc["mean"]) >= {"sigma_mad", "bias", "eta", "crps"}
    merged = read_predictions(tmp_path / "kf" / "predictions")
    assert sorted(merged.catalog["id"]) == list(range(120))


def test_cli_train_then_predict_test_split(tmp_path):
    cubes = write_toy_cubes(tmp_path / "toy.h5", n=100, size=16)
    cfg = tiny_config(cubes, tmp_path / "run", max_epochs=1)
    cfg.save(tmp_path / "cfg.yaml")
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--config", str(tmp_path / "cfg.yaml"), "--seed", "3", "--set", "lr=0.002"])
    assert res.exit_code == 0, res.output
    saved = TrainConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.seed == 3 and saved.lr == 0.002
    res = runner.invoke(main, ["predict", str(tmp_path / "run"), str(cubes), "--out", str(tmp_path / "p"),
                               "--split", "test", "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert len(read_predictions(tmp_path / "p")) == 20
    bad = runner.invoke(main, ["train", "--cubes", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "r2")])
    assert bad.exit_code != 0 and "missing.h5 not found" in bad.output


def test_plateau_schedule_drops_the_learning_rate(toy_cubes):
    from zpix.training.api import build_module

    module = build_module(tiny_config(toy_cubes, "unused", lr_patience=1), 5, 16, 0)
    conf = module.configure_optimizers()
    scheduler = conf["lr_scheduler"]["scheduler"]
    for loss in (1.0, 1.0, 1.0, 1.0):  # no improvement: lr must fall by lr_factor
        scheduler.step(loss)
    assert conf["optimizer"].param_groups[0]["lr"] == pytest.approx(3e-3 * 0.1)
    constant = build_module(tiny_config(toy_cubes, "unused", lr_schedule="none"), 5, 16, 0)
    assert isinstance(constant.configure_optimizers(), torch.optim.Adam)


def test_cosine_schedule_follows_half_a_cosine_over_the_run(toy_cubes):
    from types import SimpleNamespace

    from zpix.training.api import build_module

    module = build_module(tiny_config(toy_cubes, "unused", lr_schedule="cosine"), 5, 16, 0)
    module.trainer = SimpleNamespace(estimated_stepping_batches=10)
    conf = module.configure_optimizers()
    assert conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(10):
        conf["optimizer"].step()
        conf["lr_scheduler"]["scheduler"].step()
        lrs.append(conf["optimizer"].param_groups[0]["lr"])
    # lr_t = lr (1 + cos(pi t / T)) / 2: half way at t = T/2, zero at the end
    assert lrs[4] == pytest.approx(3e-3 / 2)
    assert lrs[9] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="lr_schedule"):
        build_module(tiny_config(toy_cubes, "unused", lr_schedule="linear"), 5, 16, 0)


def test_fine_tuning_starts_from_the_trained_weights(trained, tmp_path):
    cubes, result = trained
    # lr = 0: training changes nothing, so the fine-tuned run must predict exactly what member 0 predicts
    tuned = zpix.train(tiny_config(cubes, tmp_path / "tuned", lr=0.0, max_epochs=1, lr_schedule="none",
                                   init_from=[str(result.checkpoints[0])]), split=result.split)
    assert tuned.summary["members"][0]["n_initialised_tensors"] > 0
    batch = _batch(cubes, result.split.test[:16])
    before, after = (load_ensemble(p, channels_last=False)[0] for p in (result.checkpoints[0], tuned.checkpoints[0]))
    with torch.no_grad():
        torch.testing.assert_close(after(batch), before(batch))
    with pytest.raises(ValueError, match="init_from"):
        zpix.train(tiny_config(cubes, tmp_path / "wrong", n_bins=30, max_steps=1,
                               init_from=[str(result.checkpoints[0])]), split=result.split)


def test_compiled_training_writes_plain_checkpoints(toy_cubes, tmp_path):
    # the "eager" backend runs TorchDynamo's capture without needing a C++ compiler
    result = zpix.train(tiny_config(toy_cubes, tmp_path / "run", compile="eager", max_steps=2, max_epochs=1))
    state = torch.load(result.checkpoints[0], map_location="cpu", weights_only=False)["state_dict"]
    assert all(k.startswith("model.") and "_orig_mod" not in k for k in state)
    module = load_ensemble(result.run_dir)[0]
    assert module.hparams.compile == "none"
    eager = PhotoZModule.load_from_checkpoint(result.checkpoints[0], compile="eager").eval()
    batch = _batch(toy_cubes, np.arange(8))
    with torch.no_grad():
        torch.testing.assert_close(eager.raw_output(batch), module.raw_output(batch))


def test_a_few_steps_shorter_than_an_epoch_still_give_a_checkpoint(tmp_path):
    # 300 objects, batch 32: 6 steps per epoch; 2 steps must still be validated and checkpointed
    cubes = write_toy_cubes(tmp_path / "toy.h5", n=300)
    result = zpix.train(tiny_config(cubes, tmp_path / "run", max_steps=2, max_epochs=1))
    member = result.summary["members"][0]
    assert member["steps"] == 2 and result.checkpoints[0].is_file()
    assert np.isfinite(member["best_val_loss"])
