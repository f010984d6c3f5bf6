"""Compact PDF formats: qp representations, their bytes and what they cost against hist32."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import qp

from zpix.pdf import RedshiftGrid, gaussian_pdfs, point_estimates
from zpix.prediction.pdf_formats import compare_formats, encode, parse_pdf_format, roundtrip


@pytest.fixture(scope="module")
def pdfs():
    grid = RedshiftGrid()
    rng = np.random.default_rng(1)
    z = rng.uniform(0.03, 0.35, 300)
    mu = z + rng.normal(0, 0.015, z.size)
    p = 0.8 * gaussian_pdfs(mu, 0.012, grid) + 0.2 * gaussian_pdfs(mu + 0.06, 0.03, grid)
    return grid, p, z


def test_parse_rejects_unknown_specs():
    assert parse_pdf_format("quantiles:20").k == 20
    assert parse_pdf_format(None).spec == "hist16"  # the measured default (docs/survey_scale.md)
    for bad in ("hist8", "quantiles:1", "quantiles:x", "gauss"):
        with pytest.raises(ValueError, match="unknown PDF format"):
            parse_pdf_format(bad)


@pytest.mark.parametrize("spec, rep, dtype, width", [
    ("hist32", "hist", "float32", 180), ("hist16", "hist", "float16", 180),
    ("packed8", "packed_interp", "uint8", 180), ("quantiles:20", "quant", "float32", 22)])
def test_written_file_is_the_qp_representation_with_the_stated_bytes(pdfs, tmp_path, spec, rep, dtype, width):
    grid, p, _ = pdfs
    path = tmp_path / "f.hdf5"
    encode(p[:50], grid, spec).write_to(str(path))
    with h5py.File(path) as f:
        main = {"hist": "pdfs", "packed_interp": "ypacked", "quant": "locs"}[rep]
        assert f["meta/pdf_name"][0].decode() == rep
        assert f[f"data/{main}"].dtype == np.dtype(dtype) and f[f"data/{main}"].shape == (50, width)
        per_object = sum(d.dtype.itemsize * int(np.prod(d.shape[1:])) for d in f["data"].values())
    assert per_object == parse_pdf_format(spec).bytes_per_object(grid)
    back = qp.read(str(path))
    assert back.npdf == 50 and back.gen_class.name == rep


def test_roundtrip_accuracy_orders_the_formats(pdfs):
    grid, p, _ = pdfs
    ref = point_estimates(p, grid)
    err = {}
    for spec in ("hist32", "hist16", "packed8", "quantiles:10", "quantiles:40"):
        back = roundtrip(p, grid, spec)
        np.testing.assert_allclose(back.sum(axis=1), 1.0, atol=1e-9)
        err[spec] = np.max(np.abs(point_estimates(back, grid)["z_median"] - ref["z_median"]))
    assert err["hist32"] < 1e-6 and err["hist16"] < 1e-4
    # the median is one of the stored quantile levels only for odd K; both stay within a bin
    assert err["quantiles:40"] < grid.width and err["quantiles:10"] < 2 * grid.width
    assert err["packed8"] < grid.width


def test_compare_formats_is_zero_for_the_reference_and_reports_every_change(pdfs):
    grid, p, z = pdfs
    table = compare_formats(p, grid, z, ["hist32", "hist16", "quantiles:5"])
    assert table["hist32"]["crps_change"] == 0.0 and table["hist32"]["bytes_per_object"] == 720
    assert table["hist16"]["bytes_per_object"] == 360 and abs(table["hist16"]["crps_change"]) < 1e-7
    q5 = table["quantiles:5"]
    assert q5["bytes_per_object"] == 28
    # five quantiles cannot hold a bimodal PDF's widths: the change is real and reported
    assert q5["width68_rel_change_median"] > 1e-3
    for key in ("crps_change", "pit_ks_change", "sigma_mad_change", "width68_change"):
        assert np.isfinite(q5[key])
