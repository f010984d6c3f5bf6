"""zpix cutouts: synthetic frames with known answers, then the real SDSS field 2583/2/136 and HSC COSMOS.

Synthetic frames carry pixel-integrated Gaussian sources at known sky positions and fluxes,
so centring, flux and co-add weights have exact expectations. The real-data tests follow
issue 5: detect sources with sep, cut 64x64x5 cubes, and check centring, inter-band alignment
and 3" aperture fluxes against the original frames; they skip when ../shared/data/real is absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from click.testing import CliRunner
from scipy.special import erf

from zpix.cli.ingest import cutouts_command
from zpix.ingest import cutouts as cutouts_module
from zpix.ingest.cutouts import (
    FLAG_MISSING_BAND,
    FLAG_PARTIAL,
    CutoutError,
    make_cutouts,
)
from zpix.ingest.frames import FrameIndex, scan_frames, wcs_from_header
from zpix.ingest.resample import (
    find_swarp,
    lanczos3_kernel,
    lanczos3_sample,
    resample_band,
    stamp_window,
    target_wcs,
)

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
SDSS_FIELD = REAL / "sdss_frame_2583_2_136"
HSC_CUBE = REAL / "hsc_cosmos_cutouts" / "Cut_HSC.fits"


# ---------------------------------------------------------------------------------------------
# synthetic frames


def frame_wcs(ra0: float, dec0: float, shape: tuple[int, int], scale: float, rot_deg: float = 0.0) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [(shape[1] + 1) / 2, (shape[0] + 1) / 2]
    s, t = scale / 3600, np.radians(rot_deg)
    w.wcs.cd = [[-s * np.cos(t), s * np.sin(t)], [s * np.sin(t), s * np.cos(t)]]
    w.wcs.radesys = "ICRS"
    return w


def render(w: WCS, shape: tuple[int, int], sources: list[tuple[float, float, float, float]], scale: float
           ) -> np.ndarray:
    """Pixel-integrated circular Gaussians (ra, dec, flux, sigma in arcsec): exact fluxes per pixel."""
    image = np.zeros(shape)
    ys, xs = np.arange(shape[0]), np.arange(shape[1])
    for ra, dec, flux, sigma in sources:
        x0, y0 = w.world_to_pixel_values(ra, dec)
        sig = sigma / scale * np.sqrt(2)
        px = 0.5 * (erf((xs + 0.5 - x0) / sig) - erf((xs - 0.5 - x0) / sig))
        py = 0.5 * (erf((ys + 0.5 - y0) / sig) - erf((ys - 0.5 - y0) / sig))
        image += flux * np.outer(py, px)
    return image


def write_frame(path: Path, band: str, ra0: float, dec0: float, shape: tuple[int, int] = (120, 150),
                scale: float = 0.4, rot_deg: float = 0.0, sources=(), constant: float = 0.0,
                nan_box: tuple[int, int, int, int] | None = None, with_wcs: bool = True,
                weight: float | None = None) -> Path:
    w = frame_wcs(ra0, dec0, shape, scale, rot_deg)
    data = render(w, shape, list(sources), scale) + constant
    if nan_box is not None:
        y0, y1, x0, x1 = nan_box
        data[y0:y1, x0:x1] = np.nan
    header = w.to_header() if with_wcs else fits.Header()
    header["FILTER"] = band
    header["BUNIT"] = "nanomaggy"
    fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(path, overwrite=True)
    if weight is not None:
        fits.PrimaryHDU(np.full(shape, weight, np.float32), header=w.to_header()).writeto(
            str(path).replace(".fits", ".weight.fits"), overwrite=True)
    return path


RA0, DEC0 = 150.0, 2.0


def offset(dra_arcsec: float, ddec_arcsec: float) -> tuple[float, float]:
    return RA0 + dra_arcsec / 3600 / np.cos(np.radians(DEC0)), DEC0 + ddec_arcsec / 3600


def centroid(image: np.ndarray, radius: float = 5.0) -> tuple[float, float]:
    n = image.shape[-1]
    yy, xx = np.mgrid[:n, :n]
    c = (n - 1) / 2
    m = ((xx - c) ** 2 + (yy - c) ** 2 <= radius**2) * image
    return float((m * xx).sum() / m.sum()), float((m * yy).sum() / m.sum())


# ---------------------------------------------------------------------------------------------
# kernels and geometry


def test_lanczos3_kernel_interpolates_and_keeps_flat_images() -> None:
    assert lanczos3_kernel(np.array([0.0]))[0] == 1.0
    assert np.allclose(lanczos3_kernel(np.array([1.0, -2.0, 3.0, 3.5])), 0.0, atol=1e-15)
    rng = np.random.default_rng(1)
    image = rng.normal(size=(20, 20))
    good = np.ones_like(image, bool)
    ys, xs = np.mgrid[4:15, 4:15].astype(float)
    values, ok, _ = lanczos3_sample(image, good, xs.ravel(), ys.ravel())
    assert ok.all() and np.allclose(values, image[4:15, 4:15].ravel(), atol=1e-12)
    flat = np.full((20, 20), 7.0)
    values, ok, _ = lanczos3_sample(flat, good, rng.uniform(3, 15, 200), rng.uniform(3, 15, 200))
    assert ok.all() and np.allclose(values, 7.0)
    # within 3 pixels of a bad pixel or the edge, a sample is not valid
    good[10, 10] = False
    _, ok, _ = lanczos3_sample(image, good, np.array([10.4, 13.2, 1.5]), np.array([10.0, 10.0, 8.0]))
    assert ok.tolist() == [False, True, False]


def test_target_grid_is_centred_north_up_east_left() -> None:
    w = target_wcs(RA0, DEC0, 64, 0.396)
    x, y = w.world_to_pixel_values(RA0, DEC0)
    assert (x, y) == pytest.approx((31.5, 31.5), abs=1e-9)
    ra_n, dec_n = w.pixel_to_world_values(31.5, 41.5)
    ra_e, _ = w.pixel_to_world_values(21.5, 31.5)
    assert dec_n > DEC0 and ra_e > RA0
    assert abs(dec_n - DEC0) * 3600 == pytest.approx(3.96, rel=1e-6)


def test_frame_index_finds_exactly_the_overlapping_frames(tmp_path: Path) -> None:
    paths = []
    for k, (dra, ddec) in enumerate([(dx, dy) for dx in (-120, -50, 0, 60, 130) for dy in (-90, 0, 80)]):
        ra, dec = offset(dra, ddec)
        paths.append(write_frame(tmp_path / f"f{k}.fits", "r", ra, dec, shape=(100, 130), rot_deg=7 * k))
    frames, problems = scan_frames(tmp_path / "*.fits")
    assert not problems and len(frames) == len(paths)
    index = FrameIndex(frames)
    rng = np.random.default_rng(3)
    ra_t, dec_t = offset(rng.uniform(-200, 200, 60), rng.uniform(-150, 150, 60))
    size = 32
    stamp_radius = np.sqrt(2) * size / 2 * 0.4 / 3600 * 1.05
    found = index.candidates(ra_t, dec_t, "r", stamp_radius)
    for i in range(ra_t.size):
        wcs_out = target_wcs(ra_t[i], dec_t[i], size, 0.4)
        truth = {k for k, f in enumerate(frames) if stamp_window(wcs_out, size, f.wcs(), f.shape, margin=0)}
        assert truth <= set(found[i])  # never misses a frame
        # and the tree's radius test prunes: far frames are not returned
        assert len(found[i]) < len(frames)
    assert index.candidates(np.array([RA0]), np.array([DEC0]), "u", 0.01) == [[]]


def test_frames_across_ra_zero_are_found(tmp_path: Path) -> None:
    write_frame(tmp_path / "wrap.fits", "r", 359.997, 0.0, sources=[(0.003, 0.001, 100.0, 0.8)])
    cat = {"ra": np.array([0.003]), "dec": np.array([0.001])}
    report = make_cutouts(tmp_path / "wrap.fits", cat, size=16, out=tmp_path / "wrap.h5", progress=False)
    assert report.n_written == 1
    with h5py.File(tmp_path / "wrap.h5") as f:
        assert f["catalog/coverage_r"][0] == 1.0
        assert centroid(f["images"][0, 0], 3) == pytest.approx((7.5, 7.5), abs=0.02)


# ---------------------------------------------------------------------------------------------
# synthetic frames end to end


@pytest.mark.parametrize("backend", ["lanczos3", "interp"])
def test_point_sources_are_centred_with_their_flux(tmp_path: Path, backend: str) -> None:
    rng = np.random.default_rng(7)
    # four sources 24 arcsec apart (stamps are 19 arcsec wide), at random sub-pixel positions
    targets = [offset(dx + rng.uniform(-0.5, 0.5), dy + rng.uniform(-0.5, 0.5)) for dx in (-12, 12) for dy in (-12, 12)]
    fluxes = [50.0, 80.0, 120.0, 200.0]
    sources = [(ra, dec, fl, 0.9) for (ra, dec), fl in zip(targets, fluxes, strict=True)]
    # bands with different orientations and slightly different scales, as in a real survey
    for band, rot, scale in (("g", 0.0, 0.4), ("r", 33.0, 0.4), ("i", -71.0, 0.41)):
        write_frame(tmp_path / f"{band}.fits", band, RA0, DEC0, shape=(160, 160), scale=scale, rot_deg=rot,
                    sources=sources)
    cat = Table({"ra": [t[0] for t in targets], "dec": [t[1] for t in targets], "objid": [11, 12, 13, 14]})
    out = tmp_path / "c.h5"
    report = make_cutouts(str(tmp_path / "*.fits"), cat, size=48, out=out, backend=backend, pixel_scale_arcsec=0.4,
                          progress=False)
    assert report.bands == ["g", "r", "i"] and report.n_written == 4
    with h5py.File(out) as f:
        images = f["images"][:]
        assert f["ids"][:].tolist() == [11, 12, 13, 14]
        assert f.attrs["bunit"] == "nanomaggy" and f.attrs["backend"] == backend
    for k in range(4):
        for j in range(3):
            xc, yc = centroid(images[k, j], 6)
            assert abs(xc - 23.5) < 0.03 and abs(yc - 23.5) < 0.03, (k, j, xc, yc)
            # units are kept: the stamp holds the source's flux, also in the i band whose 0.41"
            # pixels are resampled to 0.4" (values scaled by the pixel-area ratio)
            assert images[k, j].sum() == pytest.approx(fluxes[k], rel=2e-3)


def test_coadd_is_mean_or_inverse_variance_weighted(tmp_path: Path) -> None:
    write_frame(tmp_path / "a.fits", "r", RA0, DEC0, constant=1.0, weight=1.0)
    write_frame(tmp_path / "b.fits", "r", *offset(3.0, -2.0), constant=3.0, rot_deg=10, weight=3.0)
    cat = {"ra": [RA0], "dec": [DEC0]}
    results = {}
    for name, kwargs in (("mean", {}), ("ivar", {"weight_suffix": ".weight.fits"}),
                         ("variance", {"weight_suffix": ".weight.fits", "weight_type": "variance"})):
        frames = [tmp_path / "a.fits", tmp_path / "b.fits"]
        make_cutouts(frames, cat, size=24, out=tmp_path / f"{name}.h5", progress=False, **kwargs)
        with h5py.File(tmp_path / f"{name}.h5") as f:
            results[name] = f["images"][0, 0]
            assert f["catalog/nframes_r"][0] == 2
            assert f.attrs["coadd"] == ("mean" if name == "mean" else "inverse-variance weighted mean")
    assert np.allclose(results["mean"], 2.0, atol=1e-5)
    assert np.allclose(results["ivar"], (1 * 1 + 3 * 3) / 4, atol=1e-5)
    assert np.allclose(results["variance"], (1 * 1 + 3 / 3) / (1 + 1 / 3), atol=1e-5)


def test_bad_inputs_are_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    t1 = offset(-18.0, 14.0)  # in r and g, west of the z frame
    t2 = offset(-10.0, 0.0)  # in r and g, a NaN hole in g just west of it, west of the z frame
    far = offset(3600.0, 0.0)  # outside every frame
    src = [(RA0, DEC0, 100.0, 1.0), (*t2, 100.0, 1.0)]
    write_frame(tmp_path / "r.fits", "r", RA0, DEC0, sources=src)
    gw = frame_wcs(RA0, DEC0, (120, 150), 0.4)
    gx, gy = gw.world_to_pixel_values(*t2)
    write_frame(tmp_path / "g.fits", "g", RA0, DEC0, sources=src,
                nan_box=(int(gy) - 20, int(gy) + 20, int(gx) + 6, int(gx) + 20))
    # the z frame covers only the sky east of -5 arcsec
    write_frame(tmp_path / "z.fits", "z", *offset(11.0, 0.0), shape=(120, 80), sources=src)
    write_frame(tmp_path / "nowcs.fits", "r", RA0, DEC0, with_wcs=False)
    (tmp_path / "truncated.fits").write_bytes(fits.Header({"SIMPLE": True}).tostring().encode()[:800])
    cat = Table({"id": [1, 2, 3, 4], "ra": [RA0, t1[0], t2[0], far[0]], "dec": [DEC0, t1[1], t2[1], far[1]],
                 "z": [0.1, 0.2, 0.3, 0.4]})
    report = make_cutouts(str(tmp_path / "*.fits"), cat, size=16, out=tmp_path / "c.h5", progress=False)
    assert report.n_written == 3 and report.n_outside == 1
    skipped = "\n".join(report.skipped_frames)
    assert "nowcs.fits: no celestial WCS" in skipped and "truncated.fits" in skipped
    assert report.missing_band_counts["z"] == 2
    summary = report.summary()
    assert "outside every frame" in summary and "nowcs.fits" in summary
    with h5py.File(tmp_path / "c.h5") as f:
        assert f["ids"][:].tolist() == [1, 2, 3]
        assert f["z_spec"][:] == pytest.approx([0.1, 0.2, 0.3])
        flags = f["catalog/flags"][:]
        cov_g, cov_z = f["catalog/coverage_g"][:], f["catalog/coverage_z"][:]
        images = f["images"][:]
        assert f["n_bad"][:].tolist() == [0, 0, 0]  # holes are filled, never NaN
        assert list(f.attrs["bands"]) == ["g", "r", "z"]
    assert flags[0] == 0 and cov_z[0] == 1.0
    assert flags[1] & FLAG_MISSING_BAND and cov_z[1] == 0.0 and np.all(images[1, 2] == 0.0)
    assert flags[2] & FLAG_PARTIAL and 0.3 < cov_g[2] < 0.9
    # the hole is west of the target (right on the north-up, east-left grid): those pixels are
    # filled with 0 while the target itself is intact
    assert images[2, 0, 7:9, 7:9].min() > 0 and (images[2, 0] == 0).sum() >= (1 - cov_g[2]) * 256 - 1
    # --min-coverage leaves the partial ones out
    report = make_cutouts(str(tmp_path / "*.fits"), cat, size=16, out=tmp_path / "d.h5", min_coverage=0.95,
                          progress=False)
    assert report.n_written == 1 and report.n_below_coverage == 2


def test_nothing_usable_gives_one_clear_error(tmp_path: Path) -> None:
    write_frame(tmp_path / "nowcs.fits", "r", RA0, DEC0, with_wcs=False)
    with pytest.raises(CutoutError, match="none of the frames can be used"):
        make_cutouts(tmp_path / "nowcs.fits", {"ra": [RA0], "dec": [DEC0]}, out=tmp_path / "x.h5", progress=False)
    write_frame(tmp_path / "r.fits", "r", RA0, DEC0)
    with pytest.raises(CutoutError, match="outside every frame: 1"):
        make_cutouts(tmp_path / "r.fits", {"ra": [RA0 + 5], "dec": [DEC0]}, out=tmp_path / "x.h5", progress=False)
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.partial").exists()
    with pytest.raises(CutoutError, match="no ra column"):
        make_cutouts(tmp_path / "r.fits", {"alpha_x": [RA0], "dec": [DEC0]}, out=tmp_path / "x.h5", progress=False)


def test_catalogue_columns_are_copied(tmp_path: Path) -> None:
    for band in "gr":
        write_frame(tmp_path / f"{band}.fits", band, RA0, DEC0, sources=[(RA0, DEC0, 60.0, 1.0)])
    cat = Table({"ID": np.array(["a1", "b2"]), "RA": [RA0, RA0 + 1e-3], "DEC": [DEC0, DEC0],
                 "zspec": [0.05, np.nan], "E(B-V)": [0.03, 0.04], "mag_g": [17.0, 18.0], "mag_r": [16.5, 17.2],
                 "magerr_g": [0.01, 0.02], "magerr_r": [0.01, 0.03], "size": [1.5, 2.5]})
    cat.write(tmp_path / "cat.fits")
    make_cutouts(str(tmp_path / "*.fits"), tmp_path / "cat.fits", size=16, out=tmp_path / "c.h5", keep_cols="size",
                 progress=False)
    with h5py.File(tmp_path / "c.h5") as f:
        assert [i.decode() for i in f["ids"][:]] == ["a1", "b2"]
        assert f["z_spec"][0] == pytest.approx(0.05) and np.isnan(f["z_spec"][1])
        assert f["ebv"][:] == pytest.approx([0.03, 0.04])
        assert list(f.attrs["mag_names"]) == ["g", "r"]
        np.testing.assert_allclose(f["mags"][:], [[17.0, 16.5], [18.0, 17.2]], rtol=1e-6)
        np.testing.assert_allclose(f["mag_errs"][:], [[0.01, 0.01], [0.02, 0.03]], rtol=1e-6)
        assert f["catalog/size"][:] == pytest.approx([1.5, 2.5])
        assert f["catalog/ra"][:] == pytest.approx([RA0, RA0 + 1e-3])
        assert f["catalog/row"][:].tolist() == [0, 1]
        assert f.attrs["ebv_source"] == "E(B-V)"


def test_interrupted_run_resumes_from_finished_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_frame(tmp_path / "r.fits", "r", RA0, DEC0, sources=[(RA0, DEC0, 60.0, 1.0)])
    rng = np.random.default_rng(5)
    ra, dec = offset(rng.uniform(-15, 15, 10), rng.uniform(-10, 10, 10))
    cat = {"ra": ra, "dec": dec}
    fresh = tmp_path / "fresh.h5"
    make_cutouts(tmp_path / "r.fits", cat, size=16, out=fresh, block_size=3, progress=False)
    real_run_block = cutouts_module._run_block
    calls: list[int] = []
    fail_on = {2}

    class Interrupted(Exception):
        pass

    def failing(block: int, *args):
        calls.append(block)
        if block in fail_on:
            raise Interrupted
        return real_run_block(block, *args)

    monkeypatch.setattr(cutouts_module, "_run_block", failing)
    out = tmp_path / "resumed.h5"
    with pytest.raises(Interrupted):
        make_cutouts(tmp_path / "r.fits", cat, size=16, out=out, block_size=3, progress=False)
    assert not out.exists()
    parts = sorted(p.name for p in (tmp_path / "resumed.h5.work" / "parts").iterdir())
    assert parts == ["block_000000.npz", "block_000001.npz"]
    calls.clear()
    fail_on.clear()
    report = make_cutouts(tmp_path / "r.fits", cat, size=16, out=out, block_size=3, progress=False)
    assert calls == [2, 3] and report.blocks_reused == 2 and report.blocks_total == 4
    with h5py.File(fresh) as a, h5py.File(out) as b:
        assert np.array_equal(a["images"][:], b["images"][:])
    assert not (tmp_path / "resumed.h5.work").exists()
    # other options invalidate the parts instead of mixing them in
    make_cutouts(tmp_path / "r.fits", cat, size=16, out=out, block_size=3, progress=False, keep_work=True)
    calls.clear()
    make_cutouts(tmp_path / "r.fits", cat, size=20, out=out, block_size=3, progress=False)
    assert calls == [0, 1, 2, 3]


def test_tile_compressed_frames_read_like_plain_ones(tmp_path: Path) -> None:
    write_frame(tmp_path / "r.fits", "r", RA0, DEC0, sources=[(RA0, DEC0, 100.0, 1.0)])
    with fits.open(tmp_path / "r.fits") as hdul:
        # lossless tile compression (GZIP, no quantisation) in HDU 1, as fpack writes it
        packed = fits.CompImageHDU(hdul[0].data, header=hdul[0].header, compression_type="GZIP_1",
                                   quantize_level=0.0)
        fits.HDUList([fits.PrimaryHDU(), packed]).writeto(tmp_path / "packed.fits.fz")
    cat = {"ra": [RA0], "dec": [DEC0]}
    make_cutouts(tmp_path / "r.fits", cat, size=16, out=tmp_path / "plain.h5", progress=False)
    make_cutouts(tmp_path / "packed.fits.fz", cat, size=16, out=tmp_path / "packed.h5", progress=False)
    with h5py.File(tmp_path / "plain.h5") as a, h5py.File(tmp_path / "packed.h5") as b:
        assert np.array_equal(a["images"][:], b["images"][:]) and a["images"][:].sum() > 90


def test_worker_processes_give_the_same_cubes(tmp_path: Path) -> None:
    for band in "gr":
        # gzip-compressed frames: both workers decompress them into the shared cache
        write_frame(tmp_path / f"{band}.fits.gz", band, RA0, DEC0, sources=[(RA0, DEC0, 60.0, 1.0)])
    rng = np.random.default_rng(2)
    ra, dec = offset(rng.uniform(-15, 15, 12), rng.uniform(-10, 10, 12))
    make_cutouts(str(tmp_path / "*.fits.gz"), {"ra": ra, "dec": dec}, size=16, out=tmp_path / "one.h5",
                 block_size=4, progress=False)
    make_cutouts(str(tmp_path / "*.fits.gz"), {"ra": ra, "dec": dec}, size=16, out=tmp_path / "two.h5",
                 block_size=4, workers=2, progress=False)
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "two.h5") as b:
        assert np.array_equal(a["images"][:], b["images"][:])
        assert np.array_equal(a["catalog/coverage_r"][:], b["catalog/coverage_r"][:])


# ---------------------------------------------------------------------------------------------
# the real SDSS field 2583/2/136


@pytest.fixture(scope="session")
def sdss_field(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The five frames decompressed once, sources found with sep on r, and cubes cut for 150 of them."""
    sep = pytest.importorskip("sep")
    if not SDSS_FIELD.is_dir():
        pytest.skip("../shared/data/real/sdss_frame_2583_2_136 is not available beside the project")
    tmp = tmp_path_factory.mktemp("sdss")
    frames = {}
    for band in "ugriz":
        with fits.open(SDSS_FIELD / f"frame-{band}-002583-2-0136.fits.bz2") as hdul:
            data = hdul[0].data.astype(np.float64)
            frames[band] = (data, wcs_from_header(hdul[0].header))
            fits.PrimaryHDU(hdul[0].data, header=hdul[0].header).writeto(tmp / f"frame-{band}.fits")
    data, wcs = frames["r"]
    bkg = sep.Background(data)
    sub = data - bkg.back()
    sep.set_sub_object_limit(4096)
    objects = sep.extract(sub, 5.0, err=bkg.globalrms, minarea=10, deblend_cont=0.005)
    sig = 0.6 * np.sqrt(objects["a"] * objects["b"]) + 0.5
    x, y, wflag = sep.winpos(sub, objects["x"], objects["y"], sig)
    # isolated, unflagged, away from the edges, below saturation in r: the brightest 150
    xy = np.c_[objects["x"], objects["y"]]
    from scipy.spatial import cKDTree

    nearest = cKDTree(xy).query(xy, 2)[0][:, 1]
    ny, nx = data.shape
    ok = ((wflag == 0) & (objects["flag"] == 0) & (nearest > 15) & (objects["peak"] < 200)
          & (x > 45) & (x < nx - 46) & (y > 45) & (y < ny - 46))
    chosen = np.flatnonzero(ok)
    chosen = chosen[np.argsort(-objects["flux"][chosen])][:150]
    ra, dec = wcs.pixel_to_world_values(x[chosen], y[chosen])
    catalog = Table({"objid": chosen, "ra": ra, "dec": dec, "r_flux": objects["flux"][chosen]})
    catalog.write(tmp / "targets.fits")
    report = make_cutouts(str(tmp / "frame-*.fits"), tmp / "targets.fits", size=64, out=tmp / "cubes.h5",
                          progress=False)
    with h5py.File(tmp / "cubes.h5") as f:
        cubes = f["images"][:]
        attrs = dict(f.attrs)
        cat = {k: f["catalog"][k][:] for k in f["catalog"]}
    return SimpleNamespace(tmp=tmp, frames=frames, report=report, cubes=cubes, attrs=attrs, cat=cat,
                           ra=ra, dec=dec, sig=sig[chosen], sky_rms=bkg.globalrms, sep=sep)


