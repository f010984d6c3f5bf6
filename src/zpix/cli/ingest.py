"""`zpix cutouts` and `zpix sdss-frames`: from survey frames to cube stores."""

from __future__ import annotations

import click
import numpy as np

from zpix.ingest.cutouts import CutoutError, make_cutouts
from zpix.ingest.resample import BACKENDS
from zpix.ingest.sdss_frames import (
    DEFAULT_BASE_URL,
    DEFAULT_RERUN,
    SDSS_BANDS,
    fetch_frames,
    parse_fields,
    read_checksums,
    read_field_list,
)


@click.command("cutouts")
@click.option("--frames", "frames", multiple=True, required=True,
              help="Frame files: glob pattern(s) in quotes, directories or paths (.fits, .fits.bz2, .fits.gz, .fz); "
                   "repeat for several.")
@click.option("--catalog", required=True, type=click.Path(dir_okay=False),
              help="Targets: FITS/ECSV/CSV/Parquet table with ra, dec (deg) and optionally id, z_spec, ebv, mags.")
@click.option("--size", default=64, show_default=True, type=click.IntRange(4, 4096), help="Stamp side in pixels.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Cube store (HDF5) to write.")
@click.option("--bands", default=None, help="Output bands in order, e.g. u,g,r,i,z [default: all found, blue to red].")
@click.option("--pixel-scale", type=float, default=None,
              help="Output pixel scale in arcsec [default: the frames' native scale, median].")
@click.option("--backend", type=click.Choice(BACKENDS), default="lanczos3", show_default=True,
              help="lanczos3: the paper's kernel (zpix); interp: reproject bicubic; swarp: SWarp on PATH.")
@click.option("--band-key", default="FILTER", show_default=True, help="Header keyword that names the band.")
@click.option("--band-map", default=None, help="Translate header band values, e.g. 'HSC-G=g,HSC-R=r'.")
@click.option("--hdu", type=int, default=None, help="HDU of the science image [default: first image with a WCS].")
@click.option("--cube-bands", default=None, help="Band names of the planes of 3-D frames, e.g. g,r,i,z,y.")
@click.option("--weight-hdu", type=int, default=None, help="HDU of the same file holding a weight map.")
@click.option("--weight-suffix", default=None,
              help="Weight map beside each frame: frame.fits[.bz2] -> frame<SUFFIX>, e.g. .weight.fits.")
