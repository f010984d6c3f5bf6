"""Plain Python values for the YAML and JSON files zpix writes (meta.yaml, metrics JSON)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


def to_plain(obj: Any, finite: bool = False) -> Any:
    """``obj`` with numpy scalars/arrays, paths and tuples turned into str, int, float, bool, None, list, dict.

    ``finite=True`` writes NaN and ±inf as None (strict JSON has no NaN); other unknown objects become
    their ``str``.
    """
    if isinstance(obj, dict):
        return {str(k): to_plain(v, finite) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v, finite) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_plain(obj.tolist(), finite)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and finite and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return str(obj)


def check_known_options(cls: type, values: dict[str, Any], what: str) -> None:
    """Refuse keys of ``values`` that are not fields of the dataclass ``cls`` (a config read from YAML),
    naming them and the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; known options: {sorted(known)}")