@pytest.fixture(scope="session")
def sdss_measure(sdss_field: SimpleNamespace) -> SimpleNamespace:
    """Centroids and 3-arcsec aperture fluxes on the cubes and on the original frames."""
    sep, f = sdss_field.sep, sdss_field
    bands = [str(b) for b in f.attrs["bands"]]
    scale = float(f.attrs["pixel_scale_arcsec"])
    c, r = 31.5, 1.5 / scale
    n = len(f.ra)
    off = np.zeros((n, 5, 2))
    pipeline = np.zeros((n, 5))
    ratio = np.zeros((n, 5))
    snr = np.zeros((n, 5))
    for i in range(n):
        grid = target_wcs(f.ra[i], f.dec[i], 64, scale)
        for j, band in enumerate(bands):
            stamp = np.ascontiguousarray(f.cubes[i, j], dtype=np.float64)
            data, wcs = f.frames[band]
            xf, yf = wcs.world_to_pixel_values(f.ra[i], f.dec[i])
            xs, ys, _ = sep.winpos(stamp, [c], [c], [f.sig[i]])
            off[i, j] = xs[0] - c, ys[0] - c
            # where the frame's own centroid of the source lands on the stamp grid
            xw, yw, _ = sep.winpos(data, [xf], [yf], [f.sig[i]])
            xe, ye = grid.world_to_pixel_values(*wcs.pixel_to_world_values(xw[0], yw[0]))
            pipeline[i, j] = np.hypot(xs[0] - xe, ys[0] - ye)
            flux_frame, err_frame, _ = sep.sum_circle(data, [xf], [yf], r, err=f.sky_rms)
            flux_cube, _, _ = sep.sum_circle(stamp, [c], [c], r)
            ratio[i, j] = flux_cube[0] / flux_frame[0]
            snr[i, j] = flux_frame[0] / err_frame[0]
    bright = snr.min(axis=1) > 50
    dist = np.hypot(off[..., 0], off[..., 1])
    pair = np.max([np.hypot(*(off[:, a] - off[:, b]).T) for a in range(5) for b in range(5)], axis=0)
    return SimpleNamespace(bands=bands, off=off, dist=dist, pair=pair, pipeline=pipeline, ratio=ratio, snr=snr,
                           bright=bright)


