"""`zpix predict`: a trained run applied to a cube store."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from zpix.prediction.streaming import predict


@click.command("predict")
@click.argument("model", type=click.Path(exists=True))
@click.argument("cubes", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(), help="Prediction directory to write.")
@click.option("--split", "split_name", type=click.Choice(["all", "train", "val", "test"]), default="all",
              show_default=True, help="Predict only these rows of the run's split.npz (same cube store).")
@click.option("--batch-size", default=64, show_default=True, help="64 was fastest on CPU; use more on GPUs.")
@click.option("--num-workers", default=1, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available).")
@click.option("--on-bad", type=click.Choice(["error", "drop", "zero"]), default="error", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--seed", default=0, show_default=True, help="Seeds torch (prediction itself is deterministic).")
def predict_command(model: str, cubes: str, out: str, split_name: str, batch_size: int, num_workers: int,
                    device: str | None, on_bad: str, overwrite: bool, seed: int) -> None:
    """Predict redshift PDFs for CUBES with MODEL (a run directory or a .ckpt)."""
    from zpix.runs import Split

    torch.manual_seed(seed)
    rows = None
    if split_name != "all":
        split_file = Path(model) / "split.npz"
        if not split_file.exists():
            raise click.ClickException(f"--split needs {split_file} (a run directory from `zpix train`)")
        rows = getattr(Split.load(split_file), split_name)
    try:
        path = predict(model, cubes, out, rows=rows, batch_size=batch_size, num_workers=num_workers,
                       device=device, on_bad=on_bad, overwrite=overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {path}")
