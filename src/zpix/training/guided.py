"""Guided batch selection for domain adaptation (Ait Ouahmed et al. 2024, "two steps fix", step 1).

Adversarial domain adaptation aligns the feature distributions of a labelled *source* field and an
unlabelled *target* field.  When the two fields hold galaxies of different brightness, aligning
their features also aligns bright with faint galaxies -- the network learns to forget what makes
them differ, which carries redshift: *negative transfer*.  The slides' fix: for each source image
of a batch, draw a target image "selected based on photometric magnitude", so that the
discriminator only ever compares galaxies of similar brightness.

Here the key is the r-band magnitude, in this order of preference:

1. ``catalogue``: the cube stores' catalogue magnitudes (``/mags``, the column named ``band``) when
   *both* stores have it.  Objects whose catalogue magnitude is missing (NaN or >= 90) get the
   aperture magnitude below instead, so that every object can be matched.
2. ``aperture``: when the target (or the source) has no catalogue magnitude of that band, the
   flux in a circular aperture of radius ``aperture_arcsec`` on the centre of the ``band`` image
   plane, for both stores alike (the same measurement on both sides, so that the scales agree).
   The aperture's pixel weights are photutils' exact circle/pixel overlaps;
   ``m = 22.5 - 2.5 log10(flux)`` for images in nanomaggies (non-positive flux: ``m = 99``).

Nothing here reads a store's ``z_spec``: the target's labels are never touched.

:class:`MagnitudeMatcher` then pairs each source magnitude with one of the ``k`` target magnitudes
nearest to it, drawn at random (``k = 1``: always the nearest; larger ``k`` spreads the draws
over more target objects while keeping them matched to within the local magnitude spacing).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from zpix.store.cube_store import CubeStore

#: missing-magnitude convention of cube stores: NaN or >= this value
MISSING_MAG = 90.0


def catalogue_magnitude(store: CubeStore, band: str, rows: np.ndarray) -> np.ndarray | None:
    """Catalogue magnitude ``band`` of ``rows`` (NaN where missing), or None if the store has none."""
    if not store.has_mags or band not in store.mag_names:
        return None
    mags = store.file["mags"]
    col = store.mag_names.index(band)
    values = mags[:, col][rows].astype(np.float64)
    values[~np.isfinite(values) | (values >= MISSING_MAG)] = np.nan
    return values


def aperture_weights(size: int, pixel_scale_arcsec: float, radius_arcsec: float) -> np.ndarray:
    """(size, size) exact overlap of a circle of ``radius_arcsec`` centred on the stamp with each pixel."""
    from photutils.aperture import CircularAperture

    if not radius_arcsec > 0 or not pixel_scale_arcsec > 0:
        raise ValueError(f"aperture radius and pixel scale must be > 0, got {radius_arcsec}, {pixel_scale_arcsec}")
    centre = (size - 1) / 2.0
    aperture = CircularAperture((centre, centre), r=radius_arcsec / pixel_scale_arcsec)
    return aperture.to_mask(method="exact").to_image((size, size)).astype(np.float64)


def aperture_magnitude(store: CubeStore, band: str, rows: np.ndarray, radius_arcsec: float = 3.0,
                       block: int = 1024) -> np.ndarray:
    """Magnitude ``22.5 - 2.5 log10(F)`` of the flux F in a central circular aperture of the ``band`` plane.

    Images are read ``block`` rows at a time (bounded memory); non-positive fluxes give 99.
    """
    if band not in store.bands:
        raise ValueError(f"{store.path} has no image band {band!r} to measure (bands: {store.bands}); "
                         "choose match_band among them")
    plane = store.bands.index(band)
    weights = aperture_weights(store.image_shape[1], store.pixel_scale_arcsec, radius_arcsec)
    rows = np.asarray(rows, dtype=np.int64)
    flux = np.empty(len(rows), np.float64)
    for start in range(0, len(rows), block):
        chunk = store.images(rows[start:start + block])[:, plane].astype(np.float64)
        flux[start:start + block] = np.einsum("nij,ij->n", np.nan_to_num(chunk), weights)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = 22.5 - 2.5 * np.log10(flux)
    return np.where(flux > 0, mag, 99.0)


def matching_magnitudes(source: str | os.PathLike, source_rows: np.ndarray, target: str | os.PathLike,
                        target_rows: np.ndarray, band: str = "r", aperture_arcsec: float = 3.0
                        ) -> tuple[np.ndarray, np.ndarray, str]:
    """Magnitudes used to match source and target objects, and which kind they are.

    Returns ``(source_mags, target_mags, kind)`` with ``kind`` "catalogue" (both stores hold catalogue
    magnitudes of ``band``; missing entries filled with aperture magnitudes) or "aperture" (the
    documented fallback: the image aperture magnitude for every object of both stores).
    """
    with CubeStore(source, validate=False) as src, CubeStore(target, validate=False) as tgt:
        src_cat = catalogue_magnitude(src, band, source_rows)
        tgt_cat = catalogue_magnitude(tgt, band, target_rows)
        if src_cat is None or tgt_cat is None:
            return (aperture_magnitude(src, band, source_rows, aperture_arcsec),
                    aperture_magnitude(tgt, band, target_rows, aperture_arcsec), "aperture")
        for store, values, rows in ((src, src_cat, source_rows), (tgt, tgt_cat, target_rows)):
            missing = ~np.isfinite(values)
            if missing.any():
                values[missing] = aperture_magnitude(store, band, np.asarray(rows)[missing], aperture_arcsec)
        return src_cat, tgt_cat, "catalogue"


class MagnitudeMatcher:
    """Draws, for each source magnitude, one of the ``k`` target objects nearest to it in magnitude."""

    def __init__(self, target_mags: Sequence[float] | np.ndarray, k: int = 5) -> None:
        mags = np.asarray(target_mags, dtype=np.float64)
        if mags.ndim != 1 or len(mags) == 0:
            raise ValueError("need a non-empty 1-D array of target magnitudes")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.order = np.argsort(mags, kind="stable")
        self.sorted = mags[self.order]
        self.k = min(int(k), len(mags))

    def candidates(self, source_mags: np.ndarray) -> np.ndarray:
        """(n, k) positions (into the target array) of the k nearest target magnitudes of each source."""
        src = np.asarray(source_mags, dtype=np.float64).reshape(-1)
        n_t, k = len(self.sorted), self.k
        pos = np.searchsorted(self.sorted, src)
        # the k nearest lie within [pos - k, pos + k); pick them by distance inside that window
        lo = np.clip(pos - k, 0, max(n_t - 2 * k, 0))
        window = lo[:, None] + np.arange(min(2 * k, n_t))[None, :]
        dist = np.abs(self.sorted[window] - src[:, None])
        nearest = np.take_along_axis(window, np.argsort(dist, axis=1, kind="stable")[:, :k], axis=1)
        return self.order[nearest]

    def draw(self, source_mags: np.ndarray, generator: torch.Generator | None = None) -> np.ndarray:
        """One target position per source magnitude, uniformly among its k nearest."""
        cand = self.candidates(source_mags)
        pick = torch.randint(self.k, (len(cand),), generator=generator).numpy()
        return cand[np.arange(len(cand)), pick]
