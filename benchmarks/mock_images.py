"""Image benchmark: the CNN on the images against the catalogue baselines on the same mock galaxies.

One SDSS-like mock from ``zpix simulate`` (N galaxies, seed S) is split once: a test set that every
method predicts, a validation set for the CNN's early stopping, and the training set.  Then

* ``pasquet2019-small`` (Pasquet et al. 2019's reduced network, Table 2's 2 % row) trained on the
  images (raw nanomaggies + E(B−V), as in the paper),
* the k-NN local linear regression (Beck et al. 2016) and the magnitude network, on the mock
  catalogue's observed magnitudes of the same objects,

are scored with the same metrics on the same test objects, and the learning curve (σ_MAD against the
number of training objects, the shape of Table 2's training-size rows) is measured for all three.

Writes ``benchmarks/results/mock_images.json`` (``methods`` map + ``learning_curve``) and
``benchmarks/results/mock_accuracy.json`` (the CNN vs k-NN summary).  Each stage's prediction
directory is kept in the work folder, so a rerun reuses finished stages (``--fresh`` redoes them) and
a killed run still leaves the results of the stages it finished in the JSON.

    python benchmarks/mock_images.py --n 28000 --seed 2019           # simulate + everything
    python benchmarks/mock_images.py --cubes mock.h5 --sizes 2000,5000  # an existing mock
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, prediction_metrics, stamp, write_json  # noqa: E402


class Bench:
    """The state of one benchmark run: where things go and the results gathered so far."""

    def __init__(self, work: Path, cubes: Path, fresh: bool, doc: dict[str, Any]) -> None:
        self.work, self.cubes, self.fresh, self.doc = work, cubes, fresh, doc
        self.stage_file = work / "stages.json"
        self.stages: dict[str, Any] = {}
        if self.stage_file.exists() and not fresh:
            self.stages = json.loads(self.stage_file.read_text())

    def done(self, name: str) -> bool:
        return name in self.stages and (self.work / name / "predictions").is_dir()

    def record(self, name: str, info: dict[str, Any]) -> dict[str, Any]:
        info = {**info, **prediction_metrics(self.work / name / "predictions")}
        self.stages[name] = info
        write_json(self.stage_file, self.stages)
        return info

    def clear(self, name: str) -> Path:
        d = self.work / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d


def make_split(cubes: Path, seed: int, n_test: int, n_val: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled rows (z_spec in the 0-0.4 grid) shuffled once with ``seed``: test, validation, training."""
    from zpix.store.cube_store import CubeStore
    from zpix.training.splits import labelled_rows

    with CubeStore(cubes, validate=False) as store:
        rows = labelled_rows(store.z_spec, np.arange(len(store)), 0.0, 0.4)
    perm = np.random.default_rng(seed).permutation(rows)
    return np.sort(perm[:n_test]), np.sort(perm[n_test : n_test + n_val]), perm[n_test + n_val :]


def run_catalog_baselines(b: Bench, tag: str, train_rows: np.ndarray, test_rows: np.ndarray, seed: int
                          ) -> dict[str, dict[str, Any]]:
    """k-NN and the magnitude network trained on ``train_rows``' magnitudes, predicting ``test_rows``."""
    from zpix.baselines.knn import run_knn
    from zpix.baselines.magnet import run_magnet
    from zpix.baselines.tables import load_magnitudes

    table = load_magnitudes(b.cubes)
    out = {}
    for method, runner, kwargs in (("knn", run_knn, {}), ("magnet", run_magnet, {"seed": seed})):
        name = f"{method}_{tag}"
        if not b.done(name) or b.fresh:
            d = b.clear(name)
            info = runner(table.subset(np.sort(train_rows)), table.subset(test_rows), d / "predictions",
                          **kwargs)
            info = {k: v for k, v in info.items() if k in ("train_s", "predict_s", "n_train", "n_test", "epochs")}
            b.record(name, {**info, "n_train": int(len(train_rows))})
        out[method] = b.stages[name]
        print(f"[{name}] sigma_mad {out[method]['sigma_mad']:.5f}", flush=True)
    return out


