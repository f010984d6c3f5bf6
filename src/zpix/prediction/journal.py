"""The journal of a resumable prediction: finished chunks committed inside its temporary directory.

`zpix predict` works in ``.<out>.partial-resume/`` (see :mod:`zpix.atomic`).  Rows are cut into
chunks of ``chunk_rows`` (a multiple of the batch size, so a resumed run forms the very same
batches); each finished chunk is written to ``journal/chunk-<i>.npz`` under a temporary name and
renamed, so a chunk file is either whole or absent.  ``journal/key.json`` holds what the results
depend on (checkpoints, cube store, rows, batch size, device...): rerunning the same command finds
the same key and predicts only the missing chunks; any other command starts the journal afresh.
The finished directory is assembled from the chunks and never contains the journal.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from zpix.atomic import atomic_file

JOURNAL_DIR = "journal"


def rows_digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def file_identity(path: str | os.PathLike) -> list[Any]:
    st = os.stat(path)
    return [str(path), st.st_size, st.st_mtime_ns]


class ChunkJournal:
    """Committed chunks of one prediction; ``key`` must be JSON-serialisable."""

    def __init__(self, work_dir: str | os.PathLike, key: dict[str, Any]) -> None:
        self.dir = Path(work_dir) / JOURNAL_DIR
        self._lock = open(Path(work_dir) / ".lock", "w")  # noqa: SIM115 - held for the journal's life
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            self._lock.close()
            raise FileExistsError(f"another zpix predict is writing {work_dir}; wait for it to finish") from err
        text = json.dumps(key, sort_keys=True)
        key_file = self.dir / "key.json"
        if not key_file.is_file() or key_file.read_text() != text:
            shutil.rmtree(self.dir, ignore_errors=True)  # another command's chunks: not valid for this one
            self.dir.mkdir(parents=True)
            with atomic_file(key_file) as tmp:
                tmp.write_text(text)

    def _path(self, i: int) -> Path:
        return self.dir / f"chunk-{i:06d}.npz"

    def done(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.dir.glob("chunk-*.npz")}

    def commit(self, i: int, columns: dict[str, np.ndarray]) -> None:
        """Write chunk ``i`` (ids, pdfs, z_spec, extra columns) whole or not at all."""
        with atomic_file(self._path(i)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **columns)

    def load(self, i: int) -> dict[str, np.ndarray]:
        with np.load(self._path(i), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    def chunks(self, n_chunks: int) -> Iterator[dict[str, np.ndarray]]:
        for i in range(n_chunks):
            yield self.load(i)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        if not self._lock.closed:
            Path(self._lock.name).unlink(missing_ok=True)
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
