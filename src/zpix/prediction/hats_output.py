"""A HATS catalogue of a prediction directory: point estimates + the stored PDF representation.

HATS (Hierarchical Adaptive Tiling Scheme) partitions a sky catalogue by HEALPix pixel into Parquet
files; LSDB cross-matches such catalogues, as Rubin's own photo-z tables.  The catalogue written
here holds every column of ``catalog.parquet`` (id, z_mean, z_median, z_mode, z_lo68, z_hi68,
width68, z_spec, ra, dec...) and one list column per array of the qp representation in ``pdfs.hdf5``
(``pdf_pdfs`` for hist densities, ``pdf_locs`` for quantile locations, ``pdf_ypacked`` and
``pdf_ymax`` for packed8); the representation's shared metadata (qp ``meta/``: bins, quantile levels,
grid points) goes into the catalogue's ``hats.properties`` as ``zpix_pdf_meta`` (JSON), so a reader
can rebuild the qp Ensemble row by row.

The cube stores must carry ``catalog/ra`` and ``catalog/dec`` (degrees), which ``zpix cutouts``
writes.  The catalogue is built in memory with ``lsdb.from_dataframe`` (fine up to ~10⁷ objects on
one machine); beyond that, run ``hats-import`` on ``PRED/catalog.parquet`` with a Dask cluster.
Requires the ``hats`` extra (``pip install zpix[hats]``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

RA, DEC = "ra", "dec"


def check_radec(shards: Sequence[str | os.PathLike]) -> None:
    """Raise before any prediction when a shard lacks ra/dec or lsdb is not installed."""
    import h5py

    for shard in shards:
        with h5py.File(shard, "r") as f:
            missing = [c for c in (RA, DEC) if f"catalog/{c}" not in f]
        if missing:
            raise ValueError(f"{shard}: --hats needs sky positions but the cube store has no catalog/{missing[0]}; "
                             "make the cubes with `zpix cutouts` (which records ra/dec) or drop --hats")
    try:
        import lsdb  # noqa: F401
    except ImportError as err:
        raise ValueError("--hats needs lsdb and hats: pip install 'zpix[hats]'") from err


def _pdf_columns(pdf_file: Path) -> tuple[dict[str, list[np.ndarray]], dict[str, object]]:
    import h5py

    with h5py.File(pdf_file, "r") as f:
        cols = {f"pdf_{name}": list(np.asarray(d)) if d.ndim == 2 else np.asarray(d)
                for name, d in f["data"].items()}
        meta = {k: np.asarray(v).tolist() for k, v in f["meta"].items()}
    meta = {k: [x.decode() if isinstance(x, bytes) else x for x in v] for k, v in meta.items()}
    return cols, meta


def write_hats(pred_dir: str | os.PathLike, out: str | os.PathLike, catalog_name: str = "zpix_photoz") -> Path:
    """Write the HATS catalogue of the prediction directory ``pred_dir`` to ``out`` (a new directory)."""
    import lsdb
    import pandas as pd

    from zpix.prediction.format import CATALOG_FILE, PDF_FILE

    pred_dir, out = Path(pred_dir), Path(out)
    df = pd.read_parquet(pred_dir / CATALOG_FILE)
    missing = [c for c in (RA, DEC) if c not in df.columns]
    if missing:
        raise ValueError(f"{pred_dir}: the catalogue has no {missing} column; a HATS catalogue needs ra/dec "
                         "(cube stores made by `zpix cutouts` carry them)")
    cols, meta = _pdf_columns(pred_dir / PDF_FILE)
    for name, values in cols.items():
        df[name] = values
    cat = lsdb.from_dataframe(df, ra_column=RA, dec_column=DEC, catalog_name=catalog_name)
    cat.write_catalog(out, catalog_name=catalog_name, progress_bar=False,
                      addl_hats_properties={"zpix_pdf_meta": json.dumps(meta)})
    return out
