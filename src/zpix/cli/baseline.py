"""`zpix baseline knn|magnet`: the catalogue baselines from the command line."""

from __future__ import annotations

import json

import click


def _bands(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [b for b in (text.split(",") if "," in text else list(text)) if b.strip()]


@click.command("baseline")
@click.argument("method", type=click.Choice(["knn", "magnet"]))
@click.option("--split", "split_run", type=click.Path(exists=True, file_okay=False), default=None,
              help="A run directory from `zpix train`: train on its training + validation rows and predict its test "
                   "rows of its cube store (or of --train, which must hold the same objects), for a leak-free "
                   "`zpix evaluate --compare` against the run.")
@click.option("--train", "train_path", type=click.Path(exists=True, dir_okay=False),
              help="Training catalogue: a cube store .h5 (its mags) or a table (.parquet/.fits/.csv/whitespace text).")
@click.option("--test", "test_path", type=click.Path(exists=True, dir_okay=False),
              help="Catalogue to predict (same formats).")
@click.option("--out", required=True, type=click.Path(), help="Prediction directory to write.")
@click.option("--columns", default=None,
              help="Column mapping canonical=file_column,... (canonical: id, z_spec, ebv, mag_<b>, magerr_<b>) "
                   "or a preset: sdss-mgs (the SDSS MGS .train/.test files).")
@click.option("--bands", default=None, help="Bands to use, in order, e.g. ugriz or u,g,r,i,z (default: all).")
@click.option("--z-max", type=float, default=0.4, show_default=True, help="Upper end of the PDF grid.")
@click.option("--n-bins", type=int, default=180, show_default=True, help="Bins of the PDF grid on [0, z_max].")
@click.option("--k", type=int, default=100, show_default=True, help="knn: neighbours per object.")
@click.option("--max-epochs", type=int, default=200, show_default=True, help="magnet: epoch limit.")
@click.option("--model-out", type=click.Path(dir_okay=False), default=None,
              help="Also save the fitted model (knn: .npz, magnet: .ckpt + .json).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
def baseline_command(method: str, split_run: str | None, train_path: str | None, test_path: str | None, out: str,
                     columns: str | None,
                     bands: str | None, z_max: float, n_bins: int, k: int, max_epochs: int, model_out: str | None,
                     seed: int, overwrite: bool) -> None:
    """Photo-z from magnitudes alone: METHOD knn (Beck et al. 2016 local linear k-NN) or magnet
    (an ANNz2-like dense network with a binned-PDF head), trained on --train, predicting --test.

    Writes the same prediction directory as `zpix predict`, for `zpix evaluate --compare`.
    """
    from zpix.baselines.tables import load_magnitudes, run_split_tables

    if split_run is None and not (train_path and test_path):
        raise click.UsageError("give --train and --test catalogues, or --split RUN")
    if split_run is not None and test_path:
        raise click.UsageError("--split RUN predicts the run's test rows; drop --test")
    try:
        split = None
        if split_run is not None:
            train, test, split = run_split_tables(split_run, train_path, bands=_bands(bands))
        else:
            train = load_magnitudes(train_path, columns=columns, bands=_bands(bands))
            test = load_magnitudes(test_path, columns=columns, bands=_bands(bands) or train.bands)
        if method == "knn":
            from zpix.baselines.knn import run_knn

            info = run_knn(train, test, out, model_path=model_out, overwrite=overwrite, split=split, k=k,
                           z_max=z_max, n_bins=n_bins)
        else:
            from zpix.baselines.magnet import run_magnet

            info = run_magnet(train, test, out, model_path=model_out, overwrite=overwrite, split=split, z_max=z_max,
                              n_bins=n_bins, max_epochs=max_epochs, seed=seed)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise click.ClickException(str(err)) from err
    shown = {key: info[key] for key in ("n_train", "n_test", "train_s", "predict_s") if key in info}
    click.echo(json.dumps(shown))
    click.echo(f"wrote {out}")
