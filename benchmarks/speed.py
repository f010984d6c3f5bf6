"""Speed benchmark: zpix's defaults against its own fp32 channels-last eager baseline, in one process.

Every rate is images/s of ``pasquet2019`` (Table A.1, 1.52 GFLOP per 64x64x5 image) measured in this
process with the same threads, so only the ratios between them mean something on a shared machine.

* **Baseline**: fp32, channels-last, eager, ``torch.inference_mode`` (inference) or forward + backward
  + Adam with the dihedral augmentation of :class:`~zpix.training.module.PhotoZModule` (training), at
  batch 32 and 64: ``baseline_infer_img_s``, ``baseline_train_img_s``.  Each ratio below divides by the
  better of the two batches.
* **Default paths**: what ``zpix predict`` and ``zpix train`` do on this machine without options:
  the precision chosen by :mod:`zpix.hardware` (bf16 body only where it is native, faster and passed the
  accuracy guard), prediction on slices of ``inference_chunk`` images, training at the ``pasquet2019``
  preset's batch.  ``best_infer_ratio``, ``best_train_ratio``.
* **fp32 compiled path** (``torch.compile``, inductor with weight freezing, ``zpix predict --compile``):
  ``fp32_infer_ratio``, with its compile time.
* **End to end**: ``zpix.predict`` on ≥ 10,000 objects (model loading, HDF5 reading in a worker, the
  network, qp/Parquet writing, all included) against the pure default inference rate:
  ``predict_end_to_end_ratio``.  ``zpix.train`` (Lightning loop, DataLoader, logging, checkpoints)
  over two run lengths, so that start-up and validation cancel: ``train_end_to_end_ratio``.
* **Roofs**: the dense matmul rate of the precision each path computes in (fp32, or bf16 where bf16 is
  used), R = 2n³/t, and each path's FLOP rate as a fraction of it (training = 3x the forward FLOPs).
* **Accuracy guard** (``bf16_vs_fp32``) on a trained ``pasquet2019-small`` (``--guard-run``): the same
  test rows predicted in fp32 and with the bf16 body; changes of σ_MAD (relative), bias, CRPS
  (relative), the largest per-object |Δz_mean|; plain autocast and weight-rounding diagnostics that
  locate where bf16 loses accuracy.
* **Training seed study** (``bf16_training``): ``pasquet2019-small`` trained in fp32 and in bf16-mixed,
  ``--seeds`` seeds each on the same split and budget, σ_MAD of each on the same test rows (predicted in
  fp32): does bf16-mixed land within the fp32 seed-to-seed spread?

    python benchmarks/speed.py --cubes runs/bench/mock_sdss.h5 --guard-run runs/bench/p19s_20k
    python benchmarks/speed.py --device cuda        # GPU: speed_gpu.json
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, stamp, write_json  # noqa: E402

MODEL = "pasquet2019"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Any, device: str, min_time: float, min_iters: int = 2, warmup: int = 1) -> float:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then at least ``min_iters`` calls and ``min_time`` s."""
    for _ in range(warmup):
        fn()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < min_time:
        fn()
        n += 1
    _sync(device)
    return (time.perf_counter() - t0) / n


def matmul_roof(device: str, dtype_name: str, min_time: float) -> dict[str, Any]:
    """Best 2n³/t over a few square sizes: the dense compute limit of ``dtype_name`` on ``device``."""
    import torch

    dtype = getattr(torch, dtype_name)
    sizes = (1024, 2048) if device == "cpu" else (4096, 8192)
    rates = {}
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        t = timed(lambda a=a, b=b: torch.mm(a, b), device, min_time)
        rates[n] = 2 * n**3 / t / 1e9
    return {"gflops": max(rates.values()), "by_size": rates, "dtype": dtype_name}


