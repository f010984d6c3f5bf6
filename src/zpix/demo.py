"""`zpix demo`: the whole chain on a small mock survey, from nothing to a report.

simulate (GalSim SDSS-like mock) → train pasquet2019-small → predict the held-out 20% →
evaluate (bias, σ_MAD, η, CRPS, PIT...) → HTML report with the paper's figures.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import click

from zpix.training.config import TrainConfig


def demo_config(cubes: Path, out: Path, seed: int, **overrides) -> TrainConfig:
    """The packaged demo preset (``zpix/configs/demo.yaml``) pointed at ``cubes``."""
    path = resources.files("zpix") / "configs" / "demo.yaml"
    cfg = TrainConfig.from_yaml(str(path))
    values = {**cfg.to_dict(), "cubes": str(cubes), "out": str(out), "seed": seed,
              **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig.from_dict(values)


def run_demo(out: str | Path = "demo_output", n: int = 4000, seed: int = 0, max_epochs: int | None = None,
             progress: bool = True) -> dict:
    """Run the demo chain into ``out``; returns the evaluation result."""
    from zpix.data.simulate import simulate
    from zpix.evaluate import format_summary
    from zpix.prediction import predict
    from zpix.report.build import make_report
    from zpix.training.api import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cubes = out / "mock_sdss.h5"
    click.echo(f"[1/4] simulating {n} SDSS-like galaxies -> {cubes}")
    simulate(n=n, out=cubes, survey="sdss", seed=seed, progress=progress)
    click.echo("[2/4] training pasquet2019-small")
    cfg = demo_config(cubes, out / "run", seed, max_epochs=max_epochs, progress=progress)
    result = train(cfg)
    click.echo(f"[3/4] predicting the {len(result.split.test)} held-out galaxies")
    predictions = predict(result.run_dir, cubes, out / "predictions", rows=result.split.test, overwrite=True,
                          progress=progress)
    click.echo("[4/4] evaluating and writing the report")
    html = make_report(predictions, out / "report", cubes=cubes, seed=seed)
    import json

    metrics = json.loads((html.parent / "metrics.json").read_text())
    click.echo(format_summary(metrics))
    click.echo(f"report: {html}   ({time.perf_counter() - t0:.0f} s in all)")
    return metrics


@click.command("demo")
@click.option("--out", default="demo_output", show_default=True, type=click.Path(file_okay=False))
@click.option("--n", default=4000, show_default=True, help="Galaxies to simulate.")
@click.option("--max-epochs", type=int, default=None, help="Override the preset's epochs.")
@click.option("--seed", default=0, show_default=True)
def demo_command(out: str, n: int, max_epochs: int | None, seed: int) -> None:
    """Simulate a mock SDSS survey, train, predict, evaluate and write a report."""
    run_demo(out, n=n, seed=seed, max_epochs=max_epochs)