def test_real_field_gives_64x64x5_cubes_in_nanomaggies(sdss_field: SimpleNamespace) -> None:
    f = sdss_field
    assert f.report.n_written == 150 >= 50 and f.cubes.shape == (150, 5, 64, 64)
    assert [str(b) for b in f.attrs["bands"]] == list("ugriz")
    assert f.attrs["pixel_scale_arcsec"] == pytest.approx(0.396, abs=2e-4)
    assert f.attrs["bunit"] == "nanomaggy" and f.attrs["survey"] == "sdss"
    assert all(np.all(f.cat[f"coverage_{b}"] == 1.0) for b in "ugriz")
    assert np.all(f.cat["flags"] == 0) and np.all(np.isfinite(f.cubes))


def test_real_field_resampling_preserves_positions(sdss_measure: SimpleNamespace) -> None:
    m = sdss_measure
    assert m.bright.sum() >= 40
    # the centroid on the cube is where the frame's own centroid maps to: the grid is exact
    assert m.pipeline[m.bright].max() < 0.05
    # in r, the detection band, the target is at the stamp centre
    assert m.dist[m.bright, 2].max() < 0.05


def test_real_field_targets_are_centred_and_bands_aligned(sdss_measure: SimpleNamespace) -> None:
    m = sdss_measure
    dist, pair = m.dist[m.bright], m.pair[m.bright]
    # every band: median centroid offset well inside half a pixel, and almost all bright sources
    # within 0.5 pixel; the rest differ by as much on the original frames (colour gradients,
    # differential chromatic refraction of the drift scan), as the test above shows
    assert np.median(dist, axis=0).max() < 0.2
    assert (dist.max(axis=1) <= 0.5).mean() >= 0.85
    assert np.median(pair) < 0.25 and (pair <= 0.5).mean() >= 0.85


