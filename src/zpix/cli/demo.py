"""`zpix demo`: the whole chain on a small mock survey."""

from __future__ import annotations

from pathlib import Path

import click

from zpix.demo import DEMO_JSON, run_demo, update_readme


@click.command("demo")
@click.option("--out", default="demo_output", show_default=True, type=click.Path(file_okay=False))
@click.option("--n", default=4000, show_default=True, help="Galaxies to simulate.")
@click.option("--max-epochs", type=int, default=None, help="Override the preset's epochs.")
@click.option("--seed", default=0, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@click.option("--readme", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Rewrite this README's demo table (between <!-- demo:start --> and <!-- demo:end -->) from "
                   "OUT/demo.json.")
@click.option("--table-only", is_flag=True, help="With --readme: render the table from an existing OUT/demo.json "
              "without running the demo.")
def demo_command(out: str, n: int, max_epochs: int | None, seed: int, progress: bool, readme: str | None,
                 table_only: bool) -> None:
    """Simulate a mock SDSS survey, train, predict, evaluate and write a report."""
    if table_only and not readme:
        raise click.UsageError("--table-only needs --readme")
    try:
        if not table_only:
            run_demo(out, n=n, seed=seed, max_epochs=max_epochs, progress=progress, echo=click.echo)
        if readme:
            click.echo(f"wrote {update_readme(readme, Path(out) / DEMO_JSON)}")
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise click.ClickException(str(err)) from err
