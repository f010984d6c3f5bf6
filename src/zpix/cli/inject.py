"""`zpix inject`: mock galaxies injected into real survey frames, cut out into a cube store."""

from __future__ import annotations

import click

from zpix.inject.pipeline import DEFAULT_PER_COPY, fields_path, inject
from zpix.inject.psf import InjectError


@click.command("inject")
@click.option("--frames", "frames", multiple=True, required=True,
              help="SDSS corrected frames, all five bands per field: glob pattern(s) in quotes or paths, "
                   "e.g. 'FIELD_DIR/frame-*-*.fits.bz2'; repeat for several.")
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Galaxies to inject (dealt to the fields).")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output cube store (.h5).")
@click.option("--survey", type=click.Choice(["sdss"]), default="sdss", show_default=True,
              help="Mock population and frame format.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--per-copy", type=click.IntRange(min=1), default=DEFAULT_PER_COPY, show_default=True,
              help="Galaxies injected into one copy of a field's frames (they never overlap).")
@click.option("--size", "stamp", type=click.IntRange(8, 512), default=64, show_default=True,
              help="Cutout side, pixels.")
@click.option("--render", type=click.IntRange(8, 1024), default=96, show_default=True,
              help="Side of the box each galaxy is drawn in, pixels (≥ --size).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes.")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="Calibrations and finished copies (for resuming) [default: OUT.work].")
@click.option("--keep-work", is_flag=True, help="Keep the work directory after success.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def inject_command(frames: tuple[str, ...], n: int, out: str, survey: str, seed: int, per_copy: int, stamp: int,
                   render: int, workers: int, work_dir: str | None, keep_work: bool, progress: bool) -> None:
    """Inject mock galaxies (zpix simulate's population) into real frames, measure them, cut them out.

    Rerunning the same command after an interruption resumes from the finished frame copies.
    """
    try:
        report = inject(list(frames), n, out, survey=survey, seed=seed, per_copy=per_copy, stamp=stamp,
                        render=render, workers=workers, work_dir=work_dir, keep_work=keep_work, progress=progress)
    except InjectError as err:
        raise click.ClickException(str(err)) from err
    click.echo(report.summary())
    click.echo(f"per-field PSF and noise: {fields_path(out)}")
