"""Survey-scale benchmark: distributed prediction on local Dask workers, recovery, and compact PDF formats.

1. Shards: ``--n-shards`` cube stores of ``--n-per-shard`` objects, ``--stamp``×``--stamp`` pixel
   central crops (5 bands) of the shared SDSS-like mock (``runs/bench/mock_sdss.h5``), cycled over its
   28,000 galaxies (ids unique per shard row).  Small stamps keep 200,000 objects at ~1 GB on disk.
2. The throughput model: ``pasquet2019-small`` built for those stamps and trained for ``--train-steps``
   steps (throughput does not depend on the weights; its accuracy is not a result here).
3. ``workers``: images/s of ``predict_distributed`` on a fresh ``local_cluster`` (what ``--dask local:N``
   starts: workers preloaded with torch and zpix, Dask's monitoring turned down) of 1 and 2 worker processes
   with one torch thread each, ``--repeats`` times in alternating order.  The timed window is the
   ``predict_distributed`` call on the running cluster (plan, tasks, pdfs.hdf5/meta.yaml); the cluster
   start, with the workers' imports, is timed apart (``cluster_startup_s``) and also reported added to it
   (``images_per_s_with_startup``); ``threads``: 1 worker × 2
   threads (the product default of ``local:1`` on 2 cores).  Each run first waits until the machine is
   idle and records the CPU the machine spent during it (``/proc/stat``) against the CPU of this
   benchmark's own processes: on this kernel (``sched_autogroup``) CPU is shared between sessions, not
   threads, so any other session's job would cap the benchmark at its share whatever the worker count.
   Every worker's peak RSS after each of its partitions (``rss_by_worker``) shows whether memory grows
   with the objects it has processed.
4. ``worker_killed``: the 2-worker run again, one worker killed (SIGKILL) after ``--kill-after``
   partitions; Dask reschedules its task on the restarted worker.  Time lost = wall − clean 2-worker wall.
5. ``crash_rerun``: the CLI (``python -m zpix predict ... --dask local:2``) killed with its whole
   process group after 2 × ``--kill-after`` partitions, then rerun: the rerun must compute exactly the
   partitions without a manifest entry.
6. ``pdf_formats``: a trained run's PDFs (``--pdf-run``, default ``runs/bench/p19s_20k``: pasquet2019-small
   on 20,000 mock galaxies at 64×64) on its test split, stored in each format and read back:
   bytes per object and the change of CRPS, PIT KS, σ_MAD and 68% width against hist32.
7. ``dask_monitoring``: the CPU an idle 2-worker cluster uses (workers, and the driver process that holds
   the scheduler, the nannies and the client) with Dask's default settings and with zpix's ``QUIET_DASK``.
8. ``pasquet2019``: the full pasquet2019 network (64×64×5, one training step: a throughput model) on
   ``--p19-n`` mock galaxies through the same distributed path, 2 workers × 1 thread: the measured rate
   the 10⁹-galaxy estimate of docs/survey_scale.md is computed from.

    python benchmarks/survey_scale.py --work /tmp/wt/survey          # → benchmarks/results/survey_scale.json
    python benchmarks/survey_scale.py --parts killed,crash --merge    # more parts into the same JSON
    python benchmarks/survey_scale.py --render-docs                   # docs/survey_scale.md tables from the JSON
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, stamp, write_json  # noqa: E402

FORMATS = ["hist64", "hist32", "hist16", "packed8", "quantiles:40", "quantiles:20", "quantiles:10"]
DOC = ROOT / "docs" / "survey_scale.md"
START, END = "<!-- survey_scale:start -->", "<!-- survey_scale:end -->"


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot (``/proc/stat``; iowait counts as idle)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def own_cpu_s() -> float:
    """CPU seconds of this process and of its reaped children (the workers once their cluster is closed)."""
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class MachineCPU:
    """Cores the whole machine was busy over an interval, against the cores this benchmark itself used."""

    def __enter__(self) -> MachineCPU:
        self.j0, self.c0, self.t0 = machine_jiffies(), own_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        (b1, t1), (b0, t0) = machine_jiffies(), self.j0
        self.wall = time.perf_counter() - self.t0
        cores = os.cpu_count() or 1
        self.busy_cores = cores * (b1 - b0) / max(1, t1 - t0)
        self.own_cores = (own_cpu_s() - self.c0) / self.wall
        # other sessions' CPU: what the machine did beyond this benchmark's processes
        self.foreign_cores = max(0.0, self.busy_cores - self.own_cores)


#: Longest wait for an idle machine before a timed run (``--idle-wait``).
IDLE_WAIT_S = {"max": 120.0}


def wait_idle(max_wait_s: float | None = None, busy_below: float = 0.15, sample_s: float = 3.0) -> dict[str, float]:
    """Wait (at most ``max_wait_s``) until the machine's busy cores over ``sample_s`` fall below ``busy_below``."""
    max_wait_s = IDLE_WAIT_S["max"] if max_wait_s is None else max_wait_s
    t0 = time.perf_counter()
    while True:
        with MachineCPU() as m:
            time.sleep(sample_s)
        if m.busy_cores < busy_below or time.perf_counter() - t0 > max_wait_s:
            return {"busy_cores_before": round(m.busy_cores, 3), "waited_s": round(time.perf_counter() - t0, 1)}


