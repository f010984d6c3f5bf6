"""zpix inject on a real SDSS field (../shared): recovery of injected flux and position, the PSF FWHM
against star cutouts, the noise of the cutouts against the frame's; plus the pieces without data."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
FIELD = "004510-4-0030"  # b = 78°: a clean high-latitude field
FRAMES = sorted(glob.glob(str(SHARED / "sdss_frames_9_fields" / f"frame-*-{FIELD}.fits.bz2")))
needs_frames = pytest.mark.skipif(len(FRAMES) != 5, reason="../shared SDSS frames not available")
BANDS = "ugriz"


@pytest.fixture(scope="module")
def injected(tmp_path_factory):
    from zpix.inject.pipeline import inject

    d = tmp_path_factory.mktemp("inject")
    out = d / "inj.h5"
    report = inject(FRAMES, 12, out, seed=7, per_copy=12, workers=1, work_dir=d / "work", keep_work=True,
                    progress=False)
    return out, d / "work", report


@needs_frames
def test_injected_store_and_columns(injected):
    from zpix.store.cube_store import CubeStore

    out, _, report = injected
    assert report.n_written == 12
    with CubeStore(out) as s:
        assert s.bands == list(BANDS) and s.image_shape == (5, 64, 64)
        cols = set(s.catalog_columns)
        for b in BANDS:
            assert {f"psf_fwhm_{b}", f"sky_noise_{b}", f"true_{b}", f"inj_flux_{b}"} <= cols
        assert {"field", "dist_nearest_real", "z_true", "hlr_arcsec", "detected"} <= cols
        assert set(s.column("catalog/field")) == {"4510-4-30"}
        np.testing.assert_allclose(s.z_spec, s.column("catalog/z_true"))
        # E(B-V) stand-in of the field, the same for every object, and the measured (not true) magnitudes
        assert np.ptp(s.ebv) == 0 and 0 < s.ebv[0] < 0.1
        mags = s.column("mags")
        true = s.column("catalog/true_r") + 2.285 * s.ebv
        assert np.all(np.isfinite(mags)) and np.std(mags[:, 2] - true) > 1e-3
        assert s.column("catalog/detected").mean() == 1.0
        assert np.all(s.column("catalog/dist_nearest_real") > 0)


@needs_frames
def test_recovery_aperture_flux_and_centre(injected):
    """3" aperture flux in the cube = injected (noiseless model) flux within 2% (median); centre within 0.5 px."""
    import sep

    from zpix.store.cube_store import CubeStore

    out, _, _ = injected
    with CubeStore(out) as s:
        images = s.images(slice(None)).astype(np.float64)
        scale = s.pixel_scale_arcsec
        c = (images.shape[-1] - 1) / 2
        bright = s.column("catalog/true_r") < 18.0
        assert bright.sum() >= 8
        for j, b in enumerate(BANDS):
            flux, xs, ys = [], [], []
            for img in images[bright, j]:
                img = np.ascontiguousarray(img)
                f, _, _ = sep.sum_circle(img, np.array([c]), np.array([c]), 1.5 / scale, subpix=0)
                flux.append(f[0])
                x, y, _ = sep.winpos(img, np.array([c]), np.array([c]), np.array([1.5]))
                xs.append(x[0])
                ys.append(y[0])
            ratio = np.array(flux) / s.column(f"catalog/true_ap3_{b}")[bright]
            assert abs(np.median(ratio) - 1) < 0.02, (b, np.median(ratio))
            if b in "gri":  # u and z: too noisy for sub-pixel centroids of every galaxy
                assert np.median(np.hypot(np.array(xs) - c, np.array(ys) - c)) < 0.5, b
            off = np.hypot(np.median(np.array(xs) - c), np.median(np.array(ys) - c))
            assert off < 0.5, (b, off)


@needs_frames
def test_psf_fwhm_matches_star_cutouts(injected):
    """The ePSF's FWHM = the FWHM of the same stars cut out by the zpix cutouts path, within 5%."""
    from zpix.ingest.cutouts import make_cutouts
    from zpix.inject.psf import FieldCalibration, Frame, moffat_fwhm
    from zpix.store.cube_store import CubeStore

    _, work, _ = injected
    cal = FieldCalibration.load(work / "fields", "4510-4-30")
    ref = Frame.load(work / "frames" / "4510-4-30_r.npz")  # the decompressed copy calibration kept
    xy = cal.bands["r"].star_positions
    ra, dec = ref.wcs.all_pix2world(xy[:, 0], xy[:, 1], 0)
    out = work / "stars.h5"
    make_cutouts(FRAMES, {"ra": ra, "dec": dec}, size=25, out=out, workers=1, progress=False,
                 work_dir=work / "stars.work")
    with CubeStore(out) as s:
        stars = s.images(slice(None)).astype(np.float64)
    checked = 0
    for j, b in enumerate(BANDS):
        psf = cal.bands[b]
        if psf.n_stars < 12:
            continue
        fwhm = np.median([moffat_fwhm(st, psf.pixel_scale)[0] for st in stars[:, j]])
        # Lanczos-3 resampling of an undersampled star broadens its core: +1-3% at FWHM ≥ 2.4 pixels,
        # +4.6% in this field's i (2.2 pixels); the spec's 5% holds down to 2.3 pixels, 7% below
        tol = 0.05 if psf.fwhm_arcsec / psf.pixel_scale >= 2.3 else 0.07
        assert abs(fwhm / psf.fwhm_arcsec - 1) < tol, (b, fwhm, psf.fwhm_arcsec)
        assert fwhm >= 0.98 * psf.fwhm_arcsec  # resampling can only blur
        checked += 1
    assert checked >= 3


