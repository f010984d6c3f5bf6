"""`zpix evaluate`: the photo-z analysis of Pasquet et al. (2019) Sect. 4 and 6 as numbers.

For one prediction directory (or several, side by side on the same objects) it computes

* point metrics (Pasquet Sect. 4.1; John William et al. Sect. 4): bias <Δz>, <δz>, σ(Δz),
  σ_MAD, NMAD (Ilbert 2006, no median subtraction), η for |Δz| > 0.05 and 0.15, MSE, MAE, R²;
* PDF metrics (Pasquet Sect. 4.3): mean CRPS, PIT histogram, KS and CvM of the PIT against
  uniform, coverage of the central 68% and 95% intervals, the 68% width distribution;
* quality cuts (Table 2): the same after removing the widest 10% and 20% of PDFs;
* trends (Fig. 8, Fig. 11, Sect. 6): mean Δz and σ_MAD in bins of z_spec, z_phot and, when
  the catalogue has them, r_mag, ebv, snr_r, axis_ratio, psf_fwhm_r, with bootstrap errors;
* N(z) (Sect. 4.2): stacked PDFs against the spec-z histogram, overall and in tomographic
  z_phot bins, with the mean-redshift offset flagged against |Δ<z>| < 0.002.

The PDFs are streamed chunk by chunk; only per-object scalars are held in memory.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zpix.evaluation import metrics as M
from zpix.evaluation.nz import NZ_REQUIREMENT, nz_compare, tomographic_edges, tomographic_index
from zpix.evaluation.trends import bias_summary, binned_trend
from zpix.pdf import RedshiftGrid
from zpix.plain_types import to_plain
from zpix.prediction.format import KNOWN_EXTRA_COLUMNS, iter_pdfs, read_predictions

#: Per-object columns whose trends are computed when present (Pasquet Sect. 6).
TREND_COLUMNS: dict[str, str] = dict(KNOWN_EXTRA_COLUMNS)

POINT_CHOICES = ("z_mean", "z_median", "z_mode")


@dataclass
class MethodScores:
    """Per-object results of one method on the evaluated objects, plus its stacked PDFs.

    ``objects`` has one row per object with a spectroscopic redshift: id, z_spec, z_phot, dz,
    pit, crps, width68, z_lo68, z_hi68 and the trend columns that exist.  ``row`` is the object's
    row in the prediction directory (to fetch its PDF again).  ``nz_stack`` row 0 sums the PDFs
    of all evaluated objects, row j+1 those in tomographic bin j.
    """

    name: str
    path: Path
    grid: RedshiftGrid
    objects: pd.DataFrame
    tomo_edges: np.ndarray
    nz_stack: np.ndarray
    n_catalog: int
    n_with_spec: int
    point: str


# --------------------------------------------------------------------------------------------
# inputs


def _prediction_dir(path: str | Path) -> Path:
    """Accept the directory or any file inside it (e.g. ``other/catalog.parquet``)."""
    p = Path(path)
    if p.is_file() and p.parent.joinpath("meta.yaml").exists():
        return p.parent
    return p


def load_truth(path: str | Path) -> pd.DataFrame:
    """A truth table with at least ``id`` and ``z_spec``, from Parquet, CSV, FITS, a cube store
    (HDF5 with ids/z_spec/ebv and catalog/<columns>) or another prediction directory."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--truth {p}: no such file")
    suffix = p.suffix.lower()
    if p.is_dir():
        df = read_predictions(p, load_pdfs=False).catalog
    elif suffix in (".parquet", ".pq"):
        df = pd.read_parquet(p)
    elif suffix == ".csv":
        df = pd.read_csv(p)
    elif suffix in (".fits", ".fit", ".fits.gz"):
        from astropy.table import Table

        df = Table.read(p).to_pandas()
    elif suffix in (".h5", ".hdf5", ".hdf"):
        from zpix.store.cube_store import CubeStore

        with CubeStore(p, validate=False) as store:
            df = store.catalog_table()
    else:
        raise ValueError(f"--truth {p}: unknown format {suffix!r}; use .parquet, .csv, .fits or a cube store .h5")
    if "id" not in df.columns and "ids" in df.columns:
        df = df.rename(columns={"ids": "id"})
    missing = [c for c in ("id", "z_spec") if c not in df.columns]
    if missing:
        raise ValueError(
            f"--truth {p}: missing column(s) {missing}; found {list(df.columns)[:20]}. "
            "The truth table needs 'id' (matching the predictions) and 'z_spec'"
        )
    if df["id"].duplicated().any():
        dup = df.loc[df["id"].duplicated(), "id"].iloc[:5].tolist()
        raise ValueError(f"--truth {p}: duplicated ids, e.g. {dup}")
    return df


