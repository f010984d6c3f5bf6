"""`zpix evaluate` and `zpix report`: metrics JSON and the HTML report."""

from __future__ import annotations

import click

from zpix.evaluation.evaluate import POINT_CHOICES, evaluate, format_summary
from zpix.evaluation.report.build import make_report


def _floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from err


@click.command("evaluate")
@click.argument("predictions", type=click.Path(exists=True))
@click.option("--truth", type=click.Path(exists=True), default=None,
              help="Table with id and z_spec (Parquet/CSV/FITS or a cube store .h5); overrides the "
                   "catalogue's z_spec and supplies missing trend columns (ebv, r_mag, ...).")
@click.option("--compare", multiple=True, type=click.Path(exists=True),
              help="Another prediction directory to put side by side (repeatable); all methods are "
                   "evaluated on the objects they share.")
@click.option("--out", type=click.Path(dir_okay=False), default="metrics.json", show_default=True)
@click.option("--objects-out", type=click.Path(dir_okay=False), default=None,
              help="Also write per-object Δz, PIT, CRPS of every method to this Parquet file.")
@click.option("--point", type=click.Choice(POINT_CHOICES), default="z_mean", show_default=True,
              help="Point estimate for the residuals (z_mean is Pasquet Eq. 2).")
@click.option("--outlier-threshold", "outlier_thresholds", multiple=True, type=float,
              default=(0.05, 0.15), show_default=True, help="|Δz| threshold(s) for η (repeatable).")
@click.option("--quality-cut", "quality_cuts", multiple=True, type=float, default=(0.1, 0.2),
              show_default=True, help="Fraction(s) of widest PDFs to remove (repeatable).")
@click.option("--n-tomo", type=int, default=5, show_default=True,
              help="Equal-population tomographic z_phot bins for N(z).")
@click.option("--tomo-edges", default=None, help="Explicit tomographic edges, e.g. 0.02,0.08,0.12,0.2,0.4")
@click.option("--n-boot", type=int, default=200, show_default=True, help="Bootstrap resamples for trend errors.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--allow-training-rows", is_flag=True,
              help="Score objects the model was trained or validated on (refused by default: they flatter it).")
def evaluate_command(predictions: str, truth: str | None, compare: tuple[str, ...], out: str,
                     objects_out: str | None, point: str, outlier_thresholds: tuple[float, ...],
                     quality_cuts: tuple[float, ...], n_tomo: int, tomo_edges: str | None, n_boot: int,
                     seed: int, allow_training_rows: bool) -> None:
    """Photo-z metrics of PREDICTIONS (a `zpix predict` directory) as JSON.

    Point metrics (bias, σ_MAD, NMAD, η, MSE, MAE, R²), PDF metrics (CRPS, PIT, coverage),
    quality cuts, trends with z and catalogue columns, and N(z) in tomographic bins.
    """
    try:
        result = evaluate(predictions, truth=truth, compare=compare, out=out, objects_out=objects_out,
                          point=point, outlier_thresholds=outlier_thresholds, quality_cuts=quality_cuts,
                          n_tomo=n_tomo, tomo_edges=_floats(tomo_edges), n_boot=n_boot, seed=seed,
                          allow_training_rows=allow_training_rows)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(format_summary(result))
    click.echo(f"wrote {out}")


@click.command("report")
@click.argument("predictions", type=click.Path(exists=True))
@click.option("--out", type=click.Path(file_okay=False), default="report", show_default=True,
              help="Directory for index.html, the PNG figures and metrics.json (a new one, or an older report "
                   "with --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace an existing report directory (never anything else).")
@click.option("--compare", multiple=True, type=click.Path(exists=True),
              help="Another prediction directory to show side by side (repeatable).")
@click.option("--truth", type=click.Path(exists=True), default=None,
              help="Table with id and z_spec (Parquet/CSV/FITS or a cube store .h5).")
@click.option("--cubes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Cube store (HDF5) holding the galaxies' images, for the example panel.")
@click.option("--point", type=click.Choice(("z_mean", "z_median", "z_mode")), default="z_mean",
              show_default=True)
@click.option("--n-examples", type=int, default=12, show_default=True)
@click.option("--n-boot", type=int, default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--allow-training-rows", is_flag=True,
              help="Score objects the model was trained or validated on (refused by default: they flatter it).")
def report_command(predictions: str, out: str, overwrite: bool, compare: tuple[str, ...], truth: str | None,
                   cubes: str | None, point: str, n_examples: int, n_boot: int, seed: int,
                   allow_training_rows: bool) -> None:
    """HTML report with the Pasquet et al. (2019) figures for PREDICTIONS (and --compare methods)."""
    try:
        page = make_report(predictions, out, compare=compare, truth=truth, cubes=cubes, n_examples=n_examples,
                           seed=seed, point=point, n_boot=n_boot, overwrite=overwrite,
                           allow_training_rows=allow_training_rows)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {page}")
