"""Observing settings of the mock surveys: ``sdss`` (Main Galaxy Sample), ``kids`` (KiDS bright) and
``legacy`` (DESI Legacy Imaging Surveys DR10, DECam g r i z).

Every number below is a published or measured property of the real survey; the source is given
beside it.  ``docs/mock_survey.md`` explains the choices and compares the result with real data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SurveyPreset:
    """How one survey observes: image bands and stamp, PSF, noise, selection, catalogue bands."""

    name: str
    # --- images ---------------------------------------------------------------------------
    bands: tuple[str, ...]
    image_filters: tuple[str, ...]  # speclite names, one per image band
    stamp: int  # pixels on a side
    pixel_scale: float  # arcsec / pixel
    psf_fwhm_median: tuple[float, ...]  # arcsec, per image band, median over the survey
    psf_scatter_dex: float  # log10 scatter of the per-object seeing (common to all bands)
    psf_band_jitter_dex: float  # extra independent per-band log10 scatter
    sky_sigma: tuple[float, ...]  # nanomaggies / pixel, per image band, one epoch
    sky_scatter_dex: float  # log10 scatter of the per-object sky noise (moon, airmass)
    electrons_per_nmgy: tuple[float, ...]  # source shot noise: variance = flux / this (nmgy²)
    # --- Galactic extinction (A_b = coeff × E(B-V)) and its distribution -------------------
    ebv_median: float
    ebv_sigma_ln: float
    ebv_max: float
    # --- selection --------------------------------------------------------------------------
    selection_band: str  # a catalogue band name
    mag_limit: float  # on the extinction-corrected selection magnitude
    selection_kind: str  # "petrosian" (SDSS MGS) or "auto" (KiDS MAG_AUTO)
    bright_limit: float  # spectroscopic targets brighter than this are not kept
    mu50_limit: float | None  # mean surface brightness within R50 (mag/arcsec²) cut, MGS only
    z_min: float
    z_max: float  # sampling range of the population
    z_max_suggested: float  # upper edge for a redshift classifier on this mock
    # --- catalogue ("observed") magnitudes ------------------------------------------------
    mag_names: tuple[str, ...]
    mag_filters: tuple[str, ...]
    mag_extinction: tuple[float, ...]  # A/E(B-V) per catalogue band
    # per catalogue band: noise per pixel (nmgy), pixel scale and seeing of the survey that measures it
    mag_sky_sigma: tuple[float, ...]
    mag_pixel_scale: tuple[float, ...]
    mag_psf_fwhm: tuple[float, ...]
    mag_electrons_per_nmgy: tuple[float, ...]
    mag_missing_fraction: tuple[float, ...]  # per band, independent losses (masks, bad detections)
    mag_missing_group: tuple[int, ...]  # group id per band: bands of one survey go missing together
    group_missing_fraction: tuple[float, ...]  # per group id: objects outside that survey's footprint
    # asinh softening b per band (maggies) for SDSS-style "luptitudes" (Lupton, Gunn & Szalay 1999),
    # which stay finite at low S/N; None: Pogson magnitudes with NaN for non-detections (S/N < 1)
    mag_asinh_b: tuple[float, ...] | None
    # --- deep stripe and neighbours ----------------------------------------------------------
    deep_fraction: float
    deep_epochs: tuple[int, int]  # uniform range of co-added epochs for "deep" objects
    neighbour_mag_limit: float  # neighbours drawn from the population down to this r magnitude
    neighbour_min_sep: float  # arcsec: closer companions are treated as part of the target

    @property
    def extinction(self) -> tuple[float, ...]:
        """A/E(B-V) for the image bands (the catalogue coefficients of the same band names)."""
        lookup = dict(zip(self.mag_names, self.mag_extinction, strict=True))
        return tuple(lookup[b] for b in self.bands)

    def with_overrides(self, **overrides: Any) -> SurveyPreset:
        """A copy with some fields replaced; unknown names are an error listing the valid ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown survey setting(s) {unknown}; valid: {sorted(names)}")
        fixed = {}
        for key, value in overrides.items():
            current = getattr(self, key)
            if isinstance(current, tuple):
                value = tuple(value)
                if len(value) != len(current):
                    raise ValueError(f"{key} needs {len(current)} values, got {len(value)}")
            fixed[key] = value
        return dataclasses.replace(self, **fixed)


# SDSS extinction coefficients A_b/E(B-V) of Schlafly & Finkbeiner (2011, Table 6, R_V = 3.1),
# the ones SDSS DR8+ uses for `extinction_{ugriz}` (and the brief's values).
SDSS_EXTINCTION = (4.239, 3.303, 2.285, 1.698, 1.263)

