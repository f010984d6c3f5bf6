"""Writing outputs without losing data: the one helper every zpix command uses.

* A file is written to a hidden temporary name beside it, ``.<name>.partial-<token>``, and renamed
  into place (``os.replace``) only when complete, so a file with the final name is always whole.
* A directory is built under ``.<name>.partial-<token>`` and swapped into place at the end.  Each
  command puts its own marker file into what it writes (``.zpix-report``, ``.zpix-predictions``,
  ``.zpix-run``...); an existing directory is replaced only when it carries that command's marker,
  and never when it is the current directory, one of its ancestors, or a run directory.

One naming scheme for every temporary: ``.<name>.partial-<token>`` (the token is
``<pid>-<random>``, or a fixed word for a resumable job such as ``zpix predict``).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Marker file of each kind of output directory.
MARKERS = {
    "run": ".zpix-run",
    "predictions": ".zpix-predictions",
    "report": ".zpix-report",
    "kfold": ".zpix-kfold",
    "demo": ".zpix-demo",
}


class UnsafeOutputError(FileExistsError):
    """An output path exists and is not ours to replace; the message says what to do instead."""


def marker_name(kind: str) -> str:
    try:
        return MARKERS[kind]
    except KeyError as err:
        raise ValueError(f"unknown output kind {kind!r}; known: {sorted(MARKERS)}") from err


def temp_path(target: str | os.PathLike, token: str | None = None) -> Path:
    """The temporary name of ``target``: ``.<name>.partial-<token>`` in the same directory (same filesystem)."""
    target = Path(target)
    token = token or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return target.parent / f".{target.name}.partial-{token}"


def partial_paths(target: str | os.PathLike) -> list[Path]:
    """Leftover temporaries of ``target`` (a run that was killed while writing it)."""
    target = Path(target)
    return sorted(target.parent.glob(f".{target.name}.partial-*"))


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, doc: Any, **kwargs: Any) -> Path:
    """Write ``doc`` as JSON atomically (indent 2 unless given; NaN refused unless ``allow_nan``)."""
    kwargs.setdefault("indent", 2)
    return write_text(path, json.dumps(doc, **kwargs))


def write_yaml(path: str | os.PathLike, doc: Any) -> Path:
    import yaml

    return write_text(path, yaml.safe_dump(doc, sort_keys=False))


def is_run_dir(path: str | os.PathLike) -> bool:
    """A training run directory (marker, or the config + split that `zpix train` always writes)."""
    path = Path(path)
    return (path / MARKERS["run"]).is_file() or ((path / "config.yaml").is_file() and (path / "split.npz").is_file())


def check_replaceable(target: str | os.PathLike, kind: str, overwrite: bool) -> None:
    """Raise :class:`UnsafeOutputError` unless writing directory ``target`` (of ``kind``) loses nothing.

    A missing target is always fine.  An existing one is replaced only with ``overwrite`` and only
    when it carries ``kind``'s marker; never the current directory, an ancestor of it, or a run
    directory (unless ``kind`` is "run").
    """
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UnsafeOutputError(f"{target} is the current directory or one of its parents; zpix never replaces "
                                "it. Choose a new directory for --out")
    if not target.is_dir():
        raise UnsafeOutputError(f"{target} exists and is not a directory; choose another --out")
    if kind != "run" and is_run_dir(target):
        raise UnsafeOutputError(f"{target} is a training run directory; zpix never replaces it with other output. "
                                "Choose another --out")
    if not (target / marker_name(kind)).is_file():
        if not any(target.iterdir()):
            return  # an empty directory loses nothing
        raise UnsafeOutputError(f"{target} exists and was not written by zpix (no {marker_name(kind)} file); "
                                "zpix only replaces its own output. Choose another --out or remove it yourself")
    if not overwrite:
        raise UnsafeOutputError(f"{target} already exists; choose another --out or pass --overwrite")


class AtomicDir:
    """Build an output directory under a temporary name and swap it into place.

    ``token`` fixes the temporary name (a resumable job finds its work there again); by default it is
    unique per process.  Use as a context manager: an exception removes the temporary directory
    unless ``keep_on_error`` (a resumable job keeps what it has committed).
    """

    def __init__(self, target: str | os.PathLike, kind: str, overwrite: bool = False, token: str | None = None,
                 keep_on_error: bool = False) -> None:
        self.target = Path(target)
        self.kind = kind
        self.overwrite = overwrite
        self.keep_on_error = keep_on_error
        check_replaceable(self.target, kind, overwrite)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = temp_path(self.target, token)
        self.path.mkdir(exist_ok=token is not None)
        (self.path / marker_name(kind)).write_text(f"written by zpix ({kind})\n")
        self.committed = False

    def commit(self) -> Path:
        """Move the finished directory to ``target``, replacing an old one of the same kind."""
        check_replaceable(self.target, self.kind, self.overwrite)  # it may have appeared meanwhile
        old = None
        if self.target.exists():
            old = temp_path(self.target, f"old-{uuid.uuid4().hex[:8]}")
            os.rename(self.target, old)
        os.rename(self.path, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.committed = True
        return self.target

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> AtomicDir:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            if not self.committed:
                self.commit()
        elif not self.keep_on_error:
            self.abort()
