"""Distributed prediction on a Dask LocalCluster: partitions, resume, model loaded once, readers."""

from __future__ import annotations

import json
import time

import h5py
import numpy as np
import pandas as pd
import pytest
import qp
from click.testing import CliRunner
from conftest import write_toy_cubes
from test_training import tiny_config

import zpix.training.api as api
from zpix.cli import main
from zpix.hardware import usable_cores
from zpix.prediction.distributed import (
    MANIFEST_DIR,
    QUIET_DASK,
    default_threads,
    finished,
    load_count,
    local_cluster,
    parse_cluster,
    plan_partitions,
    predict_distributed,
    worker_settings,
)
from zpix.prediction.format import read_predictions
from zpix.prediction.streaming import predict

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    train_cubes = write_toy_cubes(root / "train.h5", n=200, size=16, seed=0)
    run = api.train(tiny_config(train_cubes, root / "run", max_epochs=2)).run_dir
    (root / "shards").mkdir()
    shards = [write_toy_cubes(root / "shards" / f"s{i}.h5", n=n, size=16, seed=10 + i, chunk=n)
              for i, n in enumerate((90, 70))]
    for i, shard in enumerate(shards):  # survey shards hold different objects
        with h5py.File(shard, "r+") as f:
            f["ids"][...] = f["ids"][:] + 1000 * i
            n = f["ids"].shape[0]
            rng = np.random.default_rng(i)
            f["catalog/ra"] = rng.uniform(150.0, 151.0, n)
            f["catalog/dec"] = rng.uniform(1.0, 2.0, n)
    cluster = local_cluster(2)  # what --dask local:2 starts
    client = distributed.Client(cluster)
    yield root, run, shards, client
    client.close()
    cluster.close()


def test_cluster_specs():
    assert parse_cluster("local:3") == ("local", 3)
    assert parse_cluster("local") == ("local", usable_cores())  # one single-threaded worker per core
    assert parse_cluster("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")
    with pytest.raises(ValueError, match="local:N"):
        parse_cluster("local:0")
    with pytest.raises(ValueError, match="scheduler address"):
        parse_cluster("myhost")