def _burn(seconds: float, queue: Any) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        pass
    queue.put(time.process_time() - c0)


def cpu_share(seconds: float = 3.0) -> dict[str, float]:
    """Cores that 1 and 2 pure-Python busy processes of this session obtain: the ceiling of any speedup here.

    On an idle machine 1.0 and 2.0; with sched_autogroup and another session busy, about 1.0 either way.
    """
    import multiprocessing as mp

    out = {}
    for n in (1, 2):
        queue = mp.Queue()
        procs = [mp.Process(target=_burn, args=(seconds, queue)) for _ in range(n)]
        for pr in procs:
            pr.start()
        for pr in procs:
            pr.join()
        out[f"cores_{n}_process"] = sum(queue.get() for _ in range(n)) / seconds
    return out


def make_shards(cubes: Path, out: Path, n_shards: int, n_per_shard: int, stamp_px: int) -> list[Path]:
    """Central crops of the mock's images, cycled into ``n_shards`` cube stores."""
    import h5py

    from zpix.store.cube_store import CubeWriter

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"shard_{k:02d}.h5" for k in range(n_shards)]
    if all(p.is_file() for p in paths):  # made by an earlier part of this benchmark (--work)
        return paths
    with h5py.File(cubes, "r") as f:
        n, nb, h, w = f["images"].shape
        y0, x0 = (h - stamp_px) // 2, (w - stamp_px) // 2
        crops = np.empty((n, nb, stamp_px, stamp_px), np.float32)
        for s in range(0, n, 2000):
            crops[s:s + 2000] = f["images"][s:s + 2000, :, y0:y0 + stamp_px, x0:x0 + stamp_px]
        z, ebv = f["z_spec"][:], f["ebv"][:]
        bands = [b.decode() if isinstance(b, bytes) else str(b) for b in f.attrs["bands"]]
        scale = float(f.attrs["pixel_scale_arcsec"])
    for k, path in enumerate(paths):
        if path.is_file():
            continue
        src = (np.arange(n_per_shard) + k * n_per_shard) % n
        with CubeWriter(path, bands=bands, image_shape=(stamp_px, stamp_px), pixel_scale_arcsec=scale,
                        survey="sdss-mock-crops") as wr:
            for s in range(0, n_per_shard, 5000):
                r = src[s:s + 5000]
                wr.append(crops[r], z[r], ebv[r], k * 10_000_000 + np.arange(s, s + r.size),
                          catalog={"src_row": r.astype(np.int64)})
    return paths