def test_real_field_aperture_fluxes_match_the_frames(sdss_measure: SimpleNamespace) -> None:
    m = sdss_measure
    ratio = m.ratio[m.bright]
    assert np.abs(ratio - 1).max() < 0.02
    assert np.abs(np.median(ratio, axis=0) - 1).max() < 0.005


def test_real_field_swarp_and_reproject_agree_with_lanczos3(sdss_field: SimpleNamespace) -> None:
    swarp = find_swarp()
    if swarp is None:
        pytest.skip("SWarp is not on PATH (apt-get install swarp)")
    f = sdss_field
    frames, _ = scan_frames(str(f.tmp / "frame-*.fits"))
    index = FrameIndex(frames)
    from zpix.ingest.frames import FrameReader

    reader = FrameReader(frames, f.tmp / "cache")
    scale = float(f.attrs["pixel_scale_arcsec"])
    for i in (0, 40, 120):
        grid = target_wcs(f.ra[i], f.dec[i], 64, scale)
        for j, band in enumerate("ugriz"):
            ids = index.candidates(f.ra[i], f.dec[i], band, 0.02)[0]
            ref = resample_band(reader, ids, grid, 64, backend="swarp")
            peak = np.abs(ref.image).max()
            ours = f.cubes[i, j]
            assert ref.covered.all()
            assert np.abs(ours - ref.image).max() < 1e-5 * peak
            # reproject's bicubic spline is another interpolating kernel: close, not identical
            interp = resample_band(reader, ids, grid, 64, backend="interp").image
            assert np.abs(interp - ref.image).max() < 0.05 * peak
            assert np.std(interp - ref.image) < 0.06 * np.std(ref.image)
            if peak > 10:
                box = slice(24, 40)
                assert interp[box, box].sum() == pytest.approx(ref.image[box, box].sum(), rel=1e-3)
    reader.close()


