"""Adversarial domain adaptation (Ait Ouahmed et al. 2024; Ganin et al. 2016) between two mock fields.

A survey trains where it has spectra (the *source* field) and predicts elsewhere (the *target*
field), under other seeing, depth and sky.  ``zpix inject`` (real fields with injected galaxies) had
not landed when this was written, so the two fields are two ``zpix simulate --survey sdss`` fields:

* source: a subset of the shared SDSS-like mock (``--cubes``, SDSS median seeing and noise);
* target: the same galaxy population simulated with ``TARGET_SEEING_FACTOR`` x the PSF FWHM,
  ``TARGET_SKY_FACTOR`` x the sky noise per pixel (a brighter sky: shallower), a larger night-to-night
  sky scatter, half the exposure (source shot noise) and no deep stripe -- :func:`target_overrides`
  (a modified copy of the sdss preset, passed to ``zpix.mock.simulate``; presets.py is untouched).
  ``target_train.h5`` is the unlabelled target field the adaptation sees (and the oracle's training
  set, with its labels), ``target_test.h5`` other galaxies of that field, never trained on.

Methods (``pasquet2019-small``, the same budget: epochs, batch, Adam + cosine schedule, seeds):

* ``no_da``: trained on the source only;
* ``da``: + adversarial adaptation to ``target_train.h5`` (gradient reversal, Ganin ramp, guided
  batch selection, paired discriminator input: ``zpix train --target-cubes``);
* ``da_no_guided``: the same without guided selection and pairing (random target partners, a
  single-image discriminator): the negative-transfer control of the slides;
* ``oracle``: trained on the target field's labels (``target_train.h5``, the same numbers of
  training and validation objects as the source).

Scored on the target test objects and on the source test objects: σ_MAD, bias, η (|Δz| > 0.05) and
``max_tomo_bias`` (largest |<z_phot> − <z_spec>| over 5 equal-count z_phot bins).  The networks see
``STAMP`` x ``STAMP`` pixels (the source mock's 64 x 64 stamps cut to their centre; the target
simulated at that size) to fit the CPU budget.  Run from a clean checkout::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/domain_adaptation.py --cubes runs/bench/mock_sdss.h5

Writes ``benchmarks/results/domain_adaptation.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from multimodal import point_metrics, predict_z, train_run, write_json, write_subset

ROOT = Path(__file__).resolve().parents[1]

#: Factors applied to the SDSS preset for the TARGET field: worse seeing, a brighter and more variable
#: sky (higher noise per pixel: shallower), half the exposure (fewer e- per nanomaggy), no deep stripe.
TARGET_SEEING_FACTOR = 1.5
TARGET_SKY_FACTOR = 2.5
TARGET_SKY_SCATTER_DEX = 0.15
TARGET_EXPOSURE_FACTOR = 0.5
#: stamp side (pixels) of every image in this benchmark: the source mock's 64x64 stamps are cut to
#: their central STAMP x STAMP pixels, the target field is simulated at that size (CPU budget)
STAMP = 32


def target_overrides() -> dict[str, Any]:
    """SurveyPreset overrides of the target field (``zpix simulate`` keyword arguments)."""
    from zpix.mock.presets import SDSS

    def scale(values: tuple[float, ...], factor: float) -> tuple[float, ...]:
        return tuple(round(v * factor, 4) for v in values)

    return {
        "stamp": STAMP,
        "deep_fraction": 0.0,
        "psf_fwhm_median": scale(SDSS.psf_fwhm_median, TARGET_SEEING_FACTOR),
        "mag_psf_fwhm": scale(SDSS.mag_psf_fwhm, TARGET_SEEING_FACTOR),
        "sky_sigma": scale(SDSS.sky_sigma, TARGET_SKY_FACTOR),
        "mag_sky_sigma": scale(SDSS.mag_sky_sigma, TARGET_SKY_FACTOR),
        "sky_scatter_dex": TARGET_SKY_SCATTER_DEX,
        "electrons_per_nmgy": scale(SDSS.electrons_per_nmgy, TARGET_EXPOSURE_FACTOR),
        "mag_electrons_per_nmgy": scale(SDSS.mag_electrons_per_nmgy, TARGET_EXPOSURE_FACTOR),
    }


def simulate_field(path: Path, n: int, seed: int) -> None:
    """``zpix simulate --survey sdss`` with :func:`target_overrides` into ``path`` unless already there."""
    from zpix.mock.simulate import simulate
    from zpix.store.cube_store import CubeStore

    if path.exists():
        with CubeStore(path, validate=False) as store:
            attrs = store.attrs
        if int(attrs.get("n_requested", -1)) == n and int(attrs.get("seed", -1)) == seed:
            print(f"reusing {path} (n={n}, seed={seed})", flush=True)
            return
        raise SystemExit(f"{path} exists with n={attrs.get('n_requested')} seed={attrs.get('seed')}; "
                         "remove it or choose another --workdir")
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    simulate(n, path, survey="sdss", seed=seed, workers=1, progress=False, **target_overrides())
    print(f"simulated {n} target galaxies into {path} in {time.perf_counter() - start:.0f} s", flush=True)


METHODS = {
    "no_da": {},
    "da": {"adversarial": "grl", "guided": True, "paired": True},
    "da_no_guided": {"adversarial": "grl", "guided": False, "paired": False},
    "oracle": {},
}
CONTROLS = {
    "da_guided_unpaired": {"adversarial": "grl", "guided": True, "paired": False},
    "da_paired_unguided": {"adversarial": "grl", "guided": False, "paired": True},
}


def summarise(per_seed: list[dict[str, Any]], field: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in ("sigma_mad", "bias", "eta", "max_tomo_bias"):
        values = np.array([r[field][metric] for r in per_seed])
        out[metric] = float(values.mean())
        out[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cubes", type=Path, default=ROOT / "runs" / "bench" / "mock_sdss.h5",
                        help="the source field: a zpix simulate --survey sdss mock (64x64 stamps)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "domain_adaptation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "domain_adaptation.json")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--n-target-train", type=int, default=5000)
    parser.add_argument("--n-target-test", type=int, default=2000)
    parser.add_argument("--target-seed", type=int, default=1401)
    parser.add_argument("--subset-seed", type=int, default=2020)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--weight", type=float, default=1.0, help="final adversarial weight w of the ramp")
    parser.add_argument("--controls", action="store_true", help="also guided-only and paired-only adaptation")
    parser.add_argument("--extra-weights", type=float, nargs="*", default=[],
                        help="also `da` with these final adversarial weights (methods da_w<w>: sensitivity to w)")
    parser.add_argument("--simulate-only", action="store_true")
    args = parser.parse_args(argv)

    import os

    import torch

    from zpix.runs import Split
    from zpix.store.cube_store import CubeStore
    from zpix.training.splits import labelled_rows

    torch.set_num_threads(1)
    from multimodal import code_commit

    code = code_commit()
    load_start = [round(v, 2) for v in os.getloadavg()]
    started = time.perf_counter()
    workdir = args.workdir.resolve()
    target_train, target_test = workdir / "target_train.h5", workdir / "target_test.h5"
    simulate_field(target_train, args.n_target_train, args.target_seed)
    simulate_field(target_test, args.n_target_test, args.target_seed + 1)
    if args.simulate_only:
        return {}

    with CubeStore(args.cubes, validate=False) as store:
        rows = labelled_rows(store.z_spec, np.arange(len(store)), 0.0, 0.4)
    n = args.n_train + args.n_val + args.n_test
    chosen = np.random.default_rng(args.subset_seed).choice(rows, n, replace=False)
    source = write_subset(args.cubes, workdir / f"source_{STAMP}.h5", chosen, STAMP)
    perm = np.random.default_rng(args.subset_seed + 1).permutation(n)
    split = Split(np.sort(perm[:args.n_train]), np.sort(perm[args.n_train:args.n_train + args.n_val]),
                  np.sort(perm[args.n_train + args.n_val:]))
    with CubeStore(source, validate=False) as store:
        z_source_test = store.z_spec[split.test]
    # the oracle: the target field's own labels, as many training/validation objects as the source;
    # its z_spec is read here only, never by the adaptation runs
    with CubeStore(target_train, validate=False) as store:
        t_rows = labelled_rows(store.z_spec, np.arange(len(store)), 0.0, 0.4)
    if len(t_rows) < args.n_train + args.n_val:
        raise SystemExit(f"{target_train} has {len(t_rows)} labelled objects, need {args.n_train + args.n_val}")
    t_perm = np.random.default_rng(args.subset_seed + 2).permutation(t_rows)
    oracle_split = Split(np.sort(t_perm[:args.n_train]), np.sort(t_perm[args.n_train:args.n_train + args.n_val]),
                         np.array([], dtype=np.int64))
    with CubeStore(target_test, validate=False) as store:
        test_rows = labelled_rows(store.z_spec, np.arange(len(store)), 0.0, 0.4)
        z_target_test = store.z_spec[test_rows]

    methods = {**METHODS, **(CONTROLS if args.controls else {}),
               **{f"da_w{w:g}": {**METHODS["da"], "weight": w} for w in args.extra_weights}}
    per_seed: dict[str, list[dict[str, Any]]] = {k: [] for k in methods}
    for seed in args.seeds:
        for key, domain in methods.items():
            out = workdir / f"{key}_s{seed}"
            if key == "oracle":
                ckpt, member = train_run(target_train, out, "pasquet2019-small", oracle_split, seed, args.epochs,
                                         args.batch_size)
            elif key == "no_da":
                ckpt, member = train_run(source, out, "pasquet2019-small", split, seed, args.epochs, args.batch_size)
            else:
                ckpt, member = train_run(source, out, "pasquet2019-small", split, seed, args.epochs, args.batch_size,
                                         target_cubes=str(target_train), domain={"weight": args.weight, **domain})
            record = {"seed": seed, "train_seconds": member["train_seconds"], "steps": member["steps"],
                      "target": point_metrics(predict_z(ckpt, target_test, test_rows), z_target_test),
                      "source": point_metrics(predict_z(ckpt, source, split.test), z_source_test)}
            last = member.get("last_metrics", {})
            if "domain_acc" in last:
                record["final_domain_acc"] = last["domain_acc"]
            per_seed[key].append(record)
            print(f"  {key} seed {seed}: target sigma_MAD {record['target']['sigma_mad']:.5f} "
                  f"max_tomo_bias {record['target']['max_tomo_bias']:.5f}; source sigma_MAD "
                  f"{record['source']['sigma_mad']:.5f}", flush=True)

    table = {k: {**summarise(v, "target"), "source": summarise(v, "source"), "n_seeds": len(v), "seeds": v,
                 "domain": methods[k] or None}
             for k, v in per_seed.items()}

    def gap_closed(metric: str, method: str = "da") -> float:
        gap = table["no_da"][metric] - table["oracle"][metric]
        return float((table["no_da"][metric] - table[method][metric]) / gap) if gap != 0 else float("nan")

    verdict = {
        # the no_da -> oracle gaps on the target field, beside their seed-to-seed spread
        "gap_sigma_mad": table["no_da"]["sigma_mad"] - table["oracle"]["sigma_mad"],
        "gap_max_tomo_bias": table["no_da"]["max_tomo_bias"] - table["oracle"]["max_tomo_bias"],
        "gap_closed_sigma_mad": gap_closed("sigma_mad"),
        "gap_closed_max_tomo_bias": gap_closed("max_tomo_bias"),
        "gap_closed_sigma_mad_no_guided": gap_closed("sigma_mad", "da_no_guided"),
        "gap_closed_max_tomo_bias_no_guided": gap_closed("max_tomo_bias", "da_no_guided"),
        "source_sigma_mad_change": float(table["da"]["source"]["sigma_mad"] / table["no_da"]["source"]["sigma_mad"]
                                         - 1),
    }
    verdict["target_met"] = bool(verdict["gap_closed_sigma_mad"] >= 0.5 and verdict["gap_closed_max_tomo_bias"] >= 0.5
                                 and verdict["source_sigma_mad_change"] <= 0.05)
    from zpix.mock.presets import SDSS

    doc = {
        "benchmark": "domain_adaptation",
        "paper": "Ait Ouahmed et al. 2024 (seed slides: adversarial DA, guided batch selection, paired "
                 "discriminator); Ganin et al. 2016 (DANN, gradient reversal, lambda ramp)",
        "date_utc": __import__("datetime").datetime.now(__import__("datetime").UTC).isoformat(timespec="seconds"),
        "code": code,
        "loadavg_at_start": load_start,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "fields": {
            "kind": "two zpix simulate --survey sdss fields (zpix inject had not landed): source = subset of the "
                    "shared SDSS-like mock, target = the sdss preset with worse seeing, brighter/more variable "
                    "sky, half the exposure, no deep stripe",
            "source": {"cubes": str(args.cubes), "psf_fwhm_median": list(SDSS.psf_fwhm_median),
                       "sky_sigma": list(SDSS.sky_sigma), "n_train": args.n_train, "n_val": args.n_val,
                       "n_test": args.n_test, "subset_seed": args.subset_seed},
            "target": {"overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in target_overrides().items()},
                       "seed_train": args.target_seed, "seed_test": args.target_seed + 1,
                       "n_unlabelled_train": args.n_target_train, "n_test": int(len(test_rows)),
                       "oracle_n_train": args.n_train, "oracle_n_val": args.n_val},
            "stamp": STAMP,
        },
        "budget": {"model": "pasquet2019-small", "epochs": args.epochs, "batch_size": args.batch_size,
                   "optimizer": "Adam lr 1e-3", "lr_schedule": "cosine", "seeds": args.seeds,
                   "da_weight": args.weight, "da_ramp": "Ganin 2/(1+exp(-10p))-1",
                   "da_checkpoint": "last epoch (no target labels to select on)",
                   "other_checkpoints": "lowest source (oracle: target) validation loss", "torch_threads": 1},
        "scaled_down": f"CPU budget: {args.n_train} training objects, {args.epochs} epochs, {STAMP}x{STAMP} stamps, "
                       f"{len(args.seeds)} seed(s)",
        "methods": {k: {kk: vv for kk, vv in v.items()} for k, v in table.items()},
        "verdict": verdict,
    }
    write_json(args.out, doc)
    for k, v in table.items():
        print(f"{k:>20}: target sigma_MAD {v['sigma_mad']:.5f} ± {v['sigma_mad_std']:.5f}, max_tomo_bias "
              f"{v['max_tomo_bias']:.5f}, bias {v['bias']:+.5f}; source sigma_MAD {v['source']['sigma_mad']:.5f}")
    print(json.dumps(verdict, indent=1))
    print(f"wrote {args.out}", flush=True)
    return doc


if __name__ == "__main__":
    main()
