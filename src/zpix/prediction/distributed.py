"""Distributed prediction on Dask: many cube-store shards → one partitioned prediction directory.

``zpix predict RUN 'shards/*.h5' --out PRED --dask local:N`` (a ``distributed.LocalCluster`` of N
worker processes) or ``--dask tcp://scheduler:8786`` (any running Dask cluster whose workers see the
same files and have zpix installed).  The work is cut into one task per (shard, block of
``block_rows`` rows).  Each task runs the ordinary streaming prediction
(:func:`zpix.prediction.streaming.predict`) on its rows with the ensemble its worker loaded once
(:func:`cached_ensemble`, a per-process cache), and publishes its partition atomically:

1. the partition is written by :class:`~zpix.prediction.format.PredictionWriter` into
   ``tasks/<part>/`` (itself atomic);
2. its catalogue moves to ``catalog.parquet/<part>.parquet`` and its qp file to ``pdfs/<part>.hdf5``
   (``os.replace``: a file with a final name is always whole);
3. ``manifest/<part>.json`` is written last: a partition counts as finished only when its manifest
   entry exists.

The job works in ``.<PRED>.partial-dask/`` beside the target (:mod:`zpix.atomic`).  Rerunning the
same command after a crash, a killed worker or a lost cluster reads the manifest and submits only
the partitions without an entry (``job.json`` records what the results depend on; a rerun with other
settings is refused rather than mixing partitions).  When every partition is there the directory is
completed and renamed into place::

    PRED/
      meta.yaml          as for every prediction directory, plus ``layout: partitioned`` and the partitions
      catalog.parquet/   a Parquet dataset, one file per partition: pd.read_parquet / dd.read_parquet read it
      pdfs.hdf5          an HDF5 virtual-dataset file concatenating pdfs/*.hdf5: qp.read() reads it whole
      pdfs/<part>.hdf5   each partition's qp Ensemble (hist, packed_interp or quant, see pdf_formats)
      manifest/<part>.json  rows, shard, worker, seconds and peak RSS of each partition

so ``zpix evaluate``/``report`` read it as any other prediction directory (rows in partition order:
shards in the order given, blocks in row order; ``meta.yaml`` sums the partitions' training-row counts,
so ``evaluate`` refuses rows the model was trained on as it does for a single prediction).

Threads: each worker process runs one task at a time (``--nthreads 1``) with torch's intra-op pool
set to cores / workers on its host (:func:`default_threads`, from the CPU affinity), so that
workers × threads = cores.  Torch's own default is every core per process: N workers would then run
N × cores threads on cores cores, and their OpenMP pools spin against each other.  Prediction is
GIL-bound Python (HDF5 reads, collation, the writer) around the convolutions, so processes, not
threads, are what scale; one process per core with one thread each is the fastest split of a CPU
host for small stamps.  With ``device="cuda"``
each worker of a local cluster takes its own GPU (worker i → ``cuda:i``): start one worker per GPU.

``local:N`` starts its cluster with :func:`local_cluster`: every worker imports torch, Lightning and
zpix while it starts (:func:`dask_setup`, a Dask preload) rather than in the first task of each job,
and Dask's own monitoring is turned down (:data:`QUIET_DASK`) so that it does not compete with the
workers for the cores.  Workers of another cluster get the same import with
``dask worker SCHEDULER --nthreads 1 --preload zpix.prediction.distributed``.
"""

from __future__ import annotations

import copy
import glob as _glob
import json
import os
import resource
import shutil
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from zpix.prediction.pdf_formats import DEFAULT_PDF_FORMAT, parse_pdf_format

CATALOG_DIR = "catalog.parquet"
PARTS_DIR = "pdfs"
MANIFEST_DIR = "manifest"
TASKS_DIR = "tasks"
JOB_FILE = "job.json"
WORK_TOKEN = "dask"


@dataclass(frozen=True)
class Partition:
    """Rows ``[start, stop)`` of the selected rows of shard number ``shard_index``."""

    shard: str
    shard_index: int
    block: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"part-{self.shard_index:05d}-{self.block:06d}"

    def __len__(self) -> int:
        return self.stop - self.start