def run_cnn(b: Bench, tag: str, train_rows: np.ndarray, val_rows: np.ndarray, test_rows: np.ndarray,
            options: dict[str, Any]) -> dict[str, Any]:
    """Train ``options['model']`` on the images of ``train_rows`` and predict ``test_rows``."""
    from zpix.prediction.streaming import predict
    from zpix.runs import Split
    from zpix.training.api import train
    from zpix.training.config import TrainConfig

    name = f"cnn_{tag}"
    if b.done(name) and not b.fresh:
        return b.stages[name]
    d = b.clear(name)
    cfg = TrainConfig(cubes=str(b.cubes), out=str(d / "run"), accelerator="cpu", devices=1, progress=False,
                      **options)
    t0 = time.perf_counter()
    result = train(cfg, split=Split(np.sort(train_rows), val_rows, test_rows))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    predict(result.run_dir, b.cubes, d / "predictions", rows=test_rows, num_workers=1, progress=False)
    predict_s = time.perf_counter() - t0
    member = result.summary["members"][0]
    info = b.record(name, {"train_s": train_s, "predict_s": predict_s, "n_train": int(len(train_rows)),
                           "n_test": int(len(test_rows)), "epochs": member["epochs"], "steps": member["steps"],
                           "best_val_loss": member["best_val_loss"], "config": cfg.to_dict()})
    print(f"[{name}] sigma_mad {info['sigma_mad']:.5f} ({train_s:.0f} s, {member['epochs']} epochs)", flush=True)
    return info


