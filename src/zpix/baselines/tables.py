"""Magnitude catalogues for the catalogue baselines: one in-memory shape from many file formats.

The baselines (k-NN, magnitude network) read photometry, not images.  Their inputs are

* a cube store (``.h5``): its ``mags`` / ``mag_errs`` / ``ebv`` / ``z_spec`` / ``ids`` datasets
  (``zpix simulate`` writes *observed* magnitudes, with Galactic extinction; the store's
  ``extinction_coefficients`` attribute, A_b / E(B−V), lets :meth:`MagnitudeTable.dereddened`
  correct them);
* a table file: Parquet, FITS, CSV, or whitespace-separated text such as the SDSS MGS catalogue of
  MLZ (Carrasco Kind & Brunner 2013) used by the real-data benchmark.

Every input is mapped onto the canonical column names ``id``, ``z_spec``, ``ebv``, ``mag_<band>``,
``magerr_<band>`` (the names of :meth:`zpix.store.cube_store.CubeStore.catalog_table`).  A mapping
``canonical=file_column`` renames the file's columns; ``names`` names the columns of a text file
whose header is missing or wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

#: Column names of the SDSS MGS files (``SDSS_MGS.train`` / ``.test``).  The ``.train`` header omits
#: ``eu`` although its rows have it, so these files are read with these names and no header.
SDSS_MGS_NAMES: tuple[str, ...] = (
    "zs", "u", "g", "r", "i", "z", "u-g", "g-r", "r-i", "i-z",
    "eu", "eg", "er", "ei", "ez", "eu-g", "eg-r", "er-i", "ei-z",
)  # fmt: skip

#: Named column presets: (names for header-less reading or None, canonical -> file column).
PRESETS: dict[str, tuple[tuple[str, ...] | None, dict[str, str]]] = {
    "sdss-mgs": (
        SDSS_MGS_NAMES,
        {"z_spec": "zs", **{f"mag_{b}": b for b in "ugriz"}, **{f"magerr_{b}": f"e{b}" for b in "ugriz"}},
    ),
}

#: Magnitudes at or above this value are "not observed" sentinels (99, 99.99 in SExtractor/KiDS).
MISSING_MAG = 90.0


@dataclass
class MagnitudeTable:
    """Photometry of N objects in M bands.

    ``mags`` is (N, M) with NaN where a band is not observed; ``z_spec`` is NaN where unknown;
    ``extinction`` holds A_b / E(B−V) per band when the magnitudes are *not* yet corrected for
    Galactic extinction (None: already corrected, or unknown).
    """

    ids: np.ndarray
    z_spec: np.ndarray
    ebv: np.ndarray
    mags: np.ndarray
    bands: list[str]
    mag_errs: np.ndarray | None = None
    extinction: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        self.mags = np.asarray(self.mags, dtype=np.float64)
        n = self.mags.shape[0]
        if self.mags.ndim != 2 or self.mags.shape[1] != len(self.bands):
            raise ValueError(f"{self.source}: mags must be (N, {len(self.bands)}), got {self.mags.shape}")
        self.mags = np.where(np.isfinite(self.mags) & (self.mags < MISSING_MAG), self.mags, np.nan)
        self.ids = np.asarray(self.ids).reshape(-1)
        self.z_spec = np.asarray(self.z_spec, dtype=np.float64).reshape(-1)
        self.ebv = np.asarray(self.ebv, dtype=np.float64).reshape(-1)
        for name in ("ids", "z_spec", "ebv"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{self.source}: {name} has {getattr(self, name).shape[0]} rows, mags {n}")
        if not np.isfinite(self.ebv).all():
            raise ValueError(f"{self.source}: E(B-V) contains NaN/inf; fill it or drop those objects")
        if self.extinction is not None:
            self.extinction = np.asarray(self.extinction, dtype=np.float64).reshape(-1)
            if self.extinction.size != len(self.bands):
                raise ValueError(f"{self.source}: {self.extinction.size} extinction coefficients for "
                                 f"{len(self.bands)} bands")

    def __len__(self) -> int:
        return int(self.mags.shape[0])

    def dereddened(self) -> np.ndarray:
        """Magnitudes corrected for Galactic extinction, m − A_b/E(B−V) × E(B−V) (NaN stays NaN).

        Beck et al. (2016) work on de-reddened SDSS magnitudes; without coefficients the magnitudes
        are returned as they are (taken to be corrected already).
        """
        if self.extinction is None:
            return self.mags.copy()
        return self.mags - self.extinction[None, :] * self.ebv[:, None]

    def subset(self, rows: np.ndarray) -> MagnitudeTable:
        """The objects at ``rows`` (an index or boolean array)."""
        rows = np.asarray(rows)
        return MagnitudeTable(
            ids=self.ids[rows], z_spec=self.z_spec[rows], ebv=self.ebv[rows], mags=self.mags[rows],
            bands=list(self.bands), mag_errs=None if self.mag_errs is None else self.mag_errs[rows],
            extinction=self.extinction, extra={k: v[rows] for k, v in self.extra.items()}, source=self.source,
        )

    def labelled(self, z_min: float = -np.inf, z_max: float = np.inf) -> MagnitudeTable:
        """Objects with a finite z_spec inside [z_min, z_max] (the training set of a baseline)."""
        z = self.z_spec
        return self.subset(np.flatnonzero(np.isfinite(z) & (z >= z_min) & (z <= z_max)))


def parse_columns(spec: str | Mapping[str, str] | None) -> tuple[tuple[str, ...] | None, dict[str, str]]:
    """``"sdss-mgs"`` (a preset), ``"z_spec=zs,mag_r=r"`` or a dict -> (names or None, mapping)."""
    if spec is None or spec == "":
        return None, {}
    if isinstance(spec, Mapping):
        return None, dict(spec)
    if spec in PRESETS:
        names, mapping = PRESETS[spec]
        return names, dict(mapping)
    mapping = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"column mapping {spec!r}: expected canonical=file_column pairs separated by commas "
                             f"(e.g. z_spec=zs,mag_r=r) or a preset ({', '.join(PRESETS)})")
        key, value = (s.strip() for s in item.split("=", 1))
        mapping[key] = value
    return None, mapping


def _read_text(path: Path, names: Sequence[str] | None) -> pd.DataFrame:
    if names is not None:
        return pd.read_csv(path, sep=r"\s+", comment="#", header=None, names=list(names))
    with open(path) as fh:
        first = fh.readline()
    if not first.startswith("#"):
        return pd.read_csv(path, sep=r"\s+")
    header = first.lstrip("#").split()
    df = pd.read_csv(path, sep=r"\s+", comment="#", header=None)
    if len(header) != df.shape[1]:
        raise ValueError(
            f"{path}: the header names {len(header)} columns but the rows have {df.shape[1]}; name them "
            "yourself (names=[...], or --columns sdss-mgs for the SDSS MGS files, whose .train header omits 'eu')"
        )
    df.columns = header
    return df


def read_table(path: str | os.PathLike, names: Sequence[str] | None = None) -> pd.DataFrame:
    """A table file as a DataFrame: .parquet, .fits/.fit, .csv, or whitespace text (anything else)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such catalogue file")
    suffix = "".join(p.suffixes[-2:]).lower() if p.name.lower().endswith(".gz") else p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if suffix in (".fits", ".fit", ".fits.gz"):
        from astropy.table import Table

        return Table.read(p).to_pandas()
    if suffix == ".csv":
        return pd.read_csv(p, header=None, names=list(names)) if names else pd.read_csv(p)
    return _read_text(p, names)


