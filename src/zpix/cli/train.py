"""`zpix train` and `zpix kfold`: a YAML config plus command-line overrides."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import click
import yaml
from lightning.pytorch.utilities import rank_zero_only

from zpix.store.cube_store import ON_BAD_DEFAULT
from zpix.training.config import TrainConfig

#: The errors of the library that a command turns into one message.
ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def _resolve(config: str | None, options: dict[str, Any], sets: tuple[str, ...]) -> TrainConfig:
    cfg = TrainConfig.from_yaml(config) if config else TrainConfig()
    values = cfg.to_dict()
    values.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()
                   if v is not None and v != ()})
    known = {f.name for f in fields(TrainConfig)}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or key.split(".")[0] not in known:
            raise click.BadParameter(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
        if "." in key:  # model_args.width=32
            head, sub = key.split(".", 1)
            values[head] = {**values[head], sub: yaml.safe_load(raw)}
        else:
            values[key] = yaml.safe_load(raw)
    return TrainConfig.from_dict(values)


def _common(func):
    opts = [
        click.option("--config", help="YAML run description, or a packaged preset by name (pasquet2019, "
                     "pasquet2019_small, kids_hybrid, demo)."),
        click.option("--cubes", help="Cube store (.h5) with images and z_spec."),
        click.option("--out", help="Run directory to write."),
        click.option("--model", help="Registered model name (see `zpix models`)."),
        click.option("--ensemble", type=int, help="Number of models with seeds seed, seed+1, ..."),
        click.option("--seed", type=int, help="Random seed (split, initialisation, augmentation)."),
        click.option("--max-epochs", type=int),
        click.option("--batch-size", type=int),
        click.option("--lr", type=float),
        click.option("--accelerator", help="Lightning accelerator: cpu, gpu, auto."),
        click.option("--devices", help="Lightning devices: auto, 1, 4, ..."),
        click.option("--precision", help="Lightning precision: 32-true, bf16-mixed, 16-mixed."),
        click.option("--strategy", help="Lightning strategy: auto, ddp, ..."),
        click.option("--workers", "num_workers", type=int, help="DataLoader worker processes."),
        click.option("--num-workers", "num_workers", type=int, hidden=True, help="Old name of --workers."),
        click.option("--target-cubes", help="Cube store of unlabelled images of another field: adversarial domain "
                     "adaptation to it (its z_spec is never read; options: --set domain.KEY=VALUE)."),
        click.option("--on-bad", type=click.Choice(["error", "drop", "zero"]), default=None,
                     help=f"Objects with NaN/inf pixels: stop (error), leave out (drop) or set those pixels to 0 "
                     f"(zero). Default: the config's, else {ON_BAD_DEFAULT}."),
        click.option("--progress/--no-progress", default=None, help="Show progress bars (default: the config's)."),
        click.option("--init-from", multiple=True, help="Start from a trained run or .ckpt (repeatable: a hybrid "
                     "takes its branches from an images-only and a magnitudes-only run; the first gives the head)."),
        click.option("--set", "sets", multiple=True, help="Any other option as KEY=VALUE (repeatable)."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def _devices(options: dict[str, Any]) -> dict[str, Any]:
    if options.get("devices") not in (None, "auto"):
        options["devices"] = yaml.safe_load(options["devices"])
    return options


@click.command("train")
@_common
@click.option("--resume", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue the killed run in this directory (its own config, split and cube store; finished "
                   "members are kept, the others continue from their last.ckpt). No other option may be given.")
def train_command(config: str | None, sets: tuple[str, ...], resume: str | None, **options: Any) -> None:
    """Train a model (or an ensemble) and save checkpoints with the config beside them."""
    from zpix.training import api

    given = [k for k, v in options.items() if v is not None and v != ()] + (["config"] if config else []) + (
        ["set"] if sets else [])
    try:
        if resume:
            if given:
                raise click.UsageError(f"--resume continues a run with its saved config; drop {given}")
            result = api.resume(resume)
        else:
            result = api.train(_resolve(config, _devices(options), sets))
    except ERRORS as err:
        raise click.ClickException(str(err)) from err
    _report(result)


@rank_zero_only
def _report(result) -> None:
    # under DDP every rank runs this command; one report is enough
    click.echo(f"run directory: {result.run_dir}")
    for ckpt in result.checkpoints:
        click.echo(f"  checkpoint: {ckpt}")


@click.command("kfold")
@_common
@click.option("--k", "k", default=5, show_default=True, help="Number of folds.")
def kfold_command(config: str | None, sets: tuple[str, ...], k: int, **options: Any) -> None:
    """k-fold cross-validation: every object predicted by a model that never saw it (Table 1 style)."""
    from zpix.training.api import kfold

    try:
        doc = kfold(_resolve(config, _devices(options), sets), k=k)
    except ERRORS as err:
        raise click.ClickException(str(err)) from err
    click.echo(json.dumps({"mean": doc["mean"], "std": doc["std"]}, indent=2))
