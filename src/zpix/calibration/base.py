"""The calibration registry and the chain of fitted steps stored in a run as ``calibration.json``.

A calibration step maps binned PDFs to binned PDFs, ``apply(probs (N, n_bins)) -> probs``, after being
fitted on validation objects with known z_spec, ``fit(probs=..., z_spec=..., grid=..., **context)``.
Steps are registered by name (:func:`register_calibrator`) so that ``calibration.json`` can name them::

    {"format_version": 1,
     "grid": {"n_bins": 180, "z_min": 0.0, "z_max": 0.4},
     "steps": [{"name": "temperature", "params": {"temperature": 1.21},
                "fitted_on": {"rows": "val", "n": 2240}}, ...]}

The steps are applied in order after the ensemble mean by ``zpix predict``
(:func:`load_calibration`); with ``"keep_mean": true`` each PDF is then translated back to its mean before
the chain (:func:`shift_to_mean`).  A step that needs per-object inputs besides the PDF (none of the
built-in ones do) receives them as keyword arguments to ``apply``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zpix.pdf import RedshiftGrid, cdf_edges, normalize, pdf_mean

CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 1
#: Floor under probabilities before taking logarithms (a float32 softmax underflows to exactly 0).
PROB_FLOOR = 1e-12


class Calibrator:
    """Base class of a calibration step; subclasses set ``name`` and implement the four methods."""

    name: ClassVar[str] = ""

    def fit(self, *, probs: np.ndarray, z_spec: np.ndarray, grid: RedshiftGrid, **context: Any) -> None:
        raise NotImplementedError

    def apply(self, probs: np.ndarray, **context: Any) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        raise NotImplementedError


_REGISTRY: dict[str, type[Calibrator]] = {}


def register_calibrator(name: str) -> Callable[[type[Calibrator]], type[Calibrator]]:
    """Class decorator: make a :class:`Calibrator` available under ``name`` (``--method NAME``)."""

    def wrap(cls: type[Calibrator]) -> type[Calibrator]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"calibration method {name!r} is registered twice ({_REGISTRY[name]} and {cls})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_builtin() -> None:
    # the built-in methods register themselves on import
    from zpix.calibration import pit, regression, temperature  # noqa: F401

    # Lin et al. photo-z calibration (issue 12): imported where its module exists, so that either can land first
    if importlib.util.find_spec("zpix.calibration.photoz") is not None:
        importlib.import_module("zpix.calibration.photoz")


def available_calibrators() -> list[str]:
    """Names of the registered calibration methods."""
    _load_builtin()
    return sorted(_REGISTRY)


def get_calibrator(name: str) -> type[Calibrator]:
    """The calibration class registered as ``name``; a clear error lists the known names."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown calibration method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def check_probs(probs: np.ndarray, grid: RedshiftGrid | None = None) -> np.ndarray:
    """float64 (N, n_bins) rows normalised to 1 (errors name the bad rows, see :func:`zpix.pdf.normalize`)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"calibration: probabilities must have shape (N, n_bins), got {p.shape}")
    if grid is not None and p.shape[1] != grid.n_bins:
        raise ValueError(f"calibration: {p.shape[1]} bins but the grid has {grid.n_bins}")
    return normalize(p)


def shift_to_mean(probs: np.ndarray, grid: RedshiftGrid, target: np.ndarray, n_iter: int = 4) -> np.ndarray:
    """Each binned PDF translated along z so that its mean Σ_k z_k P_k is ``target``:

        C'(z) = C(z − δ_i),   P'_k = C'(e_{k+1}) − C'(e_k),

    with the CDF C piecewise linear between the edges (a histogram PDF) and δ_i refined ``n_iter`` times
    (δ_i += target_i − mean(P'_i)) because mass moved off the grid's ends is cut and the rest renormalised.
    """
    p = check_probs(probs, grid)
    target = np.asarray(target, dtype=np.float64)
    c = cdf_edges(p)
    c[:, -1] = 1.0
    k = np.arange(grid.n_bins + 1, dtype=np.float64)
    delta = target - pdf_mean(p, grid)
    out = p
    for _ in range(n_iter):
        x = np.clip(k[None, :] - (delta / grid.width)[:, None], 0.0, grid.n_bins)
        i = np.minimum(np.floor(x).astype(np.int64), grid.n_bins - 1)
        t = x - i
        c2 = np.take_along_axis(c, i, 1) * (1 - t) + np.take_along_axis(c, i + 1, 1) * t
        new = np.clip(np.diff(c2, axis=1), 0.0, None)
        s = new.sum(axis=1)
        ok = s > 1e-12  # a PDF shifted wholly off the grid keeps its last shape
        out = np.where(ok[:, None], new / np.where(ok, s, 1.0)[:, None], out)
        delta = delta + np.where(ok, target - pdf_mean(out, grid), 0.0)
    return out


@dataclass
class FittedStep:
    """One fitted step and where it was fitted."""

    calibrator: Calibrator
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.calibrator.name, "params": self.calibrator.to_dict(), "fitted_on": dict(self.fitted_on)}


@dataclass
class Calibration:
    """An ordered chain of fitted calibration steps on one redshift grid (identity when empty)."""

    grid: RedshiftGrid | None = None  # None: not fitted yet (the identity)
    steps: list[FittedStep] = field(default_factory=list)
    #: how the chain was chosen (``auto``: the candidates' cross-validated scores and the reason), saved with it
    notes: dict[str, Any] = field(default_factory=dict)
    #: translate each calibrated PDF back to the mean of the PDF it came from (``keep-mean`` in a method list), so
    #: that the catalogue's point estimate z_mean (and with it σ_MAD, η, the bias) is the uncalibrated one: the
    #: steps then change the PDFs' width and shape only (:func:`shift_to_mean`)
    keep_mean: bool = False

    def __call__(self, probs: np.ndarray, **context: Any) -> np.ndarray:
        return self.apply(probs, **context)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def apply(self, probs: np.ndarray, **context: Any) -> np.ndarray:
        """Apply every step in order; returns float64 rows summing to 1."""
        p = check_probs(probs, self.grid)
        z0 = pdf_mean(p, self.grid) if self.keep_mean and self.steps else None
        for step in self.steps:
            p = check_probs(step.calibrator.apply(p, **context), self.grid)
        if z0 is not None:
            assert self.grid is not None
            p = shift_to_mean(p, self.grid, z0)
        return p

    def fit_step(self, method: str | Calibrator, *, probs: np.ndarray, z_spec: np.ndarray,
                 fitted_on: dict[str, Any] | None = None, **context: Any) -> FittedStep:
        """Fit ``method`` on the output of the steps already in the chain and append it.

        ``probs`` are the PDFs *before* this chain (each new step sees what the earlier steps made of them).
        """
        if self.grid is None:
            raise ValueError("Calibration.fit_step: the chain has no redshift grid; build it with Calibration(grid)")
        if self.keep_mean:
            raise ValueError("Calibration.fit_step: the chain keeps the PDFs' means (keep-mean), which must come "
                             "after its last step; refit the chain without appending to it")
        cal = get_calibrator(method)() if isinstance(method, str) else method
        z = np.asarray(z_spec, dtype=np.float64)
        p = self.apply(probs, **context)
        if z.shape != (p.shape[0],):
            raise ValueError(f"calibration: {p.shape[0]} PDFs but z_spec has shape {z.shape}")
        if not np.isfinite(z).all():
            raise ValueError("calibration: z_spec contains NaN/inf; fit only on objects with a spectroscopic z")
        cal.fit(probs=p, z_spec=z, grid=self.grid, **context)
        step = FittedStep(cal, {"n": int(p.shape[0]), **(fitted_on or {})})
        self.steps.append(step)
        return step

    def to_dict(self) -> dict[str, Any]:
        if self.grid is None:
            raise ValueError("Calibration.to_dict: an empty chain without a grid has nothing to save")
        doc = {"format_version": FORMAT_VERSION, "grid": self.grid.to_dict(),
               "steps": [s.to_dict() for s in self.steps]} | ({"keep_mean": True} if self.keep_mean else {})
        return doc | ({"notes": self.notes} if self.notes else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        if d.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(f"calibration format {d['format_version']} is newer than this zpix reads "
                             f"({FORMAT_VERSION}); upgrade zpix")
        grid = RedshiftGrid.from_dict(d["grid"])
        steps = [FittedStep(get_calibrator(s["name"]).from_dict(s["params"]), dict(s.get("fitted_on", {})))
                 for s in d.get("steps", [])]
        return cls(grid, steps, dict(d.get("notes") or {}), bool(d.get("keep_mean", False)))

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temporary name, then rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            return cls.from_dict(doc)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a zpix calibration file ({err!r}); refit it with `zpix calibrate`") from err

    def describe(self) -> str:
        """One line per step: name, fitted parameters, fitting rows."""
        auto = self.notes.get("auto")
        why = f" (auto on {auto['n']} objects: {auto['reason']})" if auto and "reason" in auto else ""
        if not self.steps:
            return f"calibration: none{why}"
        lines = [f"calibration (applied in order after the ensemble mean){why}:"]
        for i, s in enumerate(self.steps):
            params = s.calibrator.summary() if hasattr(s.calibrator, "summary") else s.calibrator.to_dict()
            lines.append(f"  {i + 1}. {s.calibrator.name}: {params}  (fitted on {s.fitted_on})")
        if self.keep_mean:
            lines.append("  then each PDF translated back to its uncalibrated mean (keep-mean: point estimates kept)")
        return "\n".join(lines)


def calibration_path(run_dir: str | os.PathLike) -> Path | None:
    """Where the calibration of ``run_dir`` lives: ``run_dir/calibration.json``, or for a member's
    checkpoint ``run/member_<k>/best.ckpt`` the run's file (one member of a calibrated run stays calibrated)."""
    path = Path(run_dir)
    if path.is_dir():
        return path / CALIBRATION_FILE
    if path.parent.name.startswith("member_"):
        return path.parent.parent / CALIBRATION_FILE
    return None


def load_calibration(run_dir: str | os.PathLike) -> Calibration:
    """The calibration stored with a run (a callable probs -> probs); the identity (an empty, falsy
    chain) where the run has none."""
    path = calibration_path(run_dir)
    if path is not None and path.is_file():
        return Calibration.load(path)
    return Calibration()