SDSS = SurveyPreset(
    name="sdss",
    bands=("u", "g", "r", "i", "z"),
    image_filters=("sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z"),
    stamp=64,
    pixel_scale=0.396,  # Pasquet et al. 2019 Sect. 2
    # median PSF FWHM of SDSS imaging (Stoughton et al. 2002; DR7 median r ≈ 1.3")
    psf_fwhm_median=(1.53, 1.44, 1.32, 1.26, 1.29),
    psf_scatter_dex=0.07,  # ~±17% night-to-night, keeps 90% of r FWHM in ≈1.0-1.7"
    psf_band_jitter_dex=0.02,
    # g r i z: pixel-to-pixel noise measured on the real corrected frames of run 2583/camcol 2/field 136
    # (../shared/data/real/sdss_frame_2583_2_136, MAD of neighbouring-pixel differences / √2:
    # u 0.061, g 0.026, r 0.039, i 0.064, z 0.24 nmgy).  u: that night's u sky was bright; 0.045 nmgy
    # reproduces the median u model-magnitude error of the real MGS catalogue (0.053 mag), as the frame
    # values do for g r i z (docs/mock_survey.md).  5σ point-source depths u 22.0 g 22.2 r 22.2
    # i 21.3 z 20.5 at 1.4" seeing would give 0.056/0.048/0.050/0.118/0.24.
    sky_sigma=(0.045, 0.026, 0.039, 0.064, 0.24),
    sky_scatter_dex=0.08,
    # gain / nmgypercount of the same field (photoField-002583-2): e- per nanomaggy, 53.9 s exposure
    electrons_per_nmgy=(153.0, 862.0, 841.0, 791.0, 133.0),
    # E(B-V) of MGS lines of sight (SFD98 recalibrated): median ≈ 0.03 with a tail to ~0.2
    ebv_median=0.028,
    ebv_sigma_ln=0.62,
    ebv_max=0.35,
    selection_band="r",
    mag_limit=17.77,  # Strauss et al. 2002, MGS target selection on dereddened Petrosian r
    selection_kind="petrosian",
    bright_limit=12.0,
    mu50_limit=24.5,  # Strauss et al. 2002: mean surface brightness within the Petrosian R50
    z_min=0.003,
    z_max=0.45,
    z_max_suggested=0.4,  # Pasquet et al. 2019: 180 bins over 0 ≤ z ≤ 0.4
    mag_names=("u", "g", "r", "i", "z"),
    mag_filters=("sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z"),
    mag_extinction=SDSS_EXTINCTION,
    mag_sky_sigma=(0.045, 0.026, 0.039, 0.064, 0.24),
    mag_pixel_scale=(0.396,) * 5,
    mag_psf_fwhm=(1.53, 1.44, 1.32, 1.26, 1.29),
    mag_electrons_per_nmgy=(153.0, 862.0, 841.0, 791.0, 133.0),
    mag_missing_fraction=(0.0,) * 5,
    mag_missing_group=(0,) * 5,
    group_missing_fraction=(0.0,),
    mag_asinh_b=(1.4e-10, 0.9e-10, 1.2e-10, 1.8e-10, 7.4e-10),  # SDSS EDR paper, Stoughton et al. 2002
    # Stripe 82 holds ~4% of the MGS (Pasquet et al. 2019 Table 2: 3 943 of 103 306 test galaxies)
    # and stacks up to 64 epochs (Sect. 2).
    deep_fraction=0.04,
    deep_epochs=(10, 64),
    neighbour_mag_limit=22.2,  # SDSS r-band 95% completeness for point sources
    neighbour_min_sep=2.0,
)

# VISTA/VIKING Z Y J H Ks: speclite has no VISTA curves; the nearest in effective wavelength and
# width are used: Z → lsst2016-z (8702 Å vs VISTA 8780 Å), Y → decam2014-Y (9893 vs 10200),
# J/H/Ks → 2MASS (twomass-J/H/Ks: 12408/16514/21656 vs VISTA 12540/16460/21490).  OmegaCAM ugri
# follow the SDSS system (Kuijken et al. 2019), so sdss2010-u/g/r/i stand in for them.
KIDS_MAG_FILTERS = ("sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i",
                    "lsst2016-z", "decam2014-Y", "twomass-J", "twomass-H", "twomass-Ks")
# ugri: Schlafly & Finkbeiner 2011 (as SDSS).  ZYJHKs: CCM89 (R_V = 3.1) integrated over the stand-in
# curve for an elliptical at z = 0.1, rescaled by 0.830 so that it reproduces SF11 in SDSS z
# (photometry.galactic_extinction_coefficient; the test checks these numbers). 2MASS J/H/Ks come out
# within 5% of SF11's UKIRT 0.709/0.449/0.302.
KIDS_EXTINCTION = (4.239, 3.303, 2.285, 1.698, 1.318, 1.062, 0.745, 0.467, 0.303)


