"""The layout's rules (docs/architecture.md): they hold only while a test checks them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from zpix.training.config import TrainConfig, preset_names, resolve_config

SRC = Path(__file__).resolve().parents[1] / "src" / "zpix"


def test_prediction_does_not_import_the_training_entry_points():
    code = "import sys, zpix.prediction; print('zpix.training.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_only_the_cli_package_imports_click():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.is_relative_to(SRC / "cli"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "click" or n.startswith("click.") for n in names):
                offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


def test_packaged_presets_resolve_by_name():
    assert {"pasquet2019", "pasquet2019_small", "kids_hybrid", "demo"} <= set(preset_names())
    assert TrainConfig.from_yaml("pasquet2019").model == "pasquet2019"
    with pytest.raises(FileNotFoundError, match="no packaged preset"):
        resolve_config("pasquet2020")
