"""A killed `zpix train` / `zpix predict` (SIGKILL, in a subprocess) continues where it stopped.

The subprocess runs the real command line; a small wrapper only slows it down after each committed
chunk / saved epoch so that the kill lands mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_toy_cubes
from test_foundation import tiny_config

import zpix
from zpix.prediction.format import read_predictions
from zpix.prediction.streaming import load_ensemble
from zpix.training.api import resume

SLOW_PREDICT = """
import sys, time
import zpix.prediction.journal as j
commit = j.ChunkJournal.commit
def slow(self, *a, **k):
    commit(self, *a, **k)
    time.sleep(0.4)
j.ChunkJournal.commit = slow
from zpix.cli import main
sys.exit(main(sys.argv[1:]))
"""

SLOW_TRAIN = """
import sys, time
from lightning.pytorch.callbacks import ModelCheckpoint
save = ModelCheckpoint._save_last_checkpoint
def slow(self, *a, **k):
    save(self, *a, **k)
    time.sleep(1.0)
ModelCheckpoint._save_last_checkpoint = slow
from zpix.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start(tmp_path: Path, script: str, args: list[str]) -> subprocess.Popen:
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, str(wrapper), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    start = time.time()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"finished before the kill: {proc.stdout.read().decode()[-2000:]}")
        if time.time() - start > timeout:
            proc.kill()
            raise AssertionError("never reached the kill point")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    cubes = write_toy_cubes(root / "toy.h5", n=160, size=16)
    return cubes, zpix.train(tiny_config(cubes, root / "run"))


def test_killed_predict_continues_and_matches_an_uninterrupted_run(small_run, tmp_path, monkeypatch):
    cubes, result = small_run
    out = tmp_path / "pred"
    opts = dict(split="all", batch_size=16, chunk_rows=16, num_workers=0, progress=False, device="cpu")
    proc = _start(tmp_path, SLOW_PREDICT, ["predict", str(result.run_dir), str(cubes), "--out", str(out),
                                           "--split", "all", "--batch-size", "16", "--chunk-rows", "16",
                                           "--workers", "0", "--no-progress", "--device", "cpu"])
    journal = tmp_path / ".pred.partial-resume" / "journal"
    _kill_when(proc, lambda: len(list(journal.glob("chunk-*.npz"))) >= 3)
    assert not out.exists()  # nothing complete-looking after the kill
    done_before = len(list(journal.glob("chunk-*.npz")))
    assert 3 <= done_before < 10

    import zpix.prediction.journal as j

    commits = []
    original = j.ChunkJournal.commit
    monkeypatch.setattr(j.ChunkJournal, "commit", lambda self, i, cols: (commits.append(i), original(self, i, cols)))
    zpix.predict(result.run_dir, cubes, out, **opts)
    assert commits == list(range(done_before, 10))  # only the chunks the killed run had not finished
    monkeypatch.setattr(j.ChunkJournal, "commit", original)
    whole = zpix.predict(result.run_dir, cubes, tmp_path / "whole", **opts)
    a, b = read_predictions(out), read_predictions(whole)
    np.testing.assert_array_equal(a.pdfs, b.pdfs)
    assert a.catalog.equals(b.catalog)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert sorted(p.name for p in out.iterdir()) == [".zpix-predictions", "catalog.parquet", "meta.yaml", "pdfs.hdf5"]


def test_killed_training_resumes_to_the_same_epochs_and_a_loadable_checkpoint(tmp_path):
    cubes = write_toy_cubes(tmp_path / "toy.h5", n=96, size=16)
    cfg = tiny_config(cubes, tmp_path / "run", max_epochs=4, patience=10, lr_schedule="none")
    cfg.save(tmp_path / "cfg.yaml")
    proc = _start(tmp_path, SLOW_TRAIN, ["train", "--config", str(tmp_path / "cfg.yaml")])
    last = tmp_path / "run" / "member_0" / "last.ckpt"

    def mid_run() -> bool:
        if not last.is_file():
            return False
        try:
            return torch.load(last, map_location="cpu", weights_only=False)["epoch"] >= 1
        except Exception:  # noqa: BLE001 - being written
            return False

    _kill_when(proc, mid_run)
    assert not (tmp_path / "run" / "summary.json").exists()
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert killed_at < 3
    result = resume(tmp_path / "run")
    member = result.summary["members"][0]
    assert member["resumed_from"] == str(last)
    whole = zpix.train(tiny_config(cubes, tmp_path / "whole", max_epochs=4, patience=10, lr_schedule="none"))
    assert member["epochs"] == whole.summary["members"][0]["epochs"] == 4
    assert member["steps"] == whole.summary["members"][0]["steps"]
    module = load_ensemble(result.run_dir)[0]
    assert module.model.output_kind == "pdf"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["members"][0]["epochs"] == 4
