"""What the machine offers, and the defaults chosen from it: precision, threads, loader workers, batches.

* **Native bf16.**  A CPU runs bf16 convolutions and matrix products natively when it has the
  AVX-512 BF16 (``avx512_bf16``: Cooper Lake, Sapphire Rapids, Zen 4 and later) or AMX-BF16
  (``amx_bf16``) instructions and oneDNN can use them; without them PyTorch emulates bf16 by
  converting to fp32, which is slower than fp32 itself.  A CUDA GPU needs compute capability ≥ 8.0
  (Ampere).
* **Faster in bf16.**  Native is not enough: without AMX, an Intel core issues its bf16 dot products
  (VDPBF16PS) on one port where fp32 FMAs use two, so bf16 convolutions run no faster than fp32 and
  the conversions make them slower (measured on a 2-core Emerald Rapids VM without AMX: 0.6x), while
  AMX-BF16 cores and AMD's Zen 4/5 (full-rate AVX-512 BF16; the 2x of the speed issue was measured on
  an EPYC) run them faster.  bf16 therefore counts as fast on a CPU with ``amx_bf16``, or an AMD CPU
  with ``avx512_bf16``.  The rule reads flags only, never a timing: a timing probe would make the
  default precision, and so the predictions, depend on how loaded the machine is at start-up.
  :func:`bf16_speedup` (one convolution of the body timed in both precisions) is a diagnostic that
  ``benchmarks/speed.py`` records to check the rule.
* **Default precision** (``auto``): bf16 only where it is native and faster *and* the accuracy guard measured by
  ``benchmarks/speed.py`` (``bf16_vs_fp32`` for inference, ``bf16_training`` for training) passed:
  σ_MAD within 1 % (relative), bias within 1e-4 and CRPS within 1 % of fp32 on the same test set, and
  bf16-mixed training within the fp32 seed-to-seed spread.  The two flags below record those results;
  ``tests/test_precision.py`` checks them against ``benchmarks/results/speed.json``.
* **Loader workers.**  One process per core is taken by the network's threads; decoding HDF5
  batches costs a few percent of a forward pass, so one worker per four cores (at least one, at most
  four) keeps the network fed without taking its cores.
* **Batch sizes.**  Inference images/s is flat or falls beyond a batch of a few tens on CPUs (the
  activations of a batch leave the caches), so CPU prediction reads large batches and runs the network
  on slices of :func:`inference_chunk` images; on GPUs the batch grows with the device memory.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

#: Accuracy guard of bf16 inference (cast_body) on the trained test model passed: see module docstring.
#: False since the guard was measured on the converged pasquet2019-small on an AMD EPYC (Zen 4): the bf16
#: body moved the bias by +1.5e-4 (> 1e-4), most of it from rounding the trunk's weights (speed.json).
BF16_INFERENCE_GUARD_PASSED = False
#: bf16-mixed training reached fp32's σ_MAD within the seed-to-seed spread (speed.json, bf16_training).
BF16_TRAINING_GUARD_PASSED = True

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo`` on Linux; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def available_memory_bytes() -> int:
    """Memory available to new allocations (``MemAvailable`` of ``/proc/meminfo``), or total RAM."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """True when ``device`` runs bf16 arithmetic in hardware (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        major, _ = torch.cuda.get_device_capability(device)
        return major >= 8
    if device.type != "cpu":
        return False
    if not any(flag in cpu_flags() for flag in BF16_CPU_FLAGS):
        return False
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@functools.cache
def bf16_speedup(device: str = "cpu") -> float:
    """fp32 time / bf16 time of a 3x3 convolution like those of the inception body (64 → 64 maps,
    16x16, batch 16, channels-last), the best of three interleaved rounds of three calls each."""
    import copy
    import time

    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(device).to(memory_format=torch.channels_last)
    x = torch.rand(16, 64, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    models = {dt: (copy.deepcopy(conv).to(dt), x.to(dt)) for dt in best}
    with torch.inference_mode():
        for _ in range(3):
            for dt, (c, xx) in models.items():
                c(xx)
                if torch.device(device).type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(3):
                    c(xx)
                if torch.device(device).type == "cuda":
                    torch.cuda.synchronize()
                best[dt] = min(best[dt], time.perf_counter() - t0)
    return best[torch.float32] / best[torch.bfloat16]


@functools.cache
def cpu_vendor() -> str:
    """The CPU's vendor id (``GenuineIntel``, ``AuthenticAMD``; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def fast_bf16(device: str | torch.device = "cpu") -> bool:
    """Native bf16 that is also faster than fp32 on ``device``: GPUs with bf16 tensor cores, CPUs with
    AMX-BF16, AMD CPUs with AVX-512 BF16 (see the module docstring; flags only, so deterministic)."""
    device = torch.device(device)
    if not native_bf16(device):
        return False
    if device.type == "cuda":
        return True
    return "amx_bf16" in cpu_flags() or cpu_vendor() == "AuthenticAMD"


def inference_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """Resolve ``"auto"`` to ``"bf16"`` or ``"32"`` for ``device``; check explicit choices."""
    if precision not in ("32", "bf16", "auto"):
        raise ValueError(f"precision must be 32, bf16 or auto, not {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if BF16_INFERENCE_GUARD_PASSED and fast_bf16(device) else "32"


def training_precision(precision: str, accelerator: str = "auto") -> str:
    """Resolve a Lightning precision of ``"auto"``: ``bf16-mixed`` where bf16 is native and faster on the
    training device and the training guard passed, else ``32-true``; other values pass through unchanged."""
    if precision != "auto":
        return precision
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        device = "cuda"
    else:
        device = "cpu"
    return "bf16-mixed" if BF16_TRAINING_GUARD_PASSED and fast_bf16(device) else "32-true"


def loader_workers(cores: int | None = None) -> int:
    """DataLoader worker processes: one per four cores, at least one and at most four."""
    cores = usable_cores() if cores is None else cores
    return max(1, min(4, cores // 4))


def inference_chunk(device: str | torch.device = "cpu") -> int | None:
    """Images per forward pass for prediction on ``device``: 32 on CPUs (see :func:`predict_batch`),
    None on GPUs (the whole batch)."""
    return 32 if torch.device(device).type == "cpu" else None


def train_chunk(device: str | torch.device = "cpu") -> int | None:
    """Images per forward/backward pass of a CPU training step (PhotoZModule.training_step sums the
    gradients of the slices): 64 on CPUs, None (the whole batch) on GPUs."""
    return 64 if torch.device(device).type == "cpu" else None


def predict_batch(device: str | torch.device = "cpu", memory_bytes: int | None = None) -> int:
    """Images read and written per step of ``zpix predict``.

    CPU: 256 (the network runs on slices of :func:`inference_chunk`; a larger read batch spreads the
    loader's per-batch cost and the writer's per-call cost); capped so that a batch of 64×64×5 fp32
    cubes with its PDFs stays under 1 % of the available memory.  GPU: 256 per 10 GiB of device memory,
    at most 2048.
    """
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(device).total_memory
        return int(max(64, min(2048, 256 * (total // (10 * 2**30)))))
    memory = available_memory_bytes() if memory_bytes is None else memory_bytes
    per_image = 5 * 64 * 64 * 4 * 4  # the cube, its collated copy, a channels-last copy and slack
    return int(max(32, min(256, memory // 100 // per_image)))


def describe() -> dict[str, Any]:
    """A JSON-plain summary of the machine and the defaults chosen for it (for benchmarks and logs)."""
    return {"cores": usable_cores(), "memory_available_gb": round(available_memory_bytes() / 2**30, 1),
            "bf16_cpu_flags": sorted(f for f in BF16_CPU_FLAGS if f in cpu_flags()),
            "native_bf16_cpu": native_bf16("cpu"), "bf16_speedup_cpu": round(bf16_speedup("cpu"), 2),
            "cuda": torch.cuda.is_available(),
            "inference_precision_cpu": inference_precision("auto", "cpu"),
            "training_precision": training_precision("auto"), "loader_workers": loader_workers(),
            "predict_batch_cpu": predict_batch("cpu"), "inference_chunk_cpu": inference_chunk("cpu"),
            "train_chunk_cpu": train_chunk("cpu")}
