"""Adversarial domain adaptation: gradient reversal, Ganin's ramp, guided selection, pairs, DA training."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import write_toy_cubes

from zpix.runs import InputSpec
from zpix.store.cube_store import CubeStore
from zpix.store.dataset import CubeDataset
from zpix.training.domain import (
    DomainAdaptationModule,
    DomainConfig,
    DomainPairDataset,
    domain_inputs,
    ganin_lambda,
    grad_reverse,
)
from zpix.training.guided import MagnitudeMatcher, aperture_magnitude, matching_magnitudes
from zpix.training.module import PhotoZModule


def test_gradient_reversal_flips_and_scales_the_gradient() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    x = torch.randn(5, 6)
    head = torch.randn(5, 4)
    # plain: d(sum(head * f(x)))/dW ; reversed with lambda = 0.3: the same times -0.3, forward unchanged
    (layer(x) * head).sum().backward()
    plain = layer.weight.grad.clone()
    layer.weight.grad = None
    out = grad_reverse(layer(x), 0.3)
    assert torch.equal(out, layer(x))
    (out * head).sum().backward()
    assert torch.allclose(layer.weight.grad, -0.3 * plain)


def test_ganin_ramp() -> None:
    """λ(p) = 2 / (1 + exp(-10 p)) - 1 (Ganin et al. 2016, Sect. 5.2.2)."""
    assert ganin_lambda(0.0) == 0.0
    assert ganin_lambda(0.1) == pytest.approx(2 / (1 + math.exp(-1)) - 1)
    assert ganin_lambda(1.0) == pytest.approx(0.99991, abs=1e-5)
    assert ganin_lambda(0.5, gamma=0) == 1.0
    values = [ganin_lambda(p) for p in np.linspace(0, 1, 11)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))


def test_magnitude_matcher_returns_matched_partners() -> None:
    rng = np.random.default_rng(1)
    target = rng.uniform(14, 18, 400)
    source = rng.uniform(14.5, 17.5, 300)
    matcher = MagnitudeMatcher(target, k=3)
    cand = matcher.candidates(source)
    # exactly the 3 nearest target magnitudes (brute force)
    brute = np.sort(np.argsort(np.abs(target[None, :] - source[:, None]), axis=1)[:, :3], axis=1)
    assert np.array_equal(np.sort(cand, axis=1), brute)
    picks = matcher.draw(source, torch.Generator().manual_seed(0))
    guided = np.abs(target[picks] - source)
    random = np.abs(target[rng.integers(0, 400, 300)] - source)
    assert guided.max() < 0.1 and guided.mean() < 0.02 < 0.5 < random.mean()
    assert len(np.unique(picks)) > 150  # draws spread over the k nearest, not one target per magnitude


def _unlabelled(path: Path, **kwargs) -> Path:
    """A toy target store whose z_spec is all NaN (unlabelled images)."""
    write_toy_cubes(path, **kwargs)
    with h5py.File(path, "r+") as f:
        f["z_spec"][:] = np.nan
    return path


def test_matching_magnitudes_catalogue_and_aperture_fallback(tmp_path: Path) -> None:
    src = write_toy_cubes(tmp_path / "src.h5", n=40)
    with_mags = _unlabelled(tmp_path / "t1.h5", n=30, seed=2)
    no_mags = _unlabelled(tmp_path / "t2.h5", n=30, seed=3, with_mags=False)
    rows_s, rows_t = np.arange(40), np.arange(30)
    s, t, kind = matching_magnitudes(src, rows_s, with_mags, rows_t, "r")
    assert kind == "catalogue"
    with CubeStore(src) as store:
        assert np.allclose(s, store.column("mags")[:, 2])
    s, t, kind = matching_magnitudes(src, rows_s, no_mags, rows_t, "r")
    assert kind == "aperture" and np.isfinite(s).all() and np.isfinite(t).all()
    # the aperture magnitude follows the r flux: it tracks the catalogue r magnitude up to a constant
    with CubeStore(src) as store:
        offset = s - store.column("mags")[:, 2]
        assert offset.std() < 0.05
        # ten times the flux is 2.5 magnitudes brighter
        bright = tmp_path / "bright.h5"
        with h5py.File(src, "r") as f, h5py.File(bright, "w") as g:
            for key in f:
                f.copy(key, g)
            g.attrs.update(f.attrs)
            g["images"][...] = f["images"][...] * 10
    with CubeStore(bright) as store:
        assert np.allclose(aperture_magnitude(store, "r", rows_s), s - 2.5, atol=1e-4)


def _forbid_target_labels(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """Make any read of the target store's z_spec fail the test."""
    original = CubeStore.column

    def column(self: CubeStore, name: str) -> np.ndarray:
        if name == "z_spec" and Path(self.path).resolve() == target.resolve():
            raise AssertionError("the target's z_spec was read")
        return original(self, name)

    monkeypatch.setattr(CubeStore, "column", column)


