"""Resample frames onto a target's TAN grid and co-add them: the SWarp step of Pasquet et al. (2019).

Pasquet et al. (2019, Sect. 2) ran SWarp (Bertin et al. 2002) for each galaxy and band to
"resample to a common pixel grid and stack all the available image data": a gnomonic
(TAN) grid centred on the galaxy, aligned with the local celestial axes (north up, east
left), at the input pixel scale, Lanczos-3 kernel, no background subtraction. Three
backends do the per-frame resampling here:

``interp`` (default)
    ``reproject.reproject_interp`` with ``order='bicubic'`` (cubic-spline interpolation
    through astropy WCS). reproject offers no Lanczos kernel (``reproject_adaptive`` has
    Gaussian / Hann kernels meant for down-sampling), and the cubic spline is, like
    Lanczos-3, an interpolating approximation to the ideal sinc; the tests measure how
    closely it agrees with SWarp's Lanczos-3.
``lanczos3``
    The paper's kernel without SWarp: separable Lanczos-3 weights,
    ``L(x) = sinc(x) sinc(x / 3)`` for ``|x| < 3`` (Duchon 1979), normalised to unit sum
    on each axis as SWarp does, applied at the input-pixel positions that astropy WCS
    gives for every output pixel.
``swarp``
    SWarp itself (``swarp`` / ``SWarp`` on PATH, Debian package ``swarp``), with the
    output grid given by a ``.head`` file so that all backends share the same grid.

Conventions shared by all backends:

* the target sits at the geometric centre of the stamp, 0-based pixel ``((n-1)/2, (n-1)/2)``
  (FITS ``CRPIX = (n+1)/2``), so the dihedral augmentations used in training keep it there;
* values stay in the frames' units per pixel: the interpolated value is multiplied by the
  ratio of output to input pixel area (SWarp's ``FSCALASTRO_TYPE FIXED``), which is 1 at
  the native scale;
* non-finite input pixels (and zero weights) are no data: an output pixel is valid only
  if the kernel found no such pixel nearby, and frames are co-added per pixel over the
  valid ones (plain mean, or weighted by the resampled inverse-variance maps);
* pixels no frame covers are set to ``fill_value`` and the covered fraction is reported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import pixel_to_pixel
from scipy import ndimage

from zpix.ingest.frames import FrameError, FrameReader

BACKENDS = ("interp", "lanczos3", "swarp")
# Input pixels beyond the stamp's footprint read with each window: Lanczos-3 reaches 3 pixels,
# and the cubic-spline prefilter's influence decays as 0.268**d, i.e. below 3e-5 at 8 pixels.
MARGIN = 8


def target_wcs(ra: float, dec: float, size: int, pixel_scale_arcsec: float) -> WCS:
    """The TAN grid of a stamp centred on (ra, dec): north up, east left, ``size`` x ``size`` pixels."""
    scale = pixel_scale_arcsec / 3600.0
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [float(ra) % 360.0, float(dec)]
    wcs.wcs.crpix = [(size + 1) / 2.0, (size + 1) / 2.0]
    wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    wcs.wcs.radesys = "ICRS"
    wcs.pixel_shape = (size, size)
    wcs.wcs.set()
    return wcs


def _equatorial(wcs: WCS) -> bool:
    return wcs.wcs.lngtyp == "RA" and wcs.wcs.radesys.strip() in ("ICRS", "FK5", "")


def pix2pix(wcs_out: WCS, wcs_in: WCS, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel positions in ``wcs_in`` of pixels ``(x, y)`` of ``wcs_out`` (distortions included).

    When both are equatorial (ICRS, or FK5 J2000, which differs from ICRS by ~0.02 arcsec and
    is treated as the same, as SWarp does), the transform goes straight through world
    coordinate values, several times faster than astropy's frame-aware ``pixel_to_pixel``,
    which is used otherwise (e.g. galactic frames).
    """
    if _equatorial(wcs_out) and _equatorial(wcs_in):
        ra, dec = wcs_out.all_pix2world(x, y, 0)
        xi, yi = wcs_in.all_world2pix(ra, dec, 0, quiet=True)
        return np.asarray(xi), np.asarray(yi)
    xi, yi = pixel_to_pixel(wcs_out, wcs_in, x, y)
    return np.asarray(xi), np.asarray(yi)


