"""`zpix simulate`: a GalSim mock survey like the SDSS Main Galaxy Sample (or KiDS bright).

Each galaxy (drawn by :mod:`zpix.mock.population`) is a de Vaucouleurs bulge plus an exponential
disk with their own spectra, so each band sees its own bulge/disk flux ratio (colour gradients).
Inside one band a component's spectrum only sets its flux, so each band is drawn as a sum of two
achromatic Sérsic profiles convolved with that band's PSF: physically the same image as GalSim's
chromatic drawing integrated over the band, and far faster.  Profiles are truncated as in the SDSS
model fits (de Vaucouleurs at 8 r_e, exponential at 4 r_e; Stoughton et al. 2002).

Images are in nanomaggies (m = 22.5 − 2.5 log10 f) with Galactic extinction applied, a Kolmogorov
PSF per band and object, sky + source noise; neighbours from the deeper field population can fall
in the stamp.  Everything random except the pixel noise is drawn in the main process per chunk of
:data:`CHUNK` objects from ``SeedSequence([seed, 1, chunk])``; the pixel noise of object ``i`` comes
from ``SeedSequence([seed, 2, i])``.  The output is therefore identical for a seed whatever the
number of worker processes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from zpix.atomic import temp_path
from zpix.mock.population import TYPE_NAMES, population_model
from zpix.mock.presets import SurveyPreset, get_preset

CHUNK = 512  # objects per population draw and per append: fixed, so output never depends on it
TASK = 16  # objects per worker task
BULGE_TRUNC = 8.0  # de Vaucouleurs truncation radius / r_e (SDSS model fits)
DISK_TRUNC = 4.0  # exponential truncation radius / r_e
FORMAT_NOTE = "zpix.simulate/1"


def _gsparams():
    import galsim

    # 1% folding / 0.2% maxk thresholds: the profiles' k-space look-up tables stay small while the
    # drawn flux and shape agree with GalSim's own drawImage to ~1e-4 (tests check this)
    return galsim.GSParams(folding_threshold=1e-2, maxk_threshold=2e-3)


def _profile(hlr: float, q: float, beta_deg: float, n: int, trunc: float, shift: np.ndarray, gsp,
             cap: float = np.inf) -> tuple[Any, float]:
    """Unit-flux Sérsic component, sheared to axis ratio ``q`` at position angle ``beta_deg``, shifted (arcsec).

    The physical profile is truncated at ``trunc`` × r_e.  When that is larger than ``cap`` (an
    intrinsic radius beyond which no light can reach the stamp, even through the PSF wings) the profile
    is drawn truncated at ``cap`` with the *same* surface brightness inside it, i.e. with flux
    P(2n, (cap/r0)^{1/n}) / P(2n, (R_t/r0)^{1/n}) of the full one (P: regularised incomplete gamma): the
    stamp is unchanged and very large nearby galaxies do not need huge FFTs.
    Returns (profile, intrinsic radius of its last light).
    """
    import galsim
    from scipy.special import gammainc

    q = float(np.clip(q, 0.05, 1.0))
    r_t = trunc * hlr
    prof = galsim.Sersic(n, half_light_radius=hlr, trunc=r_t, gsparams=gsp)
    if r_t > cap:
        r0 = prof.scale_radius
        frac = gammainc(2 * n, (cap / r0) ** (1 / n)) / gammainc(2 * n, (r_t / r0) ** (1 / n))
        prof = galsim.Sersic(n, scale_radius=r0, trunc=cap, flux=float(frac), gsparams=gsp)
        r_t = cap
    return prof.shear(q=q, beta=beta_deg * galsim.degrees).shift(*shift), r_t


def _components(batch: dict[str, np.ndarray], k: int, preset: SurveyPreset, gsp) -> tuple[list, float]:
    """(per-band flux, unit-flux profile) of object ``k`` and its neighbours, and the largest extent (arcsec)."""
    half = preset.stamp * preset.pixel_scale / 2
    margin = 4.0 * float(batch["psf"][k].max())
    owner = batch["nb_owner"]
    comps: list[tuple[np.ndarray, Any]] = []
    extent = half
    sources = [("", k, batch["offset"][k])] + [("nb_", j, batch["nb_pos"][j]) for j in np.flatnonzero(owner == k)]
    for prefix, row, shift in sources:
        pa = batch["nb_pa" if prefix else "pa"][row]
        # farthest stamp corner from this source, plus the PSF margin
        reach = float(np.hypot(half + abs(shift[0]), half + abs(shift[1]))) + margin
        for part, n_sersic, trunc in (("bulge", 4, BULGE_TRUNC), ("disk", 1, DISK_TRUNC)):
            flux = batch[f"{prefix}flux_{part}"][row]
            if not np.any(flux > 0):
                continue
            q = max(float(batch[f"{prefix}q_{part}"][row]), 0.05)
            # an intrinsic radius r lands at most r/√q and at least r·√q from the centre once sheared
            prof, r_last = _profile(batch[f"{prefix}hlr_{part}"][row], q, pa, n_sersic, trunc, shift, gsp,
                                    cap=reach / np.sqrt(q))
            comps.append((flux, prof))
            extent = max(extent, r_last / np.sqrt(q) + float(np.hypot(*shift)))
    return comps, extent + margin


@lru_cache(maxsize=4)
def _kolmogorov_table() -> tuple[np.ndarray, np.ndarray]:
    """GalSim's Kolmogorov transfer function T(k·FWHM), tabulated once (the profile is self-similar)."""
    import galsim

    psf = galsim.Kolmogorov(fwhm=1.0, gsparams=_gsparams())
    u = np.linspace(0.0, psf.maxk, 2048)
    t = np.array([psf.kValue(galsim.PositionD(float(x), 0.0)).real for x in u])
    return u, t


