"""Tests of the prediction directory: streaming writes, atomicity, qp compatibility, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from zpix.pdf import RedshiftGrid, gaussian_pdfs, point_estimates
from zpix.prediction.format import (
    CORE_COLUMNS,
    PredictionWriter,
    iter_pdfs,
    read_predictions,
    write_predictions,
)

GRID = RedshiftGrid()


def _fake(n, seed=0):
    rng = np.random.default_rng(seed)
    zs = rng.uniform(0.02, 0.35, n)
    mu = zs + rng.normal(0, 0.01, n)
    p = gaussian_pdfs(mu, rng.uniform(0.005, 0.03, n), GRID)
    return np.arange(1000, 1000 + n), p, zs, {"r_mag": rng.uniform(14, 17.8, n), "ebv": rng.uniform(0, 0.3, n)}


def test_streaming_write_roundtrips_exactly(tmp_path):
    ids, p, zs, extra = _fake(257)
    zs[5] = np.nan  # unknown spec-z
    out = tmp_path / "pred"
    with PredictionWriter(out, GRID, n_total=257, method="cnn", meta={"model": "pasquet2019", "seed": 3}) as w:
        for s in range(0, 257, 100):  # three chunks, the last partial
            sl = slice(s, s + 100)
            w.write(ids[sl], p[sl], zs[sl], {k: v[sl] for k, v in extra.items()})
    pred = read_predictions(out)
    assert pred.method == "cnn" and pred.meta["meta"] == {"model": "pasquet2019", "seed": 3}
    assert pred.grid == GRID
    assert list(pred.catalog.columns) == list(CORE_COLUMNS) + ["r_mag", "ebv"]
    np.testing.assert_array_equal(pred.catalog["id"], ids)
    np.testing.assert_allclose(pred.pdfs, p, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(pred.catalog["z_spec"].to_numpy(), zs)  # NaN stays NaN
    np.testing.assert_array_equal(pred.catalog["r_mag"].to_numpy(), extra["r_mag"])
    est = point_estimates(p, GRID)
    for k, v in est.items():
        np.testing.assert_allclose(pred.catalog[k], v, atol=1e-12)
    # chunked reading gives the same rows
    chunks = list(iter_pdfs(out, chunk_size=64))
    assert [c[:2] for c in chunks] == [(0, 64), (64, 128), (128, 192), (192, 256), (256, 257)]
    np.testing.assert_allclose(np.vstack([c[2] for c in chunks]), p, atol=1e-13)


def test_catalogue_row_groups_gather_many_small_chunks(tmp_path):
    import pyarrow.parquet as pq

    ids, p, zs, _ = _fake(1000)
    with PredictionWriter(tmp_path / "pred", GRID, 1000, "cnn", row_group_rows=256) as w:
        for s in range(0, 1000, 10):  # 100 prediction batches of 10
            w.write(ids[s:s + 10], p[s:s + 10], zs[s:s + 10])
    meta = pq.ParquetFile(tmp_path / "pred" / "catalog.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [256, 256, 256, 232]
    cat = read_predictions(tmp_path / "pred").catalog
    np.testing.assert_array_equal(cat["id"], ids)
    np.testing.assert_array_equal(cat["z_spec"], zs)


def test_qp_reads_the_pdf_file(tmp_path):
    import qp

    ids, p, zs, _ = _fake(50, seed=1)
    out = write_predictions(tmp_path / "pred", ids, p, GRID, zs, method="knn", chunk_size=20)
    ens = qp.read(str(out / "pdfs.hdf5"))
    assert ens.gen_class.name == "hist" and ens.npdf == 50
    np.testing.assert_allclose(ens.objdata["pdfs"] * GRID.width, p, atol=1e-13)
    np.testing.assert_allclose(ens.ancil["zmean"], point_estimates(p, GRID)["z_mean"])
    # qp's CDF at the truth is our PIT
    from zpix.evaluation.metrics import pit

    np.testing.assert_allclose(ens.cdf(zs[:, None])[:, 0], pit(p, GRID, zs), atol=1e-12)


def test_float32_storage(tmp_path):
    ids, p, zs, _ = _fake(30, seed=2)
    with PredictionWriter(tmp_path / "f32", GRID, 30, "cnn", pdf_dtype="float32") as w:
        w.write(ids, p, zs)
    pred = read_predictions(tmp_path / "f32")
    np.testing.assert_allclose(pred.pdfs, p, atol=1e-7)


def test_exception_mid_write_leaves_nothing(tmp_path):
    ids, p, zs, _ = _fake(200)
    out = tmp_path / "pred"
    with pytest.raises(RuntimeError, match="boom"):
        with PredictionWriter(out, GRID, 200, "cnn") as w:
            w.write(ids[:100], p[:100], zs[:100])
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone too


def test_short_write_is_refused_and_leaves_nothing(tmp_path):
    ids, p, zs, _ = _fake(200)
    out = tmp_path / "pred"
    w = PredictionWriter(out, GRID, 200, "cnn")
    w.write(ids[:150], p[:150], zs[:150])
    with pytest.raises(RuntimeError, match="150 objects written but n_total=200"):
        w.close()
    assert list(tmp_path.iterdir()) == []


def test_no_overwrite_unless_asked(tmp_path):
    ids, p, zs, _ = _fake(10)
    out = write_predictions(tmp_path / "pred", ids, p, GRID, zs)
    with pytest.raises(FileExistsError, match="already exists"):
        PredictionWriter(out, GRID, 10, "cnn")
    write_predictions(out, ids[::-1], p[::-1], GRID, zs[::-1], overwrite=True, method="again")
    pred = read_predictions(out)
    assert pred.method == "again" and pred.catalog["id"].iloc[0] == ids[-1]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["pred"]


def test_bad_chunks_are_refused(tmp_path):
    ids, p, zs, extra = _fake(20)
    with pytest.raises(ValueError, match="ids"):
        with PredictionWriter(tmp_path / "a", GRID, 20, "cnn") as w:
            w.write(ids[:5], p[:6], zs[:6])
    with pytest.raises(ValueError, match="exceed n_total"):
        with PredictionWriter(tmp_path / "b", GRID, 10, "cnn") as w:
            w.write(ids, p, zs)
    with pytest.raises(ValueError, match="same extra columns"):
        with PredictionWriter(tmp_path / "c", GRID, 20, "cnn") as w:
            w.write(ids[:10], p[:10], zs[:10], {"r_mag": extra["r_mag"][:10]})
            w.write(ids[10:], p[10:], zs[10:])
    with pytest.raises(ValueError, match="clashes"):
        with PredictionWriter(tmp_path / "d", GRID, 20, "cnn") as w:
            w.write(ids, p, zs, {"z_mean": zs})
    with pytest.raises(ValueError, match="bins"):
        with PredictionWriter(tmp_path / "e", GRID, 20, "cnn") as w:
            w.write(ids, p[:, :90], zs)
    assert list(tmp_path.iterdir()) == []


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such prediction directory"):
        read_predictions(tmp_path / "nope")
    ids, p, zs, _ = _fake(10)
    out = write_predictions(tmp_path / "pred", ids, p, GRID, zs)
    (out / "pdfs.hdf5").unlink()
    with pytest.raises(FileNotFoundError, match=r"pred is not a complete prediction directory: missing pdfs.hdf5"):
        read_predictions(out)
    out2 = write_predictions(tmp_path / "pred2", ids, p, GRID, zs)
    cat = pd.read_parquet(out2 / "catalog.parquet").drop(columns=["z_spec"])
    cat.to_parquet(out2 / "catalog.parquet")
    with pytest.raises(ValueError, match=r"catalog.parquet: missing column\(s\) \['z_spec'\]"):
        read_predictions(out2)
    out3 = write_predictions(tmp_path / "pred3", ids, p, GRID, zs)
    pd.read_parquet(out3 / "catalog.parquet").iloc[:5].to_parquet(out3 / "catalog.parquet")
    with pytest.raises(ValueError, match="holds 10 PDFs but catalog.parquet has 5 rows"):
        read_predictions(out3)


def test_string_ids_and_catalog_only_read(tmp_path):
    ids = np.array([f"gal{i:03d}" for i in range(12)])
    _, p, zs, _ = _fake(12)
    out = write_predictions(tmp_path / "pred", ids, p, GRID, None, chunk_size=5)
    pred = read_predictions(out, load_pdfs=False)
    assert pred.pdfs is None and len(pred) == 12
    assert list(pred.catalog["id"]) == list(ids)
    assert pred.catalog["z_spec"].isna().all()
