"""zpix: photometric redshifts of galaxies from multi-band images with deep networks.

The Python API mirrors the command line; heavy modules are imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "CubeStore": "zpix.store.cube_store",
    "CubeWriter": "zpix.store.cube_store",
    "CubeDataset": "zpix.store.dataset",
    "create_model": "zpix.models",
    "list_models": "zpix.models",
    "train": "zpix.training.api",
    "predict": "zpix.prediction",
    "simulate": "zpix.mock.simulate",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zpix' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_LAZY) + ["__version__"]
