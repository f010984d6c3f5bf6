"""Survey-scale benchmark: distributed prediction on local Dask workers, recovery, and compact PDF formats.

1. Shards: ``--n-shards`` cube stores of ``--n-per-shard`` objects, ``--stamp``×``--stamp`` pixel
   central crops (5 bands) of the shared SDSS-like mock (``runs/bench/mock_sdss.h5``), cycled over its
   28,000 galaxies (ids unique per shard row).  Small stamps keep 200,000 objects at ~1 GB on disk.
2. The throughput model: ``pasquet2019-small`` built for those stamps and trained for ``--train-steps``
   steps (throughput does not depend on the weights; its accuracy is not a result here).
3. ``workers``: images/s of ``zpix predict --dask`` on a LocalCluster of 1 and 2 worker processes with
   one torch thread each (and 1 worker × 2 threads, the default share on this 2-core machine), the
   peak RSS of every worker, and the load average around each run (the machine is shared).
4. ``worker_killed``: the 2-worker run again, one worker killed (SIGKILL) after ``--kill-after``
   partitions; Dask reschedules its task on the restarted worker.  Time lost = wall − clean 2-worker wall.
5. ``crash_rerun``: the CLI (``python -m zpix predict ... --dask local:2``) killed with its whole
   process group after ``--kill-after`` partitions, then rerun: the rerun must compute exactly the
   partitions without a manifest entry.
6. ``pdf_formats``: a trained run's PDFs (``--pdf-run``, default ``runs/bench/p19s_20k``: pasquet2019-small
   on 20,000 mock galaxies at 64×64) on its test split, stored in each format and read back:
   bytes per object and the change of CRPS, PIT KS, σ_MAD and 68% width against hist32.

    python benchmarks/survey_scale.py --cubes runs/bench/mock_sdss.h5   # → benchmarks/results/survey_scale.json
    python benchmarks/survey_scale.py --render-docs                     # docs/survey_scale.md tables from the JSON
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


def make_shards(cubes: Path, out: Path, n_shards: int, n_per_shard: int, stamp_px: int) -> list[Path]:
    """Central crops of the mock's images, cycled into ``n_shards`` cube stores."""
    import h5py

    from zpix.store.cube_store import CubeWriter

    with h5py.File(cubes, "r") as f:
        n, nb, h, w = f["images"].shape
        y0, x0 = (h - stamp_px) // 2, (w - stamp_px) // 2
        crops = np.empty((n, nb, stamp_px, stamp_px), np.float32)
        for s in range(0, n, 2000):
            crops[s:s + 2000] = f["images"][s:s + 2000, :, y0:y0 + stamp_px, x0:x0 + stamp_px]
        z, ebv = f["z_spec"][:], f["ebv"][:]
        bands = [b.decode() if isinstance(b, bytes) else str(b) for b in f.attrs["bands"]]
        scale = float(f.attrs["pixel_scale_arcsec"])
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n_shards):
        path = out / f"shard_{k:02d}.h5"
        paths.append(path)
        if path.is_file():  # made by an earlier part of this benchmark (--work)
            continue
        src = (np.arange(n_per_shard) + k * n_per_shard) % n
        with CubeWriter(path, bands=bands, image_shape=(stamp_px, stamp_px), pixel_scale_arcsec=scale,
                        survey="sdss-mock-crops") as wr:
            for s in range(0, n_per_shard, 5000):
                r = src[s:s + 5000]
                wr.append(crops[r], z[r], ebv[r], k * 10_000_000 + np.arange(s, s + r.size),
                          catalog={"src_row": r.astype(np.int64)})
    return paths


def train_tiny(shard: Path, out: Path, steps: int) -> Path:
    import zpix.training.api as api
    from zpix.training.config import TrainConfig

    if (out / "member_0" / "best.ckpt").is_file():
        return out

    cfg = TrainConfig(cubes=str(shard), out=str(out), model="pasquet2019-small", max_steps=steps, max_epochs=1,
                      batch_size=64, num_workers=0, progress=False, accelerator="cpu", devices=1, max_train=2000,
                      calibrate=[])
    return Path(api.train(cfg).run_dir)


def _peak_rss(entries: list[dict[str, Any]]) -> dict[str, float]:
    by_pid: dict[int, int] = {}
    for e in entries:
        by_pid[e["pid"]] = max(by_pid.get(e["pid"], 0), e["peak_rss_bytes"])
    return {str(pid): round(v / 2**20, 1) for pid, v in sorted(by_pid.items())}