@needs_frames
def test_cutout_noise_matches_frame_noise(injected):
    """Pixel noise away from sources in the injected cutouts = the frame's sky noise × the Lanczos-3 factor."""
    import sep
    from astropy.stats import sigma_clipped_stats
    from scipy import ndimage

    from zpix.inject.measure import resampled_noise_factor
    from zpix.store.cube_store import CubeStore

    out, _, _ = injected
    factor = resampled_noise_factor()
    assert 0.85 < factor < 0.93
    with CubeStore(out) as s:
        images = s.images(slice(None)).astype(np.float64)
        for j, b in enumerate(BANDS):
            sigma = float(s.column(f"catalog/sky_noise_{b}")[0])
            empty = []
            for img in images[:, j]:
                img = np.ascontiguousarray(img)
                _, seg = sep.extract(img, 1.5, err=sigma, minarea=5, segmentation_map=True)
                empty.append(img[~ndimage.binary_dilation(seg > 0, iterations=4)])
            std = sigma_clipped_stats(np.concatenate(empty), sigma=3.0)[2]
            assert abs(std / (sigma * factor) - 1) < 0.05, (b, std, sigma * factor)


@needs_frames
def test_resume_and_fields_summary(injected, tmp_path):
    from zpix.inject.pipeline import fields_path, inject

    out, work, _ = injected
    again = inject(FRAMES, 12, tmp_path / "again.h5", seed=7, per_copy=12, work_dir=work, keep_work=True,
                   progress=False)
    assert again.copies_reused == again.n_copies == 1
    from zpix.store.cube_store import CubeStore

    with CubeStore(out) as a, CubeStore(tmp_path / "again.h5") as b:
        np.testing.assert_array_equal(a.images(slice(None)), b.images(slice(None)))
    doc = json.loads(fields_path(out).read_text())
    r = doc["4510-4-30"]["bands"]["r"]
    assert r["method"] == "epsf" and r["n_stars"] >= 12 and 0.6 < r["fwhm_arcsec"] < 2.5


def test_place_never_overlaps_and_avoids_saturation():
    from zpix.inject.place import integral, place

    sat = np.zeros((400, 500), bool)
    sat[180:220, 230:270] = True
    ident = (lambda x, y: (x, y), integral(sat), sat.shape)
    pos = place(40, ref_shape=sat.shape, band_maps=[ident], stamp=48, render=64, margin=40,
                rng=np.random.default_rng(0))
    assert 5 < len(pos) <= 40
    d = np.maximum(np.abs(pos[:, None, 0] - pos[None, :, 0]), np.abs(pos[:, None, 1] - pos[None, :, 1]))
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 48
    assert np.all((pos >= 40) & (pos <= np.array([500, 400]) - 41))
    # no render box (64 px) touches the saturated block
    assert not np.any((np.abs(pos[:, 0] - 249.5) < 20 + 32) & (np.abs(pos[:, 1] - 199.5) < 20 + 32))


def test_render_flux_centre_and_units():
    """A galaxy drawn through a Moffat ePSF has its flux and centre where asked, in a rotated frame."""
    import galsim

    from zpix.inject.psf import BandPSF
    from zpix.inject.render import render_galaxy

    img = galsim.Moffat(beta=3.5, fwhm=3.0).drawImage(nx=51, ny=51, scale=0.5).array
    psf = BandPSF(band="r", method="moffat", n_stars=0, fwhm_arcsec=1.2, moffat_beta=3.5, fwhm_eff_arcsec=1.3,
                  sky_noise=0.03, electrons_per_nmgy=800.0, pixel_scale=0.396, oversampling=2, depth_5sigma=22.0,
                  image=img / img.sum(), star_positions=np.zeros((0, 2)))
    g = {"flux_bulge": np.array([0, 0, 30.0, 0, 0]), "flux_disk": np.array([0, 0, 70.0, 0, 0]), "hlr_bulge": 0.5,
         "hlr_disk": 1.5, "q_bulge": 0.8, "q_disk": 0.4, "position_angle": 30.0}
    c, s = np.cos(0.7), np.sin(0.7)
    jac = 0.396 * np.array([[c, -s], [s, c]])
    model, x0, y0 = render_galaxy(g, 2, psf, jac, 100.3, 200.7, 96)
    assert abs(model.sum() / 100.0 - 1) < 0.02
    yy, xx = np.mgrid[:96, :96]
    assert abs((model * xx).sum() / model.sum() + x0 - 100.3) < 0.05
    assert abs((model * yy).sum() / model.sum() + y0 - 200.7) < 0.05
    empty, _, _ = render_galaxy(g, 0, psf, jac, 100.3, 200.7, 96)
    assert not empty.any()