def _sigma_from_depth(mag5: float, aperture_diameter: float, pixel_scale: float) -> float:
    """Per-pixel sky noise (nmgy) of a survey whose 5σ limit in a circular aperture is ``mag5``."""
    import math

    flux5 = 10 ** ((22.5 - mag5) / 2.5)
    npix = math.pi * (aperture_diameter / 2) ** 2 / pixel_scale**2
    return flux5 / (5.0 * math.sqrt(npix))


# KiDS DR4 5σ depths in 2" apertures: u 24.23, g 25.12, r 25.02, i 23.68 (Kuijken et al. 2019);
# VIKING (Edge et al. 2013; Wright et al. 2019, KiDS-VIKING-450): Z 23.1, Y 22.3, J 22.1, H 21.5, Ks 21.2.
_KIDS_DEPTHS = (24.23, 25.12, 25.02, 23.68, 23.1, 22.3, 22.1, 21.5, 21.2)
_KIDS_PIX = (0.2,) * 4 + (0.339,) * 5  # OmegaCAM 0.214"→0.2" coadds; VIRCAM 0.339"
_KIDS_SIGMA = tuple(round(_sigma_from_depth(m, 2.0, p), 5) for m, p in zip(_KIDS_DEPTHS, _KIDS_PIX, strict=True))
# e-/nmgy scaled from SDSS by exposure (KiDS u 1000 s, g 900 s, r 1800 s, i 1200 s; VIKING ~ 500 s
# for ZY/J, 700 s H/Ks) and collecting area (VST 2.6 m vs SDSS 2.5 m; VISTA 4.1 m): only the source
# shot noise of bright cores depends on it.
_KIDS_EPN = (2.9e3, 1.5e4, 3.0e4, 1.8e4, 4.0e3, 4.0e3, 8.0e3, 8.0e3, 6.0e3)

KIDS = SurveyPreset(
    name="kids",
    bands=("u", "g", "r", "i"),
    image_filters=KIDS_MAG_FILTERS[:4],
    stamp=36,  # John William et al.: 36×36 cutouts
    pixel_scale=0.2,
    # KiDS DR4 mean PSF FWHM: r is taken in the best seeing (Kuijken et al. 2019)
    psf_fwhm_median=(1.00, 0.86, 0.70, 0.79),
    psf_scatter_dex=0.06,
    psf_band_jitter_dex=0.03,
    sky_sigma=_KIDS_SIGMA[:4],
    sky_scatter_dex=0.06,
    electrons_per_nmgy=_KIDS_EPN[:4],
    ebv_median=0.03,
    ebv_sigma_ln=0.5,
    ebv_max=0.2,
    selection_band="r",
    mag_limit=20.0,  # KiDS bright sample: r_auto < 20 (Bilicki et al. 2021)
    selection_kind="auto",
    bright_limit=14.0,
    mu50_limit=None,
    z_min=0.005,
    z_max=0.9,
    z_max_suggested=0.7,
    mag_names=("u", "g", "r", "i", "Z", "Y", "J", "H", "Ks"),
    mag_filters=KIDS_MAG_FILTERS,
    mag_extinction=KIDS_EXTINCTION,
    mag_sky_sigma=_KIDS_SIGMA,
    mag_pixel_scale=_KIDS_PIX,
    mag_psf_fwhm=(1.00, 0.86, 0.70, 0.79, 0.9, 0.9, 0.9, 0.9, 0.9),  # VIKING seeing < 1"
    mag_electrons_per_nmgy=_KIDS_EPN,
    # VIKING misses ~3% of KiDS-bright objects in all five bands (group 1; Bilicki et al. 2021 use
    # 9-band photometry with a few % missing); plus 1% per band lost to masks / bad detections.
    mag_missing_fraction=(0.0, 0.0, 0.0, 0.0, 0.01, 0.01, 0.01, 0.01, 0.01),
    mag_missing_group=(0, 0, 0, 0, 1, 1, 1, 1, 1),
    group_missing_fraction=(0.0, 0.03),
    mag_asinh_b=None,
    deep_fraction=0.0,
    deep_epochs=(2, 4),
    neighbour_mag_limit=24.0,
    neighbour_min_sep=1.0,
)

def _sigma_from_psf_depth(mag5: float, fwhm: float, pixel_scale: float) -> float:
    """Per-pixel sky noise (nmgy) of a survey whose 5σ point-source (PSF-fit) depth is ``mag5``.

    The optimal PSF-fit flux of a Gaussian PSF has noise σ √NEA with NEA = 4π σ_psf² (King 1983), the
    way the Legacy Surveys define their ``psfdepth``.
    """
    import math

    flux5 = 10 ** ((22.5 - mag5) / 2.5)
    nea = 4 * math.pi * (fwhm / 2.3548) ** 2 / pixel_scale**2
    return flux5 / (5.0 * math.sqrt(nea))