def run_local(run: Path, shards: list[Path], out: Path, n_workers: int, threads: int, block_rows: int,
              kill_after: int | None = None) -> dict[str, Any]:
    """One distributed prediction on a fresh LocalCluster (startup timed apart)."""
    from distributed import Client, LocalCluster

    from zpix.prediction.distributed import predict_distributed

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=50)
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
    t1 = time.perf_counter()
    try:
        res = predict_distributed(run, [str(s) for s in shards], out, client=client, block_rows=block_rows,
                                  threads=threads, on_partition=on_partition)
    finally:
        client.close()
        cluster.close()
    wall = time.perf_counter() - t1
    import pandas as pd

    ids = pd.read_parquet(out / "catalog.parquet", columns=["id"])["id"]
    out_doc = {"output_rows": len(ids), "output_ids_unique": bool(ids.is_unique),
               "n_workers": n_workers, "threads_per_worker": threads, "n_objects": res.n_objects,
               "n_partitions": res.n_partitions, "partitions_computed": len(res.computed), "wall_s": wall,
               "images_per_s": res.n_objects / wall, "cluster_startup_s": startup,
               # CPU time the workers spent per image: flat in N means the work scales with free cores
               "images_per_cpu_s": res.n_objects / max(1e-9, sum(e.get("cpu_seconds", np.nan) for e in res.entries)),
               "peak_rss_mb_per_worker": _peak_rss(res.entries), "loadavg_before": la0, "loadavg_after": loadavg()}
    if killed:
        out_doc["killed"] = killed
    return out_doc


