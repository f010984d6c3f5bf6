"""`zpix simulate`: the GalSim mock survey."""

from __future__ import annotations

import click

from zpix.mock.presets import PRESETS
from zpix.mock.simulate import catalog_path, simulate


@click.command("simulate")
@click.option("--n", "n", type=click.IntRange(min=1), default=2000, show_default=True, help="Galaxies to simulate.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output cube store (.h5).")
@click.option("--survey", type=click.Choice(sorted(PRESETS)), default="sdss", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes (default: all cores).")
@click.option("--deep-fraction", type=click.FloatRange(0.0, 1.0), default=None,
              help="Share of objects with deep co-added imaging (default: preset, 0.04 for sdss).")
@click.option("--neighbours/--no-neighbours", default=True, show_default=True,
              help="Draw field galaxies that fall inside the stamps.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def simulate_command(n: int, out: str, survey: str, seed: int, workers: int | None, deep_fraction: float | None,
                     neighbours: bool, progress: bool) -> None:
    """Simulate a mock survey (GalSim) into a cube store plus a catalogue table beside it."""
    path = simulate(n, out, survey=survey, seed=seed, workers=workers, deep_fraction=deep_fraction,
                    neighbours=neighbours, progress=progress)
    click.echo(f"wrote {path} and {catalog_path(path)}")