def _from_cube_store(path: Path, bands: Sequence[str] | None) -> MagnitudeTable:
    from zpix.store.cube_store import CubeStore

    with CubeStore(path, validate=False) as store:
        if not store.has_mags:
            raise ValueError(f"{path}: this cube store holds no magnitudes ('mags'); the catalogue baselines need "
                             "them (write them with CubeWriter(mag_names=...) or give a table file)")
        names = store.mag_names
        mags, errs = store.column("mags"), store.column("mag_errs")
        coeffs = store.attrs.get("extinction_coefficients")
        extra = {}
        for c in ("r_mag", "snr_r", "axis_ratio", "psf_fwhm_r"):
            if c in store.catalog_columns:
                extra[c] = store.column(f"catalog/{c}").astype(np.float64)
        table = MagnitudeTable(
            ids=store.ids, z_spec=store.z_spec, ebv=store.ebv, mags=mags, bands=names, mag_errs=errs,
            extinction=None if coeffs is None else np.asarray(coeffs, dtype=np.float64), extra=extra,
            source=str(path),
        )
    if bands:
        idx = [names.index(b) for b in bands]
        table.mags = table.mags[:, idx]
        table.mag_errs = None if table.mag_errs is None else table.mag_errs[:, idx]
        table.extinction = None if table.extinction is None else table.extinction[idx]
        table.bands = list(bands)
    return table


