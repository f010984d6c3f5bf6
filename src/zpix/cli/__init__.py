"""The `zpix` command line.

Every command lives in this package, one module per stage of the data flow: a command parses its
options, calls the library and turns the library's errors into one message.  A command's module is
imported only when it is called, so `zpix --help` stays fast and a heavy import (torch, GalSim) is
paid only by the command that needs it.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click.Command.  One line per command.
COMMANDS: dict[str, str] = {
    "import": "zpix.cli.store:import_command",
    "info": "zpix.cli.store:info_command",
    "simulate": "zpix.cli.mock:simulate_command",
    "cutouts": "zpix.cli.ingest:cutouts_command",
    "sdss-frames": "zpix.cli.ingest:sdss_frames_command",
    "inject": "zpix.cli.inject:inject_command",
    "models": "zpix.cli.models:models_command",
    "train": "zpix.cli.train:train_command",
    "kfold": "zpix.cli.train:kfold_command",
    "predict": "zpix.cli.predict:predict_command",
    "calibrate": "zpix.cli.calibrate:calibrate_command",
    "debias": "zpix.cli.debias:debias_command",
    "baseline": "zpix.cli.baseline:baseline_command",
    "evaluate": "zpix.cli.evaluate:evaluate_command",
    "report": "zpix.cli.evaluate:report_command",
    "demo": "zpix.cli.demo:demo_command",
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
