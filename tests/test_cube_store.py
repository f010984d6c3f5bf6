from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader

from zpix.cli import main
from zpix.store.cube_store import CubeStore, CubeStoreError, CubeWriter
from zpix.store.dataset import CubeDataset
from zpix.store.importers import import_fits, import_npz


def _writer(path, **kw):
    return CubeWriter(path, bands="ugriz", image_shape=(8, 8), pixel_scale_arcsec=0.396, survey="sdss", **kw)


def test_round_trip_in_chunks(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(30, 5, 8, 8)).astype(np.float32)
    z = rng.uniform(0, 0.4, 30)
    z[3] = np.nan
    with _writer(tmp_path / "c.h5", mag_names="ugriz") as w:
        for s in range(0, 30, 7):
            w.append(images[s:s + 7], z[s:s + 7], np.full(len(z[s:s + 7]), 0.05), np.arange(s, min(30, s + 7)),
                     mags=np.full((len(z[s:s + 7]), 5), 17.0), catalog={"r_mag": z[s:s + 7] + 10})
    with CubeStore(tmp_path / "c.h5") as store:
        assert len(store) == 30 and store.bands == list("ugriz") and store.image_shape == (5, 8, 8)
        np.testing.assert_array_equal(store.images(slice(None)), images)
        np.testing.assert_array_equal(store.images([29, 0, 0]), images[[29, 0, 0]])
        np.testing.assert_array_equal(store.z_spec, z)
        np.testing.assert_array_equal(store.ids, np.arange(30))
        assert store.file["images"].chunks == (1, 5, 8, 8)
        table = store.catalog_table()
        assert list(table["mag_r"][:2]) == [17.0, 17.0] and np.allclose(table["r_mag"], z + 10, equal_nan=True)


def test_crash_leaves_no_complete_looking_file(tmp_path):
    path = tmp_path / "c.h5"
    with pytest.raises(RuntimeError), _writer(path) as w:
        w.append(np.zeros((2, 5, 8, 8)), [0.1, 0.2], [0, 0], [1, 2])
        raise RuntimeError("killed")
    assert not path.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(CubeStoreError, match="not found"):
        CubeStore(path)


def test_existing_file_survives_a_failed_rewrite(tmp_path):
    path = tmp_path / "c.h5"
    with _writer(path) as w:
        w.append(np.ones((2, 5, 8, 8)), [0.1, 0.2], [0, 0], [1, 2])
    with pytest.raises(CubeStoreError), _writer(path) as w:
        w.append(np.ones((2, 4, 8, 8)), [0.1, 0.2], [0, 0], [1, 2])  # wrong band count
    assert len(CubeStore(path)) == 2


def test_bad_pixels_error_drop_zero(tmp_path):
    path = tmp_path / "c.h5"
    images = np.ones((4, 5, 8, 8), np.float32)
    images[1, 2, 3, 3] = np.nan
    images[2, 0, 0, :2] = np.inf
    with _writer(path) as w:
        w.append(images, [0.1] * 4, [0] * 4, range(4))
    with pytest.raises(CubeStoreError, match=r"3 NaN/inf pixels in 2 of 4 objects.*--on-bad"):
        CubeStore(path)
    assert list(CubeStore(path, on_bad="drop").valid_index) == [0, 3]
    assert len(CubeDataset(path, on_bad="drop")) == 2
    zeroed = CubeStore(path, on_bad="zero").images([1, 2])
    assert np.isfinite(zeroed).all() and zeroed[0, 2, 3, 3] == 0 and zeroed.sum() == 2 * 5 * 64 - 3


def test_validation_names_file_and_fix(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((3, 5, 8, 8), np.float32)
        f["z_spec"] = np.zeros(3)
        f.attrs["bands"] = list("ugriz")
    with pytest.raises(CubeStoreError, match=r"bad\.h5: missing required dataset\(s\) \['ebv', 'ids'\]"):
        CubeStore(path)
    with h5py.File(path, "a") as f:
        f["ebv"] = np.zeros(3)
        f["ids"] = np.arange(3)
        f.attrs["bands"] = list("ugri")
    with pytest.raises(CubeStoreError, match="lists 4 bands"):
        CubeStore(path)
    with h5py.File(path, "a") as f:
        f.attrs["bands"] = list("ugriz")
        del f["images"]
        f["images"] = np.zeros((3, 8, 8, 5), np.float64)
    with pytest.raises(CubeStoreError, match="dtype float64"):
        CubeStore(path)


@pytest.mark.parametrize("workers", [0, 2])
def test_dataset_with_workers(toy_cubes, workers):
    ds = CubeDataset(toy_cubes, use_mags=True)
    loader = DataLoader(ds, batch_size=16, num_workers=workers)
    seen = []
    with CubeStore(toy_cubes) as store:
        for batch in loader:
            rows = batch["index"].numpy()
            seen.extend(rows)
            np.testing.assert_array_equal(batch["image"].numpy(), store.images(rows))
            np.testing.assert_allclose(batch["z"].numpy(), store.z_spec[rows].astype(np.float32))
            assert batch["mags"].shape == (len(rows), 5) and batch["image"].dtype == torch.float32
    assert sorted(seen) == list(range(64))


def test_import_pasquet_npz_streams_blocks(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(13, 8, 8, 5)).astype(np.float32)
    np.savez(tmp_path / "ex.npz", data=data, z=rng.uniform(0, .3, 13), ebv=rng.uniform(0, .1, 13))
    import_npz(tmp_path / "ex.npz", tmp_path / "ex.h5", block=4)
    with CubeStore(tmp_path / "ex.h5") as store:
        np.testing.assert_array_equal(store.images(slice(None)), np.moveaxis(data, 3, 1))
    with pytest.raises(CubeStoreError, match="5 bands but 4 band names"):
        import_npz(tmp_path / "ex.npz", tmp_path / "ex2.h5", bands="griz")


def test_import_cli_and_fits(tmp_path):
    from astropy.io import fits
    from astropy.table import Table

    cubes = np.arange(3 * 5 * 6 * 6, dtype=np.float32).reshape(3, 5, 6, 6)
    for i, cube in enumerate(cubes):
        fits.PrimaryHDU(cube).writeto(tmp_path / f"g{i}.fits")
    Table({"file": [f"g{i}.fits" for i in range(3)], "id": [10, 11, 12], "z_spec": [0.1, 0.2, 0.3],
           "ebv": [0.01, 0.02, 0.03], "r": [16.0, 17.0, 15.5]}).write(tmp_path / "cat.fits")
    result = CliRunner().invoke(main, ["import", str(tmp_path / "cat.fits"), "--out", str(tmp_path / "f.h5"),
                                       "--mag-cols", "r"])
    assert result.exit_code == 0, result.output
    with CubeStore(tmp_path / "f.h5") as store:
        np.testing.assert_array_equal(store.images(slice(None)), cubes)
        assert list(store.ids) == [10, 11, 12] and store.mag_names == ["r"]
    bad = CliRunner().invoke(main, ["import", str(tmp_path / "cat.fits"), "--out", str(tmp_path / "g.h5"),
                                    "--z-col", "zspec"])
    assert bad.exit_code != 0 and "lacks column(s) ['zspec']" in bad.output
    assert not os.path.exists(tmp_path / "g.h5")
    with pytest.raises(CubeStoreError, match="has 5 bands, expected 4"):
        import_fits(tmp_path / "cat.fits", tmp_path / "h.h5", bands="griz")


def test_info_command(toy_cubes):
    result = CliRunner().invoke(main, ["info", str(toy_cubes)])
    assert result.exit_code == 0 and "64 objects" in result.output
