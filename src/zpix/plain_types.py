"""Plain Python values for the YAML and JSON files zpix writes (meta.yaml, metrics JSON)."""

from __future__ import annotations

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