def expand_shards(patterns: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Cube-store paths from files and glob patterns, in the order given (each pattern sorted)."""
    items = [patterns] if isinstance(patterns, str | os.PathLike) else list(patterns)
    out: list[Path] = []
    for item in items:
        s = str(item)
        found = sorted(_glob.glob(s)) if _glob.has_magic(s) else [s]
        if not found:
            raise FileNotFoundError(f"{s}: no cube store matches this pattern")
        for f in found:
            if not Path(f).is_file():
                raise FileNotFoundError(f"{f}: no such cube store")
            out.append(Path(f))
    if len({p.resolve() for p in out}) != len(out):
        raise ValueError(f"the same cube store is given twice among {[str(p) for p in out]}")
    return out


def _shard_rows(shard: Path, on_bad: str) -> np.ndarray:
    from zpix.store.cube_store import CubeStore

    with CubeStore(shard, on_bad=on_bad) as store:  # type: ignore[arg-type]
        return np.asarray(store.valid_index, dtype=np.int64)


def plan_partitions(shards: Sequence[Path], block_rows: int, on_bad: str = "error") -> list[Partition]:
    """One partition per (shard, block of ``block_rows`` of its valid rows)."""
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    parts = []
    for i, shard in enumerate(shards):
        n = _shard_rows(shard, on_bad).size
        for b, start in enumerate(range(0, n, block_rows)):
            parts.append(Partition(str(Path(shard).resolve()), i, b, start, min(n, start + block_rows)))
    if not parts:
        raise ValueError(f"no rows to predict in {[str(s) for s in shards]} (on_bad={on_bad!r})")
    return parts


# ------------------------------------------------------------------------------------------------
# on the workers

_CACHE: dict[tuple[Any, ...], Any] = {}
_CACHE_LOCK = threading.Lock()
#: Ensemble loads in this process (a test checks the model is loaded once per worker).
LOAD_COUNT = {"n": 0}


def cached_ensemble(model: str, device: str, precision: str = "32") -> list[Any]:
    """The ensemble of ``model`` on ``device``, loaded once per process (checkpoint identity in the key)."""
    from zpix.prediction.streaming import load_ensemble
    from zpix.runs import checkpoint_paths

    key = (str(Path(model).resolve()), device, precision,
           tuple((str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in checkpoint_paths(model)))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE.clear()  # one model per worker at a time
            _CACHE[key] = load_ensemble(model, device, precision=precision)
            LOAD_COUNT["n"] += 1
        return _CACHE[key]


def load_count() -> int:
    """Ensemble loads in this process so far (``client.run(load_count)`` asks every worker)."""
    return LOAD_COUNT["n"]


def _worker_device(device: str) -> str:
    """``cuda`` on a worker of a multi-GPU host → ``cuda:<worker number mod GPUs>`` (one worker per GPU)."""
    if device != "cuda":
        return device
    import torch

    n = torch.cuda.device_count()
    if n <= 1:
        return "cuda"
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return "cuda"
    return f"cuda:{int(name) % n}" if isinstance(name, int) or str(name).isdigit() else "cuda"


def set_torch_threads(threads: int) -> None:
    """torch intra-op threads of this process (and OMP/MKL for libraries that start later)."""
    import torch

    threads = max(1, int(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def worker_cores() -> int:
    """Cores this worker process may use (its CPU affinity: containers and ``taskset`` restrict it)."""
    from zpix.hardware import usable_cores

    return usable_cores()


def run_partition(part: Partition, *, model: str, work_dir: str, rows: np.ndarray, batch_size: int,
                  device: str, on_bad: str, pdf_format: str, precision: str = "32",
                  threads: int | None = None) -> dict[str, Any]:
    """Predict one partition and publish it (catalogue, PDFs, then its manifest entry)."""
    import torch

    from zpix.atomic import write_json
    from zpix.prediction.format import CATALOG_FILE, PDF_FILE, read_meta
    from zpix.prediction.streaming import predict

    if threads:
        set_torch_threads(threads)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    work = Path(work_dir)
    dev = _worker_device(device)
    members = cached_ensemble(model, dev, precision)
    t_model = time.perf_counter() - t0
    task_dir = work / TASKS_DIR / part.name
    predict(model, part.shard, task_dir, rows=rows, batch_size=batch_size, num_workers=0, device=dev,
            on_bad=on_bad, overwrite=True, progress=False, pdf_format=pdf_format, members=members,
            precision=precision)
    task_meta = read_meta(task_dir)
    os.replace(task_dir / PDF_FILE, work / PARTS_DIR / f"{part.name}.hdf5")
    os.replace(task_dir / CATALOG_FILE, work / CATALOG_DIR / f"{part.name}.parquet")
    shutil.rmtree(task_dir, ignore_errors=True)
    entry = {**asdict(part), "name": part.name, "n": len(part), "seconds": time.perf_counter() - t0,
             "cpu_seconds": time.process_time() - cpu0,
             "model_seconds": t_model, "host": socket.gethostname(), "pid": os.getpid(), "device": dev,
             "torch_threads": torch.get_num_threads(), "finished_unix": time.time(),
             "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
             "grid": task_meta["grid"], "meta": {k: v for k, v in task_meta.get("meta", {}).items()
                                                 if k in ("model_name", "members", "calibration", "rows")}}
    write_json(work / MANIFEST_DIR / f"{part.name}.json", entry)
    return entry


#: When this process ran :func:`dask_setup` (``time.time()``), None if it never did.
PRELOADED: dict[str, float | None] = {"at": None}


def dask_setup(worker: Any = None) -> None:
    """Dask preload hook: import torch, Lightning and zpix's prediction code while the worker starts.

    ``local:N`` clusters run it in every worker process (:func:`local_cluster`); start the workers of any
    other cluster with ``dask worker SCHEDULER --nthreads 1 --preload zpix.prediction.distributed``.  The
    import (seconds of CPU per process) is then paid once per worker, before it joins the cluster, instead
    of inside the first task of every job; a worker its nanny restarts after a crash runs it again.  Torch
    threads come from ``OMP_NUM_THREADS``, which a nanny sets to 1 unless told otherwise.
    """
    set_torch_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    import zpix.prediction.streaming  # noqa: F401  (torch, Lightning, the networks, the writer)

    PRELOADED["at"] = time.time()


def worker_settings() -> dict[str, Any]:
    """What a worker process runs with (``client.run(worker_settings)``): the Dask settings of
    :data:`QUIET_DASK` as this process sees them, torch threads, and whether :func:`dask_setup` ran."""
    import sys

    import dask

    return {**{k: dask.config.get(k) for k in QUIET_DASK}, "preloaded_at": PRELOADED["at"],
            "torch_imported": "torch" in sys.modules,
            "torch_threads": sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


class TorchThreads(WorkerPlugin):
    """Dask worker plugin: torch threads of each worker, applied whenever a worker (re)starts."""

    name = "zpix-torch-threads"

    def __init__(self, threads: int) -> None:
        self.threads = int(threads)

    def setup(self, worker: Any) -> None:
        set_torch_threads(self.threads)


# ------------------------------------------------------------------------------------------------
# the driver


def parse_cluster(spec: str) -> tuple[str, int | str]:
    """``local:N`` → ("local", N), bare ``local`` → one worker per usable core; ``tcp://host:port`` (or tls://,
    ucx://) → ("address", spec)."""
    s = spec.strip()
    if s.startswith("local"):
        n = s.split(":", 1)[1] if ":" in s else str(worker_cores())  # bare "local": one worker per core
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--dask {spec!r}: use local:N with N >= 1 workers, or a scheduler address tcp://host:port")
        return "local", int(n)
    if "://" in s:
        return "address", s
    raise ValueError(f"--dask {spec!r}: use local:N (N worker processes on this machine) or a scheduler address "
                     "such as tcp://host:8786")


def _job_key(model: str, shards: Sequence[Path], parts: Sequence[Partition], **settings: Any) -> dict[str, Any]:
    from zpix.runs import checkpoint_paths

    def ident(p: Path | str) -> list[Any]:
        st = os.stat(p)
        return [str(Path(p).resolve()), st.st_size, st.st_mtime_ns]

    return {"checkpoints": [ident(p) for p in checkpoint_paths(model)], "shards": [ident(s) for s in shards],
            "partitions": [[p.name, p.start, p.stop] for p in parts], **settings}


def _check_job(work: Path, key: dict[str, Any]) -> None:
    from zpix.atomic import write_json

    path = work / JOB_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if old != key:
            diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
            raise ValueError(f"{work} holds an unfinished prediction made with other settings ({', '.join(diff)} "
                             "differ); rerun with the same model, shards and options to finish it, or use "
                             "another --out (remove that directory yourself if its partitions are not needed)")
    else:
        write_json(path, key)


def finished(work: str | os.PathLike, parts: Sequence[Partition]) -> set[str]:
    """Names of the partitions whose manifest entry and files are all present."""
    work = Path(work)
    done = set()
    for p in parts:
        if ((work / MANIFEST_DIR / f"{p.name}.json").is_file() and (work / PARTS_DIR / f"{p.name}.hdf5").is_file()
                and (work / CATALOG_DIR / f"{p.name}.parquet").is_file()):
            done.add(p.name)
    return done


#: Dask's own monitoring, turned down for zpix's LocalCluster.  Its defaults suit interactive work on a
#: dashboard; a zpix job is a few long tasks per worker, and on a small machine the monitoring competes for
#: the cores the workers predict on.  Each server (scheduler, nannies, workers) wakes every 20 ms to time its
#: event loop (``tick``); each worker samples its task thread's stack every 10 ms under the GIL (the
#: statistical profiler, only shown on a dashboard); the memory monitors poll every 100 ms; the system
#: monitor every 500 ms.  Work stealing and the active memory manager have nothing to do here: tasks are
#: queued on the scheduler until a worker is free, and they return only a small manifest entry.
#: benchmarks/survey_scale.py records what these cost (``dask_monitoring``).
QUIET_DASK: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.system-monitor.disk": False,
    "distributed.worker.memory.monitor-interval": "2s",
    "distributed.scheduler.work-stealing": False,
    "distributed.scheduler.active-memory-manager.start": False,
    "distributed.client.scheduler-info-interval": "10s",
}