def test_cli_on_compressed_real_frames(sdss_field: SimpleNamespace, tmp_path: Path) -> None:
    f = sdss_field
    Table({"id": [7, 8, 9], "ra": f.ra[:3], "dec": f.dec[:3]}).write(tmp_path / "cat.csv", format="ascii.csv")
    out = tmp_path / "cli.h5"
    result = CliRunner().invoke(cutouts_command, [
        "--frames", str(SDSS_FIELD / "frame-*.fits.bz2"), "--catalog", str(tmp_path / "cat.csv"),
        "--size", "64", "--out", str(out), "--bands", "g,r,i", "--no-progress",
        "--pixel-scale", repr(float(f.attrs["pixel_scale_arcsec"]))])
    assert result.exit_code == 0, result.output
    assert "3 of 3 targets as 3-band cubes (g,r,i)" in result.output
    with h5py.File(out) as h:
        assert h["ids"][:].tolist() == [7, 8, 9]
        assert np.allclose(h["images"][:], f.cubes[:3, 1:4], atol=1e-6)
    assert not Path(str(out) + ".work").exists()
    bad = CliRunner().invoke(cutouts_command, ["--frames", str(SDSS_FIELD / "frame-*.fits.bz2"), "--catalog",
                                               str(tmp_path / "cat.csv"), "--out", str(out), "--ra-col", "RA_X"])
    assert bad.exit_code != 0 and "no column 'RA_X'" in bad.output


