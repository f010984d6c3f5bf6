"""`zpix inject`: mock galaxies injected into real SDSS frames, cut out by the `zpix cutouts` path.

The Balrog approach (Suchyta et al. 2016; Everett et al. 2022) with the mock of ``zpix simulate``:

1. **Calibrate** every field (:mod:`zpix.inject.psf`): per band the empirical PSF, its FWHM, the
   sky noise; the real sources; an E(B−V) stand-in.  Saved as ``fields/<field>.json`` + ``.npz`` in
   the work directory and beside the output (``<out stem>_fields.json``).
2. **Draw** ``n`` galaxies from the mock population of the survey preset (the same physics and
   selection as ``zpix simulate``), one draw for the run (``SeedSequence([seed, 1])``), and deal them
   to the fields in turn (galaxy i → field i mod n_fields), then in groups of ``per_copy`` to
   copies of each field's frames.
3. **Inject** each copy (a worker process per copy): positions (:mod:`zpix.inject.place`,
   ``SeedSequence([seed, 2, field, copy])``), galaxies rendered through that field's PSF per band
   (:mod:`zpix.inject.render`) with their photon noise (``SeedSequence([seed, 3, galaxy, band])``)
   and the field's E(B−V) with the SDSS coefficients, added to the real frames.
4. **Measure** the catalogue on the injected frames (:mod:`zpix.inject.measure`); the background
   estimate sees the frames dequantised by ``SeedSequence([seed, 4, field, copy])``.
5. **Cut out** the injected galaxies with :func:`zpix.ingest.cutouts.make_cutouts` (the path of
   ``zpix cutouts``: Lanczos-3 onto a north-up TAN grid centred on each galaxy) from the injected
   frame copies, which are written as FITS in the work directory and deleted once cut.
6. **Assemble** the per-copy stores into one cube store: images, ``z_spec`` (true z), ``ebv``, the
   measured magnitudes as the store's ``mags``, and per-object columns ``field``, ``copy``,
   ``psf_fwhm_<b>``, ``sky_noise_<b>``, ``dist_nearest_real`` (arcsec), the measurement columns and
   the true parameters as ``zpix simulate`` writes them.

Every finished copy is a small cube store in the work directory; a rerun of the same command skips
them (resumable), and the result does not depend on ``workers``.  Memory per worker is one field's
five frames (≈ 60 MB) plus its copy.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from zpix.atomic import atomic_file, write_text
from zpix.inject.psf import (
    SDSS_BANDS,
    FieldCalibration,
    Frame,
    InjectError,
    calibrate_field,
    group_fields,
    read_frame,
)

FORMAT_NOTE = "zpix.inject/2"  # /2: the background of the catalogue photometry is dequantised
DEFAULT_PER_COPY = 100
SDSS_EXTINCTION = (4.239, 3.303, 2.285, 1.698, 1.263)  # Schlafly & Finkbeiner 2011, as the sdss preset
APERTURE_DIAMETER = 3.0  # arcsec: the recovery check's aperture (SDSS fiber magnitude size)


@dataclass
class InjectReport:
    """What a :func:`inject` run did."""

    out: Path
    n_requested: int
    n_written: int
    fields: list[str]
    n_copies: int
    copies_reused: int
    n_not_placed: int
    seconds: float
    messages: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.out}: {self.n_written} of {self.n_requested} injected galaxies from {len(self.fields)} "
                 f"fields ({self.n_copies} frame copies) in {self.seconds:.1f} s"]
        if self.copies_reused:
            lines.append(f"  resumed: {self.copies_reused} of {self.n_copies} copies were already done")
        if self.n_not_placed:
            lines.append(f"  {self.n_not_placed} galaxies found no free place in their copy (frame full): left out")
        lines.extend(f"  {m}" for m in self.messages)
        return "\n".join(lines)


def fields_path(out: str | os.PathLike) -> Path:
    """Where :func:`inject` writes the per-field calibration summary beside the cube store."""
    out = Path(out)
    return out.with_name(out.stem + "_fields.json")


# ------------------------------------------------------------------------------------------------
# per copy (worker side)

_FRAMES: dict[str, Any] = {}


def _frames_of(cal: FieldCalibration, cache: Path) -> dict[str, Any]:
    """The field's five frames (from the decompressed cache when there), kept for the worker's next copy."""
    if _FRAMES.get("field") != cal.field:
        _FRAMES.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = {b: (Frame.load(cache / f"{cal.field}_{b}.npz") if (cache / f"{cal.field}_{b}.npz").exists()
                          else read_frame(cal.paths[b])) for b in SDSS_BANDS}
            for fr in frames.values():
                _ = fr.wcs
        _FRAMES.update(field=cal.field, frames=frames,
                       saturated={b: fr.saturated() for b, fr in frames.items()})
    return _FRAMES


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    from zpix.ingest.frames import radec_to_unit

    return radec_to_unit(ra, dec)


def run_copy(*, cal_dir: str, field_id: str, field_index: int, copy: int, gal: dict[str, np.ndarray],
             seed: int, stamp: int, render: int, copy_dir: str, part: str) -> dict[str, Any]:
    """Inject one copy of a field, measure it, cut it out; write the copy's cube store ``part``."""
    from zpix.ingest.cutouts import make_cutouts
    from zpix.inject.measure import measure
    from zpix.inject.place import integral, place
    from zpix.inject.render import add_poisson, aperture_flux, local_jacobian, render_galaxy

    warnings.filterwarnings("ignore", module="astropy")
    cal = FieldCalibration.load(cal_dir, field_id)
    state = _frames_of(cal, Path(cal_dir).parent / "frames")
    frames, saturated = state["frames"], state["saturated"]
    ref = frames["r"]
    n = len(gal["index"])
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, field_index, copy]))

    def mapper(band: str):
        def to_band(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if band == "r":
                return x, y
            ra, dec = ref.wcs.all_pix2world(x, y, 0)
            bx, by = frames[band].wcs.all_world2pix(ra, dec, 0, quiet=True)
            return np.asarray(bx), np.asarray(by)
        return to_band

    from zpix.ingest.resample import MARGIN

    # the cutout stamp plus the Lanczos window, and the rendered box, stay inside every band's frame
    margin = max(stamp // 2 + MARGIN + 4, render // 2 + 2)
    band_maps = [(mapper(b), integral(saturated[b]), frames[b].data.shape) for b in SDSS_BANDS]
    pos = place(n, ref_shape=ref.data.shape, band_maps=band_maps, stamp=stamp, render=render, margin=margin, rng=rng)
    m = len(pos)
    keep = np.arange(m)
    ra, dec = ref.wcs.all_pix2world(pos[:, 0], pos[:, 1], 0)
    ebv = cal.ebv
    dim = 10 ** (-0.4 * np.asarray(SDSS_EXTINCTION) * ebv)
    injected = {b: np.array(fr.data, np.float64) for b, fr in frames.items()}
    inj_flux = np.zeros((m, 5))
    true_ap = np.zeros((m, 5))
    for j, band in enumerate(SDSS_BANDS):
        fr = frames[band]
        psf = cal.bands[band]
        bx, by = mapper(band)(pos[:, 0], pos[:, 1])
        ap_r = APERTURE_DIAMETER / 2 / psf.pixel_scale
        for k in range(m):
            i = int(keep[k])
            g = {key: v[i] for key, v in gal.items()}
            g["flux_bulge"] = g["flux_bulge"] * dim
            g["flux_disk"] = g["flux_disk"] * dim
            jac = local_jacobian(fr.wcs, float(bx[k]), float(by[k]))
            model, x0, y0 = render_galaxy(g, j, psf, jac, float(bx[k]), float(by[k]), render)
            inj_flux[k, j] = g["flux_bulge"][j] + g["flux_disk"][j]
            true_ap[k, j] = aperture_flux(model, float(bx[k]) - x0, float(by[k]) - y0, ap_r)
            noisy = add_poisson(model, psf.electrons_per_nmgy,
                                np.random.default_rng(np.random.SeedSequence([seed, 3, int(g["index"]), j])))
            injected[band][y0 : y0 + render, x0 : x0 + render] += noisy
    meas = measure({b: injected[b] for b in SDSS_BANDS}, {b: frames[b].wcs for b in SDSS_BANDS},
                   {b: cal.bands[b].sky_noise for b in SDSS_BANDS},
                   {b: cal.bands[b].electrons_per_nmgy for b in SDSS_BANDS}, ra, dec,
                   pixel_scale=cal.bands["r"].pixel_scale, count_step={b: frames[b].calib for b in SDSS_BANDS},
                   rng=np.random.default_rng(np.random.SeedSequence([seed, 4, field_index, copy])))
    from scipy.spatial import cKDTree

    chord, _ = cKDTree(_unit(cal.real_sources[:, 0], cal.real_sources[:, 1])).query(_unit(ra, dec))
    dist_real = np.degrees(2 * np.arcsin(np.minimum(chord / 2, 1.0))) * 3600.0

    # the injected frames, as FITS, for the cutouts path; deleted once cut
    from astropy.io import fits

    cdir = Path(copy_dir)
    cdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for band in SDSS_BANDS:
        p = cdir / Path(frames[band].path).name.replace(".bz2", "")
        with atomic_file(p) as tmp:
            fits.PrimaryHDU(injected[band].astype(np.float32), header=frames[band].header).writeto(tmp)
        paths.append(str(p))
    cat: dict[str, np.ndarray] = {
        "id": np.asarray(gal["index"][keep], np.int64), "ra": ra, "dec": dec,
        "z_spec": np.asarray(gal["z"][keep], np.float64), "ebv": np.full(m, ebv),
        "field": np.array([field_id] * m), "copy": np.full(m, copy, np.int32),
        "x_frame": pos[:, 0], "y_frame": pos[:, 1], "dist_nearest_real": dist_real,
    }
    for j, band in enumerate(SDSS_BANDS):
        cat[f"mag_{band}"] = meas[f"mag_{band}"]
        cat[f"magerr_{band}"] = meas[f"magerr_{band}"]
        cat[f"psf_fwhm_{band}"] = np.full(m, cal.bands[band].fwhm_arcsec)
        cat[f"sky_noise_{band}"] = np.full(m, cal.bands[band].sky_noise)
        cat[f"inj_flux_{band}"] = inj_flux[:, j]
        cat[f"true_ap3_{band}"] = true_ap[:, j]
        cat[f"flux_{band}"] = meas[f"flux_{band}"]
        cat[f"fluxerr_{band}"] = meas[f"fluxerr_{band}"]
    for key in ("detected", "det_offset_px", "kron_radius", "a_px", "b_px", "theta"):
        cat[key] = meas[key]
    for key, v in _truth_columns(gal, keep).items():
        cat[key] = v
    mag_cols = [f"mag_{b}" for b in SDSS_BANDS]
    keep_cols = [c for c in cat if c not in ("id", "ra", "dec", "z_spec", "ebv", *mag_cols)
                 and not c.startswith("magerr_")]
    if m:
        make_cutouts(paths, cat, size=stamp, out=part, backend="lanczos3", workers=1, progress=False,
                     work_dir=str(cdir / "cutouts"), mag_cols=mag_cols,
                     mag_err_cols=[f"magerr_{b}" for b in SDSS_BANDS],
                     keep_cols=keep_cols, survey="sdss-injected")
    shutil.rmtree(cdir, ignore_errors=True)
    return {"field": field_id, "copy": copy, "n": n, "placed": m}


def _truth_columns(gal: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """True parameters, as ``zpix simulate`` names them."""
    from zpix.mock.population import light_weighted

    g = {k: np.asarray(v)[keep] for k, v in gal.items()}
    hlr = light_weighted(g["hlr_bulge"], g["hlr_disk"], g["bulge_fraction"])
    out = {
        "z_true": g["z"], "type": g["type"].astype(np.int16), "t_disk": g["t_disk"], "abs_mag_r01": g["abs_mag"],
        "bulge_fraction": g["bulge_fraction"], "r50_kpc": g["r50_kpc"], "hlr_arcsec": hlr,
        "hlr_bulge_arcsec": g["hlr_bulge"], "hlr_disk_arcsec": g["hlr_disk"],
        "axis_ratio": light_weighted(g["q_bulge"], g["q_disk"], g["bulge_fraction"]),
        "q_bulge": g["q_bulge"], "q_disk": g["q_disk"], "inclination": g["inclination"],
        "position_angle": g["position_angle"], "tau_v_disk": g["tau_v_disk"], "r_mag": g["sel_mag"],
    }
    true_flux = g["flux_bulge"] + g["flux_disk"]
    for j, b in enumerate(SDSS_BANDS):
        out[f"true_{b}"] = 22.5 - 2.5 * np.log10(true_flux[:, j])
    return out


def _copy_task(kwargs: dict[str, Any]) -> dict[str, Any]:
    return run_copy(**kwargs)


# ------------------------------------------------------------------------------------------------
# driver


def _calibrate_task(args: tuple[str, dict[str, str], str]) -> str:
    field_id, paths, cal_dir = args
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calibrate_field(field_id, paths, frame_cache=Path(cal_dir).parent / "frames").save(cal_dir)
    return field_id


def calibrate_fields(fields: dict[str, dict[str, str]], cal_dir: str | os.PathLike, *, workers: int = 1,
                     progress: bool = True) -> dict[str, FieldCalibration]:
    """Calibrate the fields not yet in ``cal_dir`` (resumable), then load them all."""
    from tqdm.auto import tqdm

    cal_dir = Path(cal_dir)
    cal_dir.mkdir(parents=True, exist_ok=True)
    todo = [(f, p, str(cal_dir)) for f, p in fields.items()
            if not ((cal_dir / f"{f}.json").exists() and (cal_dir / f"{f}.npz").exists())]
    with tqdm(total=len(fields), initial=len(fields) - len(todo), unit="field", desc="calibrate",
              disable=not progress) as bar:
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
                for _ in pool.map(_calibrate_task, todo):
                    bar.update(1)
        else:
            for t in todo:
                _calibrate_task(t)
                bar.update(1)
    return {f: FieldCalibration.load(cal_dir, f) for f in fields}


def inject(
    frames: str | os.PathLike | list[str | os.PathLike],
    n: int,
    out: str | os.PathLike,
    *,
    survey: str = "sdss",
    seed: int = 0,
    per_copy: int = DEFAULT_PER_COPY,
    stamp: int = 64,
    render: int = 96,
    workers: int = 1,
    work_dir: str | os.PathLike | None = None,
    keep_work: bool = False,
    progress: bool = True,
) -> InjectReport:
    """Inject ``n`` mock galaxies into the real frames and write their cutouts to the cube store ``out``.

    ``frames``: SDSS corrected frames (all five bands of every field), glob(s) or paths.
    ``per_copy``: galaxies per copy of a field's frames (they never overlap: each needs a
    ``stamp``² patch of its own).  ``render``: side in pixels of the box each galaxy is drawn in.
    See the module docstring for the steps and the seeds; the result does not depend on ``workers``.
    """
    from tqdm.auto import tqdm

    from zpix.ingest.frames import expand_frame_paths
    from zpix.mock.population import population_model
    from zpix.mock.presets import get_preset
    from zpix.store.cube_store import CubeStore, CubeWriter

    started = time.perf_counter()
    if survey != "sdss":
        raise InjectError(f"--survey {survey}: only 'sdss' frames can be injected into (the frames are SDSS)")
    if n < 1:
        raise InjectError("--n must be at least 1")
    if stamp < 8 or render < stamp:
        raise InjectError(f"--stamp {stamp} / render box {render}: need stamp ≥ 8 and render ≥ stamp")
    if per_copy < 1:
        raise InjectError("--per-copy must be at least 1")
    paths = expand_frame_paths(frames)
    if not paths:
        raise InjectError(f"no frame files match {frames!r}")
    fields = group_fields(paths)
    out = Path(out)
    work = Path(work_dir) if work_dir is not None else out.with_name(out.name + ".work")
    key = {"paths": sorted(paths), "n": n, "seed": seed, "per_copy": per_copy, "stamp": stamp, "render": render,
           "format": FORMAT_NOTE}
    state = work / "state.json"
    if state.exists() and json.loads(state.read_text()).get("key") != key and (work / "copies").exists():
        # copies of another run (other inputs) cannot be reused; only this command's own folder is cleared
        shutil.rmtree(work / "copies")
    work.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"key": key}))
    cals = calibrate_fields(fields, work / "fields", workers=workers, progress=progress)

    preset = get_preset(survey)
    gal = population_model(preset).sample(n, np.random.default_rng(np.random.SeedSequence([seed, 1])))
    gal["index"] = np.arange(n)
    field_ids = list(fields)
    owner = np.arange(n) % len(field_ids)
    tasks = []
    for fi, fid in enumerate(field_ids):
        rows = np.flatnonzero(owner == fi)
        for c, lo in enumerate(range(0, len(rows), per_copy)):
            sel = rows[lo : lo + per_copy]
            part = work / "copies" / f"{fid}_c{c:04d}.h5"
            tasks.append({"cal_dir": str(work / "fields"), "field_id": fid, "field_index": fi, "copy": c,
                          "gal": {k: v[sel] for k, v in gal.items()}, "seed": seed, "stamp": stamp,
                          "render": render, "copy_dir": str(work / "copies" / f"{fid}_c{c:04d}.d"),
                          "part": str(part)})
    (work / "copies").mkdir(parents=True, exist_ok=True)
    todo = [t for t in tasks if not Path(t["part"]).exists()]
    placed: dict[str, int] = {}
    with tqdm(total=n, initial=n - sum(len(t["gal"]["index"]) for t in todo), unit="gal", desc="inject",
              disable=not progress) as bar:
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                pending: set = set()
                queue = list(todo)
                while queue or pending:
                    while queue and len(pending) < workers + 1:  # bounded: one queued copy per worker
                        pending.add(pool.submit(_copy_task, queue.pop(0)))
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        r = fut.result()
                        placed[f"{r['field']}_{r['copy']}"] = r["placed"]
                        bar.update(r["n"])
        else:
            for t in todo:
                r = run_copy(**t)
                bar.update(r["n"])

    # -- assemble -----------------------------------------------------------------------------
    cal_summary = {f: c.summary() for f, c in cals.items()}
    attrs = {
        "generator": FORMAT_NOTE, "seed": int(seed), "n_requested": int(n), "per_copy": int(per_copy),
        "render_box": int(render), "fields": json.dumps(cal_summary),
        "z_max_suggested": float(preset.z_max_suggested), "z_min": float(preset.z_min), "z_max": float(preset.z_max),
        "image_units": "nanomaggies (m = 22.5 - 2.5 log10 f), Galactic extinction applied",
        "extinction_coefficients": list(SDSS_EXTINCTION),
        "mags_note": "measured on the injected frames (sep Kron apertures, SDSS asinh magnitudes), NOT corrected "
                     "for Galactic extinction (subtract extinction_coefficients * ebv)",
        "ebv_note": "per-field stand-in (cosecant law, zpix.inject.psf.ebv_stand_in), not a dust map",
    }
    n_written = 0
    parts = [Path(t["part"]) for t in tasks if Path(t["part"]).exists()]
    if not parts:
        raise InjectError("no galaxy could be placed in any frame (frames full of saturated stars?)")
    with CubeStore(parts[0], validate=False) as first:
        bands, shape, scale = first.bands, first.image_shape[1:], first.pixel_scale_arcsec
        mag_names = first.mag_names
        columns = first.catalog_columns
    with CubeWriter(out, bands=bands, image_shape=shape, pixel_scale_arcsec=scale, survey="sdss-injected",
                    mag_names=mag_names, attrs=attrs) as writer:
        for p in parts:
            with CubeStore(p, validate=False) as s:
                cat = {c: s.column(f"catalog/{c}") for c in columns}
                writer.append(images=s.images(slice(None)), z_spec=s.z_spec, ebv=s.ebv, ids=s.ids,
                              mags=s.column("mags"), mag_errs=s.column("mag_errs"), catalog=cat)
                n_written += len(s)
    write_text(fields_path(out), json.dumps(cal_summary, indent=1))
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return InjectReport(out=out, n_requested=n, n_written=n_written, fields=field_ids, n_copies=len(tasks),
                        copies_reused=len(tasks) - len(todo), n_not_placed=n - n_written,
                        seconds=time.perf_counter() - started)