def make_full_shard(cubes: Path, out: Path, n: int) -> Path:
    """The first ``n`` galaxies of the mock at their full 64×64 size, as one cube store."""
    import h5py

    from zpix.store.cube_store import CubeWriter

    if out.is_file():
        return out
    with h5py.File(cubes, "r") as f:
        images, z, ebv = f["images"][:n], f["z_spec"][:n], f["ebv"][:n]
        bands = [b.decode() if isinstance(b, bytes) else str(b) for b in f.attrs["bands"]]
        scale = float(f.attrs["pixel_scale_arcsec"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with CubeWriter(out, bands=bands, image_shape=images.shape[2:], pixel_scale_arcsec=scale,
                    survey="sdss-mock") as wr:
        wr.append(images, z, ebv, np.arange(n))
    return out


def train_tiny(shard: Path, out: Path, steps: int, model: str = "pasquet2019-small") -> Path:
    import zpix.training.api as api
    from zpix.training.config import TrainConfig

    if (out / "member_0" / "best.ckpt").is_file():
        return out

    cfg = TrainConfig(cubes=str(shard), out=str(out), model=model, max_steps=steps, max_epochs=1,
                      batch_size=64, num_workers=0, progress=False, accelerator="cpu", devices=1, max_train=2000,
                      calibrate=[])
    return Path(api.train(cfg).run_dir)


def _rss_by_worker(entries: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Each worker's peak RSS (MB) after each of its partitions, against the objects it had predicted by then."""
    out: dict[str, dict[str, list[float]]] = {}
    for pid in sorted({e["pid"] for e in entries}):
        mine = sorted((e for e in entries if e["pid"] == pid), key=lambda e: e["finished_unix"])
        out[str(pid)] = {"objects": np.cumsum([e["n"] for e in mine]).tolist(),
                         "peak_rss_mb": [round(e["peak_rss_bytes"] / 2**20, 1) for e in mine]}
    return out


def run_local(run: Path, shards: list[Path], out: Path, n_workers: int, threads: int, block_rows: int,
              kill_after: int | None = None, batch_size: int = 64) -> dict[str, Any]:
    """One distributed prediction on a fresh LocalCluster (startup timed apart), on an idle machine."""
    from distributed import Client

    from zpix.prediction.distributed import local_cluster, predict_distributed

    for old in (out, out.parent / f".{out.name}.partial-dask"):  # an earlier, interrupted benchmark's
        shutil.rmtree(old, ignore_errors=True)
    idle = wait_idle()
    t0 = time.perf_counter()
    # the product's cluster (--dask local:N): the start includes the workers' preload (torch, Lightning, zpix)
    cluster = local_cluster(n_workers, threads=threads, silence_logs=50)
    client = Client(cluster)
    startup = time.perf_counter() - t0
    killed: dict[str, Any] = {}

    def on_partition(entry: dict[str, Any], done: list[str] = []) -> None:  # noqa: B006
        done.append(entry["name"])
        if kill_after is not None and len(done) == kill_after and not killed:
            pids = client.run(os.getpid)
            victim = sorted(pids.values())[0]
            os.kill(victim, signal.SIGKILL)
            killed.update(pid=victim, after_partitions=len(done), at_s=time.perf_counter() - t1)

    la0 = loadavg()
    with MachineCPU() as cpu:
        t1 = time.perf_counter()
        window_start_unix = time.time()
        try:
            res = predict_distributed(run, [str(s) for s in shards], out, client=client, block_rows=block_rows,
                                      threads=threads, on_partition=on_partition, batch_size=batch_size)
            wall = time.perf_counter() - t1
        finally:
            client.close()
            cluster.close()  # reaps the worker processes: their CPU time joins this process's children's
    import pandas as pd

    ids = pd.read_parquet(out / "catalog.parquet", columns=["id"])["id"]
    stored = {"catalog_bytes_per_object": sum(f.stat().st_size for f in (out / "catalog.parquet").glob("*")) / len(ids),
              "pdf_bytes_per_object": sum(f.stat().st_size for f in (out / "pdfs").glob("*.hdf5")) / len(ids)}
    worker_cpu = sum(e["cpu_seconds"] for e in res.entries)
    rss = _rss_by_worker(res.entries)
    out_doc = {"output_rows": len(ids), "output_ids_unique": bool(ids.is_unique),
               "n_workers": n_workers, "threads_per_worker": threads,
               "torch_threads_seen": sorted({e["torch_threads"] for e in res.entries}),
               "worker_pids": len({e["pid"] for e in res.entries}), "n_objects": res.n_objects,
               "n_partitions": res.n_partitions, "partitions_computed": len(res.computed), "wall_s": wall,
               "images_per_s": res.n_objects / wall, "cluster_startup_s": startup,
               "images_per_s_with_startup": res.n_objects / (wall + startup),
               # the timed window against the partitions: before the first starts, after the last ends
               "before_first_partition_s": min(e["finished_unix"] - e["seconds"] for e in res.entries)
               - window_start_unix,
               "after_last_partition_s": window_start_unix + wall - max(e["finished_unix"] for e in res.entries),
               # worker CPU per image (the partitions' own process time): flat in workers = the work itself scales
               "images_per_cpu_s": res.n_objects / max(1e-9, worker_cpu),
               "worker_cores": worker_cpu / wall,
               "machine_busy_cores": cpu.busy_cores, "benchmark_cores": cpu.own_cores,
               "foreign_cores": cpu.foreign_cores, **idle,
               "peak_rss_mb_per_worker": {pid: max(v["peak_rss_mb"]) for pid, v in rss.items()},
               "rss_by_worker": rss, **stored, "loadavg_before": la0, "loadavg_after": loadavg(),
               "partitions": [{k: e[k] for k in ("name", "pid", "n", "seconds", "cpu_seconds", "model_seconds",
                                                 "finished_unix")} for e in res.entries]}
    if killed:
        out_doc["killed"] = killed
    return out_doc


TIMED_WINDOW = ("images_per_s = objects / the wall time of one predict_distributed call on a running cluster "
                "(planning, every task, pdfs.hdf5 and meta.yaml); the cluster start (LocalCluster, and the workers "
                "importing torch, Lightning and zpix: zpix.prediction.distributed.dask_setup) is outside it, in "
                "cluster_startup_s; images_per_s_with_startup counts it in.  1 and 2 workers are measured alike.")


def dask_monitoring(n_workers: int = 2, idle_s: float = 8.0) -> dict[str, Any]:
    """CPU cores an idle ``n_workers`` cluster uses with Dask's default settings and with ``QUIET_DASK``:
    each worker process, and this process (scheduler, nannies, client)."""
    import psutil
    from distributed import Client

    from zpix.prediction.distributed import QUIET_DASK, local_cluster

    out: dict[str, Any] = {"idle_s": idle_s, "n_workers": n_workers, "quiet_dask": QUIET_DASK}
    for name, quiet in (("dask_defaults", False), ("quiet_dask", True)):
        cluster = local_cluster(n_workers, threads=1, quiet=quiet, silence_logs=50)
        client = Client(cluster)
        try:
            time.sleep(2.0)  # past the start
            procs = [psutil.Process(p) for p in client.run(os.getpid).values()]
            w0, d0 = [sum(p.cpu_times()[:4]) for p in procs], psutil.Process().cpu_times()
            time.sleep(idle_s)
            w1, d1 = [sum(p.cpu_times()[:4]) for p in procs], psutil.Process().cpu_times()
        finally:
            client.close()
            cluster.close()
        workers = [(b - a) / idle_s for a, b in zip(w0, w1, strict=True)]
        driver = (sum(d1[:2]) - sum(d0[:2])) / idle_s
        out[name] = {"worker_cores": workers, "driver_cores": driver, "total_cores": sum(workers) + driver}
    return out


def crash_and_rerun(run: Path, shards_glob: str, out: Path, block_rows: int, kill_after: int,
                    n_partitions: int) -> dict[str, Any]:
    """The CLI killed (whole process group) after ``kill_after`` partitions, then the same command again."""
    cmd = [sys.executable, "-m", "zpix", "predict", str(run), shards_glob, "--out", str(out), "--dask", "local:2",
           "--threads", "1", "--block-size", str(block_rows), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    manifest = out.parent / f".{out.name}.partial-dask" / "manifest"
    for old in (out, manifest.parent):  # an earlier, interrupted benchmark's
        shutil.rmtree(old, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        if manifest.is_dir() and len(list(manifest.glob("*.json"))) >= kill_after:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    first_s = time.perf_counter() - t0
    time.sleep(2.0)  # let the killed workers' files settle before counting
    done_before = len(list(manifest.glob("*.json")))
    t0 = time.perf_counter()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    rerun_s = time.perf_counter() - t0
    if rerun.returncode != 0:
        raise RuntimeError(f"rerun failed: {rerun.stderr[-2000:]}")
    m = re.search(r"in (\d+) partitions \((\d+) computed now\)", rerun.stdout)
    computed = int(m.group(2)) if m else -1
    return {"killed_after_s": first_s, "partitions_finished_before_rerun": done_before,
            "partitions_computed_by_rerun": computed, "n_partitions": n_partitions,
            "rerun_computed_only_missing": computed == n_partitions - done_before, "rerun_wall_s": rerun_s}


def pdf_format_table(pdf_run: Path, cubes: Path, work: Path) -> dict[str, Any]:
    """The run's test-split PDFs, stored in each format and read back (zpix.prediction.pdf_formats)."""
    from zpix.prediction.format import read_predictions
    from zpix.prediction.pdf_formats import compare_formats, encode
    from zpix.prediction.streaming import predict

    t0 = time.perf_counter()
    pred = read_predictions(predict(pdf_run, cubes, work / "pdf_run_test", split="test", progress=False,
                                    num_workers=0, pdf_dtype="float64"))
    predict_s = time.perf_counter() - t0
    z = pred.catalog["z_spec"].to_numpy(dtype=np.float64)
    table = compare_formats(pred.pdfs, pred.grid, z, FORMATS)
    for spec in FORMATS:
        path = work / f"fmt_{spec.replace(':', '_')}.hdf5"
        encode(pred.pdfs, pred.grid, spec).write_to(str(path))
        table[spec]["file_bytes_per_object"] = path.stat().st_size / len(z)
    return {"run": str(pdf_run), "n_objects": int(np.isfinite(z).sum()), "split": "test", "predict_s": predict_s,
            "reference": "hist32", "reference_errors": reference_errors(pred.pdfs, pred.grid, z),
            "formats": table}


def reference_errors(pdfs: np.ndarray, grid: Any, z: np.ndarray, n_boot: int = 200) -> dict[str, float]:
    """Bootstrap standard deviations of the hist32 metrics on this sample: the scale a format's change is
    compared with (a change far below it cannot show in any result)."""
    from zpix.evaluation.metrics import crps, delta_z, pit, pit_ks, sigma_mad
    from zpix.pdf import pdf_mean

    keep = np.isfinite(z)
    p, z = pdfs[keep], z[keep]
    c, u, dz = crps(p, grid, z), pit(p, grid, z), delta_z(pdf_mean(p, grid), z)
    rng = np.random.default_rng(0)
    boot: dict[str, list[float]] = {"crps": [], "pit_ks": [], "sigma_mad": []}
    for _ in range(n_boot):
        i = rng.integers(0, z.size, z.size)
        boot["crps"].append(float(np.mean(c[i])))
        boot["pit_ks"].append(pit_ks(u[i])["statistic"])
        boot["sigma_mad"].append(sigma_mad(dz[i]))
    return {f"{k}_bootstrap_std": float(np.std(v)) for k, v in boot.items()}


def pasquet_rate(cubes: Path, work: Path, n: int) -> dict[str, Any]:
    """pasquet2019 (64×64×5) through predict_distributed, 2 workers × 1 thread: the rate the 10⁹ estimate uses.

    Per-image CPU is taken from each worker's partitions after its first (which carries the imports and
    the model load), so it is the steady cost a long survey job pays.
    """
    shard = make_full_shard(cubes, work / "p19_shard" / "full64.h5", n)
    t0 = time.perf_counter()
    run = train_tiny(shard, work / "p19_run", 1, model="pasquet2019")
    train_s = time.perf_counter() - t0
    res = run_local(run, [shard], work / "pred_p19", 2, 1, max(1, n // 8))
    shutil.rmtree(work / "pred_p19", ignore_errors=True)
    later = []
    for pid in {e["pid"] for e in res["partitions"]}:
        mine = sorted((e for e in res["partitions"] if e["pid"] == pid), key=lambda e: e["finished_unix"])
        later += mine[1:]
    return {"model": "pasquet2019", "image": "5x64x64", "n_objects": n, "train_steps": 1, "train_s": train_s,
            "note": "one training step: a throughput model; its accuracy is not a result",
            "steady_cpu_s_per_image": sum(e["cpu_seconds"] for e in later) / max(1, sum(e["n"] for e in later)),
            "steady_partitions": len(later), "run": res}


@click.command()
@click.option("--cubes", type=click.Path(path_type=Path), default=ROOT / "runs" / "bench" / "mock_sdss.h5",
              show_default=True)
@click.option("--pdf-run", type=click.Path(path_type=Path), default=ROOT / "runs" / "bench" / "p19s_20k",
              show_default=True, help="Trained run whose test-split PDFs the format table uses.")
@click.option("--n-shards", default=4, show_default=True)
@click.option("--n-per-shard", default=50_000, show_default=True)
@click.option("--stamp", "stamp_px", default=16, show_default=True)
@click.option("--block-rows", default=10_000, show_default=True)
@click.option("--train-steps", default=20, show_default=True)
@click.option("--repeats", default=2, show_default=True, help="Runs of each worker count in 'workers'.")
@click.option("--kill-after", default=4, show_default=True, help="Partitions finished before a kill.")
@click.option("--p19-n", default=1024, show_default=True, help="64x64 galaxies for the pasquet2019 rate.")
@click.option("--idle-wait", default=120.0, show_default=True,
              help="Longest wait (s) for an idle machine before a timed run.")
@click.option("--work", type=click.Path(path_type=Path), default=None, help="Scratch directory (default: a temp).")
@click.option("--parts", default="workers,threads,killed,crash,monitoring,formats,pasquet2019", show_default=True,
              help="Parts to run, in this order; with --merge, added to an existing JSON of the same commit.")
@click.option("--merge", is_flag=True, help="Keep the parts already in --out (same commit and data sizes).")
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS / "survey_scale.json", show_default=True)
@click.option("--render-docs", is_flag=True, help="Only rewrite the tables of docs/survey_scale.md from --out.")
def main(cubes: Path, pdf_run: Path, n_shards: int, n_per_shard: int, stamp_px: int, block_rows: int,
         train_steps: int, repeats: int, kill_after: int, p19_n: int, idle_wait: float, work: Path | None,
         parts: str, merge: bool, out: Path, render_docs: bool) -> None:
    if render_docs:
        render(json.loads(out.read_text()))
        return
    todo = parts.split(",")
    IDLE_WAIT_S["max"] = idle_wait
    doc: dict[str, Any] = {**stamp(), "status": "running"}
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    # 1: the kernel shares CPU between sessions, not threads (another session's job caps this one's share)
    doc["sched_autogroup"] = int(autogroup.read_text()) if autogroup.is_file() else None
    if merge and out.is_file():
        old = json.loads(out.read_text())
        if old.get("commit") != doc["commit"] or old.get("data", {}).get("n_per_shard") != n_per_shard:
            raise click.ClickException(f"{out} is from another commit or data size; run without --merge")
        doc = {**old, "status": "running", "loadavg_at_merge": loadavg()}
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="zpix-survey-")) if own_work else work
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        shards = make_shards(cubes, work / "shards", n_shards, n_per_shard, stamp_px)
        doc["data"] = {"source": str(cubes), "n_shards": n_shards, "n_per_shard": n_per_shard,
                       "n_objects": n_shards * n_per_shard, "stamp_px": stamp_px, "bands": 5,
                       "shard_bytes": sum(p.stat().st_size for p in shards), "make_s": time.perf_counter() - t0,
                       "note": f"central {stamp_px}x{stamp_px} crops of the 28,000-galaxy mock, cycled"}
        run = train_tiny(shards[0], work / "tiny_run", train_steps)
        doc["model"] = {"name": "pasquet2019-small", "image": f"5x{stamp_px}x{stamp_px}", "train_steps": train_steps,
                        "note": "throughput model only (a few training steps); its accuracy is not a result"}
        doc["block_rows"] = block_rows
        doc["batch_size"] = 64
        doc["cpu_share"] = {**wait_idle(), **cpu_share()}
        for part in todo:
            if part == "workers":
                runs: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}
                for rep in range(repeats):  # alternating, so a slow spell of the machine hits both counts
                    for n in ((1, 2) if rep % 2 == 0 else (2, 1)):
                        runs[str(n)].append(run_local(run, shards, work / f"pred_{n}w", n, 1, block_rows))
                        shutil.rmtree(work / f"pred_{n}w", ignore_errors=True)
                        doc["workers_runs"] = runs
                        write_json(out, doc)
                # the figure of each count: its best run (the least disturbed by anything else)
                doc["workers"] = {k: max(v, key=lambda r: r["images_per_s"]) for k, v in runs.items()}
                rates = {k: [r["images_per_s"] for r in v] for k, v in runs.items()}
                best = doc["workers"]
                doc["speedup_2_vs_1_workers"] = best["2"]["images_per_s"] / best["1"]["images_per_s"]
                doc["speedup_2_vs_1_workers_mean"] = float(np.mean(rates["2"]) / np.mean(rates["1"]))
                doc["speedup_2_vs_1_workers_each"] = [a / b for a, b in zip(rates["2"], rates["1"], strict=True)]
                doc["speedup_2_vs_1_workers_with_startup"] = (best["2"]["images_per_s_with_startup"]
                                                              / best["1"]["images_per_s_with_startup"])
                doc["timed_window"] = TIMED_WINDOW
            elif part == "threads":
                doc["workers_default_threads"] = {"1": run_local(run, shards, work / "pred_1w2t", 1, 2, block_rows)}
                shutil.rmtree(work / "pred_1w2t", ignore_errors=True)
                if "workers" in doc:
                    doc["speedup_2x1_vs_1x2_threads"] = (doc["workers"]["2"]["images_per_s"]
                                                         / doc["workers_default_threads"]["1"]["images_per_s"])
            elif part == "killed":
                k = run_local(run, shards, work / "pred_killed", 2, 1, block_rows, kill_after=kill_after)
                shutil.rmtree(work / "pred_killed", ignore_errors=True)
                clean = doc.get("workers", {}).get("2", {}).get("wall_s")
                k["clean_wall_s"] = clean
                k["time_lost_s"] = None if clean is None else k["wall_s"] - clean
                doc["worker_killed"] = k
            elif part == "crash":
                n_parts = n_shards * -(-n_per_shard // block_rows)
                doc["crash_rerun"] = crash_and_rerun(run, str(work / "shards" / "shard_*.h5"), work / "pred_crash",
                                                     block_rows, kill_after * 2, n_parts)
                shutil.rmtree(work / "pred_crash", ignore_errors=True)
            elif part == "formats":
                doc["pdf_formats_source"] = pdf_format_table(pdf_run, cubes, work)
                doc["pdf_formats"] = doc["pdf_formats_source"].pop("formats")
            elif part == "monitoring":
                doc["dask_monitoring"] = dask_monitoring()
            elif part == "pasquet2019":
                doc["pasquet2019"] = pasquet_rate(cubes, work, p19_n)
            else:
                raise click.ClickException(f"unknown part {part!r}")
            write_json(out, doc)
        doc["loadavg_at_end"] = loadavg()
        present = {"workers": "workers", "formats": "pdf_formats", "killed": "worker_killed", "crash": "crash_rerun",
                   "threads": "workers_default_threads", "pasquet2019": "pasquet2019",
                   "monitoring": "dask_monitoring"}
        doc["status"] = "complete" if all(key in doc for key in present.values()) else "partial"
        write_json(out, doc)
        click.echo(json.dumps({k: doc.get(k) for k in ("speedup_2_vs_1_workers", "speedup_2_vs_1_workers_each",
                                                        "crash_rerun")}, default=str, indent=1))
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# docs/survey_scale.md tables (generated from the JSON, never typed)

N_SURVEY = 1e9
#: Bytes of one 5-band 64×64 float32 cutout: what pasquet2019 reads per galaxy.
CUTOUT_BYTES = 5 * 64 * 64 * 4


def _run_row(label: str, v: dict[str, Any]) -> str:
    rss = ", ".join(f"{x:.0f}" for x in v["peak_rss_mb_per_worker"].values())
    with_start = v["n_objects"] / (v["wall_s"] + v["cluster_startup_s"])
    return (f"| {label} | {v['n_workers']} × {v['threads_per_worker']} ({v['torch_threads_seen']}) "
            f"| {v['images_per_s']:.0f} | {v['images_per_cpu_s']:.0f} | {v['worker_cores']:.2f} "
            f"| {v['foreign_cores']:.2f} | {v['wall_s']:.1f} | {v['cluster_startup_s']:.1f} | {with_start:.0f} "
            f"| {rss} |")


def render(doc: dict[str, Any]) -> None:
    speed = json.loads((RESULTS / "speed.json").read_text())
    lines = [f"*{doc['date_utc'][:16]} UTC, commit `{doc['commit']}`, {doc['machine'].get('cpu', '?')}, "
             f"{doc['machine'].get('cpu_count')} cores, load average at start {doc.get('loadavg_at_start')}.*", ""]
    d = doc["data"]
    lines += [f"Data: **{d['n_objects']:,} objects in {d['n_shards']} shards** ({d['note']}, 5 bands, "
              f"{d['shard_bytes'] / 2**30:.2f} GiB); model {doc['model']['name']} on {doc['model']['image']} "
              f"stamps ({doc['model']['note']}); {doc['block_rows']:,} rows per partition, batch "
              f"{doc.get('batch_size', 64)}.", "",
              "Every run starts a fresh cluster with `zpix.prediction.distributed.local_cluster` (what "
              "`--dask local:N` starts: each worker imports torch, Lightning and zpix while it starts, and Dask's "
              "monitoring is turned down) once the machine is idle.  *images/s* is timed over one "
              "`predict_distributed` call on the running cluster (plan, every task, the final pdfs.hdf5 and "
              "meta.yaml); the cluster start, with the workers' imports, is outside it (*start s*) and counted in "
              "by *images/s with start*; 1 and 2 workers are timed alike.  *worker cores* is the workers' CPU "
              "time over the wall time, *other cores* the CPU the rest of the machine used meanwhile "
              "(`/proc/stat` minus this benchmark's processes).", "",
              "| run | workers × threads (torch threads seen) | images/s | images per worker CPU-s | worker cores "
              "| other cores | wall s | start s | images/s with start | peak RSS per worker (MB) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for k, runs in doc.get("workers_runs", {}).items():
        for i, v in enumerate(runs):
            lines.append(_run_row(f"workers {k}, run {i + 1}", v))
    for v in doc.get("workers_default_threads", {}).values():
        lines.append(_run_row("1 worker, default threads", v))
    share = doc.get("cpu_share")
    if share:
        lines += ["", f"Ceiling: before the runs, 1 and 2 busy-looping processes of the benchmark obtained "
                  f"{share['cores_1_process']:.2f} and {share['cores_2_process']:.2f} cores."]
    if "speedup_2_vs_1_workers" in doc:
        each = ", ".join(f"{x:.2f}×" for x in doc.get("speedup_2_vs_1_workers_each", []))
        lines += ["", f"**2 workers / 1 worker (1 thread each): {doc['speedup_2_vs_1_workers']:.2f}×** in images/s "
                  f"(best run of each; mean of the runs {doc['speedup_2_vs_1_workers_mean']:.2f}×; run by run {each})"
                  + (f"; with the cluster start counted in, {doc['speedup_2_vs_1_workers_with_startup']:.2f}×."
                     if "speedup_2_vs_1_workers_with_startup" in doc else ".")]
    if "workers" in doc and "partitions" in doc["workers"]["1"]:
        span = {}
        for k, v in doc["workers"].items():
            ps = v["partitions"]
            span[k] = max(e["finished_unix"] for e in ps) - min(e["finished_unix"] - e["seconds"] for e in ps)
        per_part = {k: float(np.mean([e["seconds"] for e in v["partitions"]])) for k, v in doc["workers"].items()}
        w1, w2 = doc["workers"]["1"], doc["workers"]["2"]
        if "before_first_partition_s" in w1:
            fixed = {k: (v["before_first_partition_s"], v["after_last_partition_s"]) for k, v in doc["workers"].items()}
            lines += ["", f"Inside the timed window (best runs): the partitions span {span['1']:.1f} s with 1 worker "
                      f"and {span['2']:.1f} s with 2, **{span['1'] / span['2']:.2f}×**; the first partition starts "
                      f"{fixed['1'][0]:.2f} s / {fixed['2'][0]:.2f} s into the window (the plan, the thread plugin, "
                      f"the model load) and the job ends {fixed['1'][1]:.2f} s / {fixed['2'][1]:.2f} s after the "
                      f"last (pdfs.hdf5, meta.yaml).  A partition takes {per_part['1']:.2f} s alone and "
                      f"{per_part['2']:.2f} s beside a second worker (CPU per image "
                      f"{w1['images_per_cpu_s'] / w2['images_per_cpu_s']:.2f}×).  Outside the window, the cluster "
                      f"start: {w1['cluster_startup_s']:.1f} s for 1 worker, {w2['cluster_startup_s']:.1f} s for 2 "
                      "(the workers' imports run side by side)."]
        else:
            lines += ["", f"Where the rest goes (best runs): the partitions themselves span {span['1']:.1f} s with 1 "
                      f"worker and {span['2']:.1f} s with 2, **{span['1'] / span['2']:.2f}×**; the remaining "
                      f"{w1['wall_s'] - span['1']:.1f} s and {w2['wall_s'] - span['2']:.1f} s of each wall time are "
                      "the job's fixed cost, which more workers do not shorten.  Within the span a partition takes "
                      f"{per_part['1']:.2f} s alone and {per_part['2']:.2f} s beside a second worker "
                      f"(CPU per image {w1['images_per_cpu_s'] / w2['images_per_cpu_s']:.2f}×)."]
    mon = doc.get("dask_monitoring")
    if mon:
        d, q = mon["dask_defaults"], mon["quiet_dask"]
        lines += ["", f"Dask's own monitoring, an idle {mon['n_workers']}-worker cluster over {mon['idle_s']:.0f} s: "
                  f"with Dask's defaults the workers use {', '.join(f'{x:.3f}' for x in d['worker_cores'])} cores "
                  f"and the driver (scheduler, nannies, client) {d['driver_cores']:.3f}, {d['total_cores']:.3f} in "
                  f"all; with zpix's `QUIET_DASK` {', '.join(f'{x:.3f}' for x in q['worker_cores'])} and "
                  f"{q['driver_cores']:.3f}, {q['total_cores']:.3f} in all."]
    if "speedup_2x1_vs_1x2_threads" in doc:
        lines += ["", f"2 workers × 1 thread / 1 worker × 2 threads: {doc['speedup_2x1_vs_1x2_threads']:.2f}×."]
    growth = []
    for runs in doc.get("workers_runs", {}).values():
        for v in runs:
            for w in v["rss_by_worker"].values():
                growth.append((w["peak_rss_mb"][-1] - w["peak_rss_mb"][0], w["objects"][0], w["objects"][-1],
                               w["peak_rss_mb"][0], w["peak_rss_mb"][-1]))
    if growth:
        g = max(growth)
        one = doc["workers"]["1"]["rss_by_worker"]
        w1 = next(iter(one.values()))
        lines += ["", f"Peak RSS per worker against the objects it has predicted: the 1-worker run's worker "
                  f"{w1['peak_rss_mb'][0]:.0f} MB after {w1['objects'][0]:,} objects, {w1['peak_rss_mb'][-1]:.0f} MB "
                  f"after {w1['objects'][-1]:,}; over every worker of every run the largest growth from the first "
                  f"partition to the last is {g[0]:+.1f} MB ({g[3]:.0f} → {g[4]:.0f} MB, {g[1]:,} → {g[2]:,} objects)."]
    k = doc.get("worker_killed")
    if k:
        lost = "n/a" if k["time_lost_s"] is None else f"{k['time_lost_s']:.1f} s"
        lines += ["", f"Worker killed (SIGKILL) after {k['killed']['after_partitions']} of {k['n_partitions']} "
                  f"partitions: wall {k['wall_s']:.1f} s against {k['clean_wall_s']:.1f} s clean (best 2-worker run), "
                  f"time lost {lost}; {k['partitions_computed']} partitions computed; the output has "
                  f"{k['output_rows']:,} rows, ids unique: {k['output_ids_unique']}."]
    c = doc.get("crash_rerun")
    if c:
        lines += ["", f"Whole command killed after {c['partitions_finished_before_rerun']} of {c['n_partitions']} "
                  f"partitions were in the manifest; the rerun computed {c['partitions_computed_by_rerun']} "
                  f"(only the missing ones: {c['rerun_computed_only_missing']}) in {c['rerun_wall_s']:.1f} s."]
    f = doc.get("pdf_formats")
    if f:
        src = doc["pdf_formats_source"]
        err = src["reference_errors"]
        lines += ["", f"PDF formats on {src['n_objects']:,} test galaxies of `{Path(src['run']).name}` "
                  "(stored, read back onto the 180-bin grid, scored against hist32; the bootstrap standard "
                  f"deviations of the hist32 values on this sample are CRPS {err['crps_bootstrap_std']:.1e}, "
                  f"PIT KS {err['pit_ks_bootstrap_std']:.1e}, σ_MAD {err['sigma_mad_bootstrap_std']:.1e}):", "",
                  "| format | qp | bytes/object | file B/object | ΔCRPS | ΔPIT KS | Δσ_MAD | Δwidth68 (mean) "
                  "| median \\|Δwidth68\\|/width |", "|---|---|---|---|---|---|---|---|---|"]
        for name, v in f.items():
            lines.append(f"| {name} | {v['qp_representation']} | {v['bytes_per_object']} | "
                         f"{v['file_bytes_per_object']:.0f} | {v['crps_change']:+.1e} | {v['pit_ks_change']:+.1e} | "
                         f"{v['sigma_mad_change']:+.1e} | {v['width68_change']:+.1e} | "
                         f"{100 * v['width68_rel_change_median']:.3f}% |")
    p19 = doc.get("pasquet2019")
    if p19:
        r = p19["run"]
        cpu = p19["steady_cpu_s_per_image"]
        core_h = N_SURVEY * cpu / 3600
        cores = doc["machine"].get("cpu_count") or 2
        speedup = doc.get("speedup_2_vs_1_workers")
        lines += ["", "### 10⁹ galaxies with pasquet2019 (generated from the numbers above)", "",
                  f"Measured: pasquet2019 on {p19['n_objects']:,} mock galaxies at 64×64×5 through `predict --dask`, "
                  f"{r['n_workers']} workers × {r['threads_per_worker']} thread: {r['images_per_s']:.1f} images/s "
                  f"end to end ({r['wall_s']:.0f} s wall on the started cluster, with each worker's model load; "
                  f"worker cores {r['worker_cores']:.2f}); steady CPU per image (every partition after a worker's "
                  f"first, HDF5 read + network + writer) **{cpu * 1e3:.1f} ms**.", "",
                  f"* **CPU:** 10⁹ × {cpu:.4f} s / 3600 = **{core_h:,.0f} core-hours** of this CPU "
                  f"({doc['machine'].get('cpu', '?')}); on {cores}-core machines like this one "
                  f"{core_h / cores:,.0f} machine-hours; on a 1,000-core allocation {core_h / 1000:,.1f} hours, "
                  + (f"if the workers keep scaling as they did here ({speedup:.2f}× for 2 workers on 2 cores)."
                     if speedup else "if the workers scale.")]
        gflops = speed.get("forward_gflops_per_image")
        if gflops:
            flop_rate = 100e12 / (gflops * 1e9)
            lines += [f"* **GPU:** no GPU rate has been measured for zpix (no GPU was available), so GPU-hours come "
                      f"from bounds, not a measurement: pasquet2019 needs {gflops:.2f} GFLOP per image "
                      f"(speed.json), so a GPU sustaining 100 TFLOP/s on it runs at most "
                      f"{flop_rate:,.0f} images/s (10⁹ in {N_SURVEY / flop_rate / 3600:.1f} "
                      f"GPU-hours); it must also read {CUTOUT_BYTES:,} B per image, so at 2 GB/s of input per GPU at "
                      f"most {2e9 / CUTOUT_BYTES:,.0f} images/s ({N_SURVEY / (2e9 / CUTOUT_BYTES) / 3600:.1f} "
                      "GPU-hours): the input bandwidth, not the arithmetic, sets the GPU-hours."]
        lines += [f"* **Input:** 10⁹ × {CUTOUT_BYTES:,} B = **{N_SURVEY * CUTOUT_BYTES / 1e12:.1f} TB** of cutouts "
                  "(uncompressed float32)."]
        w = doc.get("workers", {}).get("2")
        if w:
            lines += [f"* **Catalogue:** {w['catalog_bytes_per_object']:.0f} B/object as written here (Parquet, "
                      f"the point estimates + z_spec + the shards' catalogue columns) → "
                      f"{N_SURVEY * w['catalog_bytes_per_object'] / 1e9:,.0f} GB."]
        if f:
            lines += ["* **PDFs:** " + ", ".join(f"{name} {v['bytes_per_object'] * N_SURVEY / 1e12:.2f} TB"
                                                 for name, v in f.items()) + "."]
    text = DOC.read_text()
    a, b = text.index(START) + len(START), text.index(END)
    DOC.write_text(text[:a] + "\n" + "\n".join(lines) + "\n" + text[b:])


if __name__ == "__main__":
    main()