@lru_cache(maxsize=64)
def _kspace(n: int, dx: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Half-plane k grid of an n×n FFT at pixel scale dx, rows in numpy FFT order.

    Returns (dk, |k|, pixel response × half-pixel phase).  The phase e^{i k dx/2} moves the sampling
    points by half a pixel so that an even-sized stamp is centred on a pixel corner, like GalSim's
    drawImage and like SWarp's cutouts centred at (N+1)/2.
    """
    dk = 2 * np.pi / (n * dx)
    kx = np.arange(n // 2 + 1) * dk
    ky = (np.arange(n) - n // 2) * dk
    kabs = np.hypot(ky[:, None], kx[None, :])
    # pixel response: the Fourier transform of a dx×dx box (np.sinc(x) = sin(πx)/(πx))
    fx = np.sinc(kx * dx / (2 * np.pi)) * np.exp(0.5j * dx * kx)
    fy = np.sinc(ky * dx / (2 * np.pi)) * np.exp(0.5j * dx * ky)
    common = fy[:, None] * fx[None, :]
    return dk, np.fft.ifftshift(kabs, axes=0), np.fft.ifftshift(common, axes=0)


def render_batch(batch: dict[str, np.ndarray], preset: SurveyPreset, seed: int, noise: bool = True) -> np.ndarray:
    """Draw the images (n, bands, H, W) of a batch of objects (see :func:`simulate_chunk`).

    Per object, every component (target bulge and disk, neighbours' bulges and disks) is drawn
    once in Fourier space by GalSim (``drawKImage``); each band is then Σ_c F_{b,c} Ĝ_c(k) ×
    PSF_b(k) × pixel(k), inverse-FFT'd: exactly GalSim's ``Convolve([Add(...), psf]).drawImage()``
    (pixel-integrated) for achromatic components, but sharing the galaxy transforms between bands.
    The FFT box is at least twice the largest component extent (truncation radius / √q + offset +
    PSF margin), so no light folds back into the stamp; profiles larger than the stamp are drawn only
    as far as their light can reach it (see :func:`_profile`).  ``noise=False`` returns the noiseless
    model.
    """
    import galsim
    from scipy import fft as sfft

    gsp = _gsparams()
    n_obj, nb, size = len(batch["index"]), len(preset.bands), preset.stamp
    dx = preset.pixel_scale
    out = np.empty((n_obj, nb, size, size), np.float32)
    u_tab, t_tab = _kolmogorov_table()
    for k in range(n_obj):
        comps, extent = _components(batch, k, preset, gsp)
        n_fft = sfft.next_fast_len(int(np.ceil(2 * extent / dx)))
        n_fft += n_fft % 2
        dk, kabs, common = _kspace(n_fft, dx)
        total = np.zeros((nb, n_fft, n_fft // 2 + 1), complex)
        for flux, prof in comps:
            kimg = galsim.ImageCD(galsim.BoundsI(0, n_fft // 2, -n_fft // 2, n_fft // 2 - 1), scale=dk)
            prof.drawKImage(image=kimg, recenter=False)
            total += flux[:, None, None] * np.fft.ifftshift(kimg.array, axes=0)[None]
        psf = np.interp(kabs[None] * batch["psf"][k][:, None, None], u_tab, t_tab, right=0.0)
        full = sfft.irfft2(total * psf * common, s=(n_fft, n_fft), axes=(-2, -1))
        idx = np.r_[n_fft - size // 2 : n_fft, 0 : size - size // 2]
        model = full[:, idx][:, :, idx]
        if noise:
            rng = np.random.default_rng(np.random.SeedSequence([seed, 2, int(batch["index"][k])]))
            var = batch["sky"][k][:, None, None] ** 2 + np.maximum(model, 0.0) / batch["epn"][k][:, None, None]
            model = model + np.sqrt(var) * rng.standard_normal(model.shape)
        out[k] = model
    return out


def render_reference(batch: dict[str, np.ndarray], preset: SurveyPreset, k: int) -> np.ndarray:
    """Noiseless image of object ``k`` drawn the plain GalSim way, one ``Convolve(...).drawImage()`` per
    band: the reference :func:`render_batch` is tested against."""
    import galsim

    gsp = _gsparams()
    comps, _ = _components(batch, k, preset, gsp)
    out = np.empty((len(preset.bands), preset.stamp, preset.stamp))
    for b in range(len(preset.bands)):
        psf = galsim.Kolmogorov(fwhm=float(batch["psf"][k, b]), gsparams=gsp)
        gal = galsim.Add([prof * float(f[b]) for f, prof in comps])  # scales flux (a capped profile has < 1)
        out[b] = galsim.Convolve(gal, psf).drawImage(nx=preset.stamp, ny=preset.stamp, scale=preset.pixel_scale).array
    return out


def _render_task(args: tuple[dict[str, np.ndarray], SurveyPreset, int]) -> np.ndarray:
    return render_batch(*args)


@lru_cache(maxsize=8)
def neighbours_per_stamp(preset: SurveyPreset) -> float:
    """Mean number of field galaxies (r ≤ neighbour limit) in one stamp: sky density × stamp area."""
    nbm = population_model(preset, neighbours=True)
    area = (preset.stamp * preset.pixel_scale / 3600.0) ** 2
    return nbm.density_per_deg2(np.random.default_rng(12345), m=50000) * area


def _place_neighbours(count: np.ndarray, preset: SurveyPreset, rng: np.random.Generator) -> np.ndarray:
    """Positions (arcsec from the stamp centre) uniformly in the stamp, outside the minimum separation."""
    half = preset.stamp * preset.pixel_scale / 2
    total = int(count.sum())
    pos = rng.uniform(-half, half, (total, 2))
    for _ in range(100):
        close = np.hypot(pos[:, 0], pos[:, 1]) < preset.neighbour_min_sep
        if not close.any():
            break
        pos[close] = rng.uniform(-half, half, (int(close.sum()), 2))
    return pos


def simulate_chunk(preset: SurveyPreset, start: int, n: int, seed: int, neighbours: bool,
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Population, observing conditions and render parameters of objects ``start … start+n-1``.

    Returns (render batch, per-object output columns).  ``start`` must be a multiple of :data:`CHUNK`.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, start // CHUNK]))
    pop = population_model(preset).sample(n, rng)
    nb = len(preset.bands)
    img_idx = [preset.mag_names.index(b) for b in preset.bands]
    ext = np.asarray(preset.extinction)[None, :] * pop["ebv"][:, None]
    dim = 10 ** (-0.4 * ext)
    # sub-pixel centring error (SWarp stacks centred on catalogue positions; Pasquet et al. Sect. 2)
    offset = rng.uniform(-0.5, 0.5, (n, 2)) * preset.pixel_scale
    batch: dict[str, np.ndarray] = {
        "index": np.arange(start, start + n),
        "flux_bulge": pop["flux_bulge"][:, img_idx] * dim,
        "flux_disk": pop["flux_disk"][:, img_idx] * dim,
        "hlr_bulge": pop["hlr_bulge"], "hlr_disk": pop["hlr_disk"],
        "q_bulge": pop["q_bulge"], "q_disk": pop["q_disk"], "pa": pop["position_angle"],
        "psf": pop["psf_fwhm"], "sky": pop["sky_sigma"],
        "epn": np.asarray(preset.electrons_per_nmgy)[None, :] * pop["epochs"][:, None],
        "offset": offset,
    }
    # neighbours: Poisson number from the sky density of the deeper population (same LF and volume)
    if neighbours:
        count = rng.poisson(neighbours_per_stamp(preset), n)
    else:
        count = np.zeros(n, int)
    total = int(count.sum())
    owner = np.repeat(np.arange(n), count)
    if total:
        nbp = population_model(preset, neighbours=True).sample(total, rng)
        nb_dim = dim[owner]
        nb_pos = _place_neighbours(count, preset, rng)
        batch.update({
            "nb_flux_bulge": nbp["flux_bulge"][:, img_idx] * nb_dim,
            "nb_flux_disk": nbp["flux_disk"][:, img_idx] * nb_dim,
            "nb_hlr_bulge": nbp["hlr_bulge"], "nb_hlr_disk": nbp["hlr_disk"],
            "nb_q_bulge": nbp["q_bulge"], "nb_q_disk": nbp["q_disk"], "nb_pa": nbp["position_angle"],
            "nb_pos": nb_pos,
        })
        nb_r = 22.5 - 2.5 * np.log10(nbp["flux_bulge"][:, preset.mag_names.index("r")]
                                     + nbp["flux_disk"][:, preset.mag_names.index("r")])
        brightest = np.full(n, np.nan)
        np.fmin.at(brightest, owner, nb_r)
    else:
        for key, width in (("nb_flux_bulge", nb), ("nb_flux_disk", nb), ("nb_pos", 2)):
            batch[key] = np.zeros((0, width))
        for key in ("nb_hlr_bulge", "nb_hlr_disk", "nb_q_bulge", "nb_q_disk", "nb_pa"):
            batch[key] = np.zeros(0)
        brightest = np.full(n, np.nan)
    batch["nb_owner"] = owner

    true_flux = pop["flux_bulge"] + pop["flux_disk"]
    cols: dict[str, np.ndarray] = {
        "z_true": pop["z"],
        "type": pop["type"].astype(np.int16),
        "t_disk": pop["t_disk"],
        "abs_mag_r01": pop["abs_mag"],
        "bulge_fraction": pop["bulge_fraction"],
        "r50_kpc": pop["r50_kpc"],
        "hlr_arcsec": pop["hlr"],
        "hlr_bulge_arcsec": pop["hlr_bulge"],
        "hlr_disk_arcsec": pop["hlr_disk"],
        "axis_ratio": pop["axis_ratio"],
        "q_bulge": pop["q_bulge"],
        "q_disk": pop["q_disk"],
        "inclination": pop["inclination"],
        "position_angle": pop["position_angle"],
        "tau_v_disk": pop["tau_v_disk"],
        "deep": pop["deep"].astype(np.int8),
        "epochs": pop["epochs"].astype(np.int16),
        "r_mag": pop["sel_mag"],
        "mu50": pop["mu50"],
        "n_neighbours": count.astype(np.int16),
        "neighbour_r_min": brightest,
        "offset_x_arcsec": offset[:, 0],
        "offset_y_arcsec": offset[:, 1],
    }
    for j, b in enumerate(preset.bands):
        cols[f"psf_fwhm_{b}"] = pop["psf_fwhm"][:, j]
        cols[f"sky_sigma_{b}"] = pop["sky_sigma"][:, j]
    for j, b in enumerate(preset.mag_names):
        cols[f"snr_{b}"] = pop["snr"][:, j]
        cols[f"true_{b}"] = 22.5 - 2.5 * np.log10(true_flux[:, j])
    extras = {"z": pop["z"], "ebv": pop["ebv"], "mags": pop["obs_mags"], "mag_errs": pop["obs_mag_errs"]}
    return batch, {**extras, "catalog": cols}


def _slice_batch(batch: dict[str, np.ndarray], lo: int, hi: int) -> dict[str, np.ndarray]:
    """Objects lo..hi-1 of a chunk batch, with their neighbours re-indexed."""
    sel = (batch["nb_owner"] >= lo) & (batch["nb_owner"] < hi)
    out = {}
    for key, value in batch.items():
        if key == "nb_owner":
            out[key] = value[sel] - lo
        elif key.startswith("nb_"):
            out[key] = value[sel]
        else:
            out[key] = value[lo:hi]
    return out


def _tasks(batch: dict[str, np.ndarray], preset: SurveyPreset, seed: int) -> Iterator[tuple]:
    n = len(batch["index"])
    for lo in range(0, n, TASK):
        yield (_slice_batch(batch, lo, min(n, lo + TASK)), preset, seed)


def catalog_path(out: str | os.PathLike) -> Path:
    """Where :func:`simulate` writes the catalogue table beside the cube store."""
    out = Path(out)
    return out.with_name(out.stem + "_catalog.parquet")


def simulate(
    n: int,
    out: str | os.PathLike,
    survey: str = "sdss",
    seed: int = 0,
    workers: int | None = None,
    deep_fraction: float | None = None,
    neighbours: bool = True,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """Simulate ``n`` galaxies of ``survey`` ("sdss" or "kids") into the cube store ``out``.

    Also writes ``<out stem>_catalog.parquet`` (one row per object: id, z, E(B−V), observed
    magnitudes and errors, true parameters).  ``deep_fraction`` (default: the preset's, 4% for
    SDSS, as Stripe 82 in Pasquet et al. 2019) sets the share of objects with co-added deep imaging;
    ``overrides`` replace preset fields (see :class:`~zpix.mock.presets.SurveyPreset`).
    ``workers`` defaults to all CPU cores; the result does not depend on it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from zpix.store.cube_store import CubeWriter

    if n < 1:
        raise ValueError("n must be at least 1")
    if deep_fraction is not None:
        if not 0.0 <= deep_fraction <= 1.0:
            raise ValueError("deep_fraction must be within [0, 1]")
        overrides["deep_fraction"] = float(deep_fraction)
    preset = get_preset(survey, **overrides)
    workers = max(1, int(workers or os.cpu_count() or 1))
    out = Path(out)
    cat_path = catalog_path(out)
    cat_tmp = temp_path(cat_path)
    attrs = {
        "generator": FORMAT_NOTE,
        "seed": int(seed),
        "n_requested": int(n),
        "neighbours": bool(neighbours),
        "deep_fraction": float(preset.deep_fraction),
        "deep_epochs": list(preset.deep_epochs),
        "z_max_suggested": float(preset.z_max_suggested),
        "z_min": float(preset.z_min),
        "z_max": float(preset.z_max),
        "selection": f"extinction-corrected {preset.selection_kind} {preset.selection_band} <= {preset.mag_limit}",
        "mag_limit": float(preset.mag_limit),
        "image_units": "nanomaggies (m = 22.5 - 2.5 log10 f), Galactic extinction applied",
        "image_filters": list(preset.image_filters),
        "mag_filters": list(preset.mag_filters),
        "extinction_coefficients": list(preset.mag_extinction),
        "image_extinction_coefficients": list(preset.extinction),
        "mags_note": "observed model-like total magnitudes, NOT corrected for Galactic extinction "
                     "(subtract extinction_coefficients * ebv); "
                     + ("SDSS asinh magnitudes (never missing)" if preset.mag_asinh_b is not None
                        else "NaN = not observed or S/N < 1"),
        "psf_fwhm_median": list(preset.psf_fwhm_median),
        "sky_sigma_nmgy": list(preset.sky_sigma),
        "type_names": list(TYPE_NAMES),
        "catalog_file": cat_path.name,
    }
    writer_kwargs = dict(bands=preset.bands, image_shape=(preset.stamp, preset.stamp),
                         pixel_scale_arcsec=preset.pixel_scale, survey=preset.name,
                         mag_names=preset.mag_names, attrs=attrs)
    # fork where the platform has it: workers start instantly and callers need no `if __name__ ==
    # "__main__"` guard; the pool is created before any thread (tqdm's monitor) exists
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = mp.get_context(method).Pool(workers) if workers > 1 else None
    pq_writer = None
    bar = tqdm(total=n, unit="gal", desc=f"simulate {preset.name}", disable=not progress)
    try:
        with CubeWriter(out, **writer_kwargs) as writer:
            starts = list(range(0, n, CHUNK))

            def submit(start: int):
                batch, cols = simulate_chunk(preset, start, min(CHUNK, n - start), seed, neighbours)
                tasks = list(_tasks(batch, preset, seed))
                pending = pool.map_async(_render_task, tasks) if pool is not None else None
                return tasks, pending, cols

            queued = submit(starts[0])
            for i, start in enumerate(starts):
                tasks, pending, cols = queued
                # prepare the next chunk while the workers draw this one
                queued = submit(starts[i + 1]) if i + 1 < len(starts) else None
                parts = pending.get() if pending is not None else [_render_task(t) for t in tasks]
                images = np.concatenate(parts)
                m = len(images)
                ids = np.arange(start, start + m, dtype=np.int64)
                writer.append(images=images, z_spec=cols["z"], ebv=cols["ebv"], ids=ids,
                              mags=cols["mags"], mag_errs=cols["mag_errs"], catalog=cols["catalog"])
                table = {"id": ids, "z_spec": cols["z"], "ebv": cols["ebv"]}
                for j, name in enumerate(preset.mag_names):
                    table[f"mag_{name}"] = cols["mags"][:, j]
                    table[f"magerr_{name}"] = cols["mag_errs"][:, j]
                table.update(cols["catalog"])
                arrow = pa.table(table)
                if pq_writer is None:
                    pq_writer = pq.ParquetWriter(cat_tmp, arrow.schema)
                pq_writer.write_table(arrow)
                bar.update(m)
            pq_writer.close()
            pq_writer = None
        os.replace(cat_tmp, cat_path)
    except BaseException:
        if pq_writer is not None:
            pq_writer.close()
        cat_tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return out