def test_background_of_quantised_frames_is_unbiased():
    # SDSS frames are integer counts times calib: the mode estimate of a cell sits on the count grid
    from zpix.inject.measure import local_background

    rng = np.random.default_rng(5)
    step, sigma_dn, sky = 0.0119, 4.1, 13.6  # u band of 7264/3/111: nmgy per count, noise and sky (counts)
    data = (np.round(sky + sigma_dn * rng.standard_normal((512, 1024))) - sky) * step
    sigma = sigma_dn * step
    plain = local_background(data, None).mean() / sigma
    dithered = local_background(data, None, np.full(1024, step), np.random.default_rng(0)).mean() / sigma
    assert plain > 0.1  # the bias the dither removes (0.21σ for this sky)
    assert abs(dithered) < 0.02
    with pytest.raises(ValueError, match="rng"):
        local_background(data, None, np.full(1024, step))


@needs_frames
def test_empty_apertures_on_real_u_frame(injected):
    # sums in blank 16-pixel circles (the median Kron aperture) after the background subtraction: an
    # offset here is what a faint galaxy's u magnitude inherits
    import sep
    from scipy import ndimage

    from zpix.inject.measure import _shift_int, local_background
    from zpix.inject.psf import Frame, detect

    _, work, _ = injected
    fr = {b: Frame.load(next((work / "frames").glob(f"*_{b}.npz"))) for b in ("r", "u")}
    _, seg, _, _ = detect(fr["r"].data)
    ny, nx = seg.shape
    ra, dec = fr["r"].wcs.all_pix2world((nx - 1) / 2, (ny - 1) / 2, 0)
    bx, by = fr["u"].wcs.all_world2pix(ra, dec, 0)
    seg = _shift_int(seg, int(round(float(bx) - (nx - 1) / 2)), int(round(float(by) - (ny - 1) / 2)), seg.shape)
    far = ~ndimage.binary_dilation(seg > 0, iterations=18)
    yy, xx = np.nonzero(far[40:-40, 40:-40])
    pick = np.random.default_rng(1).choice(len(xx), 400, replace=False)
    x, y = xx[pick] + 40.0, yy[pick] + 40.0
    data = np.asarray(fr["u"].data, np.float64)
    grown = ndimage.binary_dilation(seg > 0, iterations=3)
    per_px = {}
    for name, back in (("plain", local_background(data, grown)),
                       ("dithered", local_background(data, grown, fr["u"].calib, np.random.default_rng(0)))):
        f, _, _ = sep.sum_circle(np.ascontiguousarray(data - back), x, y, 16.0, subpix=1)
        per_px[name] = f.mean() / (np.pi * 16.0**2) / np.std(data[far])
    assert per_px["plain"] < -0.08  # field 4510/4/30's u sky falls badly on the count grid
    assert abs(per_px["dithered"]) < 0.04


def test_asinh_magnitudes_match_pogson_when_bright():
    from zpix.inject.measure import SDSS_ASINH_B, asinh_mag

    m, e = asinh_mag(np.array([100.0, 1e-3]), np.array([1.0, 0.1]), SDSS_ASINH_B[2])
    assert abs(m[0] - 17.5) < 1e-4 and abs(e[0] - 1.0857 / 100) < 1e-4
    assert np.isfinite(m[1]) and m[1] > 24


def test_ebv_stand_in_and_bad_frames(tmp_path):
    from zpix.inject.pipeline import inject
    from zpix.inject.psf import InjectError, ebv_stand_in, group_fields

    assert ebv_stand_in(90.0) == pytest.approx(0.02)
    assert ebv_stand_in(30.0) == pytest.approx(0.04)
    assert ebv_stand_in(-1.0) == 0.5
    with pytest.raises(InjectError, match="lacks"):
        group_fields(["a/frame-r-004510-4-0030.fits.bz2"])
    with pytest.raises(InjectError, match="not an SDSS"):
        group_fields(["a/image.fits"])
    with pytest.raises(InjectError, match="no frame files"):
        inject(str(tmp_path / "nothing-*.fits"), 5, tmp_path / "x.h5", progress=False)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    from click.testing import CliRunner

    from zpix.cli import main

    res = CliRunner().invoke(main, ["inject", "--frames", str(tmp_path / "frame-*.fits.bz2"), "--n", "3",
                                    "--out", str(tmp_path / "x.h5")])
    assert res.exit_code == 1 and "no frame files match" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.h5").exists()