def test_pair_dataset_never_reads_target_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_toy_cubes(tmp_path / "src.h5", n=40)
    tgt = _unlabelled(tmp_path / "tgt.h5", n=60, seed=5)
    _forbid_target_labels(monkeypatch, tgt)
    data = DomainPairDataset(CubeDataset(src), tgt, DomainConfig(match_k=1))
    assert data.match_kind == "catalogue"
    items = data.__getitems__(list(range(40)))
    with CubeStore(src) as s, h5py.File(tgt) as t:
        src_r = s.column("mags")[:, 2]
        tgt_r = t["mags"][:, 2]
        partner = np.array([int(i["target_index"]) for i in items])
        assert np.array_equal(items[3]["target_image"].numpy(), t["images"][partner[3]])
    gap = np.abs(tgt_r[partner] - src_r)
    nearest = np.abs(tgt_r[None, :] - src_r[:, None]).min(axis=1)
    assert np.allclose(gap, nearest)  # k = 1: the nearest target magnitude
    with pytest.raises(AssertionError, match="z_spec was read"):  # the guard itself works
        _ = CubeStore(tgt).z_spec


def test_domain_inputs_pairs() -> None:
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    x, y, w = domain_inputs(s, t, paired=True)
    assert x.shape == (12, 6) and y.tolist() == [0] * 4 + [1] * 8
    assert torch.allclose(x[0], torch.cat([s[0] + t[0], (s[0] - t[0]).abs()]))
    assert w[:4].sum() == w[4:].sum()  # "same field" and "different fields" weigh the same
    assert torch.allclose(domain_inputs(t, s, paired=True)[0][:4], x[:4])  # a pair's order tells nothing
    x, y, _ = domain_inputs(s, t, paired=False)
    assert x.shape == (8, 3) and y.tolist() == [1] * 4 + [0] * 4


def _module(adversarial: str, weight: float = 1.0) -> DomainAdaptationModule:
    torch.manual_seed(0)
    module = DomainAdaptationModule(model_name="pasquet2019-small",
                                    model_config={"n_bands": 5, "image_size": 16, "n_bins": 20, "final_pool_size": 2},
                                    grid={"n_bins": 20, "z_min": 0.0, "z_max": 0.4}, augment=False)
    module.attach_domain({"adversarial": adversarial, "weight": weight, "ramp_gamma": 0.0})
    return module


def test_module_reverses_the_discriminator_gradient_on_the_features() -> None:
    """grl: feature-extractor gradient = task gradient - λ × D-loss gradient; none: the task gradient alone."""
    batch = {"image": torch.randn(6, 5, 16, 16), "target_image": torch.randn(6, 5, 16, 16) * 3,
             "ebv": torch.rand(6), "z": torch.rand(6) * 0.4}

    def stem_grad(module: DomainAdaptationModule, what: str) -> torch.Tensor:
        module.zero_grad()
        if what == "total":
            loss = module.training_step(batch, 0)
        else:
            feats = module.model.backbone(torch.cat([batch["image"], batch["target_image"]]))
            if what == "task":
                loss = module.loss(module.model.head(feats[:6], batch["ebv"]), batch["z"])
            else:  # D's own loss, no reversal
                x, y, w = domain_inputs(feats[:6], feats[6:], True)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(module.discriminator(x), y, weight=w,
                                                                            reduction="sum") / w.sum()
        loss.backward()
        return module.model.backbone.stem.layers[0].conv.weight.grad.clone()

    module = _module("grl", weight=0.7)
    module.log = lambda *a, **k: None  # outside a Trainer
    task, disc, total = stem_grad(module, "task"), stem_grad(module, "disc"), stem_grad(module, "total")
    assert disc.abs().sum() > 0
    assert torch.allclose(total, task - 0.7 * disc, atol=1e-6, rtol=1e-4)
    module = _module("none")
    module.log = lambda *a, **k: None
    assert torch.allclose(stem_grad(module, "total"), stem_grad(module, "task"), atol=1e-7)


