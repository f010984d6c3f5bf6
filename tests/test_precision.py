"""Mixed precision (zpix.precision) and the machine-derived defaults (zpix.hardware)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_toy_cubes

import zpix
from zpix import hardware
from zpix.models import create_model
from zpix.precision import body_modules, cast_body, fp32_modules, keep_ends_fp32, runs_in_bf16
from zpix.prediction.format import read_predictions
from zpix.prediction.streaming import load_ensemble, member_probabilities
from zpix.training.config import TrainConfig

TINY = {"stem_width": 8, "modules": [[8, 8, 8, 8], [8, 8, 8, 0]], "pool_after": [0, 1], "final_pool_size": 2,
        "fc_widths": [32, 32]}
SPEED_JSON = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "speed.json"


def tiny_model(**kw):
    torch.manual_seed(0)
    return create_model("pasquet2019-small", image_size=16, n_bins=40, **{**TINY, **kw}).eval()


def inputs(n=6, size=16):
    g = torch.Generator().manual_seed(1)
    # nanomaggy-like: mostly sky noise, a few bright pixels
    return torch.randn(n, 5, size, size, generator=g).abs() ** 3, torch.rand(n, generator=g) * 0.1


def test_partition_keeps_the_pixel_convolution_and_the_head_in_fp32():
    model = create_model("pasquet2019")
    assert body_modules(model) == ["backbone.trunk"]
    assert fp32_modules(model) == ["backbone.stem.layers.0", "head"]
    hybrid = create_model("hybrid")
    assert fp32_modules(hybrid) == ["cnn.stem.layers.0", "mag_net", "head"]
    # a second stem convolution (multimodal) is body, its first is not
    multi = create_model("multimodal-small")
    assert body_modules(multi) == ["stems.layers.2", "trunk"]
    assert fp32_modules(multi)[0] == "stems.layers.0"


def test_a_model_without_convolutions_stays_fp32_in_bf16():
    # the magnitude network is all 'convolution-free parts': bf16 inference must be its fp32 inference
    # (it used to raise, so `zpix predict` with the default precision failed on a bf16 machine)
    torch.manual_seed(0)
    model = create_model("hybrid-mags", n_bins=40).eval()
    mags, ebv = torch.rand(6, model.mag_net.n_mags) * 5 + 15, torch.rand(6) * 0.1
    with torch.no_grad():
        ref = model(None, ebv, mags)
        cast = cast_body(copy.deepcopy(model))
        assert not runs_in_bf16(cast)
        assert all(p.dtype == torch.float32 for p in cast.parameters())
        torch.testing.assert_close(cast(None, ebv, mags), ref, rtol=0, atol=0)
    assert runs_in_bf16(cast_body(tiny_model()))


def test_cast_body_runs_the_trunk_in_bf16_and_returns_fp32():
    model = tiny_model()
    x, ebv = inputs()
    with torch.no_grad():
        ref = model(x, ebv)
    mixed = cast_body(copy.deepcopy(model))
    assert mixed.backbone.trunk.layers[0].entry.conv.weight.dtype == torch.bfloat16
    assert mixed.backbone.stem.layers[0].conv.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in mixed.head.parameters())
    assert set(mixed.state_dict()) == set(model.state_dict())
    seen = {}

    def record(name):
        def hook(module, args):
            seen[name] = args[0].dtype  # returns None: the inputs are left as they are
        return hook

    mixed.head.register_forward_pre_hook(record("head_in"))
    mixed.backbone.trunk.layers[0].entry.conv.register_forward_pre_hook(record("trunk_in"))
    with torch.no_grad():
        out = mixed(x, ebv)
    assert seen == {"head_in": torch.float32, "trunk_in": torch.bfloat16}
    assert out.dtype == torch.float32
    # bf16 rounding (2^-8) in the body, not a different network
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert (out - ref).abs().max() > 0
    # idempotent: a second call changes nothing
    cast_body(mixed)
    with torch.no_grad():
        torch.testing.assert_close(mixed(x, ebv), out)


def test_keep_ends_fp32_under_autocast():
    model = keep_ends_fp32(tiny_model())
    x, ebv = inputs()
    dtypes = {}

    def record(name):
        def hook(module, args, out):
            dtypes[name] = out.dtype
        return hook

    for name in ("backbone.stem.layers.0.conv", "backbone.trunk.layers.0.entry.conv", "head.mlp.4"):
        model.get_submodule(name).register_forward_hook(record(name))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, ebv)
    assert dtypes == {"backbone.stem.layers.0.conv": torch.float32,
                      "backbone.trunk.layers.0.entry.conv": torch.bfloat16, "head.mlp.4": torch.float32}
    assert out.dtype == torch.float32
    # outside autocast the wrapped model is the fp32 model, bit for bit
    with torch.no_grad():
        torch.testing.assert_close(model(x, ebv), tiny_model()(x, ebv), rtol=0, atol=0)


def test_wrapped_model_compiles_deepcopies_and_trains():
    model = keep_ends_fp32(tiny_model()).train()
    twin = copy.deepcopy(model)
    assert twin.head.forward.module is twin.head  # the copy calls its own head, not the original's
    compiled = torch.compile(model, backend="eager")
    x, ebv = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = compiled(x, ebv).float().logsumexp(1).mean()
    loss.backward()
    assert model.backbone.stem.layers[0].conv.weight.grad is not None
    assert model.backbone.stem.layers[0].conv.weight.grad.dtype == torch.float32


def test_member_probabilities_do_not_depend_on_the_slicing(tmp_path):
    cubes = write_toy_cubes(tmp_path / "toy.h5", n=60, size=16)
    run = zpix.train(TrainConfig(cubes=str(cubes), out=str(tmp_path / "run"), model="pasquet2019-small",
                                 model_args=TINY, n_bins=40, max_epochs=1, max_steps=2, batch_size=16,
                                 num_workers=0, progress=False, accelerator="cpu", devices=1, calibrate=[],
                                 precision="32-true")).run_dir
    members = load_ensemble(run, "cpu")
    x, ebv = inputs(n=10)
    batch = {"image": x, "ebv": ebv, "z": torch.zeros(10), "index": torch.arange(10)}
    with torch.inference_mode():
        whole = member_probabilities(members, batch)
        sliced = member_probabilities(members, batch, chunk=3)
    assert whole.shape == (1, 10, 40) and whole.dtype == torch.float32
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-6)
    # a compiled member sees only full slices: the last one (1 of 3 objects) is padded, then trimmed
    shapes = []
    members[0]._compiled = lambda images, ebv, mags: shapes.append(len(images)) or members[0].model(images, ebv)
    with torch.inference_mode():
        padded = member_probabilities(members, batch, chunk=3)
    assert shapes == [3, 3, 3, 3]
    torch.testing.assert_close(padded, whole, rtol=1e-5, atol=1e-6)
    members[0]._compiled = None
    # bf16 predictions of the same run: written like fp32 ones, z_mean within bf16 rounding
    out32 = zpix.predict(run, cubes, tmp_path / "p32", split="all", precision="32", progress=False)
    out16 = zpix.predict(run, cubes, tmp_path / "p16", split="all", precision="bf16", progress=False)
    a, b = read_predictions(out32).catalog, read_predictions(out16).catalog
    assert list(a["id"]) == list(b["id"])
    dz = np.abs(a["z_mean"].to_numpy() - b["z_mean"].to_numpy())
    assert dz.max() < 0.01 and dz.max() > 0


def test_bf16_mixed_training_keeps_the_ends_fp32(tmp_path):
    cubes = write_toy_cubes(tmp_path / "toy.h5", n=60, size=16)
    result = zpix.train(TrainConfig(cubes=str(cubes), out=str(tmp_path / "run"), model="pasquet2019-small",
                                    model_args=TINY, n_bins=40, max_epochs=1, max_steps=2, batch_size=16,
                                    num_workers=0, progress=False, accelerator="cpu", devices=1, calibrate=[],
                                    precision="bf16-mixed"))
    state = torch.load(result.checkpoints[0], map_location="cpu", weights_only=False)["state_dict"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert np.isfinite(result.summary["members"][0]["best_val_loss"])


def test_precision_choices(monkeypatch):
    assert hardware.inference_precision("32") == "32"
    assert hardware.inference_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        hardware.inference_precision("fp8")
    monkeypatch.setattr(hardware, "fast_bf16", lambda device="cpu": True)
    monkeypatch.setattr(hardware, "BF16_INFERENCE_GUARD_PASSED", True)
    assert hardware.inference_precision("auto") == "bf16"
    assert hardware.training_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(hardware, "BF16_INFERENCE_GUARD_PASSED", False)
    assert hardware.inference_precision("auto") == "32"
    monkeypatch.setattr(hardware, "fast_bf16", lambda device="cpu": False)
    assert hardware.training_precision("auto", "cpu") == "32-true"
    assert hardware.training_precision("16-mixed", "cpu") == "16-mixed"


def test_native_bf16_needs_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not hardware.native_bf16("cpu") and not hardware.fast_bf16("cpu")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert hardware.native_bf16("cpu") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    monkeypatch.setattr(hardware, "cpu_vendor", lambda: "GenuineIntel")
    assert not hardware.fast_bf16("cpu")  # native but slower than fp32 (Intel without AMX): not chosen
    monkeypatch.setattr(hardware, "bf16_speedup", lambda device="cpu": 99.0)
    assert not hardware.fast_bf16("cpu")  # a timing never decides: the choice must not depend on the load
    monkeypatch.setattr(hardware, "cpu_vendor", lambda: "AuthenticAMD")
    assert hardware.fast_bf16("cpu") == hardware.native_bf16("cpu")
    monkeypatch.setattr(hardware, "cpu_vendor", lambda: "GenuineIntel")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16", "amx_bf16"}))
    assert hardware.fast_bf16("cpu") == hardware.native_bf16("cpu")


def test_workers_and_batches_follow_the_machine():
    assert [hardware.loader_workers(c) for c in (1, 2, 4, 8, 64)] == [1, 1, 1, 2, 4]
    assert hardware.predict_batch("cpu", memory_bytes=64 * 2**30) == 256
    assert hardware.predict_batch("cpu", memory_bytes=2**30) == 32  # a small machine reads smaller batches
    assert hardware.inference_chunk("cpu") == 32
    assert TrainConfig().num_workers == "auto" and TrainConfig().precision == "auto"
    assert TrainConfig.from_yaml("pasquet2019").num_workers == "auto"
    with pytest.raises(ValueError, match="num_workers"):
        TrainConfig(num_workers=-1)


def test_bf16_defaults_agree_with_the_measured_guard():
    if not SPEED_JSON.exists():
        pytest.skip("no benchmarks/results/speed.json")
    doc = json.loads(SPEED_JSON.read_text())
    guard = doc.get("bf16_vs_fp32")
    if not guard or "passed" not in guard:
        pytest.skip("speed.json has no accuracy guard yet")
    assert hardware.BF16_INFERENCE_GUARD_PASSED == guard["passed"]
    assert guard["passed"] == (abs(guard["sigma_mad_rel_change"]) <= 0.01 and abs(guard["bias_change"]) <= 1e-4
                               and abs(guard["crps_rel_change"]) <= 0.01)
    training = doc.get("bf16_training")
    if training and "passed" in training:
        assert hardware.BF16_TRAINING_GUARD_PASSED == training["passed"]


def test_sliced_training_step_gives_the_whole_batch_gradient(tmp_path, monkeypatch):
    """On CPUs a step runs in slices of train_chunk images; one Adam step must land where one pass does."""
    from zpix.training import module as module_mod

    cubes = write_toy_cubes(tmp_path / "toy.h5", n=140, size=16)
    weights = {}
    for chunk in (None, 40):  # 96 = 40 + 40 + 16
        monkeypatch.setattr(module_mod, "train_chunk", lambda device, c=chunk: c)
        result = zpix.train(TrainConfig(cubes=str(cubes), out=str(tmp_path / f"run_{chunk}"),
                                        model="pasquet2019-small", model_args=TINY, n_bins=40, max_epochs=1,
                                        max_steps=1, batch_size=96, num_workers=0, progress=False,
                                        accelerator="cpu", devices=1, calibrate=[], precision="32-true",
                                        lr_schedule="none", lr=1e-2, test_fraction=0.1, val_fraction=0.1))
        weights[chunk] = torch.load(result.checkpoints[0], map_location="cpu", weights_only=False)["state_dict"]
    for key, value in weights[None].items():
        torch.testing.assert_close(weights[40][key], value, rtol=1e-4, atol=1e-6)