# ---------------------------------------------------------------------------------------------
# HSC COSMOS cube with a WCS


def test_hsc_cube_keeps_pixel_scale_and_band_order(tmp_path: Path) -> None:
    if not HSC_CUBE.exists():
        pytest.skip("../shared/data/real/hsc_cosmos_cutouts is not available beside the project")
    with fits.open(HSC_CUBE) as hdul:
        cube = hdul[0].data.astype(np.float64)
        wcs = WCS(hdul[0].header).celestial
    # the brightest source, away from the edges
    total = cube.sum(axis=0)
    y, x = np.unravel_index(np.argmax(total[12:-12, 12:-12]), (26, 26))
    y, x = y + 12, x + 12
    ra, dec = wcs.pixel_to_world_values(x, y)
    cat = {"ra": [ra], "dec": [dec]}
    # an odd size puts the target on a pixel centre, so output pixels fall on input pixels
    report = make_cutouts(HSC_CUBE, cat, size=21, out=tmp_path / "hsc.h5", cube_bands="g,r,i,z,y", progress=False)
    assert report.bands == ["g", "r", "i", "z", "y"]
    with h5py.File(tmp_path / "hsc.h5") as f:
        assert f.attrs["pixel_scale_arcsec"] == pytest.approx(0.168, abs=1e-3)
        assert list(f.attrs["bands"]) == ["g", "r", "i", "z", "y"]
        stamps = f["images"][0]
        assert all(f[f"catalog/coverage_{b}"][0] == 1.0 for b in "grizy")
    # the stamp is centred on an input pixel and at the input scale: each plane is the input
    # plane it came from, up to the sub-pixel rotation between the two TAN grids
    window = cube[:, y - 10 : y + 11, x - 10 : x + 11]
    for k in range(5):
        errors = [np.abs(stamps[k] - window[j]).max() for j in range(5)]
        assert int(np.argmin(errors)) == k
        assert errors[k] < 1e-3 * np.abs(window[k]).max()
    # asking for another order gives the planes in that order
    make_cutouts(HSC_CUBE, cat, size=21, out=tmp_path / "rev.h5", cube_bands="g,r,i,z,y", bands="y,z,i,r,g",
                 progress=False)
    with h5py.File(tmp_path / "rev.h5") as f:
        assert list(f.attrs["bands"]) == ["y", "z", "i", "r", "g"]
        assert np.allclose(f["images"][0], stamps[::-1])
    # without band names for the planes the frame is skipped with a message that says what to pass
    with pytest.raises(CutoutError, match="--cube-bands"):
        make_cutouts(HSC_CUBE, cat, size=21, out=tmp_path / "x.h5", progress=False)


def test_scan_cache_and_state_are_json(tmp_path: Path) -> None:
    write_frame(tmp_path / "r.fits", "r", RA0, DEC0)
    make_cutouts(tmp_path / "r.fits", {"ra": [RA0], "dec": [DEC0]}, size=8, out=tmp_path / "c.h5", keep_work=True,
                 progress=False)
    work = tmp_path / "c.h5.work"
    state = json.loads((work / "state.json").read_text())
    assert state["out"].endswith("c.h5") and len(state["key"]) == 24
    scans = list(work.glob("frames-*.json"))
    assert len(scans) == 1 and json.loads(scans[0].read_text())["frames"][0]["band"] == "r"
