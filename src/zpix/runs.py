"""The run directory: what `zpix train` writes and `zpix predict`, `kfold` and `init_from` read.

::

    run/.zpix-run             marker: a run directory (zpix never replaces it with other output)
    run/config.yaml           the TrainConfig + library versions
    run/split.npz             train / val / test rows of the cube store
    run/input_spec.json       what the run was trained on: bands, pixel scale, survey, image shape,
                              magnitudes (or none), E(B-V) use, the cube store's fingerprint, the split's,
                              the domain-adaptation target store's (``target``; empty without --target-cubes)
    run/member_<k>/best.ckpt  best-validation checkpoint of ensemble member k (seed + k)
    run/member_<k>/last.ckpt  the latest epoch's checkpoint (`zpix train --resume RUN` continues from it)
    run/member_<k>/summary.json  member k's scores, written when it has finished
    run/summary.json          per-member validation scores and timings

Training writes it and prediction reads it; both import this module, never each other.  Every
consumer of a run checks a cube store against the run's input spec (:func:`check_inputs`) before
using it, and picks rows of the run's split only on the run's own store (:func:`select_rows`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zpix.atomic import MARKERS, write_json

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.npz"
SUMMARY_FILE = "summary.json"
INPUT_SPEC_FILE = "input_spec.json"
RUN_MARKER = MARKERS["run"]
SPLIT_NAMES = ("train", "val", "test")


class RunInputError(ValueError):
    """A cube store (or another run) does not fit a trained run; the message names the mismatch."""


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def save(self, path) -> None:
        from zpix.atomic import atomic_file

        with atomic_file(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, train=self.train, val=self.val, test=self.test)

    def digest(self) -> str:
        """sha256 of the three row lists (identifies the split)."""
        h = hashlib.sha256()
        for name in SPLIT_NAMES:
            h.update(name.encode())
            h.update(np.ascontiguousarray(getattr(self, name), dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    @classmethod
    def load(cls, path) -> Split:
        with np.load(path) as f:
            return cls(f["train"], f["val"], f["test"])


def checkpoint_paths(model: str | os.PathLike) -> list[Path]:
    """The checkpoints behind MODEL: a ``.ckpt`` file, or a run directory with ``member_*/best.ckpt``."""
    path = Path(model)
    if path.is_file():
        return [path]
    found = sorted(path.glob("member_*/best.ckpt"))
    if not found:
        raise FileNotFoundError(f"{path}: no checkpoint; pass a .ckpt file or a run directory written by "
                                "`zpix train` (it holds member_<k>/best.ckpt)")
    return found


def run_dir_of(model: str | os.PathLike) -> Path | None:
    """The run directory behind MODEL (a run directory, or a checkpoint inside one), or None."""
    path = Path(model)
    for candidate in (path, path.parent, path.parent.parent) if path.is_file() else (path,):
        if (candidate / CONFIG_FILE).is_file() and (candidate / SPLIT_FILE).is_file():
            return candidate
    return None


def store_fingerprint(store: Any) -> dict[str, Any]:
    """Identity of a cube store's content: its row count and a sha256 of its ids and z_spec.

    Cheap (two 1-D columns, not the images) and independent of the file's path or copy.
    """
    ids = store.column("ids")
    z = np.ascontiguousarray(store.column("z_spec"), dtype=np.float64)
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(ids.astype(str) if ids.dtype.kind in "OUS" else ids.astype(np.int64)).tobytes())
    h.update(z.tobytes())
    return {"n_rows": len(store), "digest": h.hexdigest()[:16]}


def target_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Identity of a domain-adaptation target store: path, row count, sha256 of its ids, bands and image shape.

    Unlike :func:`store_fingerprint` it hashes the ids only: the target's ``z_spec`` is never read.
    """
    from zpix.store.cube_store import CubeStore

    with CubeStore(path, validate=False) as store:
        ids = store.column("ids")
        h = hashlib.sha256(np.ascontiguousarray(ids.astype(str) if ids.dtype.kind in "OUS"
                                                else ids.astype(np.int64)).tobytes())
        return {"path": str(path), "n_rows": len(store), "digest": h.hexdigest()[:16], "bands": store.bands,
                "image_shape": list(store.image_shape)}


