"""`zpix calibrate`: fit a post-hoc calibration on a run's validation objects, into a new run directory."""

from __future__ import annotations

import click


@click.command("calibrate")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--method", "methods", multiple=True, default=("auto",), show_default=True,
              help="Calibration step, in order (repeatable): temperature, pit, pit-affine, pit-beta, pit-local, "
                   "pit-width, student-t, photoz, keep-mean (last: PDFs translated back to their uncalibrated "
                   "means), or auto (the chain that beats no calibration on held-out folds of the validation rows, "
                   "beyond their noise; none with fewer than 1000 rows).")
@click.option("--out", required=True, type=click.Path(),
              help="New run directory (RUN's checkpoints hard-linked, plus the fitted calibration.json).")
@click.option("--cubes", type=click.Path(exists=True, dir_okay=False),
              help="Cube store holding RUN's validation rows (default: the one in RUN's config.yaml).")
@click.option("--fit-on", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Prediction directory to fit on instead of RUN's validation rows (repeatable, concatenated): its "
                   "labelled objects, e.g. the out-of-fold predictions of `zpix kfold` with RUN's configuration "
                   "(OUT/predictions: every labelled object predicted by a model that never saw it). Refused if "
                   "they include their model's training rows.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, ... (default: cuda if available).")
@click.option("--seed", default=0, show_default=True, help="Unused (fitting is deterministic).")
def calibrate_command(run: str, methods: tuple[str, ...], out: str, cubes: str | None, fit_on: tuple[str, ...],
                      batch_size: int, device: str | None, seed: int) -> None:
    """Fit calibration METHODs on RUN's validation rows (or --fit-on); write the calibrated run to --out (RUN is
    not changed)."""
    from zpix.calibration import calibrate

    try:
        chain = calibrate(run, out, list(methods), cubes=cubes, batch_size=batch_size, device=device,
                          fit_on=fit_on)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(chain.describe())
    click.echo(f"wrote {out}")
