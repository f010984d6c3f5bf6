"""Adversarial domain adaptation (Ait Ouahmed et al. 2024; Ganin et al. 2016) between two fields.

A survey trains where it has spectra (the *source* field) and predicts elsewhere (the *target*
field), under other seeing, depth and sky.  Two ways to get the two fields:

* **existing cube stores** (``--source-cubes`` and ``--target-cubes``), in particular the injected
  real SDSS fields of ``zpix inject``: both may be the same store, split by its per-object ``field``
  column.  ``--source-fields`` / ``--target-fields`` take field names (comma-separated), ``rest``,
  or ``worst-seeing:K`` / ``best-seeing:K`` -- the K fields with the largest / smallest mean g, r, i
  PSF FWHM measured by ``zpix inject`` (the store's ``fields`` attribute, or ``<store>_fields.json``
  beside it); their 5σ depths are recorded beside.  The target fields' objects are shuffled once
  (``--subset-seed``) and cut into a *pool* (the unlabelled images the adaptation sees; with their
  labels, the oracle's training set) and *test* objects never trained on.  The pool is taken without
  looking at z_spec (it holds whatever redshifts the field has); only the test objects and the
  oracle's rows are restricted to labelled z in [0, 0.4].
* **simulated** (no ``--target-cubes``): source = a subset of ``--source-cubes`` (a ``zpix simulate
  --survey sdss`` mock), target = the same population simulated with ``TARGET_SEEING_FACTOR`` x the
  PSF FWHM, ``TARGET_SKY_FACTOR`` x the sky noise, a larger sky scatter, half the exposure and no deep
  stripe (:func:`target_overrides`: a modified copy of the sdss preset, presets.py untouched).

Methods (``pasquet2019-small``, the same budget: epochs, batch, Adam + cosine schedule, seeds):

* ``no_da``: trained on the source only;
* ``da``: + adversarial adaptation to the target pool (gradient reversal, Ganin ramp, guided batch
  selection, paired discriminator input: ``zpix train --target-cubes``);
* ``da_no_guided``: the same without guided selection and pairing (random target partners, a
  single-image discriminator): the negative-transfer control of the slides;
* ``oracle``: trained on the target pool's labels (the same numbers of training and validation
  objects as the source, where the pool has them);
* controls (``--controls``): ``guided_only`` (guided partners, single-image discriminator) and
  ``paired_only`` (random partners, paired discriminator).

Scored on the target test objects and on the source test objects: σ_MAD, bias, η (|Δz| > 0.05) and
``max_tomo_bias`` (largest |<z_phot> − <z_spec>| over 5 equal-count z_phot bins).  The networks see
``--stamp`` x ``--stamp`` central pixels (CPU budget).

Every (method, seed) is a run directory in ``--workdir`` with its scores (``da_scores.json``); a
rerun reuses finished runs and scores, so the work can be split into short invocations, one per
method and seed (``--methods M --seeds S --partial``: no results JSON), and a last one without
``--partial`` that only gathers them.  ``plan.json`` in the workdir pins the fields, sizes and
budget: an invocation with other settings stops instead of mixing runs.  The commands of the
committed results (clean worktree, each under the shared lock)::

    I=/work/main/runs/bench/inject/injected_sdss.h5; W=/work/main/runs/domain_adaptation_inject
    python benchmarks/domain_adaptation.py --source-cubes $I --target-cubes $I \\
        --source-fields best-seeing:4 --target-fields worst-seeing:3 --workdir $W \\
        --n-train 1500 --n-val 500 --n-test 1500 --n-target-pool 3000 --n-target-test 2000 \\
        --weight 0.3 --controls --threads 2 --methods no_da --seeds 0 --partial   # ... one per method/seed
    python benchmarks/domain_adaptation.py ... --seeds S.. --control-seeds S..   # gathers, writes the JSON

(each ``--partial`` invocation under ``flock /tmp/zpix-heavy.lock``; the gathering one trains nothing
when every run it names is finished).  The final weight w = 0.3 was fixed before any run on the
injected fields, from the simulated pair (w = 1 cost 13% of the source σ_MAD there, w = 0.3 7%),
never from target labels.  ``python benchmarks/domain_adaptation.py --docs`` then renders the tables of
docs/domain_adaptation.md from the JSON.

Writes ``benchmarks/results/domain_adaptation.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from multimodal import code_commit, point_metrics, predict_z, train_run, write_subset

from zpix.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "domain_adaptation.md"
DOCS_START, DOCS_END = "<!-- domain-tables:start -->", "<!-- domain-tables:end -->"

#: Factors applied to the SDSS preset for the simulated TARGET field: worse seeing, a brighter and more
#: variable sky (higher noise per pixel: shallower), half the exposure (fewer e- per nanomaggy), no deep stripe.
TARGET_SEEING_FACTOR = 1.5
TARGET_SKY_FACTOR = 2.5
TARGET_SKY_SCATTER_DEX = 0.15
TARGET_EXPOSURE_FACTOR = 0.5
#: bands whose PSF FWHM and depth rank the fields (the ones that carry the redshift at z < 0.4)
SEEING_BANDS = ("g", "r", "i")
Z_RANGE = (0.0, 0.4)

METHODS: dict[str, dict[str, Any]] = {
    "no_da": {},
    "da": {"adversarial": "grl", "guided": True, "paired": True},
    "da_no_guided": {"adversarial": "grl", "guided": False, "paired": False},
    "oracle": {},
}
CONTROLS: dict[str, dict[str, Any]] = {
    "guided_only": {"adversarial": "grl", "guided": True, "paired": False},
    "paired_only": {"adversarial": "grl", "guided": False, "paired": True},
}


# -- the simulated pair of fields ----------------------------------------------------------------------
def target_overrides(stamp: int) -> dict[str, Any]:
    """SurveyPreset overrides of the simulated target field (``zpix simulate`` keyword arguments)."""
    from zpix.mock.presets import SDSS

    def scale(values: tuple[float, ...], factor: float) -> tuple[float, ...]:
        return tuple(round(v * factor, 4) for v in values)

    return {
        "stamp": stamp,
        "deep_fraction": 0.0,
        "psf_fwhm_median": scale(SDSS.psf_fwhm_median, TARGET_SEEING_FACTOR),
        "mag_psf_fwhm": scale(SDSS.mag_psf_fwhm, TARGET_SEEING_FACTOR),
        "sky_sigma": scale(SDSS.sky_sigma, TARGET_SKY_FACTOR),
        "mag_sky_sigma": scale(SDSS.mag_sky_sigma, TARGET_SKY_FACTOR),
        "sky_scatter_dex": TARGET_SKY_SCATTER_DEX,
        "electrons_per_nmgy": scale(SDSS.electrons_per_nmgy, TARGET_EXPOSURE_FACTOR),
        "mag_electrons_per_nmgy": scale(SDSS.mag_electrons_per_nmgy, TARGET_EXPOSURE_FACTOR),
    }


def simulate_field(path: Path, n: int, seed: int, stamp: int) -> None:
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
    simulate(n, path, survey="sdss", seed=seed, workers=1, progress=False, **target_overrides(stamp))
    print(f"simulated {n} target galaxies into {path} in {time.perf_counter() - start:.0f} s", flush=True)


# -- fields of an existing store ---------------------------------------------------------------------------
def field_conditions(cubes: Path) -> dict[str, dict[str, Any]]:
    """Per field of a ``zpix inject`` store: PSF FWHM and 5σ depth per band, their g/r/i means, object count.

    Read from the store's ``fields`` attribute (or ``<store>_fields.json`` beside it) and its
    ``catalog/field`` column.
    """
    from zpix.store.cube_store import CubeStore

    with CubeStore(cubes, validate=False) as store:
        if "field" not in store.catalog_columns:
            raise SystemExit(f"{cubes} has no per-object 'field' column (catalog/field): field selections need a "
                             "store written by `zpix inject`; give the fields as separate stores instead")
        fields = store.column("catalog/field").astype(str)
        summary = store.attrs.get("fields")
    if summary is None:
        beside = cubes.with_name(cubes.stem + "_fields.json")
        if not beside.is_file():
            raise SystemExit(f"{cubes} has no 'fields' attribute and {beside} does not exist: the per-field PSF and "
                             "depth written by `zpix inject` are needed to rank fields by seeing")
        summary = beside.read_text()
    summary = json.loads(summary)
    names, counts = np.unique(fields, return_counts=True)
    out = {}
    for name, count in zip(names, counts, strict=True):
        if name not in summary:
            raise SystemExit(f"{cubes}: field {name!r} of catalog/field has no entry in the per-field summary")
        bands = summary[name]["bands"]
        out[str(name)] = {
            "n_objects": int(count), "ebv": summary[name].get("ebv"),
            "fwhm_arcsec": {b: round(float(bands[b]["fwhm_arcsec"]), 3) for b in bands},
            "depth_5sigma": {b: round(float(bands[b]["depth_5sigma"]), 3) for b in bands},
            "fwhm_gri": round(float(np.mean([bands[b]["fwhm_arcsec"] for b in SEEING_BANDS])), 3),
            "depth_gri": round(float(np.mean([bands[b]["depth_5sigma"] for b in SEEING_BANDS])), 3),
        }
    return out


def select_fields(conditions: dict[str, dict[str, Any]], spec: str, taken: list[str] | tuple[str, ...] = ()
                  ) -> list[str]:
    """Fields named by ``spec``: ``worst-seeing:K`` / ``best-seeing:K`` (by mean g, r, i FWHM among the
    fields not ``taken``), ``rest`` (every field not ``taken``), or comma-separated names."""
    free = [f for f in conditions if f not in taken]
    if spec == "rest":
        chosen = free
    elif spec.startswith(("worst-seeing:", "best-seeing:")):
        kind, k = spec.split(":", 1)
        order = sorted(free, key=lambda f: (conditions[f]["fwhm_gri"], f), reverse=kind == "worst-seeing")
        if not k.isdigit() or not 1 <= int(k) <= len(order):
            raise SystemExit(f"field selection {spec!r}: K must be between 1 and {len(order)}")
        chosen = order[:int(k)]
    else:
        chosen = [f.strip() for f in spec.split(",") if f.strip()]
        unknown = [f for f in chosen if f not in conditions]
        if unknown:
            raise SystemExit(f"fields {unknown} are not in the store (fields: {sorted(conditions)})")
        clash = [f for f in chosen if f in taken]
        if clash:
            raise SystemExit(f"fields {clash} are both source and target; the target fields must be held out")
    if not chosen:
        raise SystemExit(f"field selection {spec!r} selects no field")
    return sorted(chosen)


def rows_of_fields(cubes: Path, fields: list[str] | None) -> np.ndarray:
    """Valid rows of ``cubes`` (in ``fields`` when given); reads no z_spec."""
    from zpix.store.cube_store import CubeStore

    with CubeStore(cubes) as store:
        rows = np.asarray(store.valid_index, dtype=np.int64)
        if fields is not None:
            rows = rows[np.isin(store.column("catalog/field").astype(str)[rows], fields)]
    return rows


def labelled(cubes: Path, rows: np.ndarray) -> np.ndarray:
    """``rows`` with z_spec inside :data:`Z_RANGE` (order kept)."""
    from zpix.store.cube_store import CubeStore

    with CubeStore(cubes, validate=False) as store:
        z = store.z_spec[rows]
    return rows[np.isfinite(z) & (z >= Z_RANGE[0]) & (z <= Z_RANGE[1])]


def store_plan(args: argparse.Namespace) -> dict[str, Any]:
    """Fields and row lists of the existing-store mode (written as subsets into the workdir by the caller)."""
    src, tgt = args.source_cubes.resolve(), args.target_cubes.resolve()
    same = src == tgt
    conditions = None
    if args.target_fields or args.source_fields or same:
        if not (args.target_fields and args.source_fields) and same:
            raise SystemExit("source and target are the same store: give --source-fields and --target-fields")
        conditions = field_conditions(tgt)
        if not same and args.source_fields:
            conditions = {**field_conditions(src), **conditions}
    target_fields = select_fields(conditions, args.target_fields) if args.target_fields else None
    source_fields = (select_fields(conditions, args.source_fields, taken=target_fields or ())
                     if args.source_fields else None)
    rng = np.random.default_rng(args.subset_seed)
    s_rows = labelled(src, rows_of_fields(src, source_fields))
    n_src = args.n_train + args.n_val + args.n_test
    if len(s_rows) < n_src:
        raise SystemExit(f"the source fields hold {len(s_rows)} labelled objects, fewer than --n-train + --n-val + "
                         f"--n-test = {n_src}; choose smaller sizes")
    source_rows = np.sort(rng.choice(s_rows, n_src, replace=False))
    t_rows = rng.permutation(rows_of_fields(tgt, target_fields))
    if same:
        t_rows = t_rows[~np.isin(t_rows, source_rows)]
    pool_rows = np.sort(t_rows[:args.n_target_pool])
    test_rows = labelled(tgt, t_rows[args.n_target_pool:])[:args.n_target_test]
    if len(pool_rows) < args.n_target_pool or len(test_rows) < args.n_target_test:
        raise SystemExit(f"the target fields hold {len(t_rows)} objects: {len(pool_rows)} for the pool (asked "
                         f"{args.n_target_pool}) and {len(test_rows)} labelled test objects (asked "
                         f"{args.n_target_test}); choose smaller sizes")
    return {"source_fields": source_fields, "target_fields": target_fields, "conditions": conditions,
            "source_rows": source_rows, "pool_rows": pool_rows, "test_rows": np.sort(test_rows)}


# -- runs and their scores ---------------------------------------------------------------------------------
def digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def scored_run(key: str, seed: int, out: Path, train: dict[str, Any], tests: dict[str, tuple[Path, np.ndarray,
               np.ndarray]], gather_only: bool = False) -> dict[str, Any] | None:
    """Train (or reuse) one run and score it on each test set; scores cached in ``out/da_scores.json``.

    ``gather_only``: None instead of training a run that has no cached scores."""
    cache = out / "da_scores.json"
    stamp = {name: [str(path), digest(rows)] for name, (path, rows, _) in tests.items()}
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("tests") == stamp:
            print(f"reusing {out.name} and its scores", flush=True)
            return saved["record"]
    if gather_only:
        print(f"{out.name}: not run, left out", flush=True)
        return None
    ckpt, member = train_run(**train)
    record: dict[str, Any] = {"seed": seed, "train_seconds": member["train_seconds"], "steps": member["steps"],
                              "commit": code_commit()["commit"][:12]}
    for name, (path, rows, z) in tests.items():
        record[name] = point_metrics(predict_z(ckpt, path, rows), z)
    last = member.get("last_metrics", {})
    if "domain_acc" in last:
        record["final_domain_acc"] = last["domain_acc"]
    write_json(cache, {"tests": stamp, "record": record}, indent=1)
    print(f"  {key} seed {seed}: target sigma_MAD {record['target']['sigma_mad']:.5f} max_tomo_bias "
          f"{record['target']['max_tomo_bias']:.5f}; source sigma_MAD {record['source']['sigma_mad']:.5f}", flush=True)
    return record


def summarise(per_seed: list[dict[str, Any]], field: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in ("sigma_mad", "bias", "eta", "max_tomo_bias"):
        values = np.array([r[field][metric] for r in per_seed])
        out[metric] = float(values.mean())
        out[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return out


def verdict_of(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Shares of the no_da → oracle target gap closed (σ_MAD, max_tomo_bias), the source cost, and the gaps
    beside their seed spread (a gap within it cannot be closed measurably)."""
    def closed(metric: str, method: str) -> float:
        if method not in table:
            return float("nan")
        gap = table["no_da"][metric] - table["oracle"][metric]
        return float((table["no_da"][metric] - table[method][metric]) / gap) if gap != 0 else float("nan")

    def spread(metric: str) -> float:
        # standard error of the difference of two seed means (no_da, oracle)
        s = [table[k][f"{metric}_std"] ** 2 / table[k]["n_seeds"] for k in ("no_da", "oracle")]
        return float(np.sqrt(sum(s)))

    out: dict[str, Any] = {
        "gap_sigma_mad": table["no_da"]["sigma_mad"] - table["oracle"]["sigma_mad"],
        "gap_sigma_mad_se": spread("sigma_mad"),
        "gap_max_tomo_bias": table["no_da"]["max_tomo_bias"] - table["oracle"]["max_tomo_bias"],
        "gap_max_tomo_bias_se": spread("max_tomo_bias"),
        "gap_closed_sigma_mad": closed("sigma_mad", "da"),
        "gap_closed_max_tomo_bias": closed("max_tomo_bias", "da"),
        "gap_closed_sigma_mad_no_guided": closed("sigma_mad", "da_no_guided"),
        "gap_closed_max_tomo_bias_no_guided": closed("max_tomo_bias", "da_no_guided"),
        "source_sigma_mad_change": float(table["da"]["source"]["sigma_mad"] / table["no_da"]["source"]["sigma_mad"]
                                         - 1),
        "gap_closed": {k: {"sigma_mad": closed("sigma_mad", k), "max_tomo_bias": closed("max_tomo_bias", k),
                           "source_sigma_mad_change": float(table[k]["source"]["sigma_mad"]
                                                            / table["no_da"]["source"]["sigma_mad"] - 1)}
                       for k in table if k not in ("no_da", "oracle")},
    }
    out["target_met"] = bool(out["gap_closed_sigma_mad"] >= 0.5 and out["gap_closed_max_tomo_bias"] >= 0.5
                             and out["source_sigma_mad_change"] <= 0.05)
    return out