@click.option("--weight-type", type=click.Choice(["ivar", "variance"]), default="ivar", show_default=True)
@click.option("--id-col", default=None)
@click.option("--ra-col", default=None)
@click.option("--dec-col", default=None)
@click.option("--z-col", default=None, help="Spectroscopic redshift column [default: z_spec, zspec, zs, z...].")
@click.option("--ebv-col", default=None, help="E(B-V) column [default: ebv...; 0 when absent].")
@click.option("--mag-cols", default=None, help="Magnitude columns, comma-separated, one per band.")
@click.option("--mag-err-cols", default=None, help="Magnitude error columns, comma-separated.")
@click.option("--keep-cols", default=None, help="Further catalogue columns to copy, comma-separated.")
@click.option("--min-coverage", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Leave out targets whose stamp is covered less than this in any band.")
@click.option("--fill-value", type=float, default=0.0, show_default=True, help="Value of pixels no frame covers.")
@click.option("--survey", default=None, help="Survey name for the store [default: the frames' ORIGIN].")
@click.option("--workers", type=click.IntRange(1, None), default=1, show_default=True, help="Worker processes.")
@click.option("--block-size", type=click.IntRange(1, None), default=256, show_default=True,
              help="Targets per block (the unit of resumption and of work per process).")
@click.option("--work-dir", default=None, type=click.Path(file_okay=False),
              help="Where parts and decompressed frames go [default: OUT.work].")
@click.option("--keep-work", is_flag=True, help="Keep the work directory after success.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def cutouts_command(frames: tuple[str, ...], catalog: str, size: int, out: str, bands: str | None,
                    pixel_scale: float | None, backend: str, band_key: str, band_map: str | None, hdu: int | None,
                    cube_bands: str | None, weight_hdu: int | None, weight_suffix: str | None, weight_type: str,
                    id_col: str | None, ra_col: str | None, dec_col: str | None, z_col: str | None,
                    ebv_col: str | None, mag_cols: str | None, mag_err_cols: str | None, keep_cols: str | None,
                    min_coverage: float, fill_value: float, survey: str | None, workers: int, block_size: int,
                    work_dir: str | None, keep_work: bool, no_progress: bool) -> None:
    """Cut aligned multi-band cubes from survey frames around catalogue positions (Pasquet et al. 2019).

    Rerunning the same command after an interruption resumes from the finished blocks.
    """
    try:
        report = make_cutouts(
            list(frames), catalog, size=size, out=out, bands=bands, pixel_scale_arcsec=pixel_scale,
            backend=backend, band_key=band_key, band_map=band_map, hdu=hdu, cube_bands=cube_bands,
            weight_hdu=weight_hdu, weight_suffix=weight_suffix, weight_type=weight_type, id_col=id_col,
            ra_col=ra_col, dec_col=dec_col, z_col=z_col, ebv_col=ebv_col, mag_cols=mag_cols,
            mag_err_cols=mag_err_cols, keep_cols=keep_cols, min_coverage=min_coverage, fill_value=fill_value,
            survey=survey, workers=workers, block_size=block_size, work_dir=work_dir, keep_work=keep_work,
            progress=not no_progress)
    except CutoutError as err:
        raise click.ClickException(str(err)) from err
    click.echo(report.summary())


@click.command("sdss-frames")
@click.argument("fields", nargs=-1)
@click.option("--list", "list_file", type=click.Path(exists=True, dir_okay=False),
              help="Text file with one RUN CAMCOL FIELD per line.")
@click.option("--bands", default=SDSS_BANDS, show_default=True, help="Bands to fetch, e.g. ugriz or r.")
@click.option("--out", "out_dir", default="sdss_frames", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the frame files.")
@click.option("--rerun", default=DEFAULT_RERUN, show_default=True, type=int, help="Photometric rerun (301 for DR8+).")
@click.option("--base-url", default=DEFAULT_BASE_URL, show_default=True,
              help="Root of the frames tree on the SAS or a mirror with the same layout.")
@click.option("--retries", default=4, show_default=True, type=click.IntRange(0, 50))
@click.option("--backoff", default=1.0, show_default=True, type=float, help="First wait in s, doubled per retry.")
@click.option("--timeout", default=60.0, show_default=True, type=float, help="Network timeout per request, s.")
@click.option("--workers", default=4, show_default=True, type=click.IntRange(1, 64), help="Parallel downloads.")
@click.option("--checksums", type=click.Path(exists=True, dir_okay=False),
              help="md5sum-style list of expected MD5s by file name.")
@click.option("--overwrite", is_flag=True, help="Fetch again even when the file exists.")
@click.option("--no-progress", is_flag=True)
def sdss_frames_command(fields: tuple[str, ...], list_file: str | None, bands: str, out_dir: str, rerun: int,
                        base_url: str, retries: int, backoff: float, timeout: float, workers: int,
                        checksums: str | None, overwrite: bool, no_progress: bool) -> None:
    """Fetch SDSS corrected frames for fields given as RUN CAMCOL FIELD (e.g. 2583 2 136) or --list."""
    try:
        field_list = parse_fields(list(fields))
        if list_file:
            field_list += read_field_list(list_file)
        bad = [b for b in bands if b not in SDSS_BANDS]
        if bad:
            raise ValueError(f"--bands: {''.join(bad)} not among {SDSS_BANDS}")
    except ValueError as err:
        raise click.BadParameter(str(err)) from err
    if not field_list:
        raise click.UsageError("give fields as RUN CAMCOL FIELD (e.g. 2583 2 136) or --list FILE")
    results = fetch_frames(field_list, out_dir, bands, rerun=rerun, base_url=base_url, retries=retries,
                           backoff=backoff, timeout=timeout, workers=workers,
                           checksums=read_checksums(checksums) if checksums else None,
                           overwrite=overwrite, progress=not no_progress)
    counts = {s: sum(r.status == s for r in results) for s in ("downloaded", "present", "failed")}
    total = int(np.sum([r.size for r in results if r.status == "downloaded"]))
    click.echo(f"{counts['downloaded']} downloaded ({total / 1e6:.1f} MB), {counts['present']} already present, "
               f"{counts['failed']} failed -> {out_dir}")
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        click.echo(f"  failed: {r.url}: {r.error}", err=True)
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(results)} frames failed; rerun the same command to retry "
                                   "them (files already fetched are kept)")