@dataclass
class InputSpec:
    """What a run was trained on; a cube store it is applied to must match it."""

    bands: list[str]
    pixel_scale_arcsec: float
    survey: str
    image_shape: list[int]  # bands, H, W
    mag_names: list[str] | None  # magnitudes the model reads, None if it reads none
    use_ebv: bool
    store: dict[str, Any] = field(default_factory=dict)  # path, n_rows, digest
    split: dict[str, Any] = field(default_factory=dict)  # n_train, n_val, n_test, digest
    # the unlabelled target field of domain adaptation (--target-cubes): :func:`target_fingerprint`; {} if none
    target: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_store(cls, store: Any, *, mag_names: list[str] | None, use_ebv: bool, split: Split,
                   target: str | os.PathLike | None = None) -> InputSpec:
        return cls(bands=store.bands, pixel_scale_arcsec=store.pixel_scale_arcsec, survey=store.survey,
                   image_shape=list(store.image_shape), mag_names=mag_names, use_ebv=bool(use_ebv),
                   store={"path": str(store.path), **store_fingerprint(store)},
                   split={"n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
                          "digest": split.digest()},
                   target=target_fingerprint(target) if target else {})

    def save(self, run_dir: str | os.PathLike) -> None:
        write_json(Path(run_dir) / INPUT_SPEC_FILE, asdict(self))

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> InputSpec | None:
        path = Path(run_dir) / INPUT_SPEC_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as err:
            raise RunInputError(f"{path}: unreadable input spec ({err}); the run directory is damaged") from err

    def same_store(self, store: Any) -> bool:
        """True when ``store`` holds the very objects the run was split on."""
        fp = store_fingerprint(store)
        return bool(self.store) and (fp["n_rows"], fp["digest"]) == (self.store.get("n_rows"),
                                                                     self.store.get("digest"))

    def mismatches(self, store: Any, *, needs_mags: bool | None = None) -> list[str]:
        """What differs between this spec and ``store``, in words (empty: the store fits)."""
        problems = []
        if list(store.bands) != list(self.bands):
            problems.append(f"bands {store.bands} (the run was trained on {self.bands})")
        scale = store.pixel_scale_arcsec
        if not (math.isclose(scale, self.pixel_scale_arcsec, rel_tol=1e-3)
                or (math.isnan(scale) and math.isnan(self.pixel_scale_arcsec))):
            problems.append(f"pixel scale {scale:g} arcsec (the run: {self.pixel_scale_arcsec:g} arcsec)")
        if list(store.image_shape)[1:] != list(self.image_shape)[1:]:
            problems.append(f"images of {store.image_shape[1]}x{store.image_shape[2]} pixels (the run: "
                            f"{self.image_shape[1]}x{self.image_shape[2]})")
        wanted = self.mag_names if needs_mags is None or needs_mags else None
        if wanted:
            if not store.has_mags:
                problems.append(f"no magnitudes (the run's model reads magnitudes {wanted})")
            elif list(store.mag_names) != list(wanted):
                problems.append(f"magnitudes {store.mag_names} (the run's model reads {wanted})")
        return problems


def load_split(run_dir: str | os.PathLike) -> Split:
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        raise RunInputError(f"{path} not found: a split needs a run directory written by `zpix train`")
    try:
        return Split.load(path)
    except (OSError, KeyError, ValueError) as err:
        raise RunInputError(f"{path}: unreadable split ({err}); the run directory is damaged") from err


def spec_for(model: str | os.PathLike) -> InputSpec | None:
    """The input spec of the run behind MODEL (None for a bare checkpoint or a run older than input specs)."""
    run = run_dir_of(model)
    return InputSpec.load(run) if run is not None else None


def check_inputs(model: str | os.PathLike, store: Any, *, needs_mags: bool | None = None,
                 purpose: str = "predict") -> InputSpec | None:
    """Stop with one message naming every way ``store`` differs from what MODEL was trained on."""
    spec = spec_for(model)
    if spec is None:
        return None
    problems = spec.mismatches(store, needs_mags=needs_mags)
    if problems:
        raise RunInputError(f"cannot {purpose} {store.path} with {model}: the cube store has " + "; ".join(problems)
                            + ". A trained run reads only cube stores made like the one it was trained on "
                            f"({spec.store.get('path', '?')}, survey {spec.survey}); make the cube store with "
                            "those bands and pixel scale, or train a run on this one")
    return spec


def select_rows(model: str | os.PathLike, store: Any, split: str = "auto", rows: np.ndarray | None = None
                ) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Rows of ``store`` to predict with MODEL and a record of them for the prediction's meta.

    ``split``: "auto" (the run's test rows when ``store`` is the run's own cube store, else every
    row), "all", or one of "train", "val", "test" (the run's own store only); explicit ``rows`` win.
    The record says which
    rows were taken and how many of them the run trained or validated on (``n_training_rows``):
    `zpix evaluate` refuses to score those.
    """
    if split not in ("auto", "all", *SPLIT_NAMES):
        raise ValueError(f"split must be auto, all, train, val or test, not {split!r}")
    run = run_dir_of(model)
    spec = InputSpec.load(run) if run is not None else None
    fp = store_fingerprint(store)
    own = spec.same_store(store) if spec is not None else None
    if rows is not None:
        split, rows = "rows", np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(store)):
            raise RunInputError(f"rows must lie in [0, {len(store)}) for {store.path}, got "
                                f"[{rows.min()}, {rows.max()}]")
    elif split in SPLIT_NAMES:
        if run is None:
            raise RunInputError(f"--split {split} needs a run directory written by `zpix train`, not {model}")
        parts = load_split(run)
        rows = getattr(parts, split)
        if own is False or (own is None and rows.size and rows.max() >= len(store)):
            raise RunInputError(
                f"--split {split} selects rows of the cube store {model} was trained on "
                f"({spec.store.get('path') if spec else '?'}, {spec.store.get('n_rows') if spec else '?'} objects), "
                f"but {store.path} holds other objects ({fp['n_rows']} rows); predict it whole with --split all")
    elif split == "auto" and own:
        split, rows = "test", load_split(run).test
    else:
        split, rows = "all", None
    n_training = 0
    if own or (own is None and run is not None and split in (*SPLIT_NAMES, "rows")):
        parts = load_split(run)
        trained_on = np.union1d(parts.train, parts.val)
        n_training = int(np.isin(trained_on, rows).sum()) if rows is not None else int(trained_on.size)
    record = {"split": split, "run": str(run) if run else None, "run_store": bool(own),
              "store": fp, "n_rows": int(len(store) if rows is None else rows.size),
              "n_training_rows": n_training}
    return rows, record


def mark_run(run_dir: str | os.PathLike) -> None:
    (Path(run_dir) / RUN_MARKER).write_text("written by zpix train\n")
