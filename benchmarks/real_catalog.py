"""Real-data benchmark: zpix's catalogue baselines against LSST DESC RAIL's on the SDSS MGS catalogue.

The SDSS Main Galaxy Sample catalogue of MLZ (5000 training / 5000 test galaxies with spectroscopic
redshifts and de-reddened ugriz magnitudes, ``../shared/data/real/sdss_mgs_catalog/``) is the regime
of Pasquet et al. (2019): z < 0.3, r < 17.8.  On the same split, with the same metrics (bias, σ_MAD,
η, CRPS, PIT KS; :mod:`zpix.evaluation.metrics`, all on the 180-bin 0-0.4 grid) and timings:

* ``knn``: zpix's k-NN local linear regression on r and colours (Beck et al. 2016 style),
* ``magnet``: zpix's magnitude network (``hybrid-mags`` with the binned-PDF head, ANNz2-like),
* ``rail_knn``: ``pz-rail-sklearn``'s KNearNeighInformer/Estimator (Gaussian mixture of the
  neighbours' redshifts, k and σ tuned on a held-out quarter by CDE loss),
* ``rail_flexzboost``: ``pz-rail-flexzboost`` (FlexCode with xgboost regressions of cosine-basis
  coefficients; Izbicki & Lee 2017, Dalmasso et al. 2020).

RAIL's PDFs (mixmod / interp qp ensembles) are binned onto zpix's grid by differencing their CDFs at
the bin edges (:func:`zpix.pdf.from_qp`), then written and scored exactly like zpix's.  RAIL is never
a zpix dependency: run this with the benchmark environment (``make bench`` builds ``.venv-bench``).
Where ``../shared`` is absent the script says so and exits 0.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED, prediction_metrics, stamp, write_json  # noqa: E402

MGS = SHARED / "data" / "real" / "sdss_mgs_catalog"
BANDS = list("ugriz")


def rail_columns(table: Any) -> dict[str, np.ndarray]:
    """A MagnitudeTable as the numpy dict RAIL stages read (mag_<b>, mag_err_<b>, redshift)."""
    data = {f"mag_{b}": table.mags[:, j].astype(np.float64) for j, b in enumerate(table.bands)}
    errs = table.mag_errs if table.mag_errs is not None else np.full_like(table.mags, 0.05)
    data.update({f"mag_err_{b}": errs[:, j].astype(np.float64) for j, b in enumerate(table.bands)})
    data["redshift"] = table.z_spec.astype(np.float64)
    return data


def run_rail(method: str, train: Any, test: Any, out: Path, work: Path, seed: int) -> dict[str, Any]:
    """Inform and estimate one RAIL estimator; write its PDFs (binned on zpix's grid) to ``out``."""
    from rail.core.data import DataStore

    from zpix.pdf import RedshiftGrid, from_qp
    from zpix.prediction.format import write_predictions

    DataStore.allow_overwrite = True  # a rerun in the same process replaces its handles
    grid = RedshiftGrid()
    common = dict(hdf5_groupname="", bands=[f"mag_{b}" for b in BANDS],
                  err_bands=[f"mag_err_{b}" for b in BANDS], ref_band="mag_r", redshift_col="redshift",
                  zmin=grid.z_min, zmax=grid.z_max, nzbins=401, nondetect_val=99.0,
                  mag_limits={f"mag_{b}": 30.0 for b in BANDS})
    if method == "rail_knn":
        from rail.estimation.algos.k_nearneigh import KNearNeighEstimator as Est
        from rail.estimation.algos.k_nearneigh import KNearNeighInformer as Inf

        inf_opts: dict[str, Any] = {"seed": seed}
    else:
        from rail.estimation.algos.flexzboost import FlexZBoostEstimator as Est
        from rail.estimation.algos.flexzboost import FlexZBoostInformer as Inf

        inf_opts = {"seed": seed}
    cwd = os.getcwd()
    os.chdir(work)  # RAIL stages write their model and output files into the working directory
    try:
        t0 = time.perf_counter()
        informer = Inf.make_stage(name=f"inform_{method}", model=f"{method}.pkl", **common, **inf_opts)
        informer.inform(rail_columns(train))
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        estimator = Est.make_stage(name=f"estimate_{method}", model=informer.get_handle("model"),
                                   output=f"{method}_pdfs.hdf5", **common)
        ens = estimator.estimate(rail_columns(test)).data
        predict_s = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
    pdfs, _ = from_qp(ens, grid)
    write_predictions(out, test.ids, pdfs, grid, z_spec=test.z_spec, extra=dict(test.extra), method=method,
                      overwrite=True, meta={"rail_stage": Est.__name__, "qp": ens.gen_class.name})
    return {"train_s": train_s, "predict_s": predict_s, "n_train": len(train), "n_test": len(test)}


@click.command()
@click.option("--work", type=click.Path(file_okay=False), default=str(ROOT / "runs" / "bench" / "real"),
              show_default=True, help="Work folder for the prediction directories (git-ignored).")
@click.option("--seed", default=0, show_default=True)
@click.option("--methods", default="knn,magnet,rail_knn,rail_flexzboost", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=str(RESULTS / "real_catalog.json"), show_default=True)
def main(work: str, seed: int, methods: str, out: str) -> None:
    """Run the real-catalogue benchmark and write benchmarks/results/real_catalog.json."""
    if not MGS.is_dir():
        print(f"real catalogue benchmark: {MGS} is not available (../shared is absent); skipped")
        return
    from zpix.baselines.knn import run_knn
    from zpix.baselines.magnet import run_magnet
    from zpix.baselines.tables import load_magnitudes

    train = load_magnitudes(MGS / "SDSS_MGS.train", columns="sdss-mgs")
    test = load_magnitudes(MGS / "SDSS_MGS.test", columns="sdss-mgs")
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {**stamp(), "data": {"catalogue": "SDSS MGS (MLZ SDSS_MGS.train / .test)",
                                               "n_train": len(train), "n_test": len(test), "bands": BANDS},
                           "grid": {"n_bins": 180, "z_min": 0.0, "z_max": 0.4}, "seed": seed,
                           "point_estimate": "z_mean (PDF mean, Pasquet Eq. 2)", "methods": {}, "skipped": {}}
    out_json = Path(out)
    for method in [m.strip() for m in methods.split(",") if m.strip()]:
        out = work_dir / method
        if out.exists():
            shutil.rmtree(out)
        try:
            if method == "knn":
                info = run_knn(train, test, out)
            elif method == "magnet":
                info = run_magnet(train, test, out, seed=seed)
            elif method in ("rail_knn", "rail_flexzboost"):
                info = run_rail(method, train, test, out, work_dir, seed)
            else:
                raise click.BadParameter(f"unknown method {method!r}")
        except ImportError as err:
            print(f"[{method}] skipped: {err} (install pz-rail-sklearn / pz-rail-flexzboost; `make bench`)")
            doc["skipped"][method] = str(err)
            continue
        keep = {k: info[k] for k in ("train_s", "predict_s", "n_train", "n_test", "epochs") if k in info}
        doc["methods"][method] = {**prediction_metrics(out), **keep}
        m = doc["methods"][method]
        print(f"[{method}] sigma_mad {m['sigma_mad']:.5f} bias {m['bias']:+.5f} eta {m['eta']:.4f} "
              f"crps {m['crps']:.5f} pit_ks {m['pit_ks']:.3f} train {m['train_s']:.1f} s "
              f"predict {m['predict_s']:.2f} s", flush=True)
        write_json(out_json, doc)
    write_json(out_json, doc)
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