@pytest.mark.parametrize("domain", [
    {"adversarial": "grl", "guided": True, "paired": True},
    {"adversarial": "gan", "guided": False, "paired": False},
])
def test_domain_adaptation_trains_on_cpu_with_an_unlabelled_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   domain: dict) -> None:
    from zpix.training.api import train

    src = write_toy_cubes(tmp_path / "src.h5", n=80)
    tgt = _unlabelled(tmp_path / "tgt.h5", n=48, seed=9, with_mags=False)  # aperture fallback
    _forbid_target_labels(monkeypatch, tgt)
    result = train({"cubes": str(src), "target_cubes": str(tgt), "out": str(tmp_path / "run"),
                    "model": "pasquet2019-small", "model_args": {"final_pool_size": 2}, "max_epochs": 2,
                    "batch_size": 16, "num_workers": 0, "progress": False, "domain": domain})
    member = result.summary["members"][0]
    assert member["steps"] == 2 * (len(result.split.train) // 16)
    metrics = member["last_metrics"]
    assert np.isfinite(metrics["val_loss"]) and 0.99 < metrics["domain_lambda"] <= 1.0
    assert 0.0 <= metrics["domain_acc"] <= 1.0
    ckpt = torch.load(result.checkpoints[0], map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1  # select = last: the end of the ramp, not the best source validation
    assert ckpt["zpix_domain"]["target_cubes"] == str(tgt)
    assert ckpt["zpix_domain"]["config"]["paired"] == domain["paired"]
    assert not any(k.startswith("discriminator.") for k in ckpt["state_dict"])
    # prediction and init_from read it as a plain photo-z module; resuming restores the discriminator
    plain = PhotoZModule.load_from_checkpoint(result.checkpoints[0], map_location="cpu")
    assert type(plain) is PhotoZModule
    again = DomainAdaptationModule.load_from_checkpoint(result.checkpoints[0], map_location="cpu")
    for key, value in ckpt["zpix_domain"]["discriminator"].items():
        assert torch.equal(again.state_dict()[key], value)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert str(tgt) in saved
    # the run's input spec records the target store (path, size, ids digest), read without its z_spec
    spec = InputSpec.load(tmp_path / "run")
    with h5py.File(tgt) as f:
        ids = f["ids"][:].astype(np.int64)
    assert spec.target == {"path": str(tgt), "n_rows": 48, "bands": list("ugriz"), "image_shape": [5, 16, 16],
                           "digest": hashlib.sha256(ids.tobytes()).hexdigest()[:16]}


def test_input_spec_target_is_empty_without_adaptation_and_optional_on_load(tmp_path: Path) -> None:
    from zpix.training.api import train

    src = write_toy_cubes(tmp_path / "src.h5", n=40)
    train({"cubes": str(src), "out": str(tmp_path / "run"), "model": "pasquet2019-small",
           "model_args": {"final_pool_size": 2}, "max_epochs": 1, "batch_size": 16, "num_workers": 0,
           "progress": False})
    path = tmp_path / "run" / "input_spec.json"
    doc = json.loads(path.read_text())
    assert doc["target"] == {}
    del doc["target"]  # a run written before input specs had a target still loads
    path.write_text(json.dumps(doc))
    assert InputSpec.load(tmp_path / "run").target == {}


# -- benchmarks/domain_adaptation.py on existing stores: fields chosen by their seeing -------------------------
def _bench():
    import importlib
    import sys

    bench_dir = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    return importlib.import_module("domain_adaptation")


#: mean g/r/i FWHM of the toy fields: B is the best seeing, D the worst
FWHM = {"A": 1.2, "B": 0.9, "C": 1.4, "D": 1.6}


def _injected_like(path: Path, n: int = 120, summary_beside: bool = False) -> Path:
    """A toy store shaped like `zpix inject`'s: a catalog/field column and the per-field summary."""
    write_toy_cubes(path, n=n, seed=4)
    names = np.array(list(FWHM))[np.arange(n) % len(FWHM)]
    summary = {f: {"ebv": 0.03, "bands": {b: {"fwhm_arcsec": fw + 0.01 * i, "depth_5sigma": 22.0 - fw}
                                          for i, b in enumerate("ugriz")}} for f, fw in FWHM.items()}
    with h5py.File(path, "r+") as f:
        f.create_dataset("catalog/field", data=names.astype(object), dtype=h5py.string_dtype())
        f["z_spec"][::10] = np.nan  # some objects without a label
        if summary_beside:
            path.with_name(path.stem + "_fields.json").write_text(json.dumps(summary))
        else:
            f.attrs["fields"] = json.dumps(summary)
    return path


@pytest.mark.parametrize("beside", [False, True])
def test_field_conditions_rank_fields_by_seeing(tmp_path: Path, beside: bool) -> None:
    bench = _bench()
    cond = bench.field_conditions(_injected_like(tmp_path / "inj.h5", summary_beside=beside))
    assert sorted(cond) == sorted(FWHM) and all(c["n_objects"] == 30 for c in cond.values())
    assert cond["C"]["fwhm_gri"] == pytest.approx(1.42) and cond["C"]["depth_gri"] == pytest.approx(20.6)
    assert bench.select_fields(cond, "worst-seeing:2") == ["C", "D"]
    assert bench.select_fields(cond, "best-seeing:1", taken=["B"]) == ["A"]  # B is taken: the next best
    assert bench.select_fields(cond, "rest", taken=["C", "D"]) == ["A", "B"]
    assert bench.select_fields(cond, "D, A") == ["A", "D"]
    with pytest.raises(SystemExit, match="both source and target"):
        bench.select_fields(cond, "A", taken=["A"])
    with pytest.raises(SystemExit, match="not in the store"):
        bench.select_fields(cond, "E")
    with pytest.raises(SystemExit, match="K must be between 1 and 4"):
        bench.select_fields(cond, "worst-seeing:5")


def test_store_plan_holds_out_the_target_fields(tmp_path: Path) -> None:
    import argparse

    bench = _bench()
    store = _injected_like(tmp_path / "inj.h5")
    args = argparse.Namespace(source_cubes=store, target_cubes=store, source_fields="best-seeing:2",
                              target_fields="worst-seeing:1", n_train=20, n_val=10, n_test=10, n_target_pool=12,
                              n_target_test=10, subset_seed=3)
    plan = bench.store_plan(args)
    assert plan["target_fields"] == ["D"] and plan["source_fields"] == ["A", "B"]
    with CubeStore(store) as s:
        field, z = s.column("catalog/field"), s.z_spec
    src, pool, test = plan["source_rows"], plan["pool_rows"], plan["test_rows"]
    assert set(field[src]) == {"A", "B"} and set(field[pool]) | set(field[test]) == {"D"}
    assert len(src) == 40 and len(pool) == 12 and len(test) == 10
    assert np.isfinite(z[src]).all() and np.isfinite(z[test]).all()  # scored / trained rows carry labels
    assert len(np.intersect1d(pool, test)) == 0
    args.n_target_pool = 25  # field D holds 30 objects: too few for 25 + 10
    with pytest.raises(SystemExit, match="choose smaller sizes"):
        bench.store_plan(args)
    args.source_fields = None
    with pytest.raises(SystemExit, match="give --source-fields and --target-fields"):
        bench.store_plan(args)


def test_benchmark_runs_on_held_out_fields_and_reuses_its_runs(tmp_path: Path, capsys: pytest.CaptureFixture
                                                              ) -> None:
    bench = _bench()
    store = _injected_like(tmp_path / "inj.h5", n=240)
    out = tmp_path / "da.json"
    argv = ["--source-cubes", str(store), "--target-cubes", str(store), "--source-fields", "best-seeing:2",
            "--target-fields", "worst-seeing:1", "--workdir", str(tmp_path / "work"), "--out", str(out),
            "--n-train", "24", "--n-val", "8", "--n-test", "10", "--n-target-pool", "30", "--n-target-test", "12",
            "--stamp", "16", "--epochs", "1", "--batch-size", "8", "--seeds", "0"]
    bench.main([*argv, "--methods", "no_da", "da", "--partial"])
    assert not out.exists()  # --partial: runs and their scores only
    doc = bench.main(argv)
    assert "reusing no_da_s0 and its scores" in capsys.readouterr().out
    assert doc["fields"]["target"]["fields"] == ["D"] and doc["fields"]["source"]["fields"] == ["A", "B"]
    assert set(doc["methods"]) == {"no_da", "da", "da_no_guided", "oracle"}
    da = doc["methods"]["da"]
    assert da["domain"] == {"weight": 1.0, "adversarial": "grl", "guided": True, "paired": True}
    assert da["seeds"][0]["target"]["n"] == 12 and da["seeds"][0]["source"]["n"] == 10
    assert 0 <= da["seeds"][0]["final_domain_acc"] <= 1
    spec = json.loads((tmp_path / "work" / "da_s0" / "input_spec.json").read_text())
    assert spec["target"]["path"].endswith("target_pool_16.h5") and spec["target"]["n_rows"] == 30
    assert json.loads((tmp_path / "work" / "no_da_s0" / "input_spec.json").read_text())["target"] == {}
    v = doc["verdict"]
    gap = doc["methods"]["no_da"]["sigma_mad"] - doc["methods"]["oracle"]["sigma_mad"]
    assert v["gap_sigma_mad"] == pytest.approx(gap)
    assert v["gap_closed_sigma_mad"] == pytest.approx((doc["methods"]["no_da"]["sigma_mad"] - da["sigma_mad"]) / gap)
    assert json.loads(out.read_text())["verdict"]["target_met"] == v["target_met"]
    with pytest.raises(SystemExit, match="pins other fields"):  # another budget in the same workdir
        bench.main([*argv, "--epochs", "2", "--partial"])
    # --gather-only trains nothing: runs never made (here the controls) are listed as not run
    gathered = bench.main([*argv, "--gather-only", "--controls"])
    assert set(gathered["methods"]) == set(doc["methods"]) and gathered["not_run"] == ["guided_only", "paired_only"]
    assert not (tmp_path / "work" / "guided_only_s0").exists()
