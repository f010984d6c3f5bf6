"""`zpix demo`: the whole chain on a small mock survey, from nothing to a report.

simulate (GalSim SDSS-like mock) → train pasquet2019-small → predict the held-out 20% →
evaluate (bias, σ_MAD, η, CRPS, PIT...) → HTML report with the paper's figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from zpix.training.config import TrainConfig


def demo_config(cubes: Path, out: Path, seed: int, **overrides) -> TrainConfig:
    """The packaged demo preset (``zpix/configs/demo.yaml``) pointed at ``cubes``."""
    path = resources.files("zpix") / "configs" / "demo.yaml"
    cfg = TrainConfig.from_yaml(str(path))
    values = {**cfg.to_dict(), "cubes": str(cubes), "out": str(out), "seed": seed,
              **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig.from_dict(values)


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
    cubes = out / "mock_sdss.h5"
    echo(f"[1/4] simulating {n} SDSS-like galaxies -> {cubes}")
    simulate(n=n, out=cubes, survey="sdss", seed=seed, progress=progress)
    echo("[2/4] training pasquet2019-small")
    cfg = demo_config(cubes, out / "run", seed, max_epochs=max_epochs, progress=progress)
    result = train(cfg)
    echo(f"[3/4] predicting the {len(result.split.test)} held-out galaxies")
    predictions = predict(result.run_dir, cubes, out / "predictions", rows=result.split.test, overwrite=True,
                          progress=progress)
    echo("[4/4] evaluating and writing the report")
    html = make_report(predictions, out / "report", cubes=cubes, seed=seed)
    import json

    metrics = json.loads((html.parent / "metrics.json").read_text())
    echo(format_summary(metrics))
    echo(f"report: {html}   ({time.perf_counter() - t0:.0f} s in all)")
    return metrics