def load_magnitudes(
    path: str | os.PathLike,
    columns: str | Mapping[str, str] | None = None,
    bands: Sequence[str] | None = None,
    extinction: Sequence[float] | None = None,
) -> MagnitudeTable:
    """Read a cube store or a catalogue file into a :class:`MagnitudeTable`.

    ``columns``: a preset name (``"sdss-mgs"``), a ``"canonical=file_column,..."`` string or a dict.
    ``bands``: which bands to use, in order (default: every ``mag_<band>`` column, in file order).
    ``extinction``: A_b / E(B−V) per band when a table's magnitudes are not extinction-corrected.
    A table without ``id`` gets row numbers; without ``ebv``, E(B−V) = 0; without ``z_spec``, NaN.
    """
    p = Path(path)
    if p.suffix.lower() in (".h5", ".hdf5", ".hdf"):
        table = _from_cube_store(p, bands)
        if extinction is not None:
            table.extinction = np.asarray(extinction, dtype=np.float64)
        return table
    names, mapping = parse_columns(columns)
    df = read_table(p, names)
    missing = sorted(v for v in mapping.values() if v not in df.columns)
    if missing:
        raise ValueError(f"{p}: column(s) {missing} named in the mapping are not in the file; "
                         f"it has {list(df.columns)[:30]}")
    df = df.rename(columns={v: k for k, v in mapping.items()})
    if bands is None:
        bands = [c[4:] for c in df.columns if str(c).startswith("mag_")]
    if not bands:
        raise ValueError(f"{p}: no magnitude columns; name them mag_<band> or map them (--columns mag_r=rmag,...)")
    absent = [f"mag_{b}" for b in bands if f"mag_{b}" not in df.columns]
    if absent:
        raise ValueError(f"{p}: missing magnitude column(s) {absent}; found {list(df.columns)[:30]}")
    n = len(df)
    errs = None
    if all(f"magerr_{b}" in df.columns for b in bands):
        errs = df[[f"magerr_{b}" for b in bands]].to_numpy(dtype=np.float64)
    extra = {c: df[c].to_numpy(dtype=np.float64) for c in ("r_mag", "snr_r", "axis_ratio", "psf_fwhm_r")
             if c in df.columns}
    if "r_mag" not in extra and "r" in bands:
        extra["r_mag"] = df["mag_r"].to_numpy(dtype=np.float64)
    return MagnitudeTable(
        ids=df["id"].to_numpy() if "id" in df.columns else np.arange(n),
        z_spec=df["z_spec"].to_numpy(dtype=np.float64) if "z_spec" in df.columns else np.full(n, np.nan),
        ebv=df["ebv"].to_numpy(dtype=np.float64) if "ebv" in df.columns else np.zeros(n),
        mags=df[[f"mag_{b}" for b in bands]].to_numpy(dtype=np.float64),
        bands=list(bands),
        mag_errs=errs,
        extinction=None if extinction is None else np.asarray(extinction, dtype=np.float64),
        extra=extra,
        source=str(p),
    )


def run_split_tables(run: str | os.PathLike, cubes: str | os.PathLike | None = None,
                     bands: Sequence[str] | None = None) -> tuple[MagnitudeTable, MagnitudeTable, dict]:
    """The training and test catalogues of a trained run: its cube store's magnitudes at the run's
    train + validation rows (every object the network learned from) and at its test rows.

    ``cubes`` defaults to the run's own cube store; another one must hold the very same objects
    (fingerprint of ids and z_spec), since the split is a list of row numbers.
    """
    from zpix.runs import InputSpec, RunInputError, load_split, run_dir_of
    from zpix.store.cube_store import CubeStore
    from zpix.training.config import TrainConfig

    run_dir = run_dir_of(run)
    if run_dir is None:
        raise RunInputError(f"--split needs a run directory written by `zpix train`, not {run}")
    cubes = Path(cubes) if cubes is not None else Path(TrainConfig.from_yaml(run_dir / "config.yaml").cubes)
    split = load_split(run_dir)
    spec = InputSpec.load(run_dir)
    with CubeStore(cubes, validate=False) as store:
        own = spec.same_store(store) if spec is not None else len(store) > int(
            max(split.train.max(initial=0), split.val.max(initial=0), split.test.max(initial=0)))
    if not own:
        raise RunInputError(f"{cubes} is not the cube store {run_dir} was split on (other ids/z_spec); "
                            "--split needs the run's own cube store")
    table = _from_cube_store(cubes, bands)
    train = table.subset(np.union1d(split.train, split.val))
    test = table.subset(split.test)
    return train, test, {"split": "test", "run": str(run_dir)}


def rows_record(train: MagnitudeTable, test: MagnitudeTable, split: dict | None = None) -> dict:
    """Which objects a baseline predicted, and how many of them it was trained on (matched by id):
    `zpix evaluate` refuses to score those."""
    overlap = int(np.isin(test.ids, train.labelled().ids).sum())
    return {**(split or {"split": "all"}), "n_rows": len(test), "n_training_rows": overlap}