def crash_and_rerun(run: Path, shards_glob: str, out: Path, block_rows: int, kill_after: int,
                    n_partitions: int) -> dict[str, Any]:
    """The CLI killed (whole process group) after ``kill_after`` partitions, then the same command again."""
    cmd = [sys.executable, "-m", "zpix", "predict", str(run), shards_glob, "--out", str(out), "--dask", "local:2",
           "--threads", "1", "--block-size", str(block_rows), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    manifest = out.parent / f".{out.name}.partial-dask" / "manifest"
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
@click.option("--kill-after", default=4, show_default=True, help="Partitions finished before a kill.")
@click.option("--work", type=click.Path(path_type=Path), default=None, help="Scratch directory (default: a temp).")
@click.option("--parts", default="workers,formats,killed,crash,threads", show_default=True,
              help="Parts to run, in this order; with --merge, added to an existing JSON of the same commit.")
@click.option("--merge", is_flag=True, help="Keep the parts already in --out (same commit and data sizes).")
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS / "survey_scale.json", show_default=True)
@click.option("--render-docs", is_flag=True, help="Only rewrite the tables of docs/survey_scale.md from --out.")
def main(cubes: Path, pdf_run: Path, n_shards: int, n_per_shard: int, stamp_px: int, block_rows: int,
         train_steps: int, kill_after: int, work: Path | None, parts: str, merge: bool, out: Path,
         render_docs: bool) -> None:
    if render_docs:
        render(json.loads(out.read_text()))
        return
    todo = set(parts.split(","))
    doc: dict[str, Any] = {**stamp(), "status": "running"}
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
        if "workers" in todo:
            doc["workers"] = {}
            for n in (1, 2):
                doc["workers"][str(n)] = run_local(run, shards, work / f"pred_{n}w", n, 1, block_rows)
                shutil.rmtree(work / f"pred_{n}w", ignore_errors=True)
                write_json(out, doc)
            w = doc["workers"]
            doc["speedup_2_vs_1_workers"] = w["2"]["images_per_s"] / w["1"]["images_per_s"]
            write_json(out, doc)
        if "formats" in todo:
            doc["pdf_formats_source"] = pdf_format_table(pdf_run, cubes, work)
            doc["pdf_formats"] = doc["pdf_formats_source"].pop("formats")
            write_json(out, doc)
        if "killed" in todo:
            k = run_local(run, shards, work / "pred_killed", 2, 1, block_rows, kill_after=kill_after)
            shutil.rmtree(work / "pred_killed", ignore_errors=True)
            clean = doc.get("workers", {}).get("2", {}).get("wall_s")
            k["clean_wall_s"] = clean
            k["time_lost_s"] = None if clean is None else k["wall_s"] - clean
            doc["worker_killed"] = k
            write_json(out, doc)
        if "crash" in todo:
            n_parts = n_shards * -(-n_per_shard // block_rows)
            doc["crash_rerun"] = crash_and_rerun(run, str(work / "shards" / "shard_*.h5"), work / "pred_crash",
                                                 block_rows, kill_after * 2, n_parts)
            shutil.rmtree(work / "pred_crash", ignore_errors=True)
            write_json(out, doc)
        if "threads" in todo:
            doc["workers_default_threads"] = {"1": run_local(run, shards, work / "pred_1w2t", 1, 2, block_rows)}
            shutil.rmtree(work / "pred_1w2t", ignore_errors=True)
            if "workers" in doc:
                doc["speedup_2x1_vs_1x2_threads"] = (doc["workers"]["2"]["images_per_s"]
                                                     / doc["workers_default_threads"]["1"]["images_per_s"])
        doc["loadavg_at_end"] = loadavg()
        present = {"workers": "workers", "formats": "pdf_formats", "killed": "worker_killed", "crash": "crash_rerun",
                   "threads": "workers_default_threads"}
        doc["status"] = "complete" if all(key in doc for key in present.values()) else "partial"
        write_json(out, doc)
        click.echo(json.dumps({k: doc.get(k) for k in ("speedup_2_vs_1_workers", "worker_killed", "crash_rerun")},
                              default=str, indent=1))
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# docs/survey_scale.md tables (generated from the JSON, never typed)

#: pasquet2019 (64×64×5) CPU inference rate of benchmarks/results/speed.json, read at render time.
N_SURVEY = 1e9


def render(doc: dict[str, Any]) -> None:
    speed = json.loads((RESULTS / "speed.json").read_text())
    lines = [f"*{doc['date_utc'][:16]} UTC, commit `{doc['commit']}`, {doc['machine'].get('cpu', '?')}, "
             f"{doc['machine'].get('cpu_count')} cores, load average at start {doc.get('loadavg_at_start')}.*", ""]
    d = doc["data"]
    if doc.get("scaled_down"):
        lines += [f"Scaled down: {doc['scaled_down']}.", ""]
    lines += [f"Data: {d['n_objects']:,} objects in {d['n_shards']} shards ({d['note']}, "
              f"{d['shard_bytes'] / 2**30:.2f} GiB); model {doc['model']['name']} on {doc['model']['image']} "
              f"stamps ({doc['model']['note']}); {doc['block_rows']:,} rows per partition.", "",
              "| run | workers × threads | images/s | images per worker CPU-second | wall s "
              "| peak RSS per worker (MB) | load avg before → after |",
              "|---|---|---|---|---|---|---|"]
    rows = [("workers", k, v) for k, v in doc.get("workers", {}).items()]
    rows += [("default threads", k, v) for k, v in doc.get("workers_default_threads", {}).items()]
    rows += [(f"repeat `{doc['workers_repeat']['commit']}`", k, v)
             for k, v in doc.get("workers_repeat", {}).get("workers", {}).items()]
    for run, k, v in rows:
        rss = ", ".join(f"{x:.0f}" for x in v["peak_rss_mb_per_worker"].values())
        cpu = f"{v['images_per_cpu_s']:.0f}" if "images_per_cpu_s" in v else "–"
        lines.append(f"| {run} | {k} × {v['threads_per_worker']} | {v['images_per_s']:.0f} | {cpu} | {v['wall_s']:.1f} "
                     f"| {rss} | {v['loadavg_before'][0]} → {v['loadavg_after'][0]} |")
    if "speedup_2_vs_1_workers" in doc:
        lines += ["", f"2 workers / 1 worker (1 thread each): **{doc['speedup_2_vs_1_workers']:.2f}×** in images/s."]
    rep = doc.get("workers_repeat", {}).get("workers", {})
    if "1" in rep and "2" in rep:
        cores = {k: v["images_per_s"] / v["images_per_cpu_s"] for k, v in rep.items()}
        lines += ["", f"Repeat: {rep['2']['images_per_s'] / rep['1']['images_per_s']:.2f}× in images/s; CPU time per "
                  f"image, 2 workers / 1 worker: {rep['1']['images_per_cpu_s'] / rep['2']['images_per_cpu_s']:.2f}; "
                  f"CPU obtained from the machine: {cores['1']:.2f} cores with 1 worker, {cores['2']:.2f} with 2."]
    if "speedup_2x1_vs_1x2_threads" in doc:
        lines += ["", f"2 workers × 1 thread / 1 worker × 2 threads: {doc['speedup_2x1_vs_1x2_threads']:.2f}× "
                  "(the second run's load average may differ: compare the load columns)."]
    k = doc.get("worker_killed")
    if k:
        lost = "n/a" if k["time_lost_s"] is None else f"{k['time_lost_s']:.1f} s"
        lines += ["", f"Worker killed (SIGKILL) after {k['killed']['after_partitions']} of {k['n_partitions']} "
                  f"partitions: wall {k['wall_s']:.1f} s against {k['clean_wall_s']:.1f} s clean, time lost {lost}; "
                  f"{k['partitions_computed']} partitions computed; the output has {k['output_rows']:,} rows, "
                  f"ids unique: {k['output_ids_unique']}."]
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
        lines += ["", f"Storage for {N_SURVEY:.0e} galaxies (PDFs only): "
                  + ", ".join(f"{name} {v['bytes_per_object'] * N_SURVEY / 1e12:.2f} TB" for name, v in f.items())
                  + "."]
    cpu = speed["models"]["pasquet2019"]["infer_img_s"]
    lines += ["", f"pasquet2019 CPU inference (benchmarks/results/speed.json, 2 cores): {cpu:.0f} images/s → "
              f"{N_SURVEY:.0e} / {cpu:.0f} / 3600 = {N_SURVEY / cpu / 3600:,.0f} machine-hours = "
              f"{2 * N_SURVEY / cpu / 3600:,.0f} core-hours."]
    text = DOC.read_text()
    a, b = text.index(START) + len(START), text.index(END)
    DOC.write_text(text[:a] + "\n" + "\n".join(lines) + "\n" + text[b:])


if __name__ == "__main__":
    main()
