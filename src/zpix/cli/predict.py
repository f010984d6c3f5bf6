"""`zpix predict`: a trained run applied to a cube store."""

from __future__ import annotations

from pathlib import Path

import click

from zpix.prediction.streaming import predict
from zpix.store.cube_store import ON_BAD_DEFAULT


@click.command("predict")
@click.argument("model", type=click.Path(exists=True))
@click.argument("cubes", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(), help="Prediction directory to write.")
@click.option("--split", "split_name", type=click.Choice(["auto", "all", "train", "val", "test"]), default="auto",
              show_default=True, help="Rows to predict. auto: the run's test rows when CUBES is the run's own cube "
              "store, every row otherwise; train/val/test: those rows of the run's split (its own store only).")
@click.option("--batch-size", type=int, default=None, help="Objects read and written per step (default: from the "
              "machine, zpix.hardware.predict_batch; CPUs run the network on slices of 32).")
@click.option("--precision", type=click.Choice(["32", "bf16", "auto"]), default="auto", show_default=True,
              help="bf16: the convolutional body in bf16, first convolution and head in fp32; auto: bf16 where the "
                   "hardware runs it natively and faster (zpix.hardware), else 32.")
@click.option("--compile", "compile_", is_flag=True, help="Compile the network first (TorchInductor, frozen weights; "
              "needs a C++ compiler): faster inference after a compilation of a minute or more, for long runs.")
@click.option("--workers", "num_workers", default=1, show_default=True, help="DataLoader worker processes.")
@click.option("--num-workers", "num_workers", type=int, hidden=True, help="Old name of --workers.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available).")
@click.option("--on-bad", type=click.Choice(["error", "drop", "zero"]), default=ON_BAD_DEFAULT, show_default=True,
              help="Objects with NaN/inf pixels: stop (error), leave out (drop) or set those pixels to 0 (zero).")
@click.option("--overwrite", is_flag=True, help="Replace an existing prediction directory (never anything else).")
@click.option("--chunk-rows", default=4096, show_default=True,
              help="Rows per committed chunk: a killed run, rerun with the same arguments, continues from the "
                   "last finished chunk.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@click.option("--pdf-format", default=None, metavar="FORMAT",
              help="PDF storage: hist32, hist16, hist64, packed8 or quantiles:K (default: hist32, with --dask "
              "hist16; docs/survey_scale.md).")
@click.option("--dask", "dask_cluster", default=None, metavar="local:N|tcp://HOST:PORT",
              help="Predict on a Dask cluster: N local worker processes, or a running scheduler. CUBES may then be "
                   "several files or quoted glob patterns ('shards/*.h5'); the output is a partitioned directory.")
@click.option("--block-size", default=20_000, show_default=True, help="With --dask: rows per task (partition).")
@click.option("--threads", default=None, type=int, help="With --dask: torch threads per worker "
              "(default: cores / workers on each host).")
@click.option("--hats", is_flag=True, help="With --dask: also write a HATS catalogue (needs ra/dec in the cubes).")
def predict_command(model: str, cubes: tuple[str, ...], out: str, split_name: str, batch_size: int | None,
                    precision: str, compile_: bool, num_workers: int, device: str | None, on_bad: str,
                    overwrite: bool, chunk_rows: int,
                    progress: bool, pdf_format: str | None, dask_cluster: str | None, block_size: int,
                    threads: int | None, hats: bool) -> None:
    """Predict redshift PDFs for CUBES with MODEL (a run directory or a .ckpt)."""
    if dask_cluster:
        _predict_dask(model, cubes, out, dask_cluster, batch_size=batch_size or 64, device=device or "cpu",
                      on_bad=on_bad, overwrite=overwrite, pdf_format=pdf_format, block_rows=block_size,
                      threads=threads, hats=hats, progress=progress, precision=precision)
        return
    if len(cubes) != 1 or not Path(cubes[0]).is_file():
        raise click.ClickException(f"give one cube store file, not {list(cubes)}; several shards or a glob pattern "
                                   "need --dask local:N (or a scheduler address)")
    cubes = cubes[0]
    try:
        path = predict(model, cubes, out, split=split_name, batch_size=batch_size, num_workers=num_workers,
                       device=device, on_bad=on_bad, overwrite=overwrite, chunk_rows=chunk_rows, progress=progress,
                       pdf_format=pdf_format, precision=precision,
                       compile=compile_)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {path}")


def _predict_dask(model: str, cubes: tuple[str, ...], out: str, cluster: str, progress: bool, **options) -> None:
    from zpix.prediction.distributed import predict_distributed

    def report(entry: dict) -> None:
        if progress:
            click.echo(f"{entry['name']}: {entry['n']} objects in {entry['seconds']:.1f} s (worker pid {entry['pid']})")

    try:
        res = predict_distributed(model, list(cubes), out, cluster=cluster, on_partition=report, **options)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {res.out}: {res.n_objects} objects in {res.n_partitions} partitions "
               f"({len(res.computed)} computed now) in {res.seconds:.1f} s")