def stamp_window(wcs_out: WCS, size: int, wcs_in: WCS, frame_shape: tuple[int, int],
                 margin: int = MARGIN) -> tuple[int, int, int, int] | None:
    """Window ``(y0, y1, x0, x1)`` of a frame that holds the stamp's footprint plus ``margin``,
    or ``None`` when the stamp does not touch the frame.

    The stamp's border is mapped into the frame (every 4th pixel, plus corners): for the
    small stamps here the footprint's extreme pixels lie on its border.
    """
    edge = np.unique(np.r_[np.arange(0, size, 4), size - 1]).astype(float)
    lo, hi = np.full_like(edge, -0.5), np.full_like(edge, size - 0.5)
    xo = np.concatenate([edge, edge, lo, hi])
    yo = np.concatenate([lo, hi, edge, edge])
    x, y = pix2pix(wcs_out, wcs_in, xo, yo)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    ny, nx = frame_shape
    if x.max() < -0.5 or x.min() > nx - 0.5 or y.max() < -0.5 or y.min() > ny - 0.5:
        return None
    x0 = max(int(np.floor(x.min())) - margin, 0)
    x1 = min(int(np.ceil(x.max())) + margin + 1, nx)
    y0 = max(int(np.floor(y.min())) - margin, 0)
    y1 = min(int(np.ceil(y.max())) + margin + 1, ny)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return y0, y1, x0, x1


def area_ratio(wcs_out: WCS, wcs_in: WCS, size: int) -> float:
    """Input pixels per output pixel at the stamp centre: |det| of d(x_in, y_in) / d(x_out, y_out)."""
    c = (size - 1) / 2.0
    x, y = pix2pix(wcs_out, wcs_in, np.array([c, c + 1.0, c]), np.array([c, c, c + 1.0]))
    return float(abs((x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])))


def lanczos3_kernel(d: np.ndarray) -> np.ndarray:
    """Lanczos-3 weights ``sinc(d) sinc(d/3)`` for ``|d| < 3``, else 0 (Duchon 1979)."""
    d = np.abs(np.asarray(d, dtype=np.float64))
    tiny = d < 1e-8
    pd = np.pi * np.where(tiny, 1.0, d)
    # sin(pi d) sin(pi d / 3) / (pi^2 d^2 / 3), written out: np.sinc is several times slower
    k = 3.0 * np.sin(pd) * np.sin(pd / 3.0) / (pd * pd)
    return np.where(tiny, 1.0, np.where(d < 3.0, k, 0.0))


_TAPS = np.arange(-2, 4)
_SIGN = np.where(_TAPS % 2 == 0, 1.0, -1.0)
_COS3, _SIN3 = np.cos(_TAPS * np.pi / 3), np.sin(_TAPS * np.pi / 3)


def _lanczos3_weights(frac: np.ndarray) -> np.ndarray:
    """Normalised Lanczos-3 weights (n, 6) of taps -2..3 for fractional offsets ``frac`` in [0, 1).

    Same values as ``lanczos3_kernel(frac - taps)``, with three sines/cosines per sample
    instead of twelve: sin(pi (f - t)) = (-1)^t sin(pi f) and sin(pi (f - t) / 3) by angle subtraction.
    """
    f = frac[:, None]
    d = f - _TAPS[None, :]
    a = np.pi * frac[:, None] / 3.0
    s1 = _SIGN[None, :] * np.sin(np.pi * f)
    s3 = np.sin(a) * _COS3[None, :] - np.cos(a) * _SIN3[None, :]
    tiny = np.abs(d) < 1e-8
    pd = np.pi * np.where(tiny, 1.0, d)
    w = np.where(tiny, 1.0, 3.0 * s1 * s3 / (pd * pd))
    return w / w.sum(axis=1, keepdims=True)


