"""Render mock galaxies through a real field's PSF, in that frame's pixels and units.

A galaxy is the same two-component model as ``zpix simulate`` (de Vaucouleurs bulge + exponential
disk with their own spectra, :mod:`zpix.mock.population`), drawn per band with GalSim:

    image_b = Convolve(F_bulge,b · bulge + F_disk,b · disk, PSF_b).drawImage(method="no_pixel")

where ``PSF_b`` is a GalSim ``InterpolatedImage`` of the field's *effective* PSF (the ePSF or
pixel-convolved Moffat of :mod:`zpix.inject.psf`, already integrated over a pixel, hence
``no_pixel``).  The profiles live in sky coordinates, (u, v) = (−ΔRA cos δ, ΔDec) in arcsec: the
orientation of the cutouts (north up, east left), so a position angle means the same as in
``zpix simulate``.  The drawing goes through the frame's local WCS Jacobian at the galaxy
(astropy WCS, finite differences), so the galaxy lands correctly in a rotated or flipped frame, and
the ePSF (measured in frame pixels) is placed through the same Jacobian.

Fluxes are nanomaggies (the frames' unit), dimmed by Galactic extinction: ``F × 10^(−0.4 A_b)``
with ``A_b = R_b E(B−V)`` and the SDSS coefficients R_b (Schlafly & Finkbeiner 2011).  The galaxy's
own photon noise, var = F_pixel / (e⁻ per nmgy of the frame), is added; the sky noise is the real
frame's.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from zpix.inject.psf import BandPSF

BULGE_TRUNC = 8.0  # as zpix.mock.simulate (SDSS model fits)
DISK_TRUNC = 4.0


def local_jacobian(wcs: Any, x: float, y: float) -> np.ndarray:
    """d(u, v)/d(x, y) in arcsec per pixel at 0-based pixel (x, y): u = −ΔRA cos δ, v = ΔDec."""
    xs = np.array([x - 0.5, x + 0.5, x, x])
    ys = np.array([y, y, y - 0.5, y + 0.5])
    ra, dec = wcs.all_pix2world(xs, ys, 0)
    cosd = np.cos(np.radians(dec[0:2].mean()))
    dra = (np.asarray(ra) - ra[0] + 180.0) % 360.0 - 180.0  # wrap at RA = 0
    du = -np.array([dra[1] - dra[0], dra[3] - dra[2]]) * cosd * 3600.0
    dv = np.array([dec[1] - dec[0], dec[3] - dec[2]]) * 3600.0
    return np.array([[du[0], du[1]], [dv[0], dv[1]]])


def _gsparams():
    import galsim

    return galsim.GSParams(folding_threshold=1e-2, maxk_threshold=2e-3)


@lru_cache(maxsize=64)
def _psf_profile(key: tuple, image_bytes: bytes, shape: tuple[int, int], oversampling: int,
                 jac: tuple[float, float, float, float]):
    import galsim

    image = np.frombuffer(image_bytes, np.float64).reshape(shape)
    j = np.asarray(jac) / oversampling
    wcs = galsim.JacobianWCS(j[0], j[1], j[2], j[3])
    return galsim.InterpolatedImage(galsim.Image(image.copy(), wcs=wcs), flux=1.0, gsparams=_gsparams())


def psf_profile(psf: BandPSF, jac: np.ndarray):
    """The band's effective PSF as a GalSim ``InterpolatedImage`` in sky coordinates (unit flux).

    The Jacobian varies by < 1e-4 across an SDSS frame, so one per frame (rounded) is cached.
    """
    j = tuple(float(round(v, 5)) for v in np.asarray(jac).ravel())
    img = np.ascontiguousarray(psf.image, np.float64)
    return _psf_profile((psf.band, img.shape, float(img.sum())), img.tobytes(), img.shape, psf.oversampling, j)


def galaxy_profile(g: dict[str, Any], band_index: int, *, cap: float):
    """Sum of the bulge and disk of one galaxy in one band (flux in nmgy), or None if it has no flux.

    ``g`` holds ``flux_bulge``/``flux_disk`` (per band, extinction applied), ``hlr_bulge``,
    ``hlr_disk`` (arcsec), ``q_bulge``, ``q_disk`` and ``position_angle`` (degrees).  Profiles are
    truncated as in ``zpix simulate``; beyond ``cap`` arcsec (the rendered box) the surface
    brightness is unchanged and the light outside is not drawn.
    """
    import galsim

    from zpix.mock.simulate import _profile

    gsp = _gsparams()
    parts = []
    for part, n, trunc in (("bulge", 4, BULGE_TRUNC), ("disk", 1, DISK_TRUNC)):
        flux = float(g[f"flux_{part}"][band_index])
        if flux <= 0:
            continue
        q = max(float(g[f"q_{part}"]), 0.05)
        prof, _ = _profile(float(g[f"hlr_{part}"]), q, float(g["position_angle"]), n, trunc, np.zeros(2), gsp,
                           cap=cap / np.sqrt(q))
        parts.append(prof * flux)
    if not parts:
        return None
    return galsim.Add(parts) if len(parts) > 1 else parts[0]


def render_galaxy(g: dict[str, Any], band_index: int, psf: BandPSF, jac: np.ndarray, x: float, y: float,
                  size: int) -> tuple[np.ndarray, int, int]:
    """Noiseless image of one galaxy in one band, ``size``² frame pixels centred near (x, y).

    Returns (image in nmgy per pixel, x0, y0): the image covers frame pixels ``[y0:y0+size, x0:x0+size]``
    and the galaxy's centre falls exactly on frame pixel (x, y) (0-based).
    """
    import galsim

    x0, y0 = int(np.floor(x)) - size // 2 + 1, int(np.floor(y)) - size // 2 + 1
    cap = 0.5 * size * float(np.sqrt(abs(np.linalg.det(jac)))) * np.sqrt(2.0)
    gal = galaxy_profile(g, band_index, cap=cap)
    if gal is None:
        return np.zeros((size, size)), x0, y0
    wcs = galsim.JacobianWCS(*np.asarray(jac, float).ravel())
    # GalSim centres the profile on the image's true centre, 0-based (size-1)/2, plus ``offset``
    offset = (x - x0 - (size - 1) / 2.0, y - y0 - (size - 1) / 2.0)
    img = galsim.Convolve(gal, psf_profile(psf, jac), gsparams=_gsparams()).drawImage(
        nx=size, ny=size, wcs=wcs, method="no_pixel", offset=offset)
    return np.asarray(img.array, np.float64), x0, y0


def add_poisson(model: np.ndarray, electrons_per_nmgy: float, rng: np.random.Generator) -> np.ndarray:
    """The model plus its own photon noise, Gaussian with variance F/(e⁻ per nmgy) (F in nmgy/pixel)."""
    return model + np.sqrt(np.maximum(model, 0.0) / electrons_per_nmgy) * rng.standard_normal(model.shape)


def aperture_flux(image: np.ndarray, x: float, y: float, radius: float) -> float:
    """Flux in a circular aperture (pixels, exact overlap via ``sep.sum_circle``)."""
    import sep

    f, _, _ = sep.sum_circle(np.ascontiguousarray(image, np.float64), np.array([x]), np.array([y]), radius,
                             subpix=0)
    return float(f[0])
