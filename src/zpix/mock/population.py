"""The galaxy population of the mock survey: redshifts, luminosities, types, shapes and magnitudes.

Physics, with sources (details and measured comparisons in ``docs/mock_survey.md``):

* Luminosity function: Schechter fit of Blanton et al. (2003, ApJ 592, 819) in ^{0.1}r,
  M* − 5 log h = −20.44, α = −1.05, φ* = 1.49e−2 h³ Mpc⁻³, with luminosity evolution Q = 1.62
  and density evolution P = 0.18, for H0 = 70, Ωm = 0.3 flat ΛCDM.
* Galaxies fill the comoving volume dV/dz (astropy.cosmology); the flux limit then shapes n(z).
* Type mix depends on luminosity (brighter → more early types; e.g. Baldry et al. 2004 red fraction).
  Each galaxy is a de Vaucouleurs bulge with the CWW E spectrum plus an exponential disk whose
  spectrum mixes the CWW templates (``t`` in [0, 3]): a redder bulge, i.e. colour gradients.
* Sizes: Shen et al. (2003, MNRAS 343, 978) R50–luminosity fits
  (early: a = 0.65, b = −5.06; late: α = 0.21, β = 0.53, γ = −1.31, M0 = −20.52), with their
  luminosity-dependent log-normal scatter.
* Inclination: random orientation (cos i uniform), disk thickness q0 = 0.2 (Hubble 1926 formula);
  internal attenuation of the disk A_V = γ_V log10(a/b) (Giovanelli et al. 1994; Masters et al. 2010)
  with the Charlot & Fall (2000) λ^-0.7 curve in the rest frame: inclined disks are fainter and redder
  (Pasquet et al. 2019 Sect. 6.2).
* Selection: SDSS MGS, extinction-corrected Petrosian r ≤ 17.77 and μ50 ≤ 24.5 mag/arcsec²
  (Strauss et al. 2002); Petrosian flux is 82% of a de Vaucouleurs and 99% of an exponential
  profile's total (Blanton et al. 2001; Graham et al. 2005).  KiDS bright: r_auto < 20 (Bilicki et
  al. 2021), Kron fluxes taken as 94% of total (Bertin & Arnouts 1996).

Sampling is exact rather than by brute-force rejection: z is drawn from
dV/dz · n(z) · N(< M_lim(z)) on a fine grid and M from the Schechter function truncated at the
loosest absolute-magnitude limit at that z, then the real selection is applied (≈50-80% pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from zpix.mock.photometry import TEMPLATES, KCorrectionGrid, kcorrection_grid
from zpix.mock.presets import SurveyPreset

H0 = 70.0
OMEGA_M = 0.3
# Blanton et al. 2003, ^{0.1}r, h = 1 values converted to h = 0.7
LF_MSTAR = -20.44 + 5 * np.log10(H0 / 100)
LF_ALPHA = -1.05
LF_PHISTAR = 1.49e-2 * (H0 / 100) ** 3  # Mpc^-3
LF_Q = 1.62
LF_P = 0.18
LF_Z0 = 0.1
M_FAINTEST = -15.0  # fainter dwarfs can only enter an r < 17.8 sample at z < 0.005

TYPE_NAMES: tuple[str, ...] = ("E", "S0", "Sbc", "Scd", "Im")
# Softmax logits of the type mix: a_k + b_k (M + 20.5).  Slopes make bright galaxies early-type and
# faint ones late-type; tuned so the MGS colour–redshift relation is reproduced (docs/mock_survey.md).
TYPE_LOGIT_A = np.array([0.1, 0.0, 0.5, -0.1, -1.3])
TYPE_LOGIT_B = np.array([-0.6, -0.35, 0.0, 0.45, 0.9])
# Per type: bulge-to-total range (in ^{0.1}r light), disk template index range, γ_V of the disk
# attenuation, and whether the Shen et al. early-type size relation applies.
TYPE_BT = np.array([[0.75, 1.0], [0.4, 0.75], [0.1, 0.4], [0.0, 0.15], [0.0, 0.0]])
TYPE_TDISK = np.array([[0.3, 1.0], [0.7, 1.3], [1.0, 1.8], [1.6, 2.5], [2.3, 3.0]])
TYPE_GAMMA_V = np.array([0.2, 0.5, 1.2, 1.0, 0.4])
TYPE_EARLY = np.array([True, True, False, False, False])
DISK_Q0 = 0.2  # intrinsic thickness of disks (Haynes & Giovanelli 1984)
BULGE_Q0 = 0.6  # oblate bulges of disk galaxies
PETRO_FRACTION = (0.82, 0.99)  # (de Vaucouleurs, exponential) flux inside the Petrosian aperture
AUTO_FRACTION = (0.94, 0.94)  # Kron aperture, both profiles
# Scatter between the targeting aperture magnitude and the final catalogue photometry: SDSS targets
# were selected on early (DR1-era) reductions, repeatable to ≈0.1 mag for extended galaxies near the
# limit (Strauss et al. 2002; the photometry was re-calibrated in later data releases).
TARGETING_SIGMA = {"petrosian": 0.10, "auto": 0.05}
_LN10_04 = 0.4 * np.log(10.0)


@lru_cache(maxsize=4)
def _distance_tables(z_max: float, n: int = 3000) -> tuple[np.ndarray, ...]:
    """z grid, distance modulus, dV/dz/dΩ (Mpc³ sr⁻¹), angular scale (kpc/arcsec)."""
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=H0, Om0=OMEGA_M)
    z = np.linspace(1e-4, z_max, n)
    dm = np.asarray(cosmo.distmod(z).value)
    dvdz = np.asarray(cosmo.differential_comoving_volume(z).value)
    kpc_per_arcsec = np.asarray(cosmo.kpc_proper_per_arcmin(z).value) / 60.0
    return z, dm, dvdz, kpc_per_arcsec


def _schechter_x_table() -> tuple[np.ndarray, np.ndarray]:
    """Cumulative Schechter number density in x = M − M* (per Mpc³), from x = −6 upward."""
    x = np.linspace(-6.0, 8.0, 4001)
    phi = _LN10_04 * LF_PHISTAR * 10 ** (-0.4 * (LF_ALPHA + 1) * x) * np.exp(-(10 ** (-0.4 * x)))
    cum = np.concatenate([[0.0], np.cumsum((phi[1:] + phi[:-1]) / 2 * np.diff(x))])
    return x, cum


def type_probabilities(abs_mag: np.ndarray) -> np.ndarray:
    """P(type | M_{0.1r}) for :data:`TYPE_NAMES`, shape (n, 5)."""
    logits = TYPE_LOGIT_A[None, :] + TYPE_LOGIT_B[None, :] * (np.asarray(abs_mag)[:, None] + 20.5)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def shen2003_r50_kpc(abs_mag: np.ndarray, early: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half-light radius (kpc) from the Shen et al. (2003) early/late-type fits, scatter included."""
    m = np.asarray(abs_mag, dtype=float)
    m0 = -20.52
    log_early = -0.4 * 0.65 * m - 5.06
    log_late = -0.4 * 0.21 * m + (0.53 - 0.21) * np.log10(1 + 10 ** (-0.4 * (m - m0))) - 1.31
    sig1, sig2 = np.where(early, 0.45, 0.48), np.where(early, 0.27, 0.25)
    sigma_ln = sig2 + (sig1 - sig2) / (1 + 10 ** (-0.8 * (m - m0)))
    log_r = np.where(early, log_early, log_late)
    return 10**log_r * np.exp(sigma_ln * rng.standard_normal(m.size))


