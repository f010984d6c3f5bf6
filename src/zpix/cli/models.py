"""`zpix models`: what the registry holds, with parameter counts at the default configuration."""

from __future__ import annotations

import click


@click.command("models")
def models_command() -> None:
    """List registered models with their parameter counts and output kind."""
    from zpix.models import create_model, list_models

    for name in list_models():
        model = create_model(name)
        n_params = sum(p.numel() for p in model.parameters())
        doc = (type(model).__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name:20s} {n_params:>12,d} parameters  {model.output_kind:10s} {doc}")
