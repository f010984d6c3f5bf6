"""Speed benchmark: zpix's networks against the machine's own dense-matmul limit, in one process.

1. The roof: the best dense matmul rate of this machine, R = 2 n³ / t GFLOP/s (fp32 on CPU, bf16 on a
   GPU), measured in this process with the same threads as everything after it.
2. For ``pasquet2019`` and ``pasquet2019-small``: forward FLOPs per image F (torch's FlopCounterMode;
   2 per multiply-add), inference images/s I and training images/s T (forward + backward + Adam step
   through :class:`~zpix.training.module.PhotoZModule`'s loss, with its dihedral augmentation) at
   batch 32-128, and the roof ratios I·F / R and T·3F / R (a backward pass costs about twice a forward).
3. The cube-store DataLoader's images/s with the default worker count (TrainConfig.num_workers),
   which must exceed the training rate.
4. ``zpix predict`` end-to-end images/s (HDF5 reading, inference, qp + Parquet writing) as a fraction
   of pure inference at the same batch size.
5. Peak resident memory of ``zpix predict`` (a subprocess) on 20k and 100k objects: it must not grow
   with N, because prediction streams.

Variants (``--variants``): ``base`` (fp32, NCHW, inference_mode), ``channels_last``, ``compile``
(torch.compile), ``compile+channels_last``, ``no_grad`` (instead of inference_mode).  The reference of
Pasquet et al. (2019): 0.21 s per forward+backward batch of 128 on a GTX Titan X, about 610 images/s.

    python benchmarks/speed.py                      # CPU: benchmarks/results/speed.json
    python benchmarks/speed.py --device cuda        # GPU with bf16 autocast: speed_gpu.json
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, stamp, write_json  # noqa: E402

MODELS = ("pasquet2019", "pasquet2019-small")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Any, device: str, min_time: float, min_iters: int = 2, warmup: int = 1) -> float:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then at least ``min_iters`` and ``min_time`` s."""
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
    """Best 2n³/t over a few square sizes: the dense compute limit the networks are held against."""
    import torch

    dtype = getattr(torch, dtype_name)
    sizes = (1024, 2048, 3072) if device == "cpu" else (4096, 8192, 16384)
    rates = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        t = timed(lambda a=a, b=b: torch.mm(a, b), device, min_time)
        rates[n] = 2 * n**3 / t / 1e9
    return {"gflops": max(rates.values()), "by_size": rates, "dtype": dtype_name}


