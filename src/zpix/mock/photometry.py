"""Broad-band photometry of galaxy templates: k-corrections through real filter curves.

Apparent magnitudes of the mock come from GalSim's Coleman, Wu & Weedman (1980) templates
(``CWW_{E,Sbc,Scd,Im}_ext``, extended to the UV and near-IR by the GalSim team) redshifted and
integrated through the filter curves that ``speclite`` ships.  Nothing is fitted: the colours
and their evolution with redshift (the k-correction) follow from the spectra.

For a galaxy of absolute magnitude ``M`` in the reference band ^{0.1}r (SDSS r blueshifted by
1.1, the band of the Blanton et al. 2003 luminosity function) the apparent AB magnitude in an
observed band ``b`` is (Hogg et al. 2002, "The K correction")::

    m_b = M_{0.1r} + DM(z) + K_{b,0.1r}(z)

and :class:`KCorrectionGrid` tabulates ``K`` on a grid of (template, internal attenuation, z)
once, so drawing a million galaxies is an interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

TEMPLATES: tuple[str, ...] = ("E", "Sbc", "Scd", "Im")
"""Template order; a continuous template index t in [0, 3] mixes neighbouring templates."""

REFERENCE_BAND = "sdss2010-r"
REFERENCE_SHIFT = 0.1  # ^{0.1}r: Blanton et al. (2003) band, r shifted to z = 0.1
_C_ANGSTROM_PER_S = 2.99792458e18
_AB_FNU_CGS = 3631e-23  # erg s^-1 cm^-2 Hz^-1
_V_ANGSTROM = 5500.0
CHARLOT_FALL_SLOPE = 0.7  # tau_lambda ∝ lambda^-0.7 (Charlot & Fall 2000, ISM component)


# Template repair below the 4000 Å break (rest frame): magnitudes of dimming per template (E, Sbc, Scd,
# Im), below ≈3650 Å.  Budavári et al. (2000, AJ 120, 1588) showed that the CWW templates must be "repaired" to
# match SDSS colours, mostly in the near-UV; here one amplitude per template, a smooth step centred
# on 3650 Å (width 100 Å), calibrated on the u−g colours of SDSS_MGS.train (docs/mock_survey.md) and validated on
# SDSS_MGS.test.
UV_REPAIR_MAG: tuple[float, ...] = (0.30, 0.25, 0.15, 0.05)
UV_REPAIR_CENTRE = 3650.0
UV_REPAIR_WIDTH = 100.0


def uv_repair(wave: np.ndarray, amplitude: float) -> np.ndarray:
    """Multiplicative repair 10^(−0.4 δ(λ)) with δ = amplitude / (1 + exp((λ − 3900 Å) / 150 Å))."""
    x = np.clip((np.asarray(wave) - UV_REPAIR_CENTRE) / UV_REPAIR_WIDTH, -50, 50)
    return 10 ** (-0.4 * amplitude / (1 + np.exp(x)))


@lru_cache(maxsize=4)
def template_spectra(repair: tuple[float, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rest-frame CWW templates from GalSim on one wavelength grid (Å), as f_lambda (arbitrary units).

    ``repair`` (default :data:`UV_REPAIR_MAG`; pass zeros for the raw templates) applies
    :func:`uv_repair` per template.  GalSim's ``*_ext`` files stop at 2.205 µm.  The Ks band (to
    2.4 µm observed) at z < 0.09 needs a little more, so each template is continued to 5 µm with the
    power law of its own last 0.6 µm (log-log fit): the Rayleigh-Jeans-like decline of old stars.
    """
    import galsim

    wave = np.geomspace(100.0, 50000.0, 6000)
    out = np.empty((len(TEMPLATES), wave.size))
    for k, name in enumerate(TEMPLATES):
        sed = galsim.SED(f"CWW_{name}_ext.sed", wave_type="Ang", flux_type="flambda")
        native_nm = np.asarray(sed.wave_list, dtype=float)
        # GalSim returns photons/nm/cm^2/s; f_lambda ∝ photons × hc/λ, so multiply by 1/λ.
        flam_native = np.asarray(sed(native_nm), dtype=float) / native_nm
        native = native_nm * 10.0
        inside = wave <= native[-1]
        out[k, inside] = np.interp(wave[inside], native, flam_native)
        tail = native > native[-1] - 6000.0
        slope, icpt = np.polyfit(np.log(native[tail]), np.log(np.maximum(flam_native[tail], 1e-300)), 1)
        out[k, ~inside] = np.exp(icpt + slope * np.log(wave[~inside]))
    amplitudes = UV_REPAIR_MAG if repair is None else repair
    out *= np.stack([uv_repair(wave, a) for a in amplitudes])
    return wave, out


