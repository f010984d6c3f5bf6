from __future__ import annotations

import importlib

import pytest
from click.testing import CliRunner

from zpix.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_imports_and_has_help(name):
    module, attr = COMMANDS[name].split(":")
    command = getattr(importlib.import_module(module), attr)
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert command.name == name


def test_models_command_lists_the_paper_network():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("pasquet2019 "))
    from zpix.models import create_model

    expected = sum(p.numel() for p in create_model("pasquet2019").parameters())
    assert f"{expected:,d} parameters" in line and " pdf " in line
