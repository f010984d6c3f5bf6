"""Table 1 of John William et al. (KiDS bright) on the KiDS-like mock: magnitudes vs images vs both.

John William et al. compare their combined model (an Inception CNN on ugri 36x36 cutouts + a dense
network on the 9 KiDS+VIKING magnitudes, Huber loss with delta = 1e-4, 70/15/15 split) with a
magnitudes-only network (ANNz2 on the same 9 magnitudes; Table 1 and the slides' comparison).  This
script reruns that comparison on a ``zpix simulate --survey kids`` mock with the three variants of
one model class -- ``hybrid-mags``, ``hybrid-images`` and ``hybrid`` -- trained on the SAME split and
scored on the SAME test objects with ``zpix.evaluation.evaluate``:

    flock /tmp/zpix-heavy.lock .venv/bin/python benchmarks/kids_hybrid.py --n 20000 --seed 7 \
        --mags-epochs 40 --epochs 16 --finetune-epochs 8 --scratch-check --same-epochs-check

(the committed results were run that way).

The combined model is trained in two stages (``init_from``, see ``HybridNet.init_from``): its CNN
branch starts from the trained images-only run, its magnitude branch and head from the trained
magnitudes-only run (image columns of the head's first layer at zero, so it starts out as the
magnitude network), then everything is fine-tuned jointly for ``--finetune-epochs`` at
``--finetune-lr``.  ``--scratch-check`` also trains the combined model end to end from random weights
for ``--epochs`` (``investigation.hybrid_scratch`` in the JSON), and ``--same-epochs-check`` the
magnitude network for ``--epochs`` (``investigation.mags_same_epochs``).  The control
``investigation.mags_continued`` (always run: seconds) fine-tunes the magnitudes-only run exactly like
the combined model but without images, so that the gain of the second stage is not mistaken for the
images' contribution.

Writes ``benchmarks/results/kids_hybrid.json`` (top-level ``methods`` map mags/images/hybrid with
smad, sigma_dz, mean_dz, mean_dz_raw, mse, mae, r2, ...) and prints a Table-1-like table.  The mock
is simulated once into ``<workdir>/kids.h5`` and reused; the runs and predictions stay in
``<workdir>`` (never committed).  Heavy on a CPU: run it under ``flock /tmp/zpix-heavy.lock``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

#: method key -> (registered model, does it read the magnitudes?), in training order (the combined
#: model starts from the two single-branch runs)
VARIANTS: dict[str, tuple[str, bool]] = {
    "mags": ("hybrid-mags", True),
    "images": ("hybrid-images", False),
    "hybrid": ("hybrid", True),
}
#: checks reported under "investigation": the magnitudes-only run fine-tuned exactly like the combined
#: model (same epochs and lr, no images: what the second stage gives without the CNN), the combined model
#: trained end to end from random weights, and the magnitudes-only network trained as many epochs as the CNNs
CHECKS: dict[str, tuple[str, bool]] = {"mags_continued": ("hybrid-mags", True), "hybrid_scratch": ("hybrid", True),
                                       "mags_same_epochs": ("hybrid-mags", True)}
LABELS = {"mags": "Magnitudes only (9-band dense network)", "images": "Images only (ugri Inception CNN)",
          "hybrid": "Combined (images + magnitudes), two-stage",
          "mags_continued": "Magnitudes only, fine-tuned like the combined model (no images)",
          "hybrid_scratch": "Combined, end to end from random weights",
          "mags_same_epochs": "Magnitudes only, trained as many epochs as the CNNs"}

#: Table 1 of John William et al. (KiDS-GAMA equatorial test sample), for reference only.
PAPER_TABLE1 = {
    "ANNz2, 9-band magnitudes (Bilicki et al. 2021)": {"mean_dz_raw": 0.0005, "mean_dz": 0.0009,
                                                      "sigma_dz": 0.024, "smad": 0.018},
    "Combined model (John William et al.)": {"mean_dz_raw": 0.001, "mean_dz": 0.001, "sigma_dz": 0.021,
                                             "smad": 0.016},
}

#: names in our JSON -> keys of zpix.evaluation.evaluate's "overall" block
METRIC_KEYS = {"smad": "sigma_mad", "sigma_dz": "sigma_std", "mean_dz": "bias", "mean_dz_raw": "mean_dz_raw",
               "mse": "mse", "mae": "mae", "r2": "r2", "nmad": "nmad", "eta_0.05": "eta_0.05",
               "eta_0.15": "eta_0.15", "crps": "crps", "coverage68": "coverage68", "pit_ks": "pit_ks"}


def simulate_mock(cubes: Path, n: int, seed: int, workers: int) -> None:
    """``zpix simulate --survey kids`` into ``cubes`` unless it is already there (with the same n and seed)."""
    from zpix.mock.simulate import simulate
    from zpix.store.cube_store import CubeStore

    if cubes.exists():
        with CubeStore(cubes, validate=False) as store:
            attrs = store.attrs
        if int(attrs.get("n_requested", -1)) == n and int(attrs.get("seed", -1)) == seed:
            print(f"reusing {cubes} (n={n}, seed={seed})", flush=True)
            return
        raise SystemExit(f"{cubes} exists with n={attrs.get('n_requested')} seed={attrs.get('seed')}; "
                         "remove it or choose another --workdir")
    cubes.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    simulate(n, cubes, survey="kids", seed=seed, workers=workers, progress=False)
    print(f"simulated {n} KiDS galaxies in {time.perf_counter() - start:.0f} s", flush=True)


def validation_history(run_dir: Path) -> list[dict[str, float]]:
    """Per-epoch validation loss and SMAD of member 0, from Lightning's CSV log (latest version)."""
    logs = sorted((run_dir / "logs" / "member_0").glob("version_*/metrics.csv"),
                  key=lambda p: int(p.parent.name.split("_")[1]))
    if not logs:
        return []
    df = pd.read_csv(logs[-1])
    if "val_sigma_mad" not in df.columns:
        return []
    val = df.dropna(subset=["val_sigma_mad"])
    return [{"epoch": int(r["epoch"]), "step": int(r["step"]), "val_loss": float(r["val_loss"]),
             "val_smad": float(r["val_sigma_mad"])} for _, r in val.iterrows()]


