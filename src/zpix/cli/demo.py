"""`zpix demo`: the whole chain on a small mock survey."""

from __future__ import annotations

import click

from zpix.demo import run_demo


@click.command("demo")
@click.option("--out", default="demo_output", show_default=True, type=click.Path(file_okay=False))
@click.option("--n", default=4000, show_default=True, help="Galaxies to simulate.")
@click.option("--max-epochs", type=int, default=None, help="Override the preset's epochs.")
@click.option("--seed", default=0, show_default=True)
def demo_command(out: str, n: int, max_epochs: int | None, seed: int) -> None:
    """Simulate a mock SDSS survey, train, predict, evaluate and write a report."""
    run_demo(out, n=n, seed=seed, max_epochs=max_epochs, echo=click.echo)