def test_partitioned_output_equals_single_process_and_reads_everywhere(setup):
    root, run, shards, client = setup
    out = root / "pred"
    res = predict_distributed(run, str(root / "shards" / "*.h5"), out, client=client, block_rows=40, threads=1,
                              hats=True, pdf_format="hist32")
    assert res.n_partitions == 5 and res.n_objects == 160 and len(res.computed) == 5
    pred = read_predictions(out)
    singles = [read_predictions(predict(run, s, root / f"single{i}", progress=False, num_workers=0, split="all"))
               for i, s in enumerate(shards)]
    np.testing.assert_array_equal(pred.catalog["id"], np.concatenate([s.catalog["id"] for s in singles]))
    np.testing.assert_allclose(pred.pdfs, np.vstack([s.pdfs for s in singles]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(pred.catalog["z_mean"], np.concatenate([s.catalog["z_mean"] for s in singles]),
                               atol=1e-6)
    # pandas, Dask and qp read the same rows
    assert pd.read_parquet(out / "catalog.parquet")["id"].tolist() == pred.catalog["id"].tolist()
    import dask.dataframe as dd

    assert dd.read_parquet(out / "catalog.parquet").npartitions == 5
    ens = qp.read(str(out / "pdfs.hdf5"))
    assert ens.npdf == 160
    np.testing.assert_allclose(ens.ancil["zmean"].ravel(), pred.catalog["z_mean"], atol=1e-6)
    with h5py.File(out / "pdfs.hdf5") as f:
        assert f["data/pdfs"].is_virtual
    # each worker process loaded the model once for its several partitions
    pids = {e["pid"] for e in res.entries}
    assert len(pids) <= 2 and all(n <= 1 for n in client.run(load_count).values())
    # the HATS catalogue (LSDB reads it): point estimates, positions and the PDF arrays
    lsdb = pytest.importorskip("lsdb")
    cat = lsdb.read_hats(out / "hats").compute().set_index("id").loc[pred.catalog["id"]]
    np.testing.assert_allclose(cat["z_mean"], pred.catalog["z_mean"])
    np.testing.assert_allclose(np.stack(cat["pdf_pdfs"].to_numpy()) * pred.grid.width, pred.pdfs, atol=1e-6)
    assert "zpix_pdf_meta" in (out / "hats" / "zpix_photoz" / "hats.properties").read_text()
    # zpix evaluate and zpix report read it as any prediction directory
    r = CliRunner().invoke(main, ["evaluate", str(out), "--out", str(root / "metrics.json")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["report", str(out), "--out", str(root / "report"), "--cubes", str(shards[1]),
                                  "--n-examples", "4", "--n-boot", "20"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((root / "report" / "metrics.json").read_text())
    assert [m["n"] for m in metrics["summary"].values()] == [160]
    assert (root / "report" / "index.html").stat().st_size > 10_000
    # every partition ran with the torch threads asked for, in its worker process
    assert {e["torch_threads"] for e in res.entries} == {1}


def test_rerun_after_a_crash_computes_only_the_missing_partitions(setup):
    root, run, shards, client = setup
    out = root / "crash"

    def crash(entry, seen=[]):  # noqa: B006 - counts the calls of this one run
        seen.append(entry["name"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_distributed(run, shards, out, client=client, block_rows=30, threads=1, pdf_format="quantiles:9",
                            on_partition=crash)
    assert not out.exists()
    work = out.parent / f".{out.name}.partial-dask"
    # tasks already running on a worker when the driver stopped still finish (a cancelled task's thread
    # runs on after the scheduler forgets it): wait until the scheduler is empty and no worker thread is busy
    while (client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
           or any(client.run(lambda dask_worker: len(dask_worker.active_threads)).values())):
        time.sleep(0.2)
    parts = plan_partitions(shards, 30)
    done = finished(work, parts)
    assert 2 <= len(done) < len(parts)
    # a partition whose manifest entry is missing is not finished, whatever files it left
    dropped = sorted(done)[0]
    (work / MANIFEST_DIR / f"{dropped}.json").unlink()
    with pytest.raises(ValueError, match="other settings"):
        predict_distributed(run, shards, out, client=client, block_rows=30, threads=1, pdf_format="hist16")
    res = predict_distributed(run, shards, out, client=client, block_rows=30, threads=1, pdf_format="quantiles:9")
    assert sorted(res.computed) == sorted({p.name for p in parts} - done | {dropped})
    pred = read_predictions(out)
    assert len(pred) == 160 and pred.meta["layout"]["pdf_format"] == "quantiles:9"
    assert qp.read(str(out / "pdfs.hdf5")).gen_class.name == "quant"


def test_cli_on_a_running_scheduler(setup):
    root, run, shards, client = setup
    out = root / "cli"
    r = CliRunner().invoke(main, ["predict", str(run), str(root / "shards" / "s*.h5"), "--out", str(out),
                                  "--dask", client.scheduler.address, "--block-size", "100",
                                  "--pdf-format", "hist16"])
    assert r.exit_code == 0, r.output
    pred = read_predictions(out)
    assert len(pred) == 160 and len(pred.meta["layout"]["partitions"]) == 2
    r = CliRunner().invoke(main, ["predict", str(run), str(root / "shards" / "nothing*.h5"), "--out",
                                  str(root / "none"), "--dask", "local:1"])
    assert r.exit_code != 0 and "no cube store matches" in r.output
    # cubes without sky positions: --hats is refused before any work, with the fix in the message
    r = CliRunner().invoke(main, ["predict", str(run), str(root / "train.h5"), "--out", str(root / "nohats"),
                                  "--dask", client.scheduler.address, "--hats"])
    assert r.exit_code != 0 and "no catalog/ra" in r.output and not (root / "nohats").exists()



def test_default_threads_share_the_cores_between_the_workers(setup):
    root, run, shards, client = setup
    # two worker processes on this host: each gets half of the cores it may run on, at least one
    assert default_threads(client) == max(1, usable_cores() // 2)


def test_training_rows_are_counted_over_the_partitions(setup):
    """A distributed prediction of the run's own cube store carries its training-row count, so evaluate refuses it."""
    root, run, shards, client = setup
    out = root / "own"
    predict_distributed(run, root / "train.h5", out, client=client, block_rows=70, threads=1, pdf_format="hist32")
    pred = read_predictions(out, load_pdfs=False)
    rows = pred.meta["meta"]["rows"]
    from zpix.runs import load_split

    split = load_split(run)
    assert rows["n_rows"] == 200 and rows["run_store"] is True
    assert rows["n_training_rows"] == split.train.size + split.val.size > 0
    r = CliRunner().invoke(main, ["evaluate", str(out), "--out", str(root / "own_metrics.json")])
    assert r.exit_code != 0 and "were used to train or validate" in r.output


def test_local_cluster_workers_start_preloaded_with_dask_monitoring_turned_down(setup):
    """local:N workers import the prediction stack while they start, run torch with cores / workers threads, and
    run without Dask's profiler and with its other monitors slowed (QUIET_DASK); so does the scheduler."""
    root, run, shards, client = setup
    threads = max(1, usable_cores() // 2)
    settings = client.run(worker_settings)
    assert len(settings) == 2
    for s in settings.values():
        assert s["preloaded_at"] is not None and s["torch_imported"]
        assert s["torch_threads"] == threads and s["omp_num_threads"] == str(threads)
        assert {k: s[k] for k in QUIET_DASK} == QUIET_DASK
        assert s["distributed.worker.profile.enabled"] is False
    sched = client.run_on_scheduler(lambda dask_scheduler: (dask_scheduler._tick_interval,
                                                            "stealing" in dask_scheduler.extensions))
    assert sched == (0.5, False)
    # the workers' own periodic callbacks: no statistical profiler
    callbacks = client.run(lambda dask_worker: sorted(dask_worker.periodic_callbacks))
    assert all("profile" not in c and "heartbeat" in c for c in callbacks.values())


def test_a_killed_worker_is_restarted_preloaded_and_the_job_finishes(setup):
    """SIGKILL one local:N worker mid-job: its nanny restarts it (preloaded, quiet), its running task is
    recomputed, the partitions it had finished are not, and the prediction is whole.  Runs last: it changes the
    module's cluster."""
    import os
    import signal

    root, run, shards, client = setup
    out = root / "killed"
    seen, killed = [], {}

    def kill_one(entry):
        seen.append(entry)
        if len(seen) == 3 and not killed:
            time.sleep(0.5)  # the driver has released the first partition's result by now
            killed.update(pid=seen[0]["pid"], name=seen[0]["name"], at=time.time())
            os.kill(seen[0]["pid"], signal.SIGKILL)  # the worker that holds the first partition's result

    res = predict_distributed(run, shards, out, client=client, block_rows=20, threads=1, pdf_format="hist16",
                              on_partition=kill_one)
    pred = read_predictions(out, load_pdfs=False)
    assert killed and res.n_objects == 160 and len(pred) == 160 and pred.catalog["id"].is_unique
    assert sorted(res.computed) == sorted(p.name for p in plan_partitions(shards, 20))
    # a finished partition is on disk: the dead worker's finished partitions are not computed again
    first = json.loads((out / MANIFEST_DIR / f"{killed['name']}.json").read_text())
    assert first["pid"] == killed["pid"] and first["finished_unix"] < killed["at"]
    client.wait_for_workers(2, timeout=60)
    # the scheduler can still list the dead worker beside its replacement for a moment, and a broadcast to it
    # fails: wait until the two workers it lists are the live ones
    deadline = time.time() + 60
    while killed["pid"] in (pids := client.run(os.getpid, on_error="ignore")).values() or len(pids) != 2:
        assert time.time() < deadline, f"the killed worker {killed['pid']} is not replaced after 60 s: {pids}"
        time.sleep(0.2)
    settings = client.run(worker_settings)
    assert killed["pid"] not in client.run(os.getpid).values()
    restarted = [s for s in settings.values() if s["preloaded_at"] > killed["at"]]
    assert len(restarted) == 1 and restarted[0]["distributed.worker.profile.enabled"] is False