def lanczos3_sample(image: np.ndarray, good: np.ndarray, x: np.ndarray, y: np.ndarray,
                    weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Lanczos-3 interpolation of ``image`` at 0-based pixel positions ``(x, y)``.

    Each sample uses the 6 x 6 input pixels around it, with per-axis weights normalised to
    unit sum (so a flat image stays flat). A sample is valid only if all 36 pixels are
    inside the image and ``good``. ``weights`` (a weight map) is resampled with the same kernel
    and clipped at zero. Returns values, validity and the resampled weights.
    """
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    finite = np.isfinite(x) & np.isfinite(y)
    x = np.where(finite, x, -1e6)
    y = np.where(finite, y, -1e6)
    ny, nx = image.shape
    taps = _TAPS
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    wx, wy = _lanczos3_weights(x - ix), _lanczos3_weights(y - iy)
    cols, rows = ix[:, None] + taps[None, :], iy[:, None] + taps[None, :]
    inside = finite & (cols[:, 0] >= 0) & (cols[:, -1] < nx) & (rows[:, 0] >= 0) & (rows[:, -1] < ny)
    cols, rows = np.clip(cols, 0, nx - 1), np.clip(rows, 0, ny - 1)
    # flat indices of the 6 x 6 neighbourhoods: one take() is much faster than 2-D fancy indexing
    flat = rows[:, :, None] * nx + cols[:, None, :]
    ok = inside & good.ravel().take(flat).all(axis=(1, 2))

    def apply(plane: np.ndarray) -> np.ndarray:
        along_x = (plane.ravel().take(flat) * wx[:, None, :]).sum(axis=2)
        return (along_x * wy).sum(axis=1)

    values = apply(image)
    resampled_w = None if weights is None else np.clip(apply(weights), 0.0, None)
    return values, ok, resampled_w


@dataclass
class BandResult:
    """One band of one stamp: the co-added image, where it has data, and what went in."""

    image: np.ndarray
    covered: np.ndarray
    n_frames: int
    problems: list[str] = field(default_factory=list)

    @property
    def coverage(self) -> float:
        return float(self.covered.mean())


def _clean_window(sub: np.ndarray, weights: np.ndarray | None, weight_type: str
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Zero the non-finite pixels and return (data, good mask, inverse-variance weights)."""
    good = np.isfinite(sub)
    ivar = None
    if weights is not None:
        w = weights if weight_type == "ivar" else np.where(weights > 0, 1.0 / np.where(weights > 0, weights, 1), 0)
        good &= np.isfinite(w) & (w > 0)
        ivar = np.where(good, w, 0.0)
    return np.where(good, sub, 0.0), good, ivar


def resample_frame(sub: np.ndarray, good: np.ndarray, ivar: np.ndarray | None, wcs_in: WCS,
                   origin: tuple[int, int], wcs_out: WCS, size: int, backend: str
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One frame window onto the stamp grid with the ``interp`` or ``lanczos3`` backend.

    ``sub`` is the window of the frame whose WCS is ``wcs_in`` starting at pixel
    ``origin = (y0, x0)``. Returns (values, valid, resampled weights or None), each
    ``size`` x ``size``; values are already scaled to the output pixel area.
    """
    y0, x0 = origin
    scale = area_ratio(wcs_out, wcs_in, size)
    shape = (size, size)
    if backend == "lanczos3":
        yo, xo = np.mgrid[0:size, 0:size].astype(np.float64)
        x, y = pix2pix(wcs_out, wcs_in, xo.ravel(), yo.ravel())
        values, ok, w = lanczos3_sample(sub, good, x - x0, y - y0, ivar)
        return (values * scale).reshape(shape), ok.reshape(shape), None if w is None else w.reshape(shape)
    if backend != "interp":
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    from reproject import reproject_interp

    # A cubic spline spreads each input pixel over its neighbours: call an output pixel valid
    # only if every input pixel within 2 of its nearest one is good (0.5 threshold on the
    # resampled, eroded mask).
    eroded = ndimage.binary_erosion(good, structure=np.ones((5, 5), bool), border_value=0)
    planes = [sub, eroded.astype(np.float64)] + ([ivar] if ivar is not None else [])
    wcs_win = wcs_in[y0 : y0 + sub.shape[0], x0 : x0 + sub.shape[1]]
    out, _ = reproject_interp((np.stack(planes), wcs_win), wcs_out, shape_out=(len(planes), *shape),
                              order="bicubic", roundtrip_coords=False, return_footprint=True)
    ok = np.isfinite(out[0]) & (np.nan_to_num(out[1]) >= 0.5)
    w = np.clip(np.nan_to_num(out[2]), 0.0, None) if ivar is not None else None
    return np.nan_to_num(out[0]) * scale, ok, w


def find_swarp() -> str | None:
    """The SWarp executable (Debian installs it as ``SWarp``, source builds as ``swarp``), or None."""
    return shutil.which("swarp") or shutil.which("SWarp")


def _swarp_band(windows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None, WCS, tuple[int, int]]],
                wcs_out: WCS,
                size: int, executable: str) -> tuple[np.ndarray, np.ndarray]:
    """Resample and co-add windows with SWarp (Lanczos-3, no background subtraction).

    Every input gets a weight map (its inverse variance, or 1 where good and 0 elsewhere),
    ``COMBINE_TYPE WEIGHTED`` and ``RESCALE_WEIGHTS N``, so SWarp computes the same plain or
    inverse-variance-weighted mean as the other backends; the output weight map marks coverage.
    """
    with tempfile.TemporaryDirectory(prefix="zpix-swarp-") as tmp:
        images, weights = [], []
        for k, (sub, good, ivar, wcs_in, (y0, x0)) in enumerate(windows):
            header = wcs_in[y0 : y0 + sub.shape[0], x0 : x0 + sub.shape[1]].to_header(relax=True)
            img = os.path.join(tmp, f"in{k}.fits")
            wgt = os.path.join(tmp, f"in{k}.weight.fits")
            fits.PrimaryHDU(sub.astype(np.float32), header=header).writeto(img)
            w = ivar if ivar is not None else good.astype(np.float32)
            fits.PrimaryHDU(np.asarray(w, np.float32), header=header).writeto(wgt)
            images.append(img)
            weights.append(wgt)
        out = os.path.join(tmp, "stamp.fits")
        head = wcs_out.to_header(relax=True)
        head["NAXIS"] = 2
        head["NAXIS1"] = size
        head["NAXIS2"] = size
        with open(os.path.join(tmp, "stamp.head"), "w") as fh:
            fh.write("\n".join(card.image for card in head.cards) + "\nEND\n")
        cmd = [executable, *images, "-c", os.devnull, "-IMAGEOUT_NAME", out,
               "-WEIGHTOUT_NAME", os.path.join(tmp, "stamp.weight.fits"), "-HEADER_SUFFIX", ".head",
               "-RESAMPLING_TYPE", "LANCZOS3", "-SUBTRACT_BACK", "N", "-COMBINE_TYPE", "WEIGHTED",
               "-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_IMAGE", ",".join(weights), "-RESCALE_WEIGHTS", "N",
               "-FSCALASTRO_TYPE", "FIXED", "-RESAMPLE_DIR", tmp, "-VERBOSE_TYPE", "QUIET",
               "-WRITE_XML", "N", "-NTHREADS", "1", "-COPY_KEYWORDS", "OBJECT"]
        run = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if run.returncode != 0 or not os.path.exists(out):
            raise FrameError(f"SWarp failed ({run.returncode}): {run.stderr.strip()[-500:]}")
        image = fits.getdata(out).astype(np.float64)
        weight = fits.getdata(os.path.join(tmp, "stamp.weight.fits")).astype(np.float64)
    if image.shape != (size, size):
        raise FrameError(f"SWarp wrote a {image.shape} image instead of {size}x{size}; check the .head grid")
    return image, weight > 0


def resample_band(reader: FrameReader, frame_ids: Sequence[int], wcs_out: WCS, size: int,
                  backend: str = "interp", weight_type: str = "ivar", fill_value: float = 0.0,
                  swarp: str | None = None) -> BandResult:
    """All candidate frames of one band onto one stamp, co-added.

    Frames that do not touch the stamp are ignored; a frame that fails to read is skipped
    with a message in ``problems``, so one bad file never stops the other frames or targets.
    """
    windows: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, WCS, tuple[int, int]]] = []
    problems: list[str] = []
    for index in frame_ids:
        info = reader.frames[index]
        try:
            wcs_in = reader.wcs(index)
            box = stamp_window(wcs_out, size, wcs_in, info.shape)
            if box is None:
                continue
            y0, y1, x0, x1 = box
            sub, weights = reader.window(index, y0, y1, x0, x1)
            data, good, ivar = _clean_window(sub, weights, weight_type)
            if not good.any():
                continue
            windows.append((data, good, ivar, wcs_in, (y0, x0)))
        except (OSError, ValueError) as err:
            problems.append(f"{info.path}: {err}")
    covered = np.zeros((size, size), bool)
    image = np.full((size, size), fill_value, np.float64)
    if not windows:
        return BandResult(image, covered, 0, problems)
    if backend == "swarp":
        executable = swarp or find_swarp()
        if executable is None:
            raise FrameError("backend 'swarp' needs SWarp on PATH (Debian/Ubuntu: apt-get install swarp)")
        try:
            sw_image, sw_covered = _swarp_band(windows, wcs_out, size, executable)
        except (OSError, FrameError) as err:
            problems.append(str(err))
            return BandResult(image, covered, 0, problems)
        image[sw_covered] = sw_image[sw_covered]
        return BandResult(image, sw_covered, len(windows), problems)

    total = np.zeros((size, size))
    norm = np.zeros((size, size))
    used = 0
    for data, good, ivar, wcs_in, origin in windows:
        values, ok, w = resample_frame(data, good, ivar, wcs_in, origin, wcs_out, size, backend)
        weight = ok.astype(np.float64) if w is None else np.where(ok, w, 0.0)
        if not np.any(weight > 0):
            continue
        total += weight * values
        norm += weight
        used += 1
    covered = norm > 0
    image[covered] = total[covered] / norm[covered]
    return BandResult(image, covered, used, problems)