def code_provenance() -> dict[str, Any]:
    """Which zpix ran: the git commit of this checkout and which of its tracked files had changes."""
    import subprocess

    import zpix

    package = Path(zpix.__file__).resolve().parent
    if not package.is_relative_to(ROOT / "src"):
        raise SystemExit(f"zpix was imported from {package}, not {ROOT / 'src'}: run with this checkout's .venv")

    def git(*cmd: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    changed = [line[3:] for line in status.splitlines()] if status is not None else None
    return {"commit": git("rev-parse", "HEAD"), "changed_files": changed}


def format_table(methods: dict[str, dict[str, Any]], markdown: bool = True) -> str:
    """The comparison laid out like Table 1 of John William et al. (plus MSE, MAE and R², Sect. 3)."""
    cols = [("<δz>", "mean_dz_raw", "{:+.4f}"), ("<Δz>", "mean_dz", "{:+.4f}"), ("σ(Δz)", "sigma_dz", "{:.4f}"),
            ("SMAD(Δz)", "smad", "{:.4f}"), ("MSE", "mse", "{:.5f}"), ("MAE", "mae", "{:.4f}"),
            ("R²", "r2", "{:.4f}"), ("η(0.05)", "eta_0.05", "{:.2%}")]
    header = ["Method", *(c[0] for c in cols)]
    rows = [[LABELS.get(k, k), *(f.format(m[key]) for _, key, f in cols)] for k, m in methods.items()]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(cols)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="galaxies in the KiDS-like mock")
    parser.add_argument("--seed", type=int, default=7, help="seed of the mock, the split and the training")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "kids_hybrid")
    parser.add_argument("--config", type=Path, default=ROOT / "src" / "zpix" / "configs" / "kids_hybrid.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kids_hybrid.json")
    parser.add_argument("--epochs", type=int, default=None, help="max epochs of the two CNN variants "
                        "(default: the config's)")
    parser.add_argument("--mags-epochs", type=int, default=None, help="max epochs of the magnitudes-only "
                        "network (default: the config's)")
    parser.add_argument("--finetune-epochs", type=int, default=8,
                        help="epochs of joint fine-tuning of the combined model after it is fused from the "
                        "images-only and magnitudes-only runs")
    parser.add_argument("--finetune-lr", type=float, default=3e-4, help="peak learning rate of the fine-tuning")
    parser.add_argument("--scratch-check", action="store_true",
                        help="also train the combined model end to end from random weights for --epochs")
    parser.add_argument("--same-epochs-check", action="store_true",
                        help="also train the magnitudes-only network for --epochs (the CNNs' length)")
    parser.add_argument("--only", nargs="*", choices=[*VARIANTS, *CHECKS], default=None,
                        help="train only these variants (the others must already be in --workdir); with no "
                        "names, only re-score the runs that are there")
    parser.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra TrainConfig overrides for all three variants (YAML values)")
    parser.add_argument("--workers", type=int, default=2, help="simulation processes")
    parser.add_argument("--note", default="", help="free text stored in the JSON")
    args = parser.parse_args(argv)

    import torch
    import yaml

    from zpix.evaluation.evaluate import evaluate
    from zpix.prediction.streaming import predict
    from zpix.runs import Split
    from zpix.store.cube_store import CubeStore
    from zpix.training.api import train
    from zpix.training.config import TrainConfig
    from zpix.training.splits import labelled_rows, random_split

    torch.set_num_threads(max(1, torch.get_num_threads()))
    code = code_provenance()  # before hours of training, during which the checkout may change
    workdir = args.workdir.resolve()
    cubes = workdir / "kids.h5"
    simulate_mock(cubes, args.n, args.seed, args.workers)

    base = TrainConfig.from_yaml(args.config)
    overrides: dict[str, Any] = {}
    for item in args.sets:
        key, _, raw = item.partition("=")
        overrides[key] = yaml.safe_load(raw)
    base = replace(base, cubes=str(cubes), seed=args.seed, progress=False, **overrides)

    # one split for all three variants (70/15/15 from the config)
    with CubeStore(cubes) as store:
        rows = labelled_rows(store.z_spec, store.valid_index, base.z_min, base.z_max)
        n_total = len(store)
    split_file = workdir / "split.npz"
    split = random_split(rows, base.test_fraction, base.val_fraction, args.seed)
    if split_file.exists():
        old = Split.load(split_file)
        if not all(np.array_equal(getattr(old, k), getattr(split, k)) for k in ("train", "val", "test")):
            raise SystemExit(f"{split_file} differs from the split of this config/seed; use another --workdir")
    split.save(split_file)
    print(f"{n_total} objects, {len(rows)} with z_spec in [{base.z_min}, {base.z_max}]: "
          f"train {len(split.train)}, val {len(split.val)}, test {len(split.test)}", flush=True)

    wanted = {"mags_continued": True, "hybrid_scratch": args.scratch_check, "mags_same_epochs": args.same_epochs_check}
    checks = [k for k, on in wanted.items() if on]
    variants = {**VARIANTS, **{k: CHECKS[k] for k in checks}}
    only = args.only if args.only is not None else list(variants)
    configs: dict[str, TrainConfig] = {}
    for key, (model, use_mags) in variants.items():
        epochs = args.mags_epochs if key == "mags" else args.epochs
        configs[key] = replace(base, model=model, use_mags=use_mags, out=str(workdir / key),
                               max_epochs=epochs if epochs is not None else base.max_epochs)
    # stage 2 of the combined model: fused from the two single-branch runs, the magnitude run first so
    # that it gives the head, then fine-tuned jointly
    configs["hybrid"] = replace(configs["hybrid"], max_epochs=args.finetune_epochs, lr=args.finetune_lr,
                                init_from=[configs["mags"].out, configs["images"].out])
    configs["mags_continued"] = replace(configs["mags_continued"], max_epochs=args.finetune_epochs,
                                        lr=args.finetune_lr, init_from=[configs["mags"].out])
    summaries: dict[str, dict[str, Any]] = {}
    for key in variants:
        cfg = configs[key]
        run_dir = Path(cfg.out)
        if key in only:
            print(f"[{key}] training {cfg.model} for at most {cfg.max_epochs} epochs", flush=True)
            result = train(cfg, split=split)
            print(f"[{key}] {result.summary['members'][0]['epochs']} epochs, "
                  f"{result.summary['members'][0]['train_seconds']:.0f} s", flush=True)
            start = time.perf_counter()
            predict(run_dir, cubes, workdir / f"pred_{key}", rows=split.test, num_workers=0, overwrite=True,
                    progress=False, device="cpu" if not torch.cuda.is_available() else None)
            print(f"[{key}] predicted {len(split.test)} test objects in {time.perf_counter() - start:.0f} s",
                  flush=True)
        if (run_dir / "summary.json").exists() and (workdir / f"pred_{key}").exists():
            summaries[key] = json.loads((run_dir / "summary.json").read_text())

    missing = [k for k in variants if k not in summaries]
    if missing:
        print(f"not yet trained: {missing}; rerun with --only {' '.join(missing)} to finish the table", flush=True)
        return {}
    keys = list(variants)
    result = evaluate(workdir / f"pred_{keys[0]}", compare=[workdir / f"pred_{k}" for k in keys[1:]],
                      out=workdir / "metrics.json", n_boot=50, seed=args.seed)
    names = list(result["methods"])  # evaluate's names, in the order given
    scored: dict[str, dict[str, Any]] = {}
    for key, name in zip(keys, names, strict=True):
        overall = result["methods"][name]["overall"]
        member = summaries[key]["members"][0]
        scored[key] = {
            "model": variants[key][0],
            **{ours: overall.get(theirs) for ours, theirs in METRIC_KEYS.items()},
            "n_test": overall["n"],
            "epochs": member["epochs"],
            "steps": member["steps"],
            "train_seconds": round(member["train_seconds"], 1),
            "best_val_loss": member["best_val_loss"],
            "max_epochs": configs[key].max_epochs,
            "init_from": [str(Path(p).relative_to(workdir)) for p in configs[key].init_from],
            "validation_history": validation_history(Path(configs[key].out)),
        }
    n_tests = {m["n_test"] for m in scored.values()}
    assert len(n_tests) == 1, f"the methods were scored on different objects: {n_tests}"
    methods = {k: scored[k] for k in VARIANTS}
    investigation = {k: scored[k] for k in CHECKS if k in scored}

    table = format_table(scored)
    print(format_table(scored, markdown=False), flush=True)
    doc = {
        "benchmark": "kids_hybrid",
        "paper": "John William et al., Deep learning based photometric redshifts for the KiDS bright "
                 "galaxy sample, Table 1",
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "mock": {"survey": "kids", "n": args.n, "seed": args.seed, "n_in_z_range": int(len(rows))},
        "seed": args.seed,
        "n_train": int(len(split.train)),
        "n_val": int(len(split.val)),
        "n_test": int(len(split.test)),
        "config": {"file": str(args.config.resolve().relative_to(ROOT)) if args.config.resolve().is_relative_to(ROOT)
                   else str(args.config),
                   "overrides": overrides,
                   "variants": {k: {"model": c.model, "use_mags": c.use_mags, "max_epochs": c.max_epochs,
                                    "lr": c.lr, "lr_schedule": c.lr_schedule,
                                    "init_from": [str(Path(p).relative_to(workdir)) for p in c.init_from]}
                                for k, c in configs.items()},
                   "resolved": {k: v for k, v in base.to_dict().items() if k not in ("cubes", "out")}},
        "point_estimate": "z_mean of the PDF written by zpix predict (for the regression head: N(z, sigma) "
                          "on the config's grid)",
        "code": code,
        "hardware": {"torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
        "methods": methods,
        "investigation": investigation,
        "paper_table1": PAPER_TABLE1,
        "table_markdown": table,
        "note": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}", flush=True)
    return doc


if __name__ == "__main__":
    main()
