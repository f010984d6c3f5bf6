"""`zpix info` and `zpix import`: inspect and create cube stores."""

from __future__ import annotations

import click

from zpix.store.cube_store import ON_BAD_DEFAULT, CubeStore, CubeStoreError, OnBad
from zpix.store.importers import import_fits, import_npz


@click.command("info")
@click.argument("cubes", type=click.Path())
@click.option("--on-bad", type=click.Choice(["error", "drop", "zero"]), default=ON_BAD_DEFAULT, show_default=True,
              help="Objects with NaN/inf pixels: stop (error), leave out (drop) or set those pixels to 0 (zero); "
                   "the same choice and default as train and predict.")
def info_command(cubes: str, on_bad: OnBad) -> None:
    """Validate a cube store and summarise what it holds; for a run directory, show what was fitted in it."""
    from pathlib import Path

    if Path(cubes).is_dir():
        _run_info(Path(cubes))
        return
    try:
        with CubeStore(cubes, on_bad=on_bad) as store:
            click.echo(store.summary())
    except CubeStoreError as err:
        raise click.ClickException(str(err)) from err


@click.command("import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Cube store (.h5) to write.")
# column options are named --<what>-col(s), as in `zpix cutouts`
@click.option("--bands", default="ugriz", show_default=True, help="Band names, one letter per band or comma list.")
@click.option("--pixel-scale", default=0.396, show_default=True, help="Pixel scale in arcsec.")
@click.option("--survey", default="sdss", show_default=True)
@click.option("--file-col", "file_column", default="file", show_default=True,
              help="FITS catalogue: column with cube paths.")
@click.option("--id-col", "id_column", default="id", show_default=True)
@click.option("--z-col", "z_column", default="z_spec", show_default=True)
@click.option("--ebv-col", "ebv_column", default="ebv", show_default=True, help="Use 'none' if there is no E(B-V).")
@click.option("--mag-cols", "mag_columns", default="", help="Comma-separated magnitude columns to store.")
def import_command(source: str, out: str, bands: str, pixel_scale: float, survey: str, file_column: str,
                   id_column: str, z_column: str, ebv_column: str, mag_columns: str) -> None:
    """Import SOURCE (a Pasquet-layout .npz, or a catalogue table of FITS cubes) into a cube store."""
    band_list = bands.split(",") if "," in bands else list(bands)
    try:
        if source.endswith(".npz"):
            path = import_npz(source, out, band_list, pixel_scale, survey)
        else:
            path = import_fits(source, out, band_list, pixel_scale, survey, file_column, id_column, z_column,
                               None if ebv_column.lower() == "none" else ebv_column,
                               [c for c in mag_columns.split(",") if c])
    except CubeStoreError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {path}")


def _run_info(run) -> None:
    """What was fitted into a run directory after training: bias correction, calibration."""
    from zpix.atomic import is_run_dir
    from zpix.debias.api import describe_debias

    if not is_run_dir(run):
        raise click.ClickException(f"{run} is a directory but not a run written by `zpix train` (no config.yaml "
                                   "and split.npz); pass a cube store (.h5) or a run directory")
    try:
        debias = describe_debias(run)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"run directory {run}: {len(list(run.glob('member_*/best.ckpt')))} member checkpoint(s)")
    click.echo(debias or "debias: none")
    try:
        from zpix.calibration import load_calibration

        chain = load_calibration(run)
    except (ImportError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(chain.describe())  # an empty chain says why auto kept the identity
    from zpix.quality import load_quality

    try:
        quality = load_quality(run)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    click.echo(quality.describe() if quality else "quality: none")