def _ab_weights(wave: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Weights w such that ``sum(w * f_lambda(wave))`` is the band's f_nu in units of 3631 Jy.

    AB definition (Oke & Gunn 1983; Hogg et al. 2002) for a photon-counting detector:
    f_nu = ∫ f_λ R λ dλ / ∫ (c/λ) R dλ, integrated with the trapezoid rule on the filter's grid.
    """
    wave = np.asarray(wave, dtype=float)
    response = np.asarray(response, dtype=float)
    trap = np.zeros_like(wave)
    dw = np.diff(wave)
    trap[:-1] += dw / 2
    trap[1:] += dw / 2
    norm = np.sum(trap * response * _C_ANGSTROM_PER_S / wave) * _AB_FNU_CGS
    return trap * response * wave / norm


@lru_cache(maxsize=32)
def filter_curve(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(wavelength Å, response) of a speclite filter, e.g. ``"sdss2010-r"`` (shipped with speclite)."""
    import speclite.filters

    f = speclite.filters.load_filter(name)
    return np.asarray(f.wavelength, dtype=float), np.asarray(f.response, dtype=float)


def effective_wavelength(name: str) -> float:
    """Photon-weighted mean wavelength of a filter (Å)."""
    wave, resp = filter_curve(name)
    return float(np.trapezoid(resp * wave * wave, wave) / np.trapezoid(resp * wave, wave))


def ab_magnitudes(wave: np.ndarray, flam: np.ndarray, filters: Sequence[str]) -> np.ndarray:
    """AB magnitudes of one spectrum (f_lambda in erg/s/cm²/Å on ``wave`` Å) through ``filters``."""
    out = np.empty(len(filters))
    for j, name in enumerate(filters):
        fw, fr = filter_curve(name)
        out[j] = -2.5 * np.log10(np.sum(_ab_weights(fw, fr) * np.interp(fw, wave, flam)))
    return out


def attenuation_curve(wave_rest: np.ndarray, tau_v: float | np.ndarray) -> np.ndarray:
    """Transmission exp(-tau_V (λ/5500 Å)^-0.7): the ISM power law of Charlot & Fall (2000).

    Used for the inclination-dependent internal attenuation of disks (Pasquet et al. 2019 Sect. 6.2:
    inclination reddens galaxy colours).
    """
    return np.exp(-np.asarray(tau_v) * (np.asarray(wave_rest) / _V_ANGSTROM) ** (-CHARLOT_FALL_SLOPE))


@dataclass(frozen=True)
class KCorrectionGrid:
    """K_{b,0.1r}(template, tau_V, z) for a set of filters; call it to interpolate.

    ``kcorr[t, a, k, b]`` = m_b − M_{0.1r} − DM(z_k) for template t with internal attenuation
    tau_V = ``tau[a]`` applied in its rest frame, normalised to the *unattenuated* template in
    ^{0.1}r, so attenuation both dims and reddens.
    """

    filters: tuple[str, ...]
    z: np.ndarray
    tau: np.ndarray
    kcorr: np.ndarray

    def __call__(self, t: np.ndarray, tau_v: np.ndarray, z: np.ndarray) -> np.ndarray:
        """K for continuous template index ``t`` (0=E … 3=Im), attenuation ``tau_v`` and redshift ``z``.

        Between two templates the *spectra* are mixed (equal ^{0.1}r luminosity weights), i.e. the
        fluxes, not the magnitudes, are interpolated: a composite stellar population.
        """
        t = np.clip(np.asarray(t, dtype=float), 0.0, len(TEMPLATES) - 1.0)
        tau_v = np.clip(np.asarray(tau_v, dtype=float), self.tau[0], self.tau[-1])
        z = np.asarray(z, dtype=float)
        if np.any(z < self.z[0]) or np.any(z > self.z[-1]):
            raise ValueError(f"redshift outside the k-correction grid [{self.z[0]}, {self.z[-1]}]")
        t0 = np.minimum(np.floor(t).astype(int), len(TEMPLATES) - 2)
        wt = t - t0
        a0 = np.clip(np.searchsorted(self.tau, tau_v, side="right") - 1, 0, len(self.tau) - 2)
        wa = (tau_v - self.tau[a0]) / (self.tau[a0 + 1] - self.tau[a0])
        k0 = np.clip(np.searchsorted(self.z, z, side="right") - 1, 0, len(self.z) - 2)
        wz = (z - self.z[k0]) / (self.z[k0 + 1] - self.z[k0])

        def at(ti: np.ndarray) -> np.ndarray:
            g = self.kcorr
            lo = g[ti, a0, k0] * (1 - wz)[:, None] + g[ti, a0, k0 + 1] * wz[:, None]
            hi = g[ti, a0 + 1, k0] * (1 - wz)[:, None] + g[ti, a0 + 1, k0 + 1] * wz[:, None]
            return lo * (1 - wa)[:, None] + hi * wa[:, None]

        flux = (1 - wt)[:, None] * 10 ** (-0.4 * at(t0)) + wt[:, None] * 10 ** (-0.4 * at(t0 + 1))
        return -2.5 * np.log10(flux)


@lru_cache(maxsize=8)
def kcorrection_grid(
    filters: tuple[str, ...], z_max: float = 1.5, dz: float = 0.005, tau_max: float = 2.0, n_tau: int = 11,
    repair: tuple[float, ...] | None = None,
) -> KCorrectionGrid:
    """Tabulate K_{b,0.1r}(template, tau_V, z) by direct integration (cached per process).

    m_b − M = DM(z) + K with K = −2.5 log10[ F_b{f(λ/(1+z)) / (1+z)} / F_{0.1r}{f(λ)} ] (Hogg et al.
    2002, written for f_λ): the (1+z) dilution of f_λ and the bandwidth stretch are both in it.
    """
    wave, spectra = template_spectra(repair)
    zs = np.arange(0.0, z_max + dz / 2, dz)
    taus = np.linspace(0.0, tau_max, n_tau)
    # all filter sample points concatenated, so one np.interp per (template, tau) serves every band
    points, weights, owner = [], [], []
    for j, name in enumerate(filters):
        fw, fr = filter_curve(name)
        points.append(fw)
        weights.append(_ab_weights(fw, fr))
        owner.append(np.full(fw.size, j))
    pts = np.concatenate(points)
    w = np.concatenate(weights)
    own = np.concatenate(owner)
    wmat = np.zeros((pts.size, len(filters)))
    wmat[np.arange(pts.size), own] = w
    rest = pts[None, :] / (1.0 + zs[:, None])  # (Z, P) rest wavelengths seen by each filter point

    rw, rr = filter_curve(REFERENCE_BAND)
    ref_wave = rw / (1.0 + REFERENCE_SHIFT)
    ref_w = _ab_weights(ref_wave, rr)

    kc = np.empty((len(TEMPLATES), taus.size, zs.size, len(filters)))
    for t in range(len(TEMPLATES)):
        ref_flux = np.sum(ref_w * np.interp(ref_wave, wave, spectra[t]))
        f_rest = np.interp(rest, wave, spectra[t]) / (1.0 + zs[:, None])
        for a, tau in enumerate(taus):
            flux = (f_rest * attenuation_curve(rest, tau)) @ wmat
            kc[t, a] = -2.5 * np.log10(flux / ref_flux)
    return KCorrectionGrid(filters=tuple(filters), z=zs, tau=taus, kcorr=kc)


def ccm89_a_over_av(wave_angstrom: np.ndarray, r_v: float = 3.1) -> np.ndarray:
    """A_λ/A_V of Cardelli, Clayton & Mathis (1989, ApJ 345, 245), Eqs. 2a-b (IR), 3a-b (optical/NIR)
    and 4a-b (UV)."""
    x = 1e4 / np.asarray(wave_angstrom, dtype=float)  # inverse microns
    a = np.zeros_like(x)
    b = np.zeros_like(x)
    ir = x < 1.1
    a[ir] = 0.574 * x[ir] ** 1.61
    b[ir] = -0.527 * x[ir] ** 1.61
    opt = (x >= 1.1) & (x <= 3.3)
    y = x[opt] - 1.82
    a[opt] = (1 + 0.17699 * y - 0.50447 * y**2 - 0.02427 * y**3 + 0.72085 * y**4 + 0.01979 * y**5
              - 0.77530 * y**6 + 0.32999 * y**7)
    b[opt] = (1.41338 * y + 2.28305 * y**2 + 1.07233 * y**3 - 5.38434 * y**4 - 0.62251 * y**5
              + 5.30260 * y**6 - 2.09002 * y**7)
    uv = (x > 3.3) & (x <= 8.0)
    xu = x[uv]
    fa = np.where(xu >= 5.9, -0.04473 * (xu - 5.9) ** 2 - 0.009779 * (xu - 5.9) ** 3, 0.0)
    fb = np.where(xu >= 5.9, 0.2130 * (xu - 5.9) ** 2 + 0.1207 * (xu - 5.9) ** 3, 0.0)
    a[uv] = 1.752 - 0.316 * xu - 0.104 / ((xu - 4.67) ** 2 + 0.341) + fa
    b[uv] = -3.090 + 1.825 * xu + 1.206 / ((xu - 4.62) ** 2 + 0.263) + fb
    if np.any(x > 8.0):
        raise ValueError("CCM89 is defined for 0.3-8 µm^-1 (1250 Å - 3.3 µm)")
    return a + b / r_v


def galactic_extinction_coefficient(filter_name: str, r_v: float = 3.1) -> float:
    """A_b / E(B−V) for a filter: the CCM89 law with R_V = 3.1 integrated over the filter for the
    CWW elliptical at z = 0.1 (a typical MGS spectrum), as Schlegel, Finkbeiner & Davis (1998,
    Table 6) did for their coefficients.  Used only for bands whose coefficient is not given."""
    wave, spectra = template_spectra()
    fw, fr = filter_curve(filter_name)
    f = np.interp(fw / 1.1, wave, spectra[0])
    w = _ab_weights(fw, fr)
    ebv = 0.01  # small, so the result is the linear-regime slope
    dimmed = np.sum(w * f * 10 ** (-0.4 * r_v * ebv * ccm89_a_over_av(fw, r_v)))
    return float(-2.5 * np.log10(dimmed / np.sum(w * f)) / ebv)