def forward_flops(model: Any, device: str) -> float:
    """Forward FLOPs per image counted by torch.utils.flop_counter (convolutions and matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.zpix_config
    x = torch.randn(2, cfg["n_bands"], cfg["image_size"], cfg["image_size"], device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.zeros(2, device=device))
    return counter.get_total_flops() / 2


def build(name: str, device: str) -> Any:
    """A channels-last PhotoZModule around an untrained ``name`` (speed does not depend on the weights)."""
    import torch

    from zpix.models import model_config
    from zpix.pdf import RedshiftGrid
    from zpix.training.module import PhotoZModule

    torch.manual_seed(0)
    cfg = model_config(name)
    module = PhotoZModule(model_name=name, model_config={k: cfg[k] for k in ("n_bands", "image_size", "use_ebv")},
                          grid=RedshiftGrid().to_dict(), channels_last=True)
    return module.to(device)


def batch_of(b: int, device: str, seed: int = 0) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"image": (torch.randn(b, 5, 64, 64, generator=g) * 0.5).abs().to(device),
            "ebv": (torch.rand(b, generator=g) * 0.1).to(device), "z": (torch.rand(b, generator=g) * 0.3).to(device),
            "index": torch.arange(b, device=device)}


def infer_rate(members: list, batch: dict, chunk: int | None, device: str, min_time: float) -> float:
    """Images/s of zpix.prediction.streaming.member_probabilities: what zpix predict runs per batch."""
    import torch

    from zpix.prediction.streaming import member_probabilities

    def run() -> None:
        with torch.inference_mode():
            member_probabilities(members, batch, chunk)

    return len(batch["ebv"]) / timed(run, device, min_time)


def autocast_rate(module: Any, batch: dict, device: str, min_time: float) -> float:
    """Plain torch.autocast(bf16) around the whole fp32 network (the probe of the issue)."""
    import torch

    def run() -> None:
        with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            module(batch)

    return len(batch["ebv"]) / timed(run, device, min_time)


def train_rate(module: Any, batch: dict, device: str, min_time: float, precision: str,
               chunk: int | None = None) -> float:
    """Images/s of one optimiser step as PhotoZModule.training_step runs it (augmentation drawn for the
    batch, the forward/backward in slices of ``chunk`` images with their gradients summed, Adam);
    ``precision`` "bf16-mixed" runs it under autocast with the first convolution and head in fp32."""
    import torch

    from zpix.precision import keep_ends_fp32

    module.train()
    if precision == "bf16-mixed":
        keep_ends_fp32(module.model)
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)
    kind = torch.device(device).type
    n = len(batch["ebv"])
    step_size = chunk or n

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        images, ebv, _ = module._inputs(batch, train=True)
        for start in range(0, n, step_size):
            part = slice(start, start + step_size)
            with torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                loss = module.loss(module.model(images[part], ebv[part]), batch["z"][part])
            (loss * (len(batch["z"][part]) / n)).backward()
        opt.step()

    rate = n / timed(step, device, min_time)
    module.eval()
    return rate


def compiled_rate(module: Any, batch: dict, chunk: int, device: str, min_time: float) -> dict[str, float]:
    """fp32 inference through zpix.prediction.streaming.compile_members (inductor, frozen weights)."""
    from zpix.prediction.streaming import compile_members

    t0 = time.perf_counter()
    members = compile_members([copy.deepcopy(module)], chunk)
    rate = infer_rate(members, {k: v[:chunk] for k, v in batch.items()}, chunk, device, 0.0)  # compiles
    seconds = time.perf_counter() - t0
    return {"img_s": infer_rate(members, batch, chunk, device, min_time), "compile_seconds": seconds,
            "first_call_img_s": rate}


def make_run(name: str, run_dir: Path) -> Path:
    """A run directory (member_0/best.ckpt) holding an untrained ``name``."""
    import lightning as L

    module = build(name, "cpu")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    (run_dir / "member_0").mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(run_dir / "member_0" / "best.ckpt")
    return run_dir


def predict_end_to_end(run_dir: Path, cubes: Path, rows: np.ndarray, out: Path, device: str) -> dict[str, Any]:
    """zpix.predict with its defaults (precision, batch, chunk, one loader worker) on ``rows``."""
    from zpix.prediction.streaming import predict

    t0 = time.perf_counter()
    predict(run_dir, cubes, out, rows=rows, num_workers=1, device=device, overwrite=True, progress=False,
            calibrate=False)
    seconds = time.perf_counter() - t0
    return {"n": len(rows), "seconds": seconds, "img_s": len(rows) / seconds}


def train_end_to_end(cubes: Path, out: Path, steps: tuple[int, int], n_train: int, model: str) -> dict[str, Any]:
    """zpix.train with the pasquet2019 preset (its batch, precision, workers, channels-last), run for two
    numbers of steps on the same split: the difference cancels start-up, validation and checkpointing."""
    from dataclasses import replace

    from zpix.runs import Split
    from zpix.training.api import train
    from zpix.training.config import TrainConfig

    cfg = TrainConfig.from_yaml("pasquet2019")
    cfg = replace(cfg, cubes=str(cubes), model=model, ensemble=1, max_epochs=1, progress=False, calibrate=[],
                  patience=1)
    rng = np.random.default_rng(0)
    rows = rng.permutation(np.arange(n_train + 256))
    split = Split(train=np.sort(rows[:n_train]), val=np.sort(rows[n_train:n_train + 128]),
                  test=np.sort(rows[n_train + 128:]))
    runs = {}
    for s in steps:
        t0 = time.perf_counter()
        result = train(replace(cfg, out=str(out / f"steps_{s}"), max_steps=s), split=split)
        member = result.summary["members"][0]
        runs[s] = {"wall_seconds": time.perf_counter() - t0, "train_seconds": member["train_seconds"],
                   "steps": member["steps"]}
    a, b = steps
    extra = (runs[b]["steps"] - runs[a]["steps"]) * cfg.batch_size
    return {"batch_size": cfg.batch_size, "runs": runs,
            "img_s": extra / (runs[b]["train_seconds"] - runs[a]["train_seconds"])}


def accuracy_guard(run: Path, cubes: Path, n_test: int | None) -> dict[str, Any]:
    """fp32 against the bf16 body (zpix.precision.cast_body) on the run's test rows, plus diagnostics:
    plain autocast everywhere, and fp32 with the weights of one part rounded to bf16."""
    import torch
    from scipy.stats import kstest

    from zpix.evaluation.metrics import bias, crps, delta_z, sigma_mad
    from zpix.pdf import RedshiftGrid, cdf_at, pdf_mean
    from zpix.precision import cast_body
    from zpix.runs import checkpoint_paths
    from zpix.store.cube_store import CubeStore
    from zpix.training.module import PhotoZModule

    ckpt = checkpoint_paths(run)[0]
    rows = np.sort(np.load(Path(run) / "split.npz")["test"])
    rows = rows[:n_test] if n_test else rows
    with CubeStore(cubes, validate=False) as store:
        images = torch.from_numpy(store.images(rows))
        z = store.z_spec[rows].astype(np.float64)
        ebv = torch.from_numpy(store.ebv[rows].astype(np.float32))
    base = PhotoZModule.load_from_checkpoint(ckpt, map_location="cpu", channels_last=True, compile="none").eval()
    grid = RedshiftGrid.from_dict(base.hparams.grid)

    def probs(model: Any, autocast: bool = False) -> np.ndarray:
        out = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for i in range(0, len(rows), 256):
                x = images[i:i + 256].contiguous(memory_format=torch.channels_last)
                out.append(torch.softmax(model(x, ebv[i:i + 256]).float(), 1).double().numpy())
        return np.concatenate(out)

    def rounded(names: list[str]) -> Any:
        model = copy.deepcopy(base.model)
        with torch.no_grad():
            for name in names:
                for p in model.get_submodule(name).parameters():
                    p.copy_(p.bfloat16().float())
        return model

    def metrics(p: np.ndarray) -> dict[str, Any]:
        zm = pdf_mean(p, grid)
        dz = delta_z(zm, z)
        return {"sigma_mad": sigma_mad(dz), "bias": bias(dz), "crps": float(crps(p, grid, z).mean()),
                "pit_ks": float(kstest(cdf_at(p, grid, z), "uniform").statistic), "z_mean": zm}

    ref = metrics(probs(base.model))
    variants = {"bf16_body": lambda: probs(cast_body(copy.deepcopy(base.model))),
                "autocast_everywhere": lambda: probs(base.model, autocast=True),
                "fp32_weights_of_first_conv_rounded": lambda: probs(rounded(["backbone.stem.layers.0"])),
                "fp32_weights_of_trunk_rounded": lambda: probs(rounded(["backbone.trunk"])),
                "fp32_weights_of_head_rounded": lambda: probs(rounded(["head"])),
                "fp32_inputs_rounded": lambda: probs(_InputRounded(base.model))}
    out: dict[str, Any] = {"run": str(run), "checkpoint": str(ckpt), "n_test": len(rows),
                           "fp32": {k: v for k, v in ref.items() if k != "z_mean"}, "variants": {}}
    for name, fn in variants.items():
        m = metrics(fn())
        d = m.pop("z_mean") - ref["z_mean"]
        out["variants"][name] = {**m, "sigma_mad_rel_change": m["sigma_mad"] / ref["sigma_mad"] - 1,
                                 "bias_change": m["bias"] - ref["bias"], "crps_rel_change": m["crps"] / ref["crps"] - 1,
                                 "pit_ks_change": m["pit_ks"] - ref["pit_ks"], "mean_dz_mean": float(d.mean()),
                                 "max_abs_dz_mean": float(np.abs(d).max()),
                                 "median_abs_dz_mean": float(np.median(np.abs(d)))}
        print(f"  guard {name}: bias change {out['variants'][name]['bias_change']:+.2e}, max |dz_mean| "
              f"{out['variants'][name]['max_abs_dz_mean']:.2e}", flush=True)
    return out


class _InputRounded:
    """The fp32 model fed inputs rounded to bf16 (diagnostic: does the input's rounding alone matter?)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, x: Any, ebv: Any) -> Any:
        return self.model(x.bfloat16().float(), ebv)


def seed_study(cubes: Path, out: Path, seeds: int, n_train: int, n_test: int, epochs: int) -> dict[str, Any]:
    """pasquet2019-small trained in fp32 and in bf16-mixed, ``seeds`` seeds each, on one split with one
    budget; σ_MAD of each on the same test rows, predicted in fp32."""
    from zpix.evaluation.metrics import bias, delta_z, sigma_mad
    from zpix.prediction.format import read_predictions
    from zpix.prediction.streaming import predict
    from zpix.runs import Split
    from zpix.training.api import train
    from zpix.training.config import TrainConfig

    rng = np.random.default_rng(2019)
    rows = rng.permutation(np.arange(n_train + n_test + 1000))
    split = Split(train=np.sort(rows[:n_train]), val=np.sort(rows[n_train:n_train + 1000]),
                  test=np.sort(rows[n_train + 1000:]))
    results: dict[str, Any] = {"model": "pasquet2019-small", "n_train": n_train, "n_val": 1000, "n_test": n_test,
                               "epochs": epochs, "batch_size": 64, "lr_schedule": "cosine", "runs": {}}
    for precision in ("32-true", "bf16-mixed"):
        runs = []
        for seed in range(seeds):
            cfg = TrainConfig(cubes=str(cubes), out=str(out / f"{precision}_{seed}"), model="pasquet2019-small",
                              seed=seed, max_epochs=epochs, batch_size=64, lr_schedule="cosine", patience=epochs,
                              precision=precision, progress=False, calibrate=[], num_workers="auto")
            t0 = time.perf_counter()
            result = train(cfg, split=split)
            seconds = time.perf_counter() - t0
            pred = predict(result.run_dir, cubes, out / f"pred_{precision}_{seed}", rows=split.test, precision="32",
                           progress=False, calibrate=False, overwrite=True)
            cat = read_predictions(pred, load_pdfs=False).catalog
            dz = delta_z(cat["z_mean"].to_numpy(), cat["z_spec"].to_numpy())
            runs.append({"seed": seed, "sigma_mad": sigma_mad(dz), "bias": bias(dz), "seconds": seconds})
            print(f"  seed study {precision} seed {seed}: sigma_MAD {runs[-1]['sigma_mad']:.5f} "
                  f"({seconds:.0f} s)", flush=True)
        s = np.array([r["sigma_mad"] for r in runs])
        results["runs"][precision] = {"runs": runs, "sigma_mad_mean": float(s.mean()),
                                      "sigma_mad_std": float(s.std(ddof=1)) if len(s) > 1 else float("nan"),
                                      "seconds_mean": float(np.mean([r["seconds"] for r in runs]))}
    f32, b16 = results["runs"]["32-true"], results["runs"]["bf16-mixed"]
    results["mean_difference"] = b16["sigma_mad_mean"] - f32["sigma_mad_mean"]
    results["fp32_spread"] = f32["sigma_mad_std"]
    # within the spread: the difference of the means is no larger than fp32's seed-to-seed standard deviation
    results["passed"] = bool(abs(results["mean_difference"]) <= f32["sigma_mad_std"])
    return results


@click.command()
@click.option("--cubes", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Cube store (64x64x5) for the end-to-end runs and the seed study (e.g. the SDSS-like mock).")
@click.option("--guard-run", type=click.Path(exists=True, file_okay=False), default=None,
              help="A trained pasquet2019-small run (with split.npz) for the bf16 accuracy guard.")
@click.option("--guard-cubes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The guard run's cube store (default --cubes).")
@click.option("--guard-from", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Take the accuracy guard from this earlier results file (with its own date and commit).")
@click.option("--guard-n", type=int, default=None, help="Test rows of the guard (default: all of the run's).")
@click.option("--model", "model_name", default=MODEL, show_default=True,
              help="Network of the speed measurements (the training end to end uses the pasquet2019 preset with it).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
@click.option("--min-time", default=3.0, show_default=True, help="Seconds of timing per measurement.")
@click.option("--predict-n", default=10_000, show_default=True, help="Objects of the end-to-end prediction.")
@click.option("--train-steps", default="3,12", show_default=True,
              help="The two run lengths (steps) of the end-to-end training measurement.")
@click.option("--seeds", default=3, show_default=True, help="Seeds per precision of the training study (0: skip).")
@click.option("--seed-train", default=6000, show_default=True, help="Training objects of the seed study.")
@click.option("--seed-epochs", default=3, show_default=True, help="Epochs of each seed-study run.")
@click.option("--seed-study-only", is_flag=True, help="Run only the seed study (it needs no quiet machine).")
@click.option("--seed-study-from", type=click.Path(dir_okay=False), default=None,
              help="Take the seed study from this earlier results file (with its own date and commit).")
@click.option("--no-compile", is_flag=True, help="Skip the compiled fp32 path (no C++ compiler).")
@click.option("--tmp", type=click.Path(file_okay=False), default=None, help="Scratch folder (default: a temp dir).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Results file (default by device).")
def main(cubes: str, guard_run: str | None, guard_cubes: str | None, guard_from: str | None, guard_n: int | None,
         model_name: str,
         device: str,
         threads: int | None, min_time: float, predict_n: int, train_steps: str, seeds: int, seed_train: int,
         seed_epochs: int, seed_study_only: bool, seed_study_from: str | None, no_compile: bool, tmp: str | None,
         out: str | None) -> None:
    """Measure baseline, default, compiled and end-to-end rates, the accuracy guard and the seed study."""
    import torch

    from zpix import hardware
    from zpix.precision import cast_body
    from zpix.training.config import TrainConfig

    if threads:
        torch.set_num_threads(threads)
    gpu = device.startswith("cuda")
    out_path = Path(out) if out else RESULTS / ("speed_gpu.json" if gpu else "speed.json")
    scratch = Path(tmp) if tmp else Path(tempfile.mkdtemp(prefix="zpix-speed-"))
    scratch.mkdir(parents=True, exist_ok=True)
    cubes_path = Path(cubes)
    precision = hardware.inference_precision("auto", device)
    preset = TrainConfig.from_yaml("pasquet2019")
    train_precision = hardware.training_precision(preset.precision, "gpu" if gpu else "cpu")
    chunk = hardware.inference_chunk(device) or hardware.predict_batch(device)
    read_batch = hardware.predict_batch(device)
    doc: dict[str, Any] = {**stamp(), "model": model_name, "device": torch.cuda.get_device_name(0) if gpu else device,
                           "torch_threads": torch.get_num_threads(), "hardware": hardware.describe(),
                           "defaults": {"inference_precision": precision, "training_precision": train_precision,
                                        "predict_batch": read_batch, "inference_chunk": chunk,
                                        "train_batch": preset.batch_size,
                                        "loader_workers": hardware.loader_workers()}}
    t_start = time.perf_counter()
    try:
        if seed_study_only:
            doc["bf16_training"] = seed_study(cubes_path, scratch / "seeds", seeds, seed_train, 2000, seed_epochs)
            doc["bf16_training"]["seconds"] = time.perf_counter() - t_start
            doc["status"] = "seed study only"
            write_json(out_path, doc)
            return
        # accuracy first: it does not need a quiet machine, and its result decides the bf16 default
        if guard_from:
            earlier = json.loads(Path(guard_from).read_text())
            doc["bf16_vs_fp32"] = {**earlier["bf16_vs_fp32"], "date_utc": earlier["date_utc"],
                                   "commit": earlier["commit"], "loadavg_at_start": earlier.get("loadavg_at_start")}
        elif guard_run:
            guard = accuracy_guard(Path(guard_run), Path(guard_cubes or cubes), guard_n)
            v = guard["variants"]["bf16_body"]
            guard.update({k: v[k] for k in ("sigma_mad_rel_change", "bias_change", "crps_rel_change",
                                            "max_abs_dz_mean", "median_abs_dz_mean", "pit_ks_change")})
            guard["passed"] = bool(abs(v["sigma_mad_rel_change"]) <= 0.01 and abs(v["bias_change"]) <= 1e-4
                                   and abs(v["crps_rel_change"]) <= 0.01)
            doc["bf16_vs_fp32"] = guard
            write_json(out_path, doc)
        roofs = {"float32": matmul_roof(device, "float32", min_time / 2)}
        roofs["bfloat16"] = matmul_roof(device, "bfloat16", min_time / 2)
        doc["matmul"] = roofs
        print(f"matmul roof fp32 {roofs['float32']['gflops']:.0f}, bf16 {roofs['bfloat16']['gflops']:.0f} GFLOP/s",
              flush=True)
        module = build(model_name, device).eval()
        flops = forward_flops(module.model, device)
        doc["forward_gflops_per_image"] = flops / 1e9
        batches = {b: batch_of(b, device) for b in (32, 64, 128, read_batch)}
        # baseline and its per-batch behaviour: fp32 channels-last eager, the whole batch in one pass
        infer = {b: infer_rate([module], batches[b], None, device, min_time) for b in (32, 64, 128)}
        doc["baseline_infer_img_s"] = {32: infer[32], 64: infer[64]}
        doc["fp32_eager_infer_img_s_by_batch"] = infer
        print(f"baseline inference {infer}", flush=True)
        # the bf16 body and plain autocast, whatever the default, for the record
        body = copy.deepcopy(module)
        cast_body(body.model)
        doc["bf16_body_infer_img_s"] = {b: infer_rate([body], batches[b], None, device, min_time) for b in (32, 64)}
        doc["autocast_infer_img_s"] = {b: autocast_rate(module, batches[b], device, min_time) for b in (32, 64)}
        print(f"bf16 body {doc['bf16_body_infer_img_s']}, autocast {doc['autocast_infer_img_s']}", flush=True)
        # the default: zpix predict's precision, its read batch run on slices of `chunk`
        default_members = [body if precision == "bf16" else module]
        default_rate = infer_rate(default_members, batches[read_batch], chunk, device, min_time)
        base_infer = max(doc["baseline_infer_img_s"].values())
        roof_of = {"32": roofs["float32"]["gflops"], "bf16": roofs["bfloat16"]["gflops"]}
        doc["default_infer"] = {"precision": precision, "read_batch": read_batch, "chunk": chunk,
                                "img_s": default_rate, "roof_ratio": default_rate * flops / 1e9 / roof_of[precision]}
        doc["best_infer_ratio"] = default_rate / base_infer
        doc["baseline_infer_roof_ratio"] = base_infer * flops / 1e9 / roof_of["32"]
        print(f"default inference {default_rate:.1f} img/s = {doc['best_infer_ratio']:.2f}x baseline", flush=True)
        write_json(out_path, doc)
        # the compiled fp32 path
        if not no_compile:
            try:
                comp = compiled_rate(module, batches[read_batch], chunk, device, min_time)
            except Exception as err:  # noqa: BLE001 - e.g. no C++ compiler: say so, go on
                doc["fp32_compiled"] = {"error": f"{type(err).__name__}: {err}"[:500]}
            else:
                comp["roof_ratio"] = comp["img_s"] * flops / 1e9 / roof_of["32"]
                doc["fp32_compiled"] = comp
                doc["fp32_infer_ratio"] = comp["img_s"] / base_infer
                print(f"compiled fp32 {comp['img_s']:.1f} img/s = {doc['fp32_infer_ratio']:.2f}x "
                      f"(compile {comp['compile_seconds']:.0f} s)", flush=True)
            write_json(out_path, doc)
        # training: baseline at 32 and 64, the preset's default at its batch
        train32 = {b: train_rate(module, batches[b], device, min_time, "32-true") for b in (32, 64)}
        doc["baseline_train_img_s"] = train32
        doc["fp32_eager_train_img_s_by_batch"] = {**train32, 128: train_rate(module, batches[128], device, min_time,
                                                                              "32-true")}
        tb = preset.batch_size
        tbatch = batches.get(tb) or batch_of(tb, device)
        tchunk = hardware.train_chunk(device)
        default_train = train_rate(build(model_name, device), tbatch, device, min_time, train_precision, tchunk)
        base_train = max(train32.values())
        troof = roofs["bfloat16" if train_precision.startswith("bf16") else "float32"]["gflops"]
        doc["default_train"] = {"precision": train_precision, "batch": tb, "chunk": tchunk, "img_s": default_train,
                                "roof_ratio": default_train * 3 * flops / 1e9 / troof}
        doc["best_train_ratio"] = default_train / base_train
        doc["baseline_train_roof_ratio"] = base_train * 3 * flops / 1e9 / roofs["float32"]["gflops"]
        if train_precision == "32-true":
            doc["bf16_mixed_train_img_s"] = {64: train_rate(build(model_name, device), batches[64], device, min_time,
                                                            "bf16-mixed")}
        print(f"training baseline {train32}, default {default_train:.1f} img/s = {doc['best_train_ratio']:.2f}x",
              flush=True)
        write_json(out_path, doc)
        # end to end: zpix predict on >= 10,000 objects, against the pure default inference just measured
        run_dir = make_run(model_name, scratch / "run")
        rows = np.arange(predict_n)
        e2e = predict_end_to_end(run_dir, cubes_path, rows, scratch / "pred", device)
        pure = infer_rate(default_members, batches[read_batch], chunk, device, min_time)
        e2e.update({"pure_infer_img_s": pure, "precision": precision, "read_batch": read_batch, "chunk": chunk})
        doc["predict"] = e2e
        doc["predict_end_to_end_ratio"] = e2e["img_s"] / pure
        print(f"predict end to end {e2e['img_s']:.1f} img/s = {doc['predict_end_to_end_ratio']:.2f} of pure "
              f"{pure:.1f}", flush=True)
        write_json(out_path, doc)
        steps = tuple(int(s) for s in train_steps.split(","))
        te2e = train_end_to_end(cubes_path, scratch / "train", steps, max(steps) * preset.batch_size, model_name)
        te2e["pure_step_img_s"] = default_train
        doc["train"] = te2e
        doc["train_end_to_end_ratio"] = te2e["img_s"] / default_train
        print(f"train end to end {te2e['img_s']:.1f} img/s = {doc['train_end_to_end_ratio']:.2f} of the pure step",
              flush=True)
        doc["speed_seconds"] = time.perf_counter() - t_start
        write_json(out_path, doc)
        if seed_study_from:
            source = Path(seed_study_from)
            for _ in range(90):  # a seed study still running beside this one: wait for its file (15 min)
                if source.exists():
                    break
                time.sleep(10)
            earlier = json.loads(source.read_text())
            doc["bf16_training"] = {**earlier["bf16_training"], "date_utc": earlier["date_utc"],
                                    "commit": earlier["commit"], "loadavg_at_start": earlier.get("loadavg_at_start")}
        elif seeds:
            t0 = time.perf_counter()
            study = seed_study(cubes_path, scratch / "seeds", seeds, seed_train, 2000, seed_epochs)
            study["seconds"] = time.perf_counter() - t0
            doc["bf16_training"] = study
        doc["status"] = "complete"
        doc["total_seconds"] = time.perf_counter() - t_start
        write_json(out_path, doc)
        print(f"wrote {out_path}")
    finally:
        if tmp is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