@dataclass
class PopulationModel:
    """Precomputed tables for drawing galaxies brighter than a limit in the selection band.

    ``select=True`` applies the survey's target selection (Petrosian/auto aperture, surface
    brightness, bright limit) on noisy measured magnitudes; ``select=False`` keeps every galaxy
    whose true total magnitude is within ``mag_limit`` (used for neighbours in the stamps).
    """

    preset: SurveyPreset
    mag_limit: float
    z_min: float
    z_max: float
    select: bool = True

    def __post_init__(self) -> None:
        p = self.preset
        self.kgrid: KCorrectionGrid = kcorrection_grid(tuple(p.mag_filters), z_max=max(1.5, self.z_max))
        self.sel_index = p.mag_names.index(p.selection_band)
        z, dm, dvdz, scale = _distance_tables(float(self.z_max))
        keep = z >= self.z_min
        self.z, self.dm, self.dvdz, self.scale = z[keep], dm[keep], dvdz[keep], scale[keep]
        # brightest possible K in the selection band at each z (any template, no attenuation)
        kz = self.kgrid.kcorr[:, 0, :, self.sel_index]  # (T, Zgrid)
        kmin = np.min([np.interp(self.z, self.kgrid.z, kz[t]) for t in range(len(TEMPLATES))], axis=0)
        mstar = LF_MSTAR - LF_Q * (self.z - LF_Z0)
        # loosest absolute limit: 0.3 mag margin covers noise scatter across the cut
        m_lim = self.mag_limit + 0.3 - self.dm - kmin
        self.x_upper = np.minimum(m_lim, M_FAINTEST) - mstar
        self.x_tab, self.cum_tab = _schechter_x_table()
        n_brighter = np.interp(self.x_upper, self.x_tab, self.cum_tab)
        density = 10 ** (0.4 * LF_P * (self.z - LF_Z0))
        w = self.dvdz * density * n_brighter
        self.z_cdf = np.concatenate([[0.0], np.cumsum((w[1:] + w[:-1]) / 2 * np.diff(self.z))])
        self.candidates_per_sr = float(self.z_cdf[-1])
        self.z_cdf /= self.z_cdf[-1]

    # -- drawing -------------------------------------------------------------------------------
    def _candidates(self, m: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        z = np.interp(rng.random(m), self.z_cdf, self.z)
        x_up = np.interp(z, self.z, self.x_upper)
        x = np.interp(rng.random(m) * np.interp(x_up, self.x_tab, self.cum_tab), self.cum_tab, self.x_tab)
        abs_mag = LF_MSTAR - LF_Q * (z - LF_Z0) + x
        dm = np.interp(z, self.z, self.dm)
        scale = np.interp(z, self.z, self.scale)

        # type from luminosity, inverse-CDF on the per-object probabilities
        cp = np.cumsum(type_probabilities(abs_mag), axis=1)
        gtype = np.minimum((rng.random(m)[:, None] > cp).sum(axis=1), len(TYPE_NAMES) - 1)
        lo, hi = TYPE_BT[gtype].T
        bt = lo + (hi - lo) * rng.random(m)
        lo, hi = TYPE_TDISK[gtype].T
        t_disk = lo + (hi - lo) * rng.random(m)

        # orientation: isotropic, cos i uniform; projected axis ratios (Hubble 1926)
        cos_i = rng.random(m)
        q_disk = np.sqrt((1 - DISK_Q0**2) * cos_i**2 + DISK_Q0**2)
        q_bulge_disky = np.sqrt((1 - BULGE_Q0**2) * cos_i**2 + BULGE_Q0**2)
        # ellipticals: observed b/a peaks near 0.8 (e.g. Padilla & Strauss 2008)
        q_ell = 0.3 + 0.7 * rng.beta(4.0, 2.0, m)
        is_e = gtype == 0
        q_bulge = np.where(is_e, q_ell, q_bulge_disky)
        tau_v = TYPE_GAMMA_V[gtype] * np.log10(1.0 / q_disk) / 1.0857
        pa = np.pi * rng.random(m)

        # sizes: galaxy R50 from Shen et al. 2003, split into components
        r50_kpc = shen2003_r50_kpc(abs_mag, TYPE_EARLY[gtype], rng)
        early = TYPE_EARLY[gtype]
        # early types: bulge carries R50, a faint extended disk around it; disk galaxies: the disk
        # carries R50 and the bulge is compact, r_e ≈ 0.2 h (MacArthur et al. 2003)
        hlr_bulge_kpc = np.where(early, r50_kpc, 0.2 * r50_kpc / 1.678)
        hlr_disk_kpc = np.where(early, 1.5 * r50_kpc, r50_kpc)
        hlr_bulge = np.maximum(hlr_bulge_kpc / scale, 0.05)  # arcsec
        hlr_disk = np.maximum(hlr_disk_kpc / scale, 0.05)

        # band fluxes (nanomaggies, before Galactic extinction) of each component
        k_bulge = self.kgrid(np.zeros(m), np.zeros(m), z)
        k_disk = self.kgrid(t_disk, tau_v, z)
        # The Blanton et al. LF is measured on Petrosian magnitudes: the total light is brighter by the
        # light a Petrosian aperture misses (18% of a de Vaucouleurs profile, 1% of an exponential).
        petro_frac = bt * PETRO_FRACTION[0] + (1 - bt) * PETRO_FRACTION[1]
        base = abs_mag + 2.5 * np.log10(petro_frac) + dm - 22.5
        flux_bulge = bt[:, None] * 10 ** (-0.4 * (base[:, None] + k_bulge))
        flux_disk = (1 - bt)[:, None] * 10 ** (-0.4 * (base[:, None] + k_disk))
        return {
            "z": z, "abs_mag": abs_mag, "type": gtype, "bulge_fraction": bt, "t_disk": t_disk,
            "inclination": np.degrees(np.arccos(cos_i)), "q_disk": q_disk, "q_bulge": q_bulge,
            "tau_v_disk": tau_v, "position_angle": np.degrees(pa), "r50_kpc": r50_kpc,
            "hlr_bulge": hlr_bulge, "hlr_disk": hlr_disk, "flux_bulge": flux_bulge, "flux_disk": flux_disk,
        }

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` galaxies passing the selection, with true parameters and observing conditions."""
        out: list[dict[str, np.ndarray]] = []
        have, batch = 0, max(256, int(1.6 * n))
        while have < n:
            cand = self._candidates(batch, rng)
            cand.update(observe(cand, self.preset, rng))
            if self.select:
                keep = selection_mask(cand, self.preset, self.mag_limit)
            else:
                total_r = 22.5 - 2.5 * np.log10(cand["flux_bulge"][:, self.sel_index]
                                                + cand["flux_disk"][:, self.sel_index])
                keep = total_r <= self.mag_limit
            out.append({k: v[keep] for k, v in cand.items()})
            have += int(keep.sum())
        return {k: np.concatenate([o[k] for o in out])[:n] for k in out[0]}

    def acceptance(self, rng: np.random.Generator, m: int = 20000) -> float:
        """Fraction of candidates that pass the selection (Monte Carlo)."""
        cand = self._candidates(m, rng)
        cand.update(observe(cand, self.preset, rng))
        if self.select:
            return float(selection_mask(cand, self.preset, self.mag_limit).mean())
        total_r = 22.5 - 2.5 * np.log10(cand["flux_bulge"][:, self.sel_index] + cand["flux_disk"][:, self.sel_index])
        return float((total_r <= self.mag_limit).mean())

    def density_per_deg2(self, rng: np.random.Generator, m: int = 20000) -> float:
        """Expected sky density (deg⁻²) of the galaxies this model draws (from φ* and the volume)."""
        return self.candidates_per_sr * self.acceptance(rng, m) / (180.0 / np.pi) ** 2


def light_weighted(values_bulge: np.ndarray, values_disk: np.ndarray, bt: np.ndarray) -> np.ndarray:
    """Flux-weighted mean of a bulge and a disk quantity."""
    return bt * values_bulge + (1 - bt) * values_disk


def observe(cand: Mapping[str, np.ndarray], preset: SurveyPreset, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Observing conditions and the survey catalogue's measurement of each galaxy.

    Galactic E(B−V) is log-normal (median and width in the preset), clipped; each image band gets a
    PSF FWHM (common seeing factor × band jitter) and a sky noise; a ``deep_fraction`` of objects sit
    in a Stripe-82-like stripe of N co-added epochs (noise / √N).  Catalogue fluxes are
    total (model-like) fluxes, dimmed by the Galactic extinction, with a Gaussian error of
    variance σ_sky² · NEA + F / (e⁻ per nmgy), where NEA = 4π(σ_psf² + σ_gal²) is the noise-equivalent
    area of the optimally weighted (model-fit) flux of a Gaussian approximation whose σ_gal gives each
    Sérsic component its exact NEA (King 1983 for the point-source case).
    """
    p = preset
    m = len(cand["z"])
    nb, nm = len(p.bands), len(p.mag_names)
    ebv = np.minimum(p.ebv_median * np.exp(p.ebv_sigma_ln * rng.standard_normal(m)), p.ebv_max)
    seeing = 10 ** (p.psf_scatter_dex * rng.standard_normal(m))
    sky_factor = 10 ** (p.sky_scatter_dex * rng.standard_normal(m))
    deep = rng.random(m) < p.deep_fraction
    epochs = np.where(deep, rng.integers(p.deep_epochs[0], p.deep_epochs[1] + 1, m), 1)

    psf = np.asarray(p.psf_fwhm_median)[None, :] * seeing[:, None] * 10 ** (
        p.psf_band_jitter_dex * rng.standard_normal((m, nb)))
    sky = np.asarray(p.sky_sigma)[None, :] * sky_factor[:, None] / np.sqrt(epochs)[:, None]

    # catalogue bands: image bands use the object's own PSF and sky, other surveys their medians
    mag_psf = np.asarray(p.mag_psf_fwhm)[None, :] * seeing[:, None]
    mag_sky = np.asarray(p.mag_sky_sigma)[None, :] * sky_factor[:, None] / np.sqrt(epochs)[:, None]
    for j, b in enumerate(p.bands):
        k = p.mag_names.index(b)
        mag_psf[:, k], mag_sky[:, k] = psf[:, j], sky[:, j]
    ext = np.asarray(p.mag_extinction)[None, :] * ebv[:, None]
    flux_true = cand["flux_bulge"] + cand["flux_disk"]
    flux_ext = flux_true * 10 ** (-0.4 * ext)
    hlr = light_weighted(cand["hlr_bulge"], cand["hlr_disk"], cand["bulge_fraction"])
    # Gaussian-equivalent width of each profile with the same noise-equivalent area
    # NEA = (∫I)²/∫I² = 2πn Γ(2n) 2^{2n} b_n^{-2n} r_e² (Sérsic; Graham & Driver 2005 integrals):
    # 0.86 π r_e² for de Vaucouleurs and 2.84 π r_e² for exponential, i.e. σ = 0.46 r_e and 0.84 r_e
    sigma_gal = np.sqrt(light_weighted((0.46 * cand["hlr_bulge"]) ** 2, (0.84 * cand["hlr_disk"]) ** 2,
                                       cand["bulge_fraction"]))
    nea = 4 * np.pi * ((mag_psf / 2.3548) ** 2 + sigma_gal[:, None] ** 2) / np.asarray(p.mag_pixel_scale) ** 2
    var = mag_sky**2 * nea + np.maximum(flux_ext, 0) / (np.asarray(p.mag_electrons_per_nmgy)[None, :] * epochs[:, None])
    sigma_f = np.sqrt(var)
    flux_obs = flux_ext + sigma_f * rng.standard_normal((m, nm))
    detected = flux_obs > sigma_f  # S/N > 1, otherwise a non-detection
    # footprint gaps (whole groups of bands) and independent per-band losses
    group = np.asarray(p.mag_missing_group)
    gaps = rng.random((m, len(p.group_missing_fraction))) < np.asarray(p.group_missing_fraction)[None, :]
    observed = ~gaps[:, group] & (rng.random((m, nm)) >= np.asarray(p.mag_missing_fraction)[None, :])
    if p.mag_asinh_b is not None:
        # SDSS catalogue magnitudes are asinh magnitudes: finite for any flux (Lupton et al. 1999)
        b = np.asarray(p.mag_asinh_b)[None, :]
        x = flux_obs * 1e-9  # maggies
        mags = -1.0857 * (np.arcsinh(x / (2 * b)) + np.log(b))
        mag_errs = 1.0857 * sigma_f * 1e-9 / (2 * b) / np.sqrt(1 + (x / (2 * b)) ** 2)
        mags = np.where(observed, mags, np.nan)
        mag_errs = np.where(observed, mag_errs, np.nan)
    else:
        good = detected & observed
        with np.errstate(divide="ignore", invalid="ignore"):
            mags = np.where(good, 22.5 - 2.5 * np.log10(np.where(good, flux_obs, 1.0)), np.nan)
            mag_errs = np.where(good, 1.0857 * sigma_f / np.where(good, flux_obs, 1.0), np.nan)

    # selection-aperture flux (Petrosian or Kron) in the selection band, measured with noise in a
    # larger aperture (≈ 2× the NEA of the model fit)
    s = p.mag_names.index(p.selection_band)
    frac = PETRO_FRACTION if p.selection_kind == "petrosian" else AUTO_FRACTION
    ap_true = (frac[0] * cand["flux_bulge"][:, s] + frac[1] * cand["flux_disk"][:, s]) * 10 ** (-0.4 * ext[:, s])
    ap_sigma = np.hypot(np.sqrt(2.0) * sigma_f[:, s], TARGETING_SIGMA[p.selection_kind] * ap_true / 1.0857)
    ap_obs = ap_true + ap_sigma * rng.standard_normal(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        sel_mag = np.where(ap_obs > 0, 22.5 - 2.5 * np.log10(np.maximum(ap_obs, 1e-30)), 99.0) - ext[:, s]
    # Petrosian R50 as measured, i.e. including the seeing (in quadrature)
    r50_obs = np.sqrt(hlr**2 + (mag_psf[:, s] / 2) ** 2)
    out = {
        "ebv": ebv, "deep": deep, "epochs": epochs, "psf_fwhm": psf, "sky_sigma": sky,
        "obs_mags": mags, "obs_mag_errs": mag_errs, "snr": flux_ext / sigma_f, "sel_mag": sel_mag,
        "mu50": sel_mag + 2.5 * np.log10(2 * np.pi * r50_obs**2), "r50_obs": r50_obs,
        "axis_ratio": light_weighted(cand["q_bulge"], cand["q_disk"], cand["bulge_fraction"]),
        "hlr": hlr,
    }
    return out


def selection_mask(cand: Mapping[str, np.ndarray], preset: SurveyPreset, mag_limit: float) -> np.ndarray:
    """Target selection on the measured, extinction-corrected aperture magnitude (+ μ50 for the MGS)."""
    keep = (cand["sel_mag"] <= mag_limit) & (cand["sel_mag"] >= preset.bright_limit)
    if preset.mu50_limit is not None:
        keep &= cand["mu50"] <= preset.mu50_limit
    return keep


@lru_cache(maxsize=8)
def population_model(preset: SurveyPreset, neighbours: bool = False) -> PopulationModel:
    """The target population of a preset, or (``neighbours=True``) the deeper field population."""
    if neighbours:
        return PopulationModel(preset, preset.neighbour_mag_limit, 0.01, 1.5, select=False)
    return PopulationModel(preset, preset.mag_limit, preset.z_min, preset.z_max, select=True)


def sample_population(n: int, survey: str | SurveyPreset = "sdss", seed: int = 0) -> dict[str, np.ndarray]:
    """Draw ``n`` selected galaxies of a survey without rendering images (fast: ~1e5 per second).

    Returns per-object arrays (z, abs_mag, type, fluxes, observed magnitudes, …); the same seed
    gives the same galaxies.
    """
    from zpix.mock.presets import get_preset

    preset = get_preset(survey) if isinstance(survey, str) else survey
    return population_model(preset).sample(n, np.random.default_rng(seed))