def _id_key(values: pd.Series) -> pd.Series:
    # Integers and strings never compare equal in pandas joins; when one side is text, match as text.
    if pd.api.types.is_integer_dtype(values):
        return values.astype("int64")
    return values.astype(str)


def _align_keys(a: pd.Series, b: pd.Series) -> tuple[pd.Series, pd.Series]:
    ka, kb = _id_key(a), _id_key(b)
    if ka.dtype != kb.dtype:
        ka, kb = a.astype(str), b.astype(str)
    return ka, kb


def _assemble(path: Path, truth: pd.DataFrame | None, point: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Catalogue of one method with z_spec (from --truth if given) and the trend columns."""
    pred = read_predictions(path, load_pdfs=False)
    cat = pred.catalog
    if cat["id"].duplicated().any():
        raise ValueError(f"{path / 'catalog.parquet'}: duplicated ids, e.g. "
                         f"{cat.loc[cat['id'].duplicated(), 'id'].iloc[:5].tolist()}")
    if point not in cat.columns:
        raise ValueError(f"{path / 'catalog.parquet'}: no column {point!r} for --point")
    df = pd.DataFrame({"row": np.arange(len(cat)), "id": cat["id"].to_numpy(), "z_phot": cat[point].to_numpy(),
                       "z_spec": cat["z_spec"].to_numpy(dtype=np.float64)})
    for c in ("width68", "z_lo68", "z_hi68"):
        df[c] = cat[c].to_numpy()
    if "quality" in cat.columns:  # per-object outlier risk from zpix.quality (calibrated runs)
        df["quality"] = cat["quality"].to_numpy(dtype=np.float64)
    for c in TREND_COLUMNS:
        if c in cat.columns:
            df[c] = cat[c].to_numpy(dtype=np.float64)
    if truth is not None:
        k_cat, k_truth = _align_keys(df["id"], truth["id"])
        t = truth.assign(_key=k_truth.to_numpy()).set_index("_key")
        keyed = k_cat.to_numpy()
        df["z_spec"] = t["z_spec"].reindex(keyed).to_numpy(dtype=np.float64)
        for c in TREND_COLUMNS:
            if c not in df.columns and c in t.columns:
                df[c] = t[c].reindex(keyed).to_numpy(dtype=np.float64)
    return df, pred.meta


def _method_names(paths: Sequence[Path], metas: Sequence[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for p, m in zip(paths, metas, strict=True):
        name = str(m.get("method") or p.name)
        if name in names or name == "unknown":
            name = f"{name} ({p.name})" if name != "unknown" else p.name
        k = 2
        base = name
        while name in names:
            name, k = f"{base} #{k}", k + 1
        names.append(name)
    return names


def score_predictions(
    predictions: str | Path,
    compare: Sequence[str | Path] = (),
    truth: str | Path | None = None,
    point: str = "z_mean",
    n_tomo: int = 5,
    tomo_edges: Sequence[float] | None = None,
    chunk_size: int = 25_000,
) -> list[MethodScores]:
    """Per-object scores of each method on the objects that all methods share and that have a z_spec.

    One streaming pass over each ``pdfs.hdf5``: PIT and CRPS per object, and the stacked PDFs
    overall and in tomographic z_phot bins (edges from the first method unless given).
    """
    if point not in POINT_CHOICES:
        raise ValueError(f"point estimate must be one of {POINT_CHOICES}, got {point!r}")
    paths = [_prediction_dir(p) for p in (predictions, *compare)]
    truth_df = load_truth(truth) if truth is not None else None
    assembled = [_assemble(p, truth_df, point) for p in paths]
    names = _method_names(paths, [m for _, m in assembled])
    grids = [RedshiftGrid.from_dict(m["grid"]) for _, m in assembled]

    # objects with a spec-z in every method, keyed consistently
    keys = [_id_key(df["id"]) for df, _ in assembled]
    if len({k.dtype for k in keys}) > 1:  # integer ids in one file, text in another: match as text
        keys = [df["id"].astype(str) for df, _ in assembled]
    common = None
    for (df, _), k in zip(assembled, keys, strict=True):
        good = set(k[np.isfinite(df["z_spec"].to_numpy())].tolist())
        common = good if common is None else common & good
    if not common:
        where = f" in {truth}" if truth is not None else " (column z_spec is all NaN; pass --truth)"
        raise ValueError(f"{paths[0]}: no object has a spectroscopic redshift{where}"
                         + (" shared by all compared methods" if compare else ""))

    first_df, _ = assembled[0]
    first_sel = keys[0].isin(common).to_numpy()
    # order every method's rows like the first method, so per-object arrays line up across methods
    order_keys = keys[0][first_sel].to_numpy()
    if tomo_edges is None:
        t_edges = tomographic_edges(first_df["z_phot"].to_numpy()[first_sel], n_tomo)
    else:
        t_edges = np.asarray(sorted(tomo_edges), dtype=np.float64)
        if t_edges.size < 2:
            raise ValueError("--tomo-edges needs at least two edges")

    out = []
    first_obj = None
    for (df, _), k, name, grid, path in zip(assembled, keys, names, grids, paths, strict=True):
        obj = df.assign(_key=k.to_numpy()).set_index("_key").loc[order_keys].reset_index(drop=True)
        if first_obj is None:
            first_obj = obj
        else:
            # galaxy properties do not depend on the method: share the first method's columns
            for c in TREND_COLUMNS:
                if c not in obj.columns and c in first_obj.columns:
                    obj[c] = first_obj[c].to_numpy()
        obj["dz"] = M.delta_z(obj["z_phot"].to_numpy(), obj["z_spec"].to_numpy())
        rows = obj["row"].to_numpy()
        pit = np.empty(len(obj))
        crps = np.empty(len(obj))
        tomo = tomographic_index(obj["z_phot"].to_numpy(), t_edges)
        stack = np.zeros((t_edges.size, grid.n_bins))
        # positions of the wanted rows, visited in file order so each chunk is read once
        by_row = np.argsort(rows, kind="stable")
        sorted_rows = rows[by_row]
        zs = obj["z_spec"].to_numpy()
        for start, stop, pdfs in iter_pdfs(path, chunk_size):
            lo, hi = np.searchsorted(sorted_rows, [start, stop])
            if hi == lo:
                continue
            pos = by_row[lo:hi]
            p = pdfs[sorted_rows[lo:hi] - start]
            pit[pos] = M.pit(p, grid, zs[pos])
            crps[pos] = M.crps(p, grid, zs[pos])
            stack[0] += p.sum(axis=0)
            tb = tomo[pos]
            for j in range(t_edges.size - 1):
                if np.any(tb == j):
                    stack[j + 1] += p[tb == j].sum(axis=0)
        obj["pit"] = pit
        obj["crps"] = crps
        obj["tomo_bin"] = tomo
        out.append(MethodScores(
            name=name, path=path, grid=grid, objects=obj, tomo_edges=t_edges, nz_stack=stack,
            n_catalog=len(df), n_with_spec=int(np.isfinite(df["z_spec"]).sum()), point=point,
        ))
    return out


# --------------------------------------------------------------------------------------------
# metrics of one method


def _subset_metrics(obj: pd.DataFrame, thresholds: Sequence[float]) -> dict[str, Any]:
    zp, zs = obj["z_phot"].to_numpy(), obj["z_spec"].to_numpy()
    res: dict[str, Any] = M.point_metrics(zp, zs, tuple(thresholds))
    res["eta"] = M.outlier_fraction(obj["dz"].to_numpy(), 0.05)
    res["crps"] = float(obj["crps"].mean())
    res.update(M.pit_summary(obj["pit"].to_numpy()))
    res["width68_mean"] = float(obj["width68"].mean())
    res["width68_median"] = float(obj["width68"].median())
    return res


#: Fractions of the worst-flagged objects (highest ``quality``, zpix.quality) removed beside the width cuts.
FLAG_CUTS = (0.05, 0.1, 0.2)


def widest_removed(width: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the objects kept after removing the widest ``fraction`` of PDFs.

    Exactly round(fraction × n) objects are removed, the widest first (ties: later rows go
    first), as in Pasquet et al. (2019) Table 2 "Widest 10% (20%) of PDFs removed".
    """
    w = np.asarray(width, dtype=np.float64)
    if not 0 <= fraction < 1:
        raise ValueError(f"quality cut fraction must be in [0, 1), got {fraction}")
    n_remove = int(round(fraction * w.size))
    keep = np.ones(w.size, bool)
    if n_remove:
        keep[np.argsort(w, kind="stable")[w.size - n_remove:]] = False
    return keep


def method_metrics(
    scores: MethodScores,
    outlier_thresholds: Sequence[float] = (0.05, 0.15),
    quality_cuts: Sequence[float] = (0.1, 0.2),
    n_trend_bins: int = 12,
    n_boot: int = 200,
    seed: int = 0,
    nz_requirement: float = NZ_REQUIREMENT,
    pit_bins: int = 20,
    trend_edges: dict[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Every number of the evaluation for one method (JSON-ready)."""
    obj = scores.objects
    grid = scores.grid
    overall = _subset_metrics(obj, outlier_thresholds)

    cuts = {}
    for frac in quality_cuts:
        keep = widest_removed(obj["width68"].to_numpy(), frac)
        sub = obj[keep]
        cuts[f"widest_{round(100 * frac):d}pct_removed"] = {
            "fraction_removed": float(frac),
            "width68_max_kept": float(sub["width68"].max()),
            **_subset_metrics(sub, outlier_thresholds),
        }
    flag_cuts = {}
    if "quality" in obj.columns and np.isfinite(obj["quality"]).all():
        # the same cuts by the fitted outlier risk (zpix.quality) instead of the PDF width
        for frac in FLAG_CUTS:
            sub = obj[widest_removed(obj["quality"].to_numpy(), frac)]
            flag_cuts[f"worst_flagged_{round(100 * frac):d}pct_removed"] = {
                "fraction_removed": float(frac), "quality_max_kept": float(sub["quality"].max()),
                **_subset_metrics(sub, outlier_thresholds),
            }

    pit_hist = M.pit_histogram(obj["pit"].to_numpy(), pit_bins)
    w = obj["width68"].to_numpy()
    w_hist, w_edges = np.histogram(w, bins=30)
    width = {
        "mean": float(w.mean()), "median": float(np.median(w)),
        "percentiles": {str(q): float(np.percentile(w, q)) for q in (5, 16, 50, 84, 90, 95)},
        "histogram": {"edges": w_edges.tolist(), "counts": w_hist.tolist()},
    }

    trends = {}
    trend_edges = trend_edges or {}
    for col in ("z_spec", "z_phot", *TREND_COLUMNS):
        if col not in obj.columns or not np.isfinite(obj[col]).any():
            continue
        trends[col] = binned_trend(obj[col].to_numpy(), obj["dz"].to_numpy(), edges=trend_edges.get(col),
                                   n_bins=n_trend_bins, n_boot=n_boot, seed=seed)

    zs, zp = obj["z_spec"].to_numpy(), obj["z_phot"].to_numpy()
    tomo = obj["tomo_bin"].to_numpy()
    nz = {"overall": nz_compare(scores.nz_stack[0], zs, zp, grid, nz_requirement), "tomographic": []}
    for j in range(scores.tomo_edges.size - 1):
        sel = tomo == j
        entry = {"z_phot_range": [float(scores.tomo_edges[j]), float(scores.tomo_edges[j + 1])]}
        entry.update(nz_compare(scores.nz_stack[j + 1], zs[sel], zp[sel], grid, nz_requirement))
        nz["tomographic"].append(entry)
    tomo_flags = [t["meets_requirement"] for t in nz["tomographic"] if t["n"] > 0]
    nz["all_bins_meet_requirement"] = bool(all(tomo_flags)) if tomo_flags else None
    # Lin et al.'s two biases: residuals against spec-z (fixed bins) and mode collapse, and the
    # tomographic Δ<z> on this method's own equal-count z_phot bins
    bias = bias_summary(zp, zs, n_tomo=max(1, scores.tomo_edges.size - 1), n_boot=n_boot, seed=seed)
    for key in ("spec_z_trend_amplitude", "nz_ks", "max_tomo_bias"):
        overall[key] = bias[key]

    return {
        "source": str(scores.path),
        "n_catalog": scores.n_catalog,
        "n_with_spec": scores.n_with_spec,
        "n_evaluated": int(len(obj)),
        "overall": overall,
        "quality_cuts": cuts,
        "flag_cuts": flag_cuts,
        "pit_histogram": pit_hist,
        "width68": width,
        "trends": trends,
        "nz": nz,
        "bias": bias,
    }


# --------------------------------------------------------------------------------------------
# the whole evaluation

#: Rows of the side-by-side table, in this order.
COMPARISON_KEYS = (
    "n", "bias", "mean_dz_raw", "sigma_std", "sigma_mad", "nmad", "eta", "eta_0.15", "mse", "mae", "r2",
    "crps", "pit_ks", "pit_cvm", "coverage68", "coverage95", "width68_median",
    "spec_z_trend_amplitude", "nz_ks", "max_tomo_bias",
)


def run_evaluation(
    predictions: str | Path,
    truth: str | Path | None = None,
    compare: Sequence[str | Path] = (),
    point: str = "z_mean",
    outlier_thresholds: Sequence[float] = (0.05, 0.15),
    quality_cuts: Sequence[float] = (0.1, 0.2),
    n_tomo: int = 5,
    tomo_edges: Sequence[float] | None = None,
    n_trend_bins: int = 12,
    n_boot: int = 200,
    seed: int = 0,
    nz_requirement: float = NZ_REQUIREMENT,
    chunk_size: int = 25_000,
    allow_training_rows: bool = False,
) -> tuple[list[MethodScores], dict[str, Any]]:
    """Scores and the metrics dictionary; :func:`evaluate` and the report build on this.

    Predictions that cover objects their model was trained or validated on (their meta says so, see
    :func:`zpix.runs.select_rows`) are refused unless ``allow_training_rows``: such scores flatter.
    """
    check_training_rows([predictions, *compare], allow_training_rows)
    scores = score_predictions(predictions, compare, truth, point, n_tomo, tomo_edges, chunk_size)
    # shared trend bins, so that compared methods are plotted on the same x bins
    first = scores[0].objects
    edges: dict[str, Sequence[float]] = {}
    from zpix.evaluation.trends import trend_edges as _edges

    for col in ("z_spec", "z_phot", *TREND_COLUMNS):
        if col in first.columns and np.isfinite(first[col]).any():
            vals = np.concatenate([s.objects[col].to_numpy() for s in scores if col in s.objects.columns])
            edges[col] = _edges(vals, n_trend_bins)
    methods = {
        s.name: method_metrics(s, outlier_thresholds, quality_cuts, n_trend_bins, n_boot, seed,
                               nz_requirement, trend_edges=edges)
        for s in scores
    }
    from zpix import __version__

    table = {k: {name: m["overall"].get(k) for name, m in methods.items()} for k in COMPARISON_KEYS}
    result = {
        "zpix_version": __version__,
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "predictions": str(scores[0].path),
            "compare": [str(s.path) for s in scores[1:]],
            "truth": None if truth is None else str(truth),
            "point_estimate": point,
            "outlier_thresholds": list(outlier_thresholds),
            "quality_cuts": list(quality_cuts),
            "n_boot": n_boot,
            "seed": seed,
            "nz_requirement": nz_requirement,
            "tomographic_edges": scores[0].tomo_edges.tolist(),
            "definitions": {
                "dz": "(z_phot - z_spec) / (1 + z_spec)",
                "bias": "mean(dz)",
                "mean_dz_raw": "mean(z_phot - z_spec)",
                "sigma_mad": "1.4826 * median(|dz - median(dz)|)  (Pasquet et al. 2019)",
                "nmad": "1.4826 * median(|dz|)  (Ilbert et al. 2006, median not subtracted)",
                "eta": "fraction with |dz| > 0.05; eta_<t> for threshold t",
                "crps": "mean of Pasquet Eq. 4, redshift units, not divided by 1+z",
                "pit_ks / pit_cvm": "KS distance sup|F_n - u| and CvM statistic n*int(F_n - u)^2 of PIT vs U(0,1)",
                "coverage68/95": "fraction of z_spec inside the central 68%/95% PDF interval",
                "quality_cuts": "metrics after removing the widest fraction of PDFs (68% width)",
                "spec_z_trend_amplitude": "largest |mean dz| over fixed 0.02-wide z_spec bins with >= 100 objects",
                "nz_ks": "KS distance between the z_phot and z_spec distributions (mode collapse)",
                "max_tomo_bias": "largest |<z_phot> - <z_spec>| over 5 equal-count z_phot bins of the method",
            },
        },
        "n_common": int(len(scores[0].objects)),
        "methods": methods,
        "summary": {name: m["overall"] for name, m in methods.items()},
        "comparison": table,
    }
    return scores, to_plain(result, finite=True)


def check_training_rows(paths: Sequence[str | Path], allow: bool) -> None:
    """Refuse (unless ``allow``) prediction directories whose rows include their model's training/validation rows."""
    from zpix.prediction.format import read_meta, rows_record

    for path in paths:
        rows = rows_record(read_meta(_prediction_dir(path)))
        n = int(rows.get("n_training_rows", 0) or 0)
        if n and not allow:
            raise ValueError(
                f"{path}: {n} of its {rows.get('n_rows', '?')} objects were used to train or validate the model "
                f"(rows: {rows.get('split')}); their scores would flatter it. Predict the run's test rows "
                "(`zpix predict RUN CUBES` does by default on the run's own cube store) or pass "
                "--allow-training-rows to score them anyway")


def evaluate(
    predictions: str | Path,
    truth: str | Path | None = None,
    compare: Sequence[str | Path] = (),
    out: str | Path | None = None,
    objects_out: str | Path | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate a prediction directory (and ``compare`` ones on the same objects).

    Writes the metrics as JSON to ``out`` and, if ``objects_out`` is given, the per-object
    z_spec, z_phot, Δz, PIT, CRPS and width of every method to a Parquet file.  Keyword arguments
    are those of :func:`run_evaluation` (point, outlier_thresholds, quality_cuts, n_tomo,
    tomo_edges, n_trend_bins, n_boot, seed, nz_requirement, chunk_size).
    """
    scores, result = run_evaluation(predictions, truth=truth, compare=compare, **kwargs)
    from zpix.atomic import atomic_file, write_json

    if out is not None:
        write_json(out, result, indent=1, allow_nan=False)  # never a half-written metrics.json
    if objects_out is not None:
        frames = [s.objects.assign(method=s.name) for s in scores]
        with atomic_file(objects_out) as tmp:
            pd.concat(frames, ignore_index=True).to_parquet(tmp)
    return result


def format_summary(result: dict[str, Any]) -> str:
    """A plain-text side-by-side table of the main metrics."""
    names = list(result["methods"])
    rows = [("metric", *names)]
    fmt = {"n": "{:d}", "eta": "{:.3%}", "eta_0.15": "{:.3%}", "coverage68": "{:.3f}", "coverage95": "{:.3f}"}
    for k in ("n", "bias", "sigma_mad", "nmad", "sigma_std", "eta", "eta_0.15", "crps", "pit_ks",
              "coverage68", "coverage95", "r2"):
        vals = []
        for n in names:
            v = result["methods"][n]["overall"].get(k)
            vals.append("-" if v is None else fmt.get(k, "{:.5f}").format(v))
        rows.append((k, *vals))
    for cut in result["methods"][names[0]]["quality_cuts"]:
        rows.append((f"sigma_mad, {cut}",
                     *[f"{result['methods'][n]['quality_cuts'][cut]['sigma_mad']:.5f}" for n in names]))
    widths = [max(len(str(r[i])) if i < len(r) else 0 for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    nz = [(n, result["methods"][n]["nz"]) for n in names]
    for n, z in nz:
        flags = ", ".join(
            f"{t['z_phot_range'][0]:.3f}-{t['z_phot_range'][1]:.3f}: "
            f"{t['delta_mean_z']:+.4f}{'' if t['meets_requirement'] else ' (!)'}"
            for t in z["tomographic"] if t["n"]
        )
        lines.append(f"N(z) Δ<z> per z_phot bin [{n}]: {flags}")
    return "\n".join(lines)


__all__ = [
    "MethodScores", "evaluate", "load_truth", "method_metrics", "run_evaluation",
    "score_predictions", "widest_removed",
]