def render_docs(results: Path) -> None:
    """Replace the block between the markers of docs/domain_adaptation.md with tables.py's rendering."""
    import tables

    if not results.is_file():
        raise SystemExit(f"{results} does not exist: run the benchmark first")
    text = DOCS.read_text()
    if DOCS_START not in text or DOCS_END not in text:
        raise SystemExit(f"{DOCS} has no {DOCS_START} ... {DOCS_END} block")
    head, rest = text.split(DOCS_START, 1)
    _, tail = rest.split(DOCS_END, 1)
    DOCS.write_text(f"{head}{DOCS_START}\n" + "\n".join(tables.domain_table(detail=True)) + f"\n{DOCS_END}{tail}")
    print(f"updated {DOCS}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source-cubes", "--cubes", type=Path, default=ROOT / "runs" / "bench" / "mock_sdss.h5",
                        help="the source field's cube store (labelled)")
    parser.add_argument("--target-cubes", type=Path, default=None,
                        help="the target field's cube store (may be the source store, split by --*-fields); "
                             "without it the target field is simulated")
    parser.add_argument("--source-fields", default=None, help="names, 'rest', 'best-seeing:K' or 'worst-seeing:K'")
    parser.add_argument("--target-fields", default=None, help="names, 'worst-seeing:K' or 'best-seeing:K'")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "domain_adaptation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "domain_adaptation.json")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--n-target-pool", type=int, default=5000,
                        help="unlabelled target images the adaptation sees (the oracle trains on their labels)")
    parser.add_argument("--n-target-test", type=int, default=2000)
    parser.add_argument("--target-seed", type=int, default=1401, help="simulated target: the pool's seed (+1: test)")
    parser.add_argument("--subset-seed", type=int, default=2020)
    parser.add_argument("--stamp", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weight", type=float, default=1.0, help="final adversarial weight w of the ramp")
    parser.add_argument("--controls", action="store_true", help="also guided-only and paired-only adaptation")
    parser.add_argument("--control-seeds", type=int, nargs="+", default=None,
                        help="seeds of the controls (default: --seeds), where the budget allows fewer")
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods (default: all)")
    parser.add_argument("--partial", action="store_true", help="train/score the runs asked for, write no JSON")
    parser.add_argument("--gather-only", action="store_true",
                        help="train nothing: the JSON from the finished, scored runs among those asked for")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--docs", action="store_true", help="only rewrite docs/domain_adaptation.md from --out")
    args = parser.parse_args(argv)
    if args.docs:
        render_docs(args.out)
        return {}

    import torch

    from zpix.runs import Split
    from zpix.store.cube_store import CubeStore

    torch.set_num_threads(args.threads)
    code = code_commit()
    load_start = [round(v, 2) for v in os.getloadavg()]
    started = time.perf_counter()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = args.stamp
    if args.target_cubes is not None:
        plan = store_plan(args)
        source = write_subset(args.source_cubes.resolve(), workdir / f"source_{stamp}.h5", plan["source_rows"], stamp)
        pool = write_subset(args.target_cubes.resolve(), workdir / f"target_pool_{stamp}.h5", plan["pool_rows"],
                            stamp)
        target_test = write_subset(args.target_cubes.resolve(), workdir / f"target_test_{stamp}.h5",
                                   plan["test_rows"], stamp)
        fields_doc: dict[str, Any] = {
            "kind": "existing cube stores" + (" (zpix inject: real SDSS fields with injected galaxies), split by "
                                              "field" if plan["conditions"] else ""),
            "source": {"cubes": str(args.source_cubes), "fields": plan["source_fields"],
                       "selection": args.source_fields},
            "target": {"cubes": str(args.target_cubes), "fields": plan["target_fields"],
                       "selection": args.target_fields, "n_pool": len(plan["pool_rows"]),
                       "pool_digest": digest(plan["pool_rows"])},
            "ranking": f"mean PSF FWHM of bands {'/'.join(SEEING_BANDS)} (zpix inject's ePSF Moffat fit)",
            "conditions": plan["conditions"],
        }
    else:
        pool, target_test = workdir / "target_train.h5", workdir / "target_test.h5"
        simulate_field(pool, args.n_target_pool, args.target_seed, stamp)
        simulate_field(target_test, args.n_target_test, args.target_seed + 1, stamp)
        with CubeStore(args.source_cubes, validate=False) as store:
            rows = labelled(args.source_cubes, np.asarray(store.valid_index, dtype=np.int64))
        n = args.n_train + args.n_val + args.n_test
        chosen = np.random.default_rng(args.subset_seed).choice(rows, n, replace=False)
        source = write_subset(args.source_cubes, workdir / f"source_{stamp}.h5", chosen, stamp)
        fields_doc = {
            "kind": "two zpix simulate --survey sdss fields: source = subset of the SDSS-like mock, target = the sdss "
                    "preset with worse seeing, brighter/more variable sky, half the exposure, no deep stripe",
            "source": {"cubes": str(args.source_cubes)},
            "target": {"overrides": {k: list(v) if isinstance(v, tuple) else v
                                     for k, v in target_overrides(stamp).items()},
                       "seed_pool": args.target_seed, "seed_test": args.target_seed + 1, "n_pool": args.n_target_pool},
        }
    fields_doc["stamp"] = stamp

    # the source split (rows of the source subset) and the oracle's (labelled rows of the target pool);
    # the pool's z_spec is read here only, for the oracle, never by the adaptation runs
    n = args.n_train + args.n_val + args.n_test
    perm = np.random.default_rng(args.subset_seed + 1).permutation(n)
    split = Split(np.sort(perm[:args.n_train]), np.sort(perm[args.n_train:args.n_train + args.n_val]),
                  np.sort(perm[args.n_train + args.n_val:]))
    with CubeStore(pool, validate=False) as store:
        n_pool = len(store)
    t_rows = np.random.default_rng(args.subset_seed + 2).permutation(labelled(pool, np.arange(n_pool)))
    n_oracle_train = min(args.n_train, int(round(len(t_rows) * args.n_train / (args.n_train + args.n_val))))
    n_oracle_val = min(args.n_val, len(t_rows) - n_oracle_train)
    oracle_split = Split(np.sort(t_rows[:n_oracle_train]),
                         np.sort(t_rows[n_oracle_train:n_oracle_train + n_oracle_val]), np.array([], dtype=np.int64))
    with CubeStore(source, validate=False) as store:
        z_source_test = store.z_spec[split.test]
    with CubeStore(target_test, validate=False) as store:
        test_rows = labelled(target_test, np.arange(len(store)))
        z_target_test = store.z_spec[test_rows]
    fields_doc["source"].update(n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                                subset_seed=args.subset_seed)
    fields_doc["target"].update(n_test=int(len(test_rows)), oracle_n_train=n_oracle_train, oracle_n_val=n_oracle_val)

    # one plan per workdir: runs of other fields, sizes or budgets are never mixed
    pinned = {"fields": {k: v for k, v in fields_doc.items() if k != "conditions"}, "epochs": args.epochs,
              "batch_size": args.batch_size, "weight": args.weight, "split": split.digest(),
              "oracle_split": oracle_split.digest(), "model": "pasquet2019-small"}
    plan_file = workdir / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != json.loads(json.dumps(pinned)):
        raise SystemExit(f"{plan_file} pins other fields, sizes or budget than this command; use another --workdir")
    write_json(plan_file, pinned, indent=1)

    methods = {**METHODS, **(CONTROLS if args.controls else {})}
    if args.methods:
        unknown = [m for m in args.methods if m not in methods]
        if unknown:
            raise SystemExit(f"unknown methods {unknown}; known: {list(methods)} (controls need --controls)")
        methods = {k: v for k, v in methods.items() if k in args.methods}
    tests = {"target": (target_test, test_rows, z_target_test), "source": (source, split.test, z_source_test)}
    common = {"model": "pasquet2019-small", "epochs": args.epochs, "batch": args.batch_size}
    per_seed: dict[str, list[dict[str, Any]]] = {k: [] for k in methods}
    control_seeds = args.seeds if args.control_seeds is None else args.control_seeds
    for seed in sorted(set(args.seeds) | set(control_seeds)):
        for key, domain in methods.items():
            if seed not in (control_seeds if key in CONTROLS else args.seeds):
                continue
            train = {"out": workdir / f"{key}_s{seed}", "seed": seed, **common}
            if key == "oracle":
                train.update(cubes=pool, split=oracle_split)
            elif key == "no_da":
                train.update(cubes=source, split=split)
            else:
                train.update(cubes=source, split=split, target_cubes=str(pool),
                             domain={"weight": args.weight, **domain})
            record = scored_run(key, seed, train["out"], train, tests, args.gather_only)
            if record is not None:
                per_seed[key].append(record)
    if args.partial:
        return {}
    per_seed = {k: v for k, v in per_seed.items() if v}
    needed = ("no_da", "da", "oracle") if args.gather_only else ("no_da", "da", "da_no_guided", "oracle")
    missing = [k for k in needed if k not in per_seed]
    if missing:
        raise SystemExit(f"the results JSON needs every method; {missing} not run (use --partial for a subset)")

    table = {k: {**summarise(v, "target"), "source": summarise(v, "source"), "n_seeds": len(v), "seeds": v,
                 "domain": ({"weight": args.weight, **methods[k]} if methods[k] else None)}
             for k, v in per_seed.items()}
    verdict = verdict_of(table)
    commits = sorted({r["commit"] for v in per_seed.values() for r in v})
    doc = {
        "benchmark": "domain_adaptation",
        "paper": "Ait Ouahmed et al. 2024 (seed slides: adversarial DA, guided batch selection, paired "
                 "discriminator); Ganin et al. 2016 (DANN, gradient reversal, lambda ramp)",
        "date_utc": __import__("datetime").datetime.now(__import__("datetime").UTC).isoformat(timespec="seconds"),
        "code": code,
        "runs_trained_at": commits,
        "loadavg_at_start": load_start,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "fields": fields_doc,
        "budget": {"model": "pasquet2019-small", "epochs": args.epochs, "batch_size": args.batch_size,
                   "optimizer": "Adam lr 1e-3", "lr_schedule": "cosine", "seeds": args.seeds,
                   "control_seeds": control_seeds if args.controls else [],
                   "da_weight": args.weight, "da_ramp": "Ganin 2/(1+exp(-10p))-1",
                   "da_checkpoint": "last epoch (no target labels to select on)",
                   "other_checkpoints": "lowest source (oracle: target) validation loss",
                   "torch_threads": args.threads},
        "scaled_down": f"CPU budget: {args.n_train} training objects, {args.epochs} epochs, {stamp}x{stamp} stamps, "
                       f"{len(args.seeds)} seed(s)",
        "methods": table,
        "not_run": [k for k in {**METHODS, **(CONTROLS if args.controls else {})} if k not in table],
        "verdict": verdict,
    }
    write_json(args.out, doc, indent=1)
    for k, v in table.items():
        print(f"{k:>14}: target sigma_MAD {v['sigma_mad']:.5f} ± {v['sigma_mad_std']:.5f}, max_tomo_bias "
              f"{v['max_tomo_bias']:.5f} ± {v['max_tomo_bias_std']:.5f}, bias {v['bias']:+.5f}; source sigma_MAD "
              f"{v['source']['sigma_mad']:.5f}")
    print(json.dumps({k: v for k, v in verdict.items() if k != "gap_closed"}, indent=1))
    print(f"wrote {args.out}", flush=True)
    return doc


if __name__ == "__main__":
    main()
