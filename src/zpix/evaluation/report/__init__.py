"""HTML reports and figures of photo-z predictions (`zpix report`).

``make_report`` is imported lazily so that ``import zpix.evaluation.report`` does not load matplotlib.
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_report"]


def __getattr__(name: str) -> Any:
    if name == "make_report":
        from zpix.evaluation.report.build import make_report

        return make_report
    raise AttributeError(f"module 'zpix.evaluation.report' has no attribute {name!r}")