def local_cluster(n_workers: int, *, threads: int | None = None, preload: bool = True, quiet: bool = True,
                  silence_logs: int = 40) -> Any:
    """A ``distributed.LocalCluster`` for zpix: ``n_workers`` processes running one task at a time.

    Each worker process (under a nanny, which restarts it if it dies, so a killed worker's task is
    recomputed and the job goes on) runs torch with ``threads`` intra-op threads (default cores /
    workers, :func:`worker_cores`, at least 1), imports the prediction stack while it starts
    (:func:`dask_setup`, with ``preload``) and runs with Dask's monitoring turned down
    (:data:`QUIET_DASK`, with ``quiet``).  The scheduler, the nannies and the client live in the calling
    process.  The cluster start then includes the workers' imports (seconds), which every job on the
    cluster no longer pays.
    """
    import dask
    from distributed import LocalCluster

    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    threads = max(1, int(threads or worker_cores() // n_workers))
    # the nanny applies this environment before the worker imports anything (torch reads it at import)
    env = {var: str(threads) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    # The scheduler reads its settings when it is made.  A nanny hands its configuration to every worker it
    # (re)starts, but keeps it as a shallow merge over the global one, whose nested dicts dask.config.set
    # restores in place: a worker restarted after the context would run with the defaults, hence the copy.
    with dask.config.set(QUIET_DASK if quiet else {}):
        config = copy.deepcopy(dask.config.config)
        return LocalCluster(n_workers=int(n_workers), threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=silence_logs, env=env, preload=[__name__] if preload else [],
                            config=config)


def _client(cluster: str) -> tuple[Any, Any]:
    """A distributed Client and the LocalCluster it owns (None for a scheduler address)."""
    import dask
    from distributed import Client

    kind, arg = parse_cluster(cluster)
    if kind == "local":
        lc = local_cluster(int(arg))
        with dask.config.set(QUIET_DASK):
            return Client(lc), lc
    return Client(str(arg)), None


def default_threads(client: Any) -> int:
    """Torch threads per worker so that workers × threads = cores on every host (the smallest share).

    Cores are each worker's own CPU affinity (:func:`worker_cores`), not the host's core count, so a
    worker pinned to some cores (``taskset``, a container's cpuset) gets threads for those.
    """
    from collections import Counter

    workers = client.scheduler_info(n_workers=-1)["workers"]
    if not workers:
        raise RuntimeError("the Dask cluster has no workers")
    per_host = Counter(w["host"] for w in workers.values())
    cores = client.run(worker_cores)
    return max(1, min((cores[addr] or 1) // per_host[w["host"]] for addr, w in workers.items()))


@dataclass
class DistributedResult:
    out: Path
    n_objects: int
    n_partitions: int
    computed: list[str]
    seconds: float
    entries: list[dict[str, Any]]


def predict_distributed(
    model: str | os.PathLike,
    shards: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    cluster: str = "local:1",
    client: Any = None,
    block_rows: int = 20_000,
    batch_size: int = 64,
    device: str = "cpu",
    threads: int | None = None,
    pdf_format: str = DEFAULT_PDF_FORMAT,
    precision: str = "auto",
    on_bad: str = "error",
    overwrite: bool = False,
    hats: bool = False,
    on_partition: Callable[[dict[str, Any]], None] | None = None,
) -> DistributedResult:
    """Predict every valid row of ``shards`` with ``model`` on a Dask cluster into the directory ``out``.

    ``cluster`` is ``local:N`` or a scheduler address (ignored when a ``client`` is given);
    ``threads`` the torch threads per worker (default cores / workers per host).  ``precision`` ("32", "bf16"
    or "auto") is resolved once, here, so that every partition is computed the same way.  Finished partitions
    of an earlier, interrupted run of the same command are kept and only the missing ones computed.
    ``on_partition`` is called in the driver with each partition's manifest entry as it finishes.
    """
    from distributed import as_completed

    from zpix.atomic import AtomicDir
    from zpix.hardware import inference_precision

    t0 = time.perf_counter()
    model = str(model)
    fmt = parse_pdf_format(pdf_format).spec
    precision = inference_precision(precision, device)
    shard_paths = expand_shards(shards)
    if hats:
        from zpix.prediction.hats_output import check_radec

        check_radec(shard_paths)
    parts = plan_partitions(shard_paths, block_rows, on_bad)
    work = AtomicDir(out, "predictions", overwrite=overwrite, token=WORK_TOKEN, keep_on_error=True)
    for sub in (CATALOG_DIR, PARTS_DIR, MANIFEST_DIR, TASKS_DIR):
        (work.path / sub).mkdir(exist_ok=True)
    key = _job_key(model, shard_paths, parts, batch_size=batch_size, device=device.split(":")[0],
                   on_bad=on_bad, pdf_format=fmt, precision=precision)
    _check_job(work.path, key)
    todo = [p for p in parts if p.name not in finished(work.path, parts)]
    own = None
    if client is None:
        client, own = _client(cluster)
    computed: list[str] = []
    try:
        if todo:
            threads = threads or default_threads(client)
            client.register_plugin(TorchThreads(threads), name=TorchThreads.name)
            rows_by_shard = {s: _shard_rows(Path(s), on_bad) for s in {p.shard for p in todo}}
            futures = [client.submit(run_partition, p, model=str(Path(model).resolve()), work_dir=str(work.path),
                                     rows=rows_by_shard[p.shard][p.start:p.stop], batch_size=batch_size,
                                     device=device, on_bad=on_bad, pdf_format=fmt, precision=precision,
                                     threads=threads,
                                     key=f"zpix-{p.name}-{os.getpid()}-{time.time_ns()}", pure=False, retries=2)
                       for p in todo]
            # Keep no future once its manifest entry is in hand: the partition is on disk, and a future still
            # held makes Dask recompute its task when the worker holding the (small) result dies.  The loop is
            # this client's: as_completed would otherwise take the process's default client's.
            pending = as_completed(futures, with_results=True, loop=client.loop)
            del futures
            try:
                for fut, entry in pending:
                    del fut
                    computed.append(entry["name"])
                    if on_partition is not None:
                        on_partition(entry)
            except BaseException:
                client.cancel(list(pending.futures))  # what finished is in the manifest; a rerun computes the rest
                raise
    finally:
        if own is not None:
            client.close()
            own.close()
    missing = [p.name for p in parts if p.name not in finished(work.path, parts)]
    if missing:
        raise RuntimeError(f"{len(missing)} partitions did not finish ({missing[:5]}...); rerun the same command "
                           "to compute only those")
    entries = [json.loads((work.path / MANIFEST_DIR / f"{p.name}.json").read_text()) for p in parts]
    finalize(work.path, parts, model=model, shards=shard_paths, pdf_format=fmt)
    shutil.rmtree(work.path / TASKS_DIR, ignore_errors=True)
    if hats:
        from zpix.prediction.hats_output import write_hats

        write_hats(work.path, work.path / "hats")
    path = work.commit()
    return DistributedResult(path, sum(len(p) for p in parts), len(parts), computed, time.perf_counter() - t0,
                             entries)


def _virtual_pdfs(work: Path, parts: Sequence[Partition], target: Path) -> None:
    """``pdfs.hdf5``: qp's layout with ``data/*`` and ``ancil/*`` virtual datasets over the partitions."""
    import h5py

    from zpix.atomic import atomic_file

    files = [work / PARTS_DIR / f"{p.name}.hdf5" for p in parts]
    with h5py.File(files[0], "r") as f0:
        names = {g: sorted(f0[g].keys()) for g in ("data", "ancil") if g in f0}
        specs = {f"{g}/{n}": (f0[f"{g}/{n}"].shape[1:], f0[f"{g}/{n}"].dtype) for g, ns in names.items() for n in ns}
        with atomic_file(target) as tmp, h5py.File(tmp, "w") as out:
            f0.copy(f0["meta"], out, "meta")
            counts = []
            for path in files:
                with h5py.File(path, "r") as f:
                    for dset, (tail, dtype) in specs.items():
                        if dset not in f or f[dset].shape[1:] != tail or f[dset].dtype != dtype:
                            raise ValueError(f"{path}: {dset} differs from {files[0].name}'s; partitions must be "
                                             "written with one PDF format")
                    counts.append(f[next(iter(specs))].shape[0])
            total = int(sum(counts))
            for dset, (tail, dtype) in specs.items():
                layout = h5py.VirtualLayout(shape=(total, *tail), dtype=dtype)
                pos = 0
                for path, n in zip(files, counts, strict=True):
                    # relative to pdfs.hdf5, so the directory can be moved or renamed
                    layout[pos:pos + n] = h5py.VirtualSource(f"{PARTS_DIR}/{path.name}", dset, shape=(n, *tail))
                    pos += n
                out.create_virtual_dataset(dset, layout)


def finalize(work: str | os.PathLike, parts: Sequence[Partition], *, model: str, shards: Sequence[Path],
             pdf_format: str) -> None:
    """Write ``pdfs.hdf5`` (virtual) and ``meta.yaml`` once every partition is finished."""
    import pyarrow.parquet as pq

    from zpix import __version__
    from zpix.atomic import write_yaml
    from zpix.prediction.format import FORMAT_VERSION, META_FILE, PDF_FILE

    work = Path(work)
    entries = [json.loads((work / MANIFEST_DIR / f"{p.name}.json").read_text()) for p in parts]
    schema0 = None
    for p in parts:
        schema = pq.read_schema(work / CATALOG_DIR / f"{p.name}.parquet")
        if schema0 is None:
            schema0 = schema
        elif not schema.equals(schema0, check_metadata=False):
            raise ValueError(f"{p.shard}: its catalogue columns {schema.names} differ from the first shard's "
                             f"{schema0.names}; predict shards with the same catalogue columns together")
    _virtual_pdfs(work, parts, work / PDF_FILE)
    first = entries[0]
    part_rows = [e["meta"].get("rows") or {} for e in entries]
    # what evaluate's training-row guard reads: every partition's count of rows the model was fitted on
    rows = {"split": "partitions", "n_rows": int(sum(len(p) for p in parts)),
            "n_training_rows": int(sum(int(r.get("n_training_rows", 0) or 0) for r in part_rows)),
            "run_store": any(bool(r.get("run_store")) for r in part_rows),
            "stores": sorted({json.dumps(r["store"], sort_keys=True) for r in part_rows if "store" in r})}
    rows["stores"] = [json.loads(x) for x in rows["stores"]]
    meta = {
        "format_version": FORMAT_VERSION,
        "method": "cnn",
        "n_objects": int(sum(len(p) for p in parts)),
        "grid": first["grid"],
        "files": {"pdfs": PDF_FILE, "catalog": CATALOG_DIR},
        "columns": list(schema0.names),
        "layout": {"kind": "partitioned", "pdf_format": pdf_format, "partitions_dir": PARTS_DIR,
                   "partitions": [{"name": p.name, "n": len(p), "shard": p.shard, "rows": [p.start, p.stop]}
                                  for p in parts]},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "zpix_version": __version__,
        "meta": {**first["meta"], "model": model, "cubes": [str(s) for s in shards], "pdf_format": pdf_format,
                 "device": first["device"], "rows": rows},
    }
    write_yaml(work / META_FILE, meta)
