"""zpix's RAIL stages, tested as RAIL tests its algorithms (rail.utils.testing_utils.one_algo):
inform → estimate → estimate again from the saved model file and from the model handle → identical PDFs."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

rail_stages = pytest.importorskip("rail.stages")

from rail.core.data import TableHandle  # noqa: E402
from rail.utils.testing_utils import check_stage_params, one_algo  # noqa: E402

import rail.estimation.algos.zpix as zpix_rail  # noqa: E402

BANDS = [f"mag_{b}_lsst" for b in "ugrizy"]


@pytest.fixture(autouse=True)
def _rail_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # RAIL writes its outputs into the working directory


def test_discovered_by_import_and_attach_all_with_legal_options():
    rail_stages.import_and_attach_all(silent=True)
    for name in zpix_rail.__all__:
        stage = getattr(rail_stages, name)
        assert check_stage_params(stage) is None, name


def _pdfs(handle_data):
    return handle_data.objdata[next(iter(handle_data.objdata))]


def _check_one_algo(results, n):
    first, from_file, from_handle = results
    assert first.npdf == n
    for other in (from_file, from_handle):
        np.testing.assert_array_equal(_pdfs(first), _pdfs(other))
    for key in ("zmode", "zmean", "zmedian"):
        assert np.isfinite(first.ancil[key]).all()
    return first


def _write_photometry(path, n, seed, nondetect_every=0):
    """A RAIL-style HDF5 table (group 'photometry', mag_*_lsst, redshift) whose colours track z."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.05, 1.4, n)
    slope = np.linspace(-1.5, 1.5, len(BANDS))
    with h5py.File(path, "w") as f:
        g = f.create_group("photometry")
        g["id"] = np.arange(n)
        g["redshift"] = z
        for j, b in enumerate(BANDS):
            mag = 23.0 + slope[j] * (z - 0.7) + rng.normal(0, 0.03, n)
            if nondetect_every and j == 0:
                mag[::nondetect_every] = 99.0
            g[b] = mag
    return str(path)


@pytest.mark.parametrize("informer, estimator, train_extra", [
    (zpix_rail.ZpixKNNInformer, zpix_rail.ZpixKNNEstimator, {"k": 20}),
    (zpix_rail.ZpixMagNetInformer, zpix_rail.ZpixMagNetEstimator, {"max_epochs": 3, "patience": 3}),
])
def test_catalogue_stages_one_algo_on_rails_example_data(informer, estimator, train_extra):
    """RAIL's own helper and example data (100 training, 10 validation galaxies, mag_*_lsst)."""
    common = {"zmin": 0.0, "zmax": 3.0, "nzbins": 151, "hdf5_groupname": "photometry", "model": "model.pkl"}
    results = one_algo(informer.name, informer, estimator, {**common, **train_extra, "name": f"inform_{informer.name}"},
                       {**common, "pdf_format": "hist32"})
    ens = _check_one_algo(results, 10)
    assert ens.gen_class.name == "hist" and np.asarray(ens.metadata["bins"]).size == 151


def test_knn_chunks_nondetections_and_quantiles(tmp_path):
    train = _write_photometry(tmp_path / "train.hdf5", 300, 0, nondetect_every=7)
    test = _write_photometry(tmp_path / "test.hdf5", 45, 1, nondetect_every=5)
    opts = {"zmin": 0.0, "zmax": 2.0, "nzbins": 101, "hdf5_groupname": "photometry", "model": "knn.pkl"}
    zpix_rail.ZpixKNNInformer.make_stage(name="knn_inform", k=30, **opts).inform(TableHandle("tr", path=train))
    whole = zpix_rail.ZpixKNNEstimator.make_stage(name="knn_whole", chunk_size=1000, **opts).estimate(
        TableHandle("te", path=test)).data
    chunked = zpix_rail.ZpixKNNEstimator.make_stage(name="knn_chunked", chunk_size=10, **opts).estimate(
        TableHandle("te2", path=test)).data
    # RAIL's chunk iterator (5 chunks here) gives the same PDFs as one chunk
    np.testing.assert_allclose(_pdfs(chunked), _pdfs(whole), rtol=1e-6)
    with h5py.File(test) as f:
        z = f["photometry/redshift"][:]
    assert np.median(np.abs(whole.ancil["zmedian"].ravel() - z)) < 0.1
    q = zpix_rail.ZpixKNNEstimator.make_stage(name="knn_q", pdf_format="quantiles:15", **opts).estimate(
        TableHandle("te3", path=test)).data
    assert q.gen_class.name == "quant" and q.npdf == 45


def test_image_stages_inform_estimate_reload(tmp_path):
    from conftest import write_toy_cubes
    from test_training import TINY

    cubes = str(write_toy_cubes(tmp_path / "toy.h5", n=120, size=16))
    with h5py.File(cubes) as f:
        ids = f["ids"][:]
    table = {"object_id": ids[:100]}
    test = {"object_id": ids[[110, 101, 119, 100, 105]]}  # any order, from the same store
    train_opts = {"cubes": cubes, "zpix_config": "demo", "hdf5_groupname": "", "model": "cnn.pkl",
                  "train_overrides": {"model": "pasquet2019-small", "model_args": TINY, "n_bins": 40,
                                      "max_epochs": 1, "batch_size": 32, "num_workers": 0, "accelerator": "cpu",
                                      "devices": 1, "ensemble": 1}}
    inform = zpix_rail.ZpixInformer.make_stage(name="cnn_inform", **train_opts)
    inform.inform(table)
    est_opts = {"cubes": cubes, "hdf5_groupname": "", "chunk_size": 3, "output_mode": "return"}
    first = zpix_rail.ZpixEstimator.make_stage(name="cnn_est", model="cnn.pkl", **est_opts).estimate(test).data
    again = zpix_rail.ZpixEstimator.make_stage(name="cnn_est2", model=inform.get_handle("model"),
                                               **est_opts).estimate(test).data
    assert first.npdf == 5 and os.path.getsize("cnn.pkl") > 0
    np.testing.assert_array_equal(_pdfs(first), _pdfs(again))
    with pytest.raises(ValueError, match="not in the cube store"):
        zpix_rail.ZpixEstimator.make_stage(name="cnn_bad", model="cnn.pkl", **est_opts).estimate(
            {"object_id": np.array([99999])})