# DESI Legacy Imaging Surveys DR10 (south: DECaLS + DES + DELVE DECam data, Dey et al. 2019, AJ 157,
# 168; legacysurvey.org/dr10/description): median PSF FWHM g 1.29", r 1.18", z 1.11" (Dey et al. 2019,
# DECaLS), i ≈ 1.10" (DR10 adds DECam i from DES/DELVE); median 5σ point-source depths (psfdepth) of the
# DR10 south footprint ≈ g 24.7, r 24.2, i 23.6, z 23.2 (approximate medians of the DR10 depth maps).
_LEGACY_BANDS = ("g", "r", "i", "z")
_LEGACY_FWHM = (1.29, 1.18, 1.10, 1.11)
_LEGACY_DEPTH = (24.7, 24.2, 23.6, 23.2)
_LEGACY_SIGMA = tuple(round(_sigma_from_psf_depth(m, f, 0.262), 5) for m, f in zip(_LEGACY_DEPTH, _LEGACY_FWHM,
                                                                                    strict=True))
# DECam zero points ≈ 25.0/25.2/25.0/24.9 AB for 1 e-/s (Dey et al. 2019) and ≈ 3 × 90-100 s per band
# in the coadds: e-/nmgy = 10^(0.4 (zp − 22.5)) × t.  Only the shot noise of bright cores depends on it.
_LEGACY_EPN = (3.0e3, 3.8e3, 3.0e3, 2.5e3)
# A_b/E(B−V) for DECam of Schlafly & Finkbeiner (2011, Table 6), as the Legacy Surveys apply them
# (DR9/DR10 catalogues' mw_transmission: g 3.214, r 2.165, z 1.211; i 1.592)
LEGACY_EXTINCTION = (3.214, 2.165, 1.592, 1.211)

LEGACY = SurveyPreset(
    name="legacy",
    bands=_LEGACY_BANDS,
    image_filters=tuple(f"decam2014-{b}" for b in _LEGACY_BANDS),
    stamp=64,  # a parameter: simulate(..., stamp=N) overrides it
    pixel_scale=0.262,  # DECam / Legacy Surveys coadd pixels
    psf_fwhm_median=_LEGACY_FWHM,
    psf_scatter_dex=0.06,
    psf_band_jitter_dex=0.03,
    sky_sigma=_LEGACY_SIGMA,
    sky_scatter_dex=0.10,  # number of passes varies across the footprint (1-3+ in DECaLS, more in DES)
    electrons_per_nmgy=_LEGACY_EPN,
    # Legacy footprint avoids the plane (|b| ≳ 18°): E(B−V) median ≈ 0.04, tail to ≈ 0.3
    ebv_median=0.04,
    ebv_sigma_ln=0.6,
    ebv_max=0.3,
    selection_band="r",
    # r_auto < 22.5: a magnitude-limited photo-z sample reaching z ≈ 1 (its n(z) in docs/mock_survey.md),
    # between DESI BGS (r < 19.5) and the full depth of the imaging
    mag_limit=22.5,
    selection_kind="auto",
    bright_limit=14.0,
    mu50_limit=None,
    z_min=0.005,
    z_max=1.6,
    z_max_suggested=1.2,
    mag_names=_LEGACY_BANDS,
    mag_filters=tuple(f"decam2014-{b}" for b in _LEGACY_BANDS),
    mag_extinction=LEGACY_EXTINCTION,
    mag_sky_sigma=_LEGACY_SIGMA,
    mag_pixel_scale=(0.262,) * 4,
    mag_psf_fwhm=_LEGACY_FWHM,
    mag_electrons_per_nmgy=_LEGACY_EPN,
    # DR10 i covers only the DES/DELVE part of the footprint: i is missing for ~30% of objects
    mag_missing_fraction=(0.0, 0.0, 0.3, 0.0),
    mag_missing_group=(0, 0, 0, 0),
    group_missing_fraction=(0.0,),
    mag_asinh_b=None,
    deep_fraction=0.0,
    deep_epochs=(2, 4),
    neighbour_mag_limit=24.5,
    neighbour_min_sep=1.0,
)

PRESETS: dict[str, SurveyPreset] = {"sdss": SDSS, "kids": KIDS, "legacy": LEGACY}


def get_preset(name: str, **overrides: Any) -> SurveyPreset:
    """The named preset, with ``overrides`` applied (e.g. ``mag_limit=17.5``)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown survey {name!r}; choose one of {sorted(PRESETS)}") from None
    return preset.with_overrides(**overrides) if overrides else preset