def forward_flops(model: Any, image_size: int, n_bands: int, device: str) -> float:
    """Forward FLOPs per image counted by torch.utils.flop_counter (convolutions and matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(4, n_bands, image_size, image_size, device=device)
    ebv = torch.zeros(4, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, ebv)
    return counter.get_total_flops() / 4


def build(name: str, device: str, variant: str) -> Any:
    """A PhotoZModule around ``name`` on ``device`` in the layout of ``variant``."""
    from zpix.models import model_config
    from zpix.pdf import RedshiftGrid
    from zpix.training.module import PhotoZModule

    cfg = model_config(name)
    module = PhotoZModule(name, {k: cfg[k] for k in ("n_bands", "image_size", "use_ebv")},
                          RedshiftGrid().to_dict(), channels_last="channels_last" in variant)
    return module.to(device)


def measure_model(name: str, device: str, variant: str, batches: list[int], roof: float, min_time: float,
                  train: bool) -> dict[str, Any]:
    """Inference and training images/s at each batch size, with the roof ratios."""
    import torch

    module = build(name, device, variant)
    model = module.model
    cfg = model.zpix_config
    n_bands, size = cfg["n_bands"], cfg["image_size"]
    flops = forward_flops(model, size, n_bands, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    fwd = torch.compile(model) if "compile" in variant else model
    grad_ctx = torch.no_grad if variant == "no_grad" else torch.inference_mode
    out: dict[str, Any] = {"forward_gflops_per_image": flops / 1e9, "variant": variant, "infer": {}, "train": {}}
    for b in batches:
        x = torch.randn(b, n_bands, size, size, device=device).abs()
        if "channels_last" in variant:
            x = x.contiguous(memory_format=torch.channels_last)
        ebv = torch.rand(b, device=device) * 0.1
        z = torch.rand(b, device=device) * 0.3
        model.eval()

        def infer(x=x, ebv=ebv) -> None:
            with grad_ctx(), autocast:
                fwd(x, ebv)

        t = timed(infer, device, min_time)
        out["infer"][b] = b / t
        if not train:
            continue
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        batch = {"image": x, "ebv": ebv, "z": z}

        def step(batch=batch, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            with autocast:
                images, e, _ = module._inputs(batch, train=True)  # dihedral augmentation, as in training
                loss = module.loss(fwd(images, e), batch["z"])
            loss.backward()
            opt.step()

        t = timed(step, device, min_time)
        out["train"][b] = b / t
    out["infer_img_s"] = max(out["infer"].values())
    out["infer_best_batch"] = max(out["infer"], key=out["infer"].get)
    out["infer_roof_ratio"] = out["infer_img_s"] * flops / 1e9 / roof
    if train:
        out["train_img_s"] = max(out["train"].values())
        out["train_best_batch"] = max(out["train"], key=out["train"].get)
        out["train_roof_ratio"] = out["train_img_s"] * 3 * flops / 1e9 / roof
    return out


def random_cubes(path: Path, n: int, size: int = 64, bands: int = 5, chunk: int = 1000) -> Path:
    """A cube store of ``n`` noise images (positive, galaxy-like values in nanomaggies); fast to write."""
    from zpix.store.cube_store import CubeWriter

    rng = np.random.default_rng(0)
    block = np.abs(rng.normal(0.05, 0.5, (chunk, bands, size, size))).astype(np.float32)
    with CubeWriter(path, bands=list("ugriz")[:bands], image_shape=(size, size), pixel_scale_arcsec=0.396,
                    survey="speed-test") as w:
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            w.append(block[:m], rng.uniform(0.01, 0.35, m), rng.uniform(0, 0.1, m), np.arange(s, s + m))
    return path


def make_run(name: str, run_dir: Path) -> Path:
    """A run directory (member_0/best.ckpt) holding an untrained ``name``: prediction cost does not
    depend on the weights."""
    import lightning as L

    module = build(name, "cpu", "base")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    (run_dir / "member_0").mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(run_dir / "member_0" / "best.ckpt")
    return run_dir


def loader_rate(cubes: Path, batch_size: int, num_workers: int, max_batches: int) -> float:
    """Images/s of the training DataLoader over the cube store (shuffled, as in training)."""
    import torch
    from torch.utils.data import DataLoader

    from zpix.store.dataset import CubeDataset

    ds = CubeDataset(cubes)
    dl = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                    persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(0))
    it = iter(dl)
    next(it)  # start the workers
    n, t0 = 0, time.perf_counter()
    for k, batch in enumerate(it):
        n += len(batch["z"])
        if k + 1 >= max_batches:
            break
    return n / (time.perf_counter() - t0)


def predict_rate(run_dir: Path, cubes: Path, out: Path, batch_size: int, device: str) -> float:
    """Images/s of zpix.prediction.streaming.predict (reading, inference, writing) in this process."""
    from zpix.prediction.streaming import predict
    from zpix.store.cube_store import CubeStore

    with CubeStore(cubes, validate=False) as store:
        n = len(store)
    t0 = time.perf_counter()
    predict(run_dir, cubes, out, batch_size=batch_size, num_workers=1, device=device, overwrite=True,
            progress=False)
    return n / (time.perf_counter() - t0)


def predict_peak_rss_mb(run_dir: Path, cubes: Path, out: Path, batch_size: int, device: str) -> dict[str, float]:
    """Peak RSS of `zpix predict` run as a child of a fresh wrapper process (ru_maxrss of its children:
    the largest single process, i.e. the main process or its loader worker) and its wall time."""
    zpix = shutil.which("zpix", path=str(Path(sys.executable).parent)) or "zpix"
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)")
    cmd = [sys.executable, "-c", code, zpix, "predict", str(run_dir), str(cubes), "--out", str(out),
           "--batch-size", str(batch_size), "--num-workers", "1", "--device", device, "--overwrite"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    kb, seconds = res.stdout.split()
    return {"peak_rss_mb": int(kb) / 1024, "seconds": float(seconds)}


@click.command()
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
@click.option("--models", default=",".join(MODELS), show_default=True)
@click.option("--batches", default=None, help="Batch sizes (default 32,64,128 on CPU; 128,256,512 on GPU).")
@click.option("--variants", default="base,channels_last,compile,compile+channels_last,no_grad", show_default=True,
              help="Layouts to time; the best one per model is reported at the top level.")
@click.option("--min-time", default=3.0, show_default=True, help="Seconds of timing per measurement.")
@click.option("--predict-n", default=1024, show_default=True, help="Objects for the end-to-end predict rate.")
@click.option("--rss-sizes", default="20000,100000", show_default=True,
              help="Object counts of the peak-RSS measurement ('' to skip).")
@click.option("--rss-model", default="pasquet2019-small", show_default=True,
              help="Model of the RSS runs (prediction memory does not depend on the network's cost).")
@click.option("--models-only", is_flag=True, help="Only the roof and the networks (no loader / predict / RSS).")
@click.option("--tmp", type=click.Path(file_okay=False), default=None, help="Scratch folder (default: a temp dir).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Results file (default by device).")
def main(device: str | None, threads: int | None, models: str, batches: str | None, variants: str,
         min_time: float, predict_n: int, rss_sizes: str, rss_model: str, models_only: bool, tmp: str | None,
         out: str | None) -> None:
    """Measure the roof, the networks, the loader and prediction; write speed.json (speed_gpu.json on GPU)."""
    import torch

    from zpix.training.config import TrainConfig

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads:
        torch.set_num_threads(threads)
    gpu = device.startswith("cuda")
    batch_list = [int(b) for b in (batches or ("128,256,512" if gpu else "32,64,128")).split(",")]
    out_path = Path(out) if out else RESULTS / ("speed_gpu.json" if gpu else "speed.json")
    scratch = Path(tmp) if tmp else Path(tempfile.mkdtemp(prefix="zpix-speed-"))
    scratch.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {**stamp(), "device": device if not gpu else torch.cuda.get_device_name(0),
                           "torch_threads": torch.get_num_threads(), "precision": "bf16 autocast" if gpu else "fp32",
                           "batches": batch_list, "reference": {"pasquet2019_titan_x_train_img_s": 128 / 0.21}}
    try:
        roof = matmul_roof(device, "bfloat16" if gpu else "float32", min_time)
        doc["matmul_gflops"] = roof["gflops"]
        doc["matmul"] = roof
        print(f"matmul roof {roof['gflops']:.1f} GFLOP/s ({roof['dtype']})", flush=True)
        doc["models"], doc["variants"] = {}, {}
        for name in [m for m in models.split(",") if m]:
            doc["variants"][name] = {}
            for variant in [v for v in variants.split(",") if v]:
                try:
                    r = measure_model(name, device, variant, batch_list, roof["gflops"], min_time,
                                      train=variant not in ("no_grad",))
                except Exception as err:  # noqa: BLE001 - e.g. torch.compile without a compiler: say so, go on
                    doc["variants"][name][variant] = {"error": f"{type(err).__name__}: {err}"[:500]}
                    print(f"[{name} {variant}] failed: {err}", flush=True)
                    continue
                doc["variants"][name][variant] = r
                print(f"[{name} {variant}] {r['forward_gflops_per_image']:.3f} GFLOP/img  infer "
                      f"{r['infer_img_s']:.1f} img/s ({r['infer_roof_ratio']:.0%} of roof)"
                      + (f"  train {r['train_img_s']:.1f} img/s ({r['train_roof_ratio']:.0%})" if "train_img_s" in r
                         else ""), flush=True)
                write_json(out_path, doc)
            ok = {v: r for v, r in doc["variants"][name].items() if "infer_img_s" in r}
            best_i = max(ok, key=lambda v: ok[v]["infer_img_s"])
            trained = {v: r for v, r in ok.items() if "train_img_s" in r}
            best_t = max(trained, key=lambda v: trained[v]["train_img_s"])
            doc["models"][name] = {
                "forward_gflops_per_image": ok[best_i]["forward_gflops_per_image"],
                "infer_img_s": ok[best_i]["infer_img_s"], "infer_roof_ratio": ok[best_i]["infer_roof_ratio"],
                "infer_variant": best_i, "infer_batch": ok[best_i]["infer_best_batch"],
                "train_img_s": trained[best_t]["train_img_s"], "train_roof_ratio": trained[best_t]["train_roof_ratio"],
                "train_variant": best_t, "train_batch": trained[best_t]["train_best_batch"],
                "base_infer_img_s": ok.get("base", {}).get("infer_img_s"),
                "base_train_img_s": ok.get("base", {}).get("train_img_s"),
            }
            write_json(out_path, doc)
        if models_only:
            doc["status"] = "models only"
            write_json(out_path, doc)
            return
        # the data loader against the training rate
        workers = TrainConfig().num_workers
        cubes = random_cubes(scratch / "loader.h5", 6000)
        doc["loader_img_s"] = loader_rate(cubes, 128, workers, max_batches=40)
        ratios = {n: doc["loader_img_s"] / m["train_img_s"] for n, m in doc["models"].items()}
        doc["loader"] = {"num_workers": workers, "batch_size": 128, "vs_train_img_s": ratios}
        print(f"loader {doc['loader_img_s']:.0f} img/s with {workers} workers", flush=True)
        write_json(out_path, doc)
        # zpix predict end to end, against pure inference at its batch size
        name = "pasquet2019" if "pasquet2019" in doc["models"] else next(iter(doc["models"]))
        run_dir = make_run(name, scratch / f"run_{name}")
        pcubes = random_cubes(scratch / "predict.h5", predict_n)
        # like with like: zpix predict loads models channels-last; its CPU default batch is 64
        batch = 64 if device == "cpu" else 256
        pure = measure_model(name, device, "channels_last", [batch], roof["gflops"], min_time,
                             train=False)["infer_img_s"]
        e2e = predict_rate(run_dir, pcubes, scratch / "pred", batch, device)
        doc["predict_end_to_end_ratio"] = e2e / pure
        doc["predict"] = {"model": name, "n": predict_n, "batch_size": batch, "layout": "channels_last",
                          "img_s": e2e, "pure_infer_img_s": pure}
        print(f"predict {e2e:.1f} img/s end to end = {e2e / pure:.0%} of pure inference ({pure:.1f})", flush=True)
        write_json(out_path, doc)
        # peak memory of zpix predict against N
        if rss_sizes:
            rss_run = make_run(rss_model, scratch / f"run_{rss_model}")
            doc["predict_peak_rss_mb"], doc["predict_rss"] = {}, {"model": rss_model, "batch_size": 256, "runs": {}}
            for n in [int(s) for s in rss_sizes.split(",") if s]:
                c = random_cubes(scratch / f"rss_{n}.h5", n)
                r = predict_peak_rss_mb(rss_run, c, scratch / f"pred_{n}", 256, device)
                doc["predict_peak_rss_mb"][n] = r["peak_rss_mb"]
                doc["predict_rss"]["runs"][n] = r
                print(f"zpix predict on {n} objects: peak RSS {r['peak_rss_mb']:.0f} MB ({r['seconds']:.0f} s)",
                      flush=True)
                c.unlink()
                shutil.rmtree(scratch / f"pred_{n}", ignore_errors=True)
                write_json(out_path, doc)
        doc["status"] = "complete"
        write_json(out_path, doc)
        print(f"wrote {out_path}")
    finally:
        if tmp is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
