"""`zpix debias`: Lin et al. bias correction w.r.t. spec-z (balanced subset, soft labels, edge shift)."""

from __future__ import annotations

import click


@click.command("debias")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(), help="New run directory (must not exist).")
@click.option("--cubes", type=click.Path(exists=True, dir_okay=False),
              help="Cube store holding RUN's rows (default: the one in RUN's config.yaml).")
@click.option("--n-th", default=100, show_default=True, help="At most this many training objects per (z, mag) cell.")
@click.option("--cell-dz", default=0.01, show_default=True, help="Cell size in z_spec.")
@click.option("--cell-dmag", default=0.5, show_default=True, help="Cell size in r magnitude (also σ's magnitude bins).")
@click.option("--soft-labels/--no-soft-labels", default=True, show_default=True,
              help="Gaussian labels with σ fitted per magnitude bin on the validation rows.")
@click.option("--edge-shift/--no-edge-shift", default=True, show_default=True,
              help="Relocate labels against under-populated edges, on an output grid extended by --extend.")
@click.option("--edge-scale", default=1.0, show_default=True,
              help="Edge-shift neighbourhood width, in units of the run's σ_MAD(z) per r bin on validation rows.")
@click.option("--edge-density", type=click.Choice(["balanced", "range"]), default="balanced", show_default=True,
              help="What modifies the edge-shift neighbourhood: the balanced subset's n(z), or the range edges only.")
@click.option("--extend", default=0.03, show_default=True, help="Output range extension at each end (z).")
@click.option("--mag-column", default="r_mag", show_default=True,
              help="Catalogue column of the r magnitude (else the stored 'r' magnitude).")
@click.option("--mag-channels", default=1, show_default=True, type=click.IntRange(min=1),
              help="r-magnitude channels of the retrained head (M equal-count bins; its PDF is the marginal "
              "Σ_m p(m|θ) p(z|m,θ)); 1: a single-channel head.")
@click.option("--epochs", default=200, show_default=True,
              help="Head retraining epochs at most (early stopping on validation).")
@click.option("--lr", default=1e-3, show_default=True, help="Head retraining learning rate.")
@click.option("--seed", default=0, show_default=True)
@click.option("--batch-size", default=128, show_default=True, help="Inference batch for the frozen features.")
@click.option("--device", default="cpu", show_default=True)
def debias_command(run: str, out: str, cubes: str | None, n_th: int, cell_dz: float, cell_dmag: float,
                   soft_labels: bool, edge_shift: bool, edge_scale: float, edge_density: str, extend: float,
                   mag_column: str, mag_channels: int,
                   epochs: int, lr: float, seed: int, batch_size: int, device: str) -> None:
    """Retrain RUN's classification heads for unbiased redshifts w.r.t. spec-z; write the new run to --out.

    Calibrate the result against photo-z afterwards, separately: `zpix calibrate OUT --method photoz`.
    """
    from zpix.debias import DebiasConfig, debias_run

    config = DebiasConfig(n_th=n_th, cell_dz=cell_dz, cell_dmag=cell_dmag, soft_labels=soft_labels,
                          edge_shift=edge_shift, edge_scale=edge_scale, edge_density=edge_density, extend=extend,
                          mag_column=mag_column, mag_channels=mag_channels,
                          epochs=epochs, lr=lr, seed=seed)
    try:
        info = debias_run(run, out, cubes=cubes, config=config, device=device, batch_size=batch_size)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise click.ClickException(str(err)) from err
    sig = ", ".join(f"{s:.4f}" for s in info["sigma_per_mag_bin"])
    click.echo(f"kept {info['n_subset']} of {info['n_train_rows']} training objects (N_th = {n_th}); "
               f"σ per magnitude bin: {sig}")
    click.echo(f"wrote {out}")
