"""The `zpix` command line.

Each sub-command lives beside the code it drives and is imported only when it is
called, so `zpix --help` stays fast and a heavy import (torch, GalSim) is paid
only by the command that needs it.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click.Command.  One line per command.
COMMANDS: dict[str, str] = {
    "evaluate": "zpix.evaluate:evaluate_command",
    "report": "zpix.report.build:report_command",
    "import": "zpix.data.importers:import_command",
    "info": "zpix.data.cube_store:info_command",
    "simulate": "zpix.data.simulate:simulate_command",
    "train": "zpix.training.commands:train_command",
    "kfold": "zpix.training.commands:kfold_command",
    "predict": "zpix.prediction:predict_command",
    "baseline": "zpix.baselines.commands:baseline_command",
    "demo": "zpix.demo:demo_command",
    "models": "zpix.models.commands:models_command",
    "cutouts": "zpix.data.cutouts:cutouts_command",
    "sdss-frames": "zpix.data.sdss_frames:sdss_frames_command",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zpix")
def main() -> None:
    """zpix: photometric redshifts of galaxies straight from their multi-band images."""


if __name__ == "__main__":
    main()
