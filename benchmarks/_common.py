"""Shared helpers of the benchmark scripts: machine description, commit, metrics, atomic JSON."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from zpix.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared"

#: The metrics every accuracy table reports (Pasquet et al. 2019 Sect. 4; see zpix.evaluation.metrics).
METRIC_KEYS = ("sigma_mad", "bias", "eta", "crps", "pit_ks", "coverage68", "n")


def git_commit() -> str:
    """The checkout's commit (``+dirty`` when tracked files differ from it)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, torch build and threads, GPU if any."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024**2, 1)
                break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def stamp() -> dict[str, Any]:
    """Date, commit and machine: the header of every results file."""
    doc = {"date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "commit": git_commit(),
           "machine": machine()}
    try:  # other jobs on a shared machine slow every timing: record how busy it was at the start
        doc["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return doc


def load_same_commit(path: str | os.PathLike, commit: str) -> dict[str, Any]:
    """The results file at ``path``, refused (one click error) unless it was written at ``commit``: parts of a
    run merged into one results file must come from one tree."""
    import click

    other = json.loads(Path(path).read_text())
    if other.get("commit") != commit:
        raise click.ClickException(f"{path} was written at commit {other.get('commit')}, this run is at {commit}: "
                                   "rerun it at one commit")
    return other


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` atomically (a killed run never leaves half a file)."""
    return write_text(path, json.dumps(doc, indent=1, default=_default, allow_nan=True) + "\n")


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj)}")


def prediction_metrics(pred_dir: str | os.PathLike) -> dict[str, float]:
    """bias, σ_MAD, η, CRPS, PIT KS, 68% coverage and n of a prediction directory (z_mean, Pasquet Eq. 2)."""
    from zpix.evaluation.metrics import summary
    from zpix.prediction.format import read_predictions

    p = read_predictions(pred_dir)
    z_spec = p.catalog["z_spec"].to_numpy(dtype=np.float64)
    keep = np.isfinite(z_spec)
    m = summary(p.catalog["z_mean"].to_numpy()[keep], z_spec[keep], p.pdfs[keep], p.grid)
    return {k: (int(m[k]) if k == "n" else float(m[k])) for k in METRIC_KEYS}