def finetune_cnn(b: Bench, src: str, name: str, train_rows: np.ndarray, val_rows: np.ndarray,
                 test_rows: np.ndarray, lr: float, epochs: int, patience: int, seed: int) -> dict[str, Any]:
    """Continue the CNN of stage ``src`` at a lower learning rate (a one-step learning-rate drop).

    The library's TrainConfig trains at a constant Adam learning rate; this stage measures what a drop
    after the plateau buys.  It reuses PhotoZModule (its checkpoint, with ``lr`` replaced) and
    Lightning's Trainer with the same early stopping and checkpointing as zpix.train.
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from torch.utils.data import DataLoader

    from zpix.prediction.streaming import predict
    from zpix.store.dataset import CubeDataset
    from zpix.training.module import PhotoZModule

    if b.done(name) and not b.fresh:
        return b.stages[name]
    src_info = b.stages[src]
    d = b.clear(name)
    member = d / "run" / "member_0"
    L.seed_everything(seed, workers=True, verbose=False)
    module = PhotoZModule.load_from_checkpoint(b.work / src / "run" / "member_0" / "best.ckpt", map_location="cpu",
                                               lr=lr)
    batch = src_info["config"]["batch_size"]

    def loader(rows: np.ndarray, shuffle: bool) -> DataLoader:
        return DataLoader(CubeDataset(b.cubes, indices=rows), batch_size=batch, shuffle=shuffle, num_workers=1,
                          persistent_workers=True, generator=torch.Generator().manual_seed(seed), drop_last=shuffle)

    ckpt = ModelCheckpoint(dirpath=member, filename="best", monitor="val_loss", mode="min", save_top_k=1)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, enable_progress_bar=False,
                        callbacks=[ckpt, EarlyStopping(monitor="val_loss", patience=patience, mode="min")],
                        logger=L.pytorch.loggers.CSVLogger(str(d / "run" / "logs"), name="member_0"),
                        enable_model_summary=False)
    t0 = time.perf_counter()
    trainer.fit(module, loader(np.sort(train_rows), True), loader(val_rows, False))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    predict(d / "run", b.cubes, d / "predictions", rows=test_rows, num_workers=1, progress=False)
    predict_s = time.perf_counter() - t0
    config = {**src_info["config"], "finetune_from": src, "finetune_lr": lr, "finetune_max_epochs": epochs}
    info = b.record(name, {"train_s": src_info["train_s"] + train_s, "predict_s": predict_s,
                           "n_train": int(len(train_rows)), "n_test": int(len(test_rows)),
                           "epochs": src_info["epochs"] + trainer.current_epoch,
                           "steps": src_info["steps"] + trainer.global_step,
                           "best_val_loss": float(ckpt.best_model_score), "config": config})
    print(f"[{name}] sigma_mad {info['sigma_mad']:.5f} (+{train_s:.0f} s at lr {lr})", flush=True)
    return info


def epochs_for(n_train: int, max_epochs: int, image_budget: int) -> int:
    """Epochs for a training-set size: about ``image_budget`` images seen, at most ``max_epochs``.

    Small training sets need more passes to reach the same number of optimiser steps.
    """
    return int(max(1, min(max_epochs, math.ceil(image_budget / n_train))))


@click.command()
@click.option("--cubes", type=click.Path(dir_okay=False), default=None,
              help="An existing SDSS mock cube store (default: simulate one into the work folder).")
@click.option("--n", "n_objects", default=28_000, show_default=True, help="Galaxies to simulate.")
@click.option("--seed", default=2019, show_default=True, help="Mock seed; also the split's and the models'.")
@click.option("--work", type=click.Path(file_okay=False), default=str(ROOT / "runs" / "bench" / "mock"),
              show_default=True, help="Work folder (mock, runs, predictions); git-ignored.")
@click.option("--n-test", default=4_000, show_default=True)
@click.option("--n-val", default=2_000, show_default=True)
@click.option("--sizes", default="2000,5000,10000,20000", show_default=True,
              help="Training-set sizes of the learning curve; the largest is the main comparison.")
@click.option("--model", default="pasquet2019-small", show_default=True)
@click.option("--epochs", default=15, show_default=True, help="CNN epochs on the largest training set.")
@click.option("--max-epochs-small", default=40, show_default=True, help="CNN epoch cap on the smaller sets.")
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--patience", default=4, show_default=True)
@click.option("--finetune-epochs", default=5, show_default=True,
              help="Epochs continued at --finetune-lr after the CNN stops (0: none).")
@click.option("--finetune-lr", default=1e-4, show_default=True)
@click.option("--image-budget-small", default=100_000, show_default=True,
              help="About this many images seen by the CNN on each smaller learning-curve set.")
@click.option("--no-learning-curve", is_flag=True, help="Only the main comparison.")
@click.option("--fresh", is_flag=True, help="Redo every stage (default: reuse the finished ones).")
@click.option("--results", type=click.Path(file_okay=False), default=str(RESULTS), show_default=True,
              help="Folder of mock_images.json and mock_accuracy.json.")
def main(cubes: str | None, n_objects: int, seed: int, work: str, n_test: int, n_val: int, sizes: str,
         model: str, epochs: int, max_epochs_small: int, lr: float, batch_size: int, patience: int,
         finetune_epochs: int, finetune_lr: float, image_budget_small: int, no_learning_curve: bool, fresh: bool,
         results: str) -> None:
    """Run the image benchmark and write mock_images.json and mock_accuracy.json."""
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    if cubes is None:
        cube_path = work_dir / f"mock_sdss_{n_objects}_seed{seed}.h5"
        if not cube_path.exists():
            from zpix.mock.simulate import simulate

            print(f"simulating {n_objects} SDSS-like galaxies (seed {seed}) -> {cube_path}", flush=True)
            simulate(n_objects, cube_path, survey="sdss", seed=seed, progress=False)
    else:
        cube_path = Path(cubes)
    from zpix.store.cube_store import CubeStore

    with CubeStore(cube_path, validate=False) as store:
        n_mock, mock_seed, survey = len(store), store.attrs.get("seed"), store.survey
    test_rows, val_rows, train_all = make_split(cube_path, seed, n_test, n_val)
    size_list = sorted({min(int(s), len(train_all)) for s in sizes.split(",")})
    n_main = size_list[-1]
    base_options = {"model": model, "lr": lr, "batch_size": batch_size, "patience": patience, "seed": seed,
                    "num_workers": 1}
    doc: dict[str, Any] = {
        **stamp(),
        "mock": {"cubes": str(cube_path), "survey": survey, "n_objects": n_mock,
                 "seed": None if mock_seed is None else int(mock_seed), "generator": "zpix simulate"},
        "split": {"seed": seed, "n_test": int(len(test_rows)), "n_val": int(len(val_rows)),
                  "n_train_available": int(len(train_all)), "z_range": [0.0, 0.4]},
        "config": {**base_options, "epochs_main": epochs, "max_epochs_small": max_epochs_small,
                   "image_budget_small": image_budget_small, "finetune_epochs": finetune_epochs,
                   "finetune_lr": finetune_lr},
        "status": "running",
        "methods": {},
        "learning_curve": {"n_train": size_list, "cnn": {}, "knn": {}, "magnet": {}},
    }
    bench = Bench(work_dir, cube_path, fresh, doc)
    out_json = Path(results) / "mock_images.json"

    def save() -> None:
        write_json(out_json, doc)

    # 1. the main comparison on the largest training set
    main_rows = train_all[:n_main]
    doc["methods"].update(run_catalog_baselines(bench, str(n_main), main_rows, test_rows, seed))
    save()
    doc["methods"]["cnn_constant_lr"] = run_cnn(bench, str(n_main), main_rows, val_rows, test_rows,
                                                {**base_options, "max_epochs": epochs})
    doc["methods"]["cnn"] = doc["methods"]["cnn_constant_lr"]
    save()
    if finetune_epochs > 0:
        doc["methods"]["cnn"] = finetune_cnn(bench, f"cnn_{n_main}", f"cnn_{n_main}_lrdrop", main_rows, val_rows,
                                             test_rows, finetune_lr, finetune_epochs, patience, seed)
    for m in ("cnn", "knn", "magnet"):
        doc["learning_curve"][m][str(n_main)] = doc["methods"][m]["sigma_mad"]
    save()
    write_accuracy(doc, Path(results))
    # 2. the learning curve on nested subsets of the same training rows
    if not no_learning_curve:
        for n in size_list[:-1]:
            rows = train_all[:n]
            base = run_catalog_baselines(bench, str(n), rows, test_rows, seed)
            for m in ("knn", "magnet"):
                doc["learning_curve"][m][str(n)] = base[m]["sigma_mad"]
            save()
            e = epochs_for(n, max_epochs_small, image_budget_small)
            cnn = run_cnn(bench, str(n), rows, val_rows, test_rows, {**base_options, "max_epochs": e})
            if finetune_epochs > 0:
                cnn = finetune_cnn(bench, f"cnn_{n}", f"cnn_{n}_lrdrop", rows, val_rows, test_rows, finetune_lr,
                                   finetune_epochs, patience, seed)
            doc["learning_curve"]["cnn"][str(n)] = cnn["sigma_mad"]
            doc["learning_curve"].setdefault("details", {})[str(n)] = {"cnn": cnn, **base}
            save()
    doc["status"] = "complete"
    save()
    print(f"wrote {out_json}")


def write_accuracy(doc: dict[str, Any], results: Path) -> None:
    """Issue 3's deliverable: CNN vs k-NN on the same test objects of the mock."""
    keys = ("sigma_mad", "bias", "eta", "crps", "pit_ks", "train_s", "predict_s", "n_train", "n_test", "epochs")
    methods = {m: {k: doc["methods"][m][k] for k in keys if k in doc["methods"][m]}
               for m in ("cnn", "knn", "cnn_constant_lr") if m in doc["methods"]}
    cnn, knn = methods["cnn"], methods["knn"]
    acc = {
        "date_utc": doc["date_utc"], "commit": doc["commit"], "machine": doc["machine"], "mock": doc["mock"],
        "n_train": cnn["n_train"], "n_test": cnn["n_test"], "seed": doc["split"]["seed"],
        "config": {"cnn": doc["methods"]["cnn"].get("config"),
                   "cnn_note": "cnn = pasquet2019-small trained by zpix.train at a constant lr, then continued at "
                               "finetune_lr (learning-rate drop); cnn_constant_lr = before the drop",
                   "knn": "zpix.baselines.knn defaults (k=100, standardised r + colours)",
                   "split": doc["split"]},
        "methods": methods,
        "cnn_beats_knn_sigma_mad": bool(cnn["sigma_mad"] < knn["sigma_mad"]),
        "sigma_mad_ratio_cnn_over_knn": cnn["sigma_mad"] / knn["sigma_mad"],
    }
    write_json(results / "mock_accuracy.json", acc)


if __name__ == "__main__":
    main()
