"""`zpix demo`: the whole chain on a small mock survey, from nothing to a report.

simulate (GalSim SDSS-like mock) → train pasquet2019-small → predict the held-out 20% →
evaluate (bias, σ_MAD, η, CRPS, PIT...) → HTML report with the paper's figures.

The run ends by writing ``<out>/demo.json`` (metrics, sizes, timings and the commit that produced
them); the README's demo table is rendered from that file (:func:`update_readme`), never typed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from zpix.training.config import TrainConfig

DEMO_JSON = "demo.json"
README_START, README_END = "<!-- demo:start -->", "<!-- demo:end -->"


def demo_config(cubes: Path, out: Path, seed: int, **overrides) -> TrainConfig:
    """The packaged demo preset (``zpix/configs/demo.yaml``) pointed at ``cubes``."""
    path = resources.files("zpix") / "configs" / "demo.yaml"
    cfg = TrainConfig.from_yaml(str(path))
    values = {**cfg.to_dict(), "cubes": str(cubes), "out": str(out), "seed": seed,
              **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig.from_dict(values)


def source_commit() -> str:
    """The commit of the zpix source tree in use (``+dirty`` when tracked files differ), or "unknown"."""
    root = Path(__file__).resolve().parents[2]
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain",
                                                                     "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_demo(out: str | Path = "demo_output", n: int = 4000, seed: int = 0, max_epochs: int | None = None,
             progress: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Run the demo chain into ``out``, telling ``echo`` each step; returns the evaluation result."""
    from zpix.evaluation.evaluate import format_summary
    from zpix.evaluation.report.build import make_report
    from zpix.mock.simulate import simulate
    from zpix.prediction.streaming import predict
    from zpix.training.api import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    commit = source_commit()
    cubes = out / "mock_sdss.h5"
    echo(f"[1/4] simulating {n} SDSS-like galaxies -> {cubes}")
    simulate(n=n, out=cubes, survey="sdss", seed=seed, progress=progress)
    echo("[2/4] training pasquet2019-small")
    cfg = demo_config(cubes, out / "run", seed, max_epochs=max_epochs, progress=progress)
    result = train(cfg)
    echo(f"[3/4] predicting the {len(result.split.test)} held-out galaxies")
    # the run's own cube store: predict takes its test rows
    predictions = predict(result.run_dir, cubes, out / "predictions", overwrite=True, progress=progress)
    echo("[4/4] evaluating and writing the report")
    html = make_report(predictions, out / "report", cubes=cubes, seed=seed, overwrite=True)
    metrics = json.loads((html.parent / "metrics.json").read_text())
    member = result.summary["members"][0]
    wall = time.perf_counter() - t0
    write_demo_json(out / DEMO_JSON, metrics, commit=commit, n=n, seed=seed, split=result.split, member=member,
                    wall_seconds=wall)
    echo(format_summary(metrics))
    echo(f"report: {html}   ({wall:.0f} s in all; {out / DEMO_JSON})")
    return metrics


def write_demo_json(path: Path, metrics: dict[str, Any], *, commit: str, n: int, seed: int, split: Any,
                    member: dict[str, Any], wall_seconds: float) -> None:
    from zpix.atomic import write_json

    (name, overall), = ((k, v) for k, v in metrics["summary"].items())
    doc = {"commit": commit, "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
           "n_simulated": n, "seed": seed, "n_train": len(split.train), "n_val": len(split.val),
           "n_test": len(split.test), "epochs": member["epochs"], "train_seconds": member["train_seconds"],
           "wall_seconds": wall_seconds, "method": name,
           "metrics": {k: overall.get(k) for k in ("n", "bias", "sigma_mad", "eta", "crps", "pit_ks", "coverage68")}}
    write_json(path, doc)


def render_demo_table(doc: dict[str, Any]) -> str:
    """The README's demo paragraph and table, from ``demo.json``."""
    m = doc["metrics"]
    return "\n".join([
        f"What `make demo` gave (seed {doc['seed']}, {doc['date_utc'][:10]}, commit {doc['commit']}, "
        f"{doc['machine']['cpu_count']} CPUs; {doc['wall_seconds'] / 60:.1f} min wall for the chain): "
        f"{doc['n_simulated']:,} simulated galaxies, `pasquet2019-small` trained {doc['epochs']} epochs "
        f"({doc['train_seconds']:.0f} s) on {doc['n_train']:,} ({doc['n_val']:,} for validation), evaluated on "
        f"the {doc['n_test']:,} held-out galaxies:",
        "",
        "| N test | bias ⟨Δz⟩ | σ_MAD | η (\\|Δz\\| > 0.05) | CRPS | PIT KS | 68% coverage |",
        "|---|---|---|---|---|---|---|",
        f"| {m['n']} | {m['bias']:+.4f} | {m['sigma_mad']:.4f} | {100 * m['eta']:.1f}% | {m['crps']:.4f} | "
        f"{m['pit_ks']:.3f} | {m['coverage68']:.3f} |",
    ])


def update_readme(readme: str | Path, demo_json: str | Path) -> Path:
    """Rewrite the block between ``<!-- demo:start -->`` and ``<!-- demo:end -->`` of ``readme``."""
    from zpix.atomic import write_text

    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block to fill")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    doc = json.loads(Path(demo_json).read_text())
    return write_text(readme, f"{head}{README_START}\n{render_demo_table(doc)}\n{README_END}{tail}")
