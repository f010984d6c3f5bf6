"""Per-field calibration of real SDSS frames: stars, the empirical PSF, its FWHM and the sky noise.

For every band of a field (one SDSS ``frame-{b}-RUN-CAMCOL-FIELD.fits.bz2`` per band):

* **Sources** are detected with ``sep`` (Barbary 2016, the SExtractor algorithms of Bertin &
  Arnouts 1996) on the r frame: 3σ per pixel over ≥ 5 pixels after the matched filter, deblended
  (32 levels, contrast 0.005).
* **Stars** are the point-source locus of the r band: isolated (no other detection within
  :data:`ISOLATION_PX`), unflagged, unsaturated (peak below :data:`STAR_PEAK_DN` raw counts), round
  and with a half-light radius within 12% of the locus mode (the stellar sequence of the
  size–magnitude plane).  Their positions are carried to each band through the WCS, and each band
  keeps the stars with S/N ≥ :data:`STAR_MIN_SNR` there.
* **PSF**: with ≥ :data:`MIN_EPSF_STARS` stars, photutils' ``EPSFBuilder`` (Anderson & King 2000)
  builds an empirical, oversampled (×2) effective PSF from the star stamps: the real core and
  wings (out to the stamp's 12-pixel radius) of that frame.  With fewer stars (low-S/N u or z
  frames, crowded fields) the ePSF would be noise-dominated, so a circular Moffat (Moffat 1969),
  fitted to every star and combined by the median of its FWHM and β, is drawn instead, pixel
  convolved by GalSim, i.e. the same kind of effective PSF.  Either is an image normalised to
  unit sum, the input of a GalSim ``InterpolatedImage``.
* **FWHM**: a circular Moffat fitted to the effective PSF (:func:`moffat_fwhm`); the same fit gives
  the FWHM of star cutouts, so the two can be compared.
* **Sky noise**: the standard deviation (3σ-clipped, astropy ``sigma_clipped_stats``) of the pixels
  outside the sources' segmentation map grown by 4 pixels.
* **Saturation**: raw counts are rebuilt from the frame (``img / calib + sky``, SDSS frame data
  model); pixels above :data:`SATURATION_DN`, grown by :data:`SATURATION_GROW` pixels to cover
  bleed trails and the stars' halos, are where nothing may be injected.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zpix.atomic import atomic_file, write_text

SDSS_BANDS = ("u", "g", "r", "i", "z")
REFERENCE_BAND = "r"
# SDSS CCD gains (e-/DN) per camcol (rows 1-6) and band (u g r i z): SDSS DR frame data model
# ("frame" page, gain table; u camcol 2 and i camcol 2 changed slightly after run 1100, ignored here)
SDSS_GAIN = np.array([
    [1.62, 3.32, 4.71, 5.165, 4.745],
    [1.595, 3.855, 4.6, 6.565, 5.155],
    [1.59, 3.845, 4.72, 4.86, 4.885],
    [1.6, 3.995, 4.76, 4.885, 4.775],
    [1.47, 4.05, 4.725, 4.64, 3.48],
    [2.17, 4.035, 4.895, 4.76, 4.69],
])
# A conservative saturation level in raw counts: SDSS amplifiers saturate around 4-6e4 DN, and
# their response turns non-linear before, so pixels above 3e4 DN are treated as saturated.
SATURATION_DN = 30000.0
SATURATION_GROW = 12  # pixels added around saturated pixels (bleed trails, halos)
STAR_PEAK_DN = 20000.0  # star candidates peak well inside the linear range
STAR_MIN_SNR = 30.0
ISOLATION_PX = 15.0
STAR_STAMP = 25  # star cutout side (pixels) for the ePSF: 10" at 0.396"/px
MIN_EPSF_STARS = 12
MAX_EPSF_STARS = 40  # the brightest: more add little to a 2×-oversampled ePSF and cost time
EPSF_OVERSAMPLING = 2
DETECT_THRESH = 3.0
FRAME_RE = re.compile(r"frame-([ugriz])-(\d{6})-(\d)-(\d{4})\.fits(?:\.bz2|\.gz)?$")


class InjectError(ValueError):
    """Inputs that cannot be injected into; the message says what to change."""


@dataclass
class Frame:
    """One band of a field: pixels (nanomaggies), WCS, calibration and the saturation mask."""

    path: str
    band: str
    data: np.ndarray  # float32 nmgy / pixel, sky subtracted (SDSS corrected frame)
    header: Any  # astropy Header of HDU0
    calib: np.ndarray  # nmgy per count, per column (HDU1)
    sky_dn: np.ndarray  # sky level in counts, per pixel (HDU2 interpolated)
    gain: float  # electrons per count

    @property
    def wcs(self):
        from astropy.wcs import WCS

        if not hasattr(self, "_wcs"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._wcs = WCS(self.header)
        return self._wcs

    @property
    def electrons_per_nmgy(self) -> float:
        """Gain / (nmgy per count), the source shot-noise scale: var(F) = F / this (nmgy²)."""
        return float(self.gain / np.median(self.calib))

    def counts(self) -> np.ndarray:
        """Raw counts per pixel: ``img / calib + sky`` (SDSS frame data model)."""
        return self.data / self.calib[None, :] + self.sky_dn

    def saturated(self, grow: int = SATURATION_GROW) -> np.ndarray:
        """Boolean map of saturated pixels grown by ``grow`` pixels."""
        from scipy import ndimage

        sat = self.counts() > SATURATION_DN
        if grow and sat.any():
            # a (2 grow + 1)² box around every saturated pixel (separable maximum filter: fast)
            sat = ndimage.maximum_filter(sat.astype(np.uint8), size=2 * grow + 1) > 0
        return sat

    def save(self, path: str | os.PathLike) -> None:
        """The decompressed frame as one ``.npz`` (pixels, header, calibration, sky), written atomically."""
        with atomic_file(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, data=self.data, calib=self.calib, sky_dn=self.sky_dn.astype(np.float32),
                     header=np.array(self.header.tostring()), gain=np.array(self.gain),
                     path=np.array(self.path), band=np.array(self.band))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Frame:
        from astropy.io import fits

        with np.load(path) as a:
            return cls(path=str(a["path"]), band=str(a["band"]), data=a["data"],
                       header=fits.Header.fromstring(str(a["header"])), calib=a["calib"],
                       sky_dn=a["sky_dn"].astype(np.float64), gain=float(a["gain"]))


def parse_frame_name(path: str | os.PathLike) -> tuple[str, str] | None:
    """(band, field id ``RUN-CAMCOL-FIELD``) from an SDSS frame file name, or None."""
    m = FRAME_RE.search(os.path.basename(str(path)))
    if not m:
        return None
    return m.group(1), f"{int(m.group(2))}-{int(m.group(3))}-{int(m.group(4))}"


def group_fields(paths: list[str]) -> dict[str, dict[str, str]]:
    """{field id: {band: path}} for SDSS frame files; a field must have all five bands."""
    fields: dict[str, dict[str, str]] = {}
    for p in paths:
        parsed = parse_frame_name(p)
        if parsed is None:
            raise InjectError(f"{p}: not an SDSS corrected frame name (frame-BAND-RUN-CAMCOL-FIELD.fits[.bz2]); "
                              "zpix inject reads SDSS frames only (--survey sdss)")
        band, fid = parsed
        fields.setdefault(fid, {})[band] = p
    incomplete = {f: sorted(set(SDSS_BANDS) - set(b)) for f, b in fields.items() if set(b) != set(SDSS_BANDS)}
    if incomplete:
        raise InjectError("fields without all five bands: "
                          + "; ".join(f"{f} lacks {','.join(m)}" for f, m in sorted(incomplete.items()))
                          + ". Add those frames to --frames")
    return dict(sorted(fields.items()))


def read_frame(path: str | os.PathLike) -> Frame:
    """Read an SDSS corrected frame (HDU0 image, HDU1 calibration, HDU2 sky grid)."""
    from astropy.io import fits
    from scipy import ndimage

    parsed = parse_frame_name(path)
    if parsed is None:
        raise InjectError(f"{path}: not an SDSS frame name")
    band, fid = parsed
    camcol = int(fid.split("-")[1])
    try:
        with fits.open(path) as hdul:
            data = np.asarray(hdul[0].data, np.float32)
            header = hdul[0].header.copy()
            calib = np.asarray(hdul[1].data, np.float64)
            sky = hdul[2].data
            allsky = np.asarray(sky["ALLSKY"][0], np.float64)
            xi = np.asarray(sky["XINTERP"][0], np.float64)
            yi = np.asarray(sky["YINTERP"][0], np.float64)
    except (OSError, KeyError, IndexError, TypeError) as err:
        raise InjectError(f"{path}: cannot read as an SDSS corrected frame ({type(err).__name__}: {err})") from err
    # the sky grid is (192, 256) in (y, x); XINTERP/YINTERP give each frame column/row's grid position
    sky_dn = ndimage.map_coordinates(allsky, np.meshgrid(yi, xi, indexing="ij"), order=1, mode="nearest")
    gain = float(SDSS_GAIN[camcol - 1, SDSS_BANDS.index(band)])
    return Frame(path=str(path), band=band, data=data, header=header, calib=calib, sky_dn=sky_dn, gain=gain)


# ------------------------------------------------------------------------------------------------
# measurements


def moffat_fwhm(image: np.ndarray, scale: float = 1.0) -> tuple[float, float]:
    """(FWHM, β) of a circular Moffat fitted to the core of ``image`` (FWHM in units of ``scale``/sample).

    I(r) = A [1 + (r/γ)²]^{-β}, FWHM = 2γ √(2^{1/β} − 1) (Moffat 1969): least squares (astropy.modeling,
    Levenberg-Marquardt) with the centre free, over the samples within 2.5 half-widths of the peak, so
    that neighbours and noise in the outer stamp do not pull the fit.  Applied to an oversampled ePSF
    and to star cutouts alike, so the two FWHMs are comparable.
    """
    from astropy.modeling import fitting, models

    img = np.asarray(image, np.float64)
    ny, nx = img.shape
    yy, xx = np.mgrid[:ny, :nx]
    cy, cx = np.unravel_index(np.argmax(img), img.shape)
    peak = float(img[cy, cx])
    r_half = max(np.sqrt((img > peak / 2).sum() / np.pi), 0.7)
    rr = np.hypot(yy - cy, xx - cx)
    core = rr <= max(2.5 * r_half, 3.0)
    model = models.Moffat2D(amplitude=peak, x_0=cx, y_0=cy, gamma=r_half / 0.6, alpha=3.0)
    model.alpha.bounds = (1.2, 15.0)
    model.gamma.bounds = (0.05, 5 * max(nx, ny))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fitting.LevMarLSQFitter()(model, xx[core], yy[core], img[core], maxiter=400)
    g, beta = abs(float(fit.gamma.value)), float(fit.alpha.value)
    return 2 * g * np.sqrt(2 ** (1 / beta) - 1) * scale, beta


def sky_noise(data: np.ndarray, segmap: np.ndarray, grow: int = 4) -> float:
    """3σ-clipped standard deviation of the pixels outside the (grown) segmentation map."""
    from astropy.stats import sigma_clipped_stats
    from scipy import ndimage

    mask = ndimage.binary_dilation(segmap > 0, iterations=grow) if grow else segmap > 0
    values = data[~mask]
    _, _, std = sigma_clipped_stats(values, sigma=3.0, maxiters=10)
    return float(std)


def detect(data: np.ndarray, *, thresh: float = DETECT_THRESH, mask: np.ndarray | None = None):
    """sep detection on a frame: (catalogue, segmentation map, background rms).

    The frames are sky-subtracted already; ``sep.Background`` (64-pixel mesh) removes what is left
    (scattered light near bright stars) before detection.
    """
    import sep

    d = np.ascontiguousarray(data, dtype=np.float64)
    bkg = sep.Background(d, mask=mask, bw=64, bh=64, fw=3, fh=3)
    sep.set_extract_pixstack(3_000_000)
    sep.set_sub_object_limit(4096)
    objs, seg = sep.extract(d - bkg.back(), thresh, err=bkg.globalrms, mask=mask, minarea=5,
                            deblend_nthresh=32, deblend_cont=0.005, segmentation_map=True)
    return objs, seg, float(bkg.globalrms), bkg


@dataclass
class BandPSF:
    """The PSF and noise of one band of a field."""

    band: str
    method: str  # "epsf" (photutils EPSFBuilder) or "moffat" (median of per-star Moffat fits)
    n_stars: int
    fwhm_arcsec: float
    moffat_beta: float
    sky_noise: float  # nmgy / pixel
    electrons_per_nmgy: float
    pixel_scale: float  # arcsec, native
    oversampling: int
    fwhm_eff_arcsec: float  # FWHM of the Gaussian with the same noise-equivalent area (SDSS psf_width)
    depth_5sigma: float  # AB mag of a point source at S/N 5 in the optimal (PSF) aperture, sky noise only
    image: np.ndarray = field(repr=False)  # effective PSF, oversampled, unit sum
    star_positions: np.ndarray = field(repr=False)  # (n, 2) x, y in this band's frame


@dataclass
class FieldCalibration:
    """Everything measured on one field: per band PSF and noise, the real sources, E(B−V) stand-in."""

    field: str
    paths: dict[str, str]
    bands: dict[str, BandPSF]
    ebv: float
    galactic_b: float
    ra: float
    dec: float
    real_sources: np.ndarray  # (n, 2) ra, dec of every r detection on the original frame
    real_star: np.ndarray  # (n,) bool: in the star sample

    def summary(self) -> dict[str, Any]:
        """JSON-plain per-band numbers (no images)."""
        return {
            "field": self.field, "ebv": self.ebv, "galactic_b": self.galactic_b, "ra": self.ra, "dec": self.dec,
            "n_real_sources": int(len(self.real_sources)),
            "bands": {b: {k: v for k, v in asdict(p).items() if k not in ("image", "star_positions")}
                      for b, p in self.bands.items()},
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """``<field>.json`` (numbers) and ``<field>.npz`` (PSF images, sources), written atomically."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {f"psf_{b}": p.image for b, p in self.bands.items()}
        arrays.update({f"stars_{b}": p.star_positions for b, p in self.bands.items()})
        arrays.update(real_sources=self.real_sources, real_star=self.real_star)
        with atomic_file(d / f"{self.field}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        doc = {**self.summary(), "paths": self.paths}
        write_text(d / f"{self.field}.json", json.dumps(doc, indent=1))
        return d / f"{self.field}.json"

    @classmethod
    def load(cls, directory: str | os.PathLike, field_id: str) -> FieldCalibration:
        d = Path(directory)
        doc = json.loads((d / f"{field_id}.json").read_text())
        with np.load(d / f"{field_id}.npz") as arr:
            bands = {b: BandPSF(**v, image=arr[f"psf_{b}"], star_positions=arr[f"stars_{b}"])
                     for b, v in doc["bands"].items()}
            return cls(field=doc["field"], paths=doc["paths"], bands=bands, ebv=doc["ebv"],
                       galactic_b=doc["galactic_b"], ra=doc["ra"], dec=doc["dec"],
                       real_sources=arr["real_sources"], real_star=arr["real_star"])


def ebv_stand_in(galactic_b_deg: float) -> float:
    """E(B−V) stand-in from the cosecant law, E = 0.02 / sin|b|, capped at 0.5.

    No dust map can be read here; a plane-parallel dust layer gives reddening ∝ csc|b| (e.g. Sandage
    1973), and 0.02 mag at the pole is the SFD98 polar-cap level.  The cap keeps the low-latitude field
    (b ≈ −1°, where the law diverges and real E(B−V) is several magnitudes) in a regime where the
    injected galaxies are still visible.  A stand-in, not a measurement: recorded per object.
    """
    s = abs(np.sin(np.radians(galactic_b_deg)))
    return float(min(0.02 / max(s, 1e-3), 0.5))


def _star_candidates(objs: np.ndarray, frame: Frame, data: np.ndarray) -> np.ndarray:
    """Indices of the r-band detections on the stellar locus (see the module docstring)."""
    import sep
    from scipy.spatial import cKDTree

    x, y = objs["x"], objs["y"]
    ny, nx = data.shape
    half = STAR_STAMP // 2 + 2
    inside = (x > half) & (x < nx - 1 - half) & (y > half) & (y < ny - 1 - half)
    tree = cKDTree(np.c_[x, y])
    counts = np.array([len(h) for h in tree.query_ball_point(np.c_[x, y], ISOLATION_PX)])
    isolated = counts == 1
    peak_dn = objs["peak"] / frame.calib[np.clip(np.round(x).astype(int), 0, nx - 1)] + frame.sky_dn[
        np.clip(np.round(y).astype(int), 0, ny - 1), np.clip(np.round(x).astype(int), 0, nx - 1)]
    # the frame's own counts at the peak pixel (objs["peak"] is background-subtracted, close enough)
    unsat = peak_dn < STAR_PEAK_DN
    flux, ferr, _ = sep.sum_circle(data, x, y, 5.0, err=None)
    good = inside & isolated & unsat & (objs["flag"] == 0) & (objs["b"] / objs["a"] > 0.8) & (flux > 0)
    r50, _ = sep.flux_radius(data, x, y, 6.0 * objs["a"], 0.5, normflux=flux, subpix=5)
    bright = good & (objs["cflux"] > 0) & np.isfinite(r50)
    if bright.sum() < 3:
        return np.zeros(0, int)
    hist, edges = np.histogram(r50[bright], bins=np.arange(0.5, 6.0, 0.1))
    mode = 0.5 * (edges[np.argmax(hist)] + edges[np.argmax(hist) + 1])
    # refine on the locus itself
    near = bright & (np.abs(r50 - mode) < 0.2 * mode)
    mode = float(np.median(r50[near])) if near.any() else mode
    return np.flatnonzero(bright & (np.abs(r50 - mode) < 0.12 * mode))


def _band_psf(frame: Frame, star_xy: np.ndarray, pixel_scale: float, noise: float) -> BandPSF:
    """ePSF (or Moffat) of one band from star positions in that band's frame."""
    import galsim
    import sep

    data = np.ascontiguousarray(frame.data, np.float64)
    ny, nx = data.shape
    half = STAR_STAMP // 2
    x, y = star_xy[:, 0], star_xy[:, 1]
    ok = (x > half + 1) & (x < nx - half - 2) & (y > half + 1) & (y < ny - half - 2)
    x, y = x[ok], y[ok]
    if len(x):
        # recentre in this band (windowed centroid) and keep the stars with enough S/N here
        x, y, _ = sep.winpos(data, x, y, 1.0)
        flux, ferr, _ = sep.sum_circle(data, x, y, 5.0, err=noise, gain=frame.electrons_per_nmgy)
        cx = np.clip(np.round(x).astype(int), 0, nx - 1)
        cy = np.clip(np.round(y).astype(int), 0, ny - 1)
        peak = frame.counts()[cy, cx] if len(x) else np.zeros(0)
        keep = (flux / np.maximum(ferr, 1e-12) >= STAR_MIN_SNR) & (peak < STAR_PEAK_DN) & np.isfinite(x)
        order = np.argsort(-np.where(keep, flux, -np.inf))[: min(int(keep.sum()), MAX_EPSF_STARS)]
        x, y = x[order], y[order]
    n = int(len(x))
    if n == 0:
        raise InjectError(f"{frame.path}: no usable star for the PSF (isolated, unsaturated, S/N ≥ {STAR_MIN_SNR})")
    ovs = EPSF_OVERSAMPLING
    method = "epsf" if n >= MIN_EPSF_STARS else "moffat"
    if method == "epsf":
        from astropy.nddata import NDData
        from astropy.table import Table
        from photutils.psf import EPSFBuilder, extract_stars

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stars = extract_stars(NDData(data), Table({"x": x, "y": y}), size=STAR_STAMP)
            epsf, _ = EPSFBuilder(oversampling=ovs, maxiters=6, progress_bar=False)(stars)
        image = np.asarray(epsf.data, np.float64)
        if not np.all(np.isfinite(image)) or image.sum() <= 0:
            method = "moffat"
    if method == "moffat":
        fits_ = []
        for xi, yi in zip(x, y, strict=True):
            ix, iy = int(round(xi)), int(round(yi))
            stamp = data[iy - half : iy + half + 1, ix - half : ix + half + 1]
            fits_.append(moffat_fwhm(stamp, 1.0))
        fw, beta = np.median(np.array(fits_), axis=0)
        # the fit is to pixel-integrated stars: draw the Moffat without a further pixel (no_pixel)
        size = STAR_STAMP * ovs + 1
        image = galsim.Moffat(beta=float(beta), fwhm=float(fw)).drawImage(
            nx=size, ny=size, scale=1.0 / ovs, method="no_pixel").array.astype(np.float64)
    # keep the ePSF's faint negative noise wings, which average to zero, but not a negative total
    image = image / image.sum()
    fwhm_px, beta = moffat_fwhm(image, 1.0 / ovs)
    fwhm = fwhm_px * pixel_scale
    # optimal point-source aperture: noise-equivalent area 1/Σp² of the (native-pixel) ePSF
    # native-pixel samples of a unit-sum ePSF oversampled ×s are s² × its values: NEA = 1 / (s² Σ p²)
    nea = 1.0 / (ovs**2 * float(np.sum(image**2)))
    depth = 22.5 - 2.5 * np.log10(5.0 * noise * np.sqrt(nea))
    fwhm_eff = 2.3548 * np.sqrt(nea / (4 * np.pi)) * pixel_scale
    return BandPSF(band=frame.band, method=method, n_stars=n, fwhm_arcsec=float(fwhm), moffat_beta=float(beta),
                   fwhm_eff_arcsec=float(fwhm_eff),
                   sky_noise=float(noise), electrons_per_nmgy=frame.electrons_per_nmgy, pixel_scale=pixel_scale,
                   oversampling=ovs, depth_5sigma=float(depth), image=image, star_positions=np.c_[x, y])


def calibrate_field(field_id: str, paths: dict[str, str], frame_cache: str | os.PathLike | None = None
                    ) -> FieldCalibration:
    """Measure one field: sources, stars, per-band PSF, sky noise, E(B−V) stand-in (see module docstring).

    ``frame_cache``: a folder where the decompressed frames are kept (``<field>_<band>.npz``) so that
    the injection workers do not decompress them again.
    """
    from astropy.coordinates import SkyCoord

    from zpix.ingest.frames import pixel_scale_arcsec

    frames = {b: read_frame(paths[b]) for b in SDSS_BANDS}
    if frame_cache is not None:
        Path(frame_cache).mkdir(parents=True, exist_ok=True)
        for b, fr in frames.items():
            fr.save(Path(frame_cache) / f"{field_id}_{b}.npz")
    ref = frames[REFERENCE_BAND]
    ref_data = np.ascontiguousarray(ref.data, np.float64)
    objs, seg, _, _ = detect(ref_data)
    if len(objs) == 0:
        raise InjectError(f"{ref.path}: no source detected; is it an SDSS corrected frame?")
    stars = _star_candidates(objs, ref, ref_data)
    ra, dec = ref.wcs.all_pix2world(objs["x"], objs["y"], 0)
    is_star = np.zeros(len(objs), bool)
    is_star[stars] = True
    bands: dict[str, BandPSF] = {}
    for b, fr in frames.items():
        scale = pixel_scale_arcsec(fr.wcs)
        if b == REFERENCE_BAND:
            noise_seg = seg
        else:
            _, noise_seg, _, _ = detect(np.ascontiguousarray(fr.data, np.float64))
        noise = sky_noise(fr.data, noise_seg)
        sx, sy = fr.wcs.all_world2pix(ra[stars], dec[stars], 0)
        bands[b] = _band_psf(fr, np.c_[sx, sy], scale, noise)
    ny, nx = ref.data.shape
    cra, cdec = ref.wcs.all_pix2world((nx - 1) / 2, (ny - 1) / 2, 0)
    gal_b = float(SkyCoord(float(cra), float(cdec), unit="deg").galactic.b.deg)
    return FieldCalibration(field=field_id, paths=dict(paths), bands=bands, ebv=ebv_stand_in(gal_b),
                            galactic_b=gal_b, ra=float(cra), dec=float(cdec),
                            real_sources=np.c_[ra, dec], real_star=is_star)
