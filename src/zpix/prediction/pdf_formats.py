"""Compact storage of binned redshift PDFs through qp's own representations.

A prediction directory stores each object's PDF as a qp Ensemble (``docs/prediction_format.md``).
The network's PDF is a histogram of ``n_bins`` probabilities (180 on 0-0.4, Pasquet et al. 2019,
Sect. 3.2); at survey scale (10⁹-10¹⁰ objects) its 720 B per object in float32 dominate the output.
These formats trade bytes for fidelity, each one a qp parameterisation that RAIL tools read:

===============  =======================  ======================================================
spec             qp representation         stored per object
===============  =======================  ======================================================
``hist64``       ``qp.hist``               n_bins float64 densities (the reference, lossless)
``hist32``       ``qp.hist``               n_bins float32 densities (relative rounding 6e-8)
``hist16``       ``qp.hist``               n_bins float16 densities (relative rounding 5e-4)
``packed8``      ``qp.packed_interp``      n_bins uint8 densities at the bin centres, log-packed
                                           from the row maximum over ``PACKED_DECADES`` decades,
                                           + the row maximum (float32)
``quantiles:K``  ``qp.quant``              K+2 float32 locations: the K quantiles at levels
                                           i/(K+1), i = 1..K, and the two end points qp's
                                           ``ensure_extent`` extrapolates linearly
===============  =======================  ======================================================

Reading any of them back onto the grid goes through :func:`zpix.pdf.from_qp` (the CDF differenced at
the bin edges), so every format is compared on the same footing; :func:`compare_formats` measures what
each costs (CRPS, PIT KS distance, σ_MAD of the PDF mean, 68% width) against ``hist32`` on the same PDFs.
The catalogue's point estimates are always computed from the full-precision PDFs before storage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from zpix.pdf import RedshiftGrid, _as_pdfs, from_qp, normalize, pdf_quantiles

if TYPE_CHECKING:
    import qp

#: Dynamic range of ``packed8``: densities below 10^-PACKED_DECADES of the row maximum are stored as 0.
#: 255 logarithmic steps over 4 decades are 3.7% apart.
PACKED_DECADES = 4.0

#: The format of ``zpix predict --dask`` and the RAIL stages when none is asked for: hist16 halves hist32
#: and changes CRPS, PIT KS, σ_MAD and the 68% widths by far less than their statistical errors
#: (benchmarks/results/survey_scale.json, docs/survey_scale.md).  Plain ``zpix predict`` keeps hist32.
DEFAULT_PDF_FORMAT = "hist16"

_HIST_DTYPES = {"hist64": np.float64, "hist32": np.float32, "hist16": np.float16}


@dataclass(frozen=True)
class PdfFormat:
    """A parsed ``--pdf-format`` spec: ``kind`` is hist, packed or quantiles; ``k`` the quantile count."""

    spec: str
    kind: str
    k: int = 0

    def bytes_per_object(self, grid: RedshiftGrid) -> int:
        """Per-object payload in the PDF file (HDF5 ``data/`` group), excluding point estimates."""
        if self.kind == "hist":
            return grid.n_bins * np.dtype(_HIST_DTYPES[self.spec]).itemsize
        if self.kind == "packed":
            return grid.n_bins + 4
        return 4 * (self.k + 2)


def parse_pdf_format(spec: str | PdfFormat | None) -> PdfFormat:
    """``"hist32"``, ``"hist16"``, ``"hist64"``, ``"packed8"`` or ``"quantiles:K"`` (2 <= K <= 1000)."""
    if isinstance(spec, PdfFormat):
        return spec
    s = (spec or DEFAULT_PDF_FORMAT).strip().lower()
    if s in _HIST_DTYPES:
        return PdfFormat(s, "hist")
    if s == "packed8":
        return PdfFormat(s, "packed")
    m = re.fullmatch(r"quantiles:(\d+)", s)
    if m and 2 <= int(m.group(1)) <= 1000:
        return PdfFormat(s, "quantiles", int(m.group(1)))
    raise ValueError(f"unknown PDF format {spec!r}; use hist64, hist32, hist16, packed8 or quantiles:K "
                     "(K quantiles, 2 <= K <= 1000, e.g. quantiles:20)")


def quantile_levels(k: int) -> np.ndarray:
    """The K stored quantile levels i/(K+1), i = 1..K (equal probability between neighbours)."""
    return np.arange(1, k + 1) / (k + 1)


def encode(pdfs: np.ndarray, grid: RedshiftGrid, fmt: str | PdfFormat,
           ancil: dict[str, np.ndarray] | None = None) -> qp.Ensemble:
    """Probabilities per bin ``(N, n_bins)`` → the qp Ensemble of ``fmt`` ready to be written."""
    import qp
    from qp.parameterizations.packed_interp.packing_utils import PackingType, pack_array
    from qp.parameterizations.quant.quant_utils import pad_quantiles

    f = parse_pdf_format(fmt)
    p = normalize(_as_pdfs(pdfs, grid))
    if f.kind == "hist":
        dens = (p / grid.width).astype(_HIST_DTYPES[f.spec])
        # already normalised; qp's normalisation would promote to float64
        ens = qp.Ensemble(qp.hist, data={"bins": grid.edges, "pdfs": dens, "norm": False})
    elif f.kind == "packed":
        packed, row_max = pack_array(PackingType.log_from_rowmax, p / grid.width, log_floor=-PACKED_DECADES)
        ens = qp.Ensemble(qp.packed_interp, data={"xvals": grid.centers, "ypacked": packed,
                                                  "ymax": row_max.astype(np.float32),
                                                  "packing_type": PackingType.log_from_rowmax,
                                                  "log_floor": -PACKED_DECADES})
    else:
        # qp's own end-point extrapolation (what ensure_extent does on construction), done here so that
        # the stored locations can be float32 (1e-8 in z), half of qp's float64
        quants, locs = pad_quantiles(quantile_levels(f.k), pdf_quantiles(p, grid, quantile_levels(f.k)))
        ens = qp.Ensemble(qp.quant, data={"quants": quants, "locs": locs.astype(np.float32)})
    if ancil:
        ens.set_ancil({k: np.asarray(v) for k, v in ancil.items()})
    return ens


def decode(ens: qp.Ensemble, grid: RedshiftGrid) -> np.ndarray:
    """Any stored Ensemble → probabilities per bin on ``grid`` (rows sum to 1)."""
    return from_qp(ens, grid)[0]


def roundtrip(pdfs: np.ndarray, grid: RedshiftGrid, fmt: str | PdfFormat) -> np.ndarray:
    """The PDFs a reader gets back after storing ``pdfs`` in ``fmt`` (encode, then decode)."""
    return decode(encode(pdfs, grid, fmt), grid)


def _scores(pdfs: np.ndarray, grid: RedshiftGrid, z_spec: np.ndarray) -> dict[str, np.ndarray | float]:
    from zpix.evaluation.metrics import crps, delta_z, pit, pit_ks, sigma_mad
    from zpix.pdf import credible_interval, pdf_mean

    lo, hi = credible_interval(pdfs, grid, 0.68)
    z_mean = pdf_mean(pdfs, grid)
    return {"crps": float(np.mean(crps(pdfs, grid, z_spec))),
            "pit_ks": pit_ks(pit(pdfs, grid, z_spec))["statistic"],
            "sigma_mad": sigma_mad(delta_z(z_mean, z_spec)),
            "width68": hi - lo, "z_mean": z_mean}


def compare_formats(pdfs: np.ndarray, grid: RedshiftGrid, z_spec: np.ndarray,
                    formats: list[str], reference: str = "hist32") -> dict[str, dict[str, Any]]:
    """What each format costs against ``reference`` on the same PDFs (objects with a z_spec).

    For each format, the PDFs are encoded, decoded onto the grid and scored:
    ``crps_change`` = <CRPS>_fmt − <CRPS>_ref (Pasquet Eq. 4, redshift units), ``pit_ks_change`` the
    change of the PIT's KS distance from U(0, 1), ``sigma_mad_change`` that of σ_MAD of the PDF mean's
    Δz (Pasquet Sect. 4.1), ``width68_change`` the mean change of the 68% width and
    ``width68_rel_change_median`` the median |Δwidth| / width; ``z_mean_abs_change_max`` bounds how far
    the PDF mean moved for any object.
    """
    zs = np.asarray(z_spec, dtype=np.float64)
    keep = np.isfinite(zs)
    p, zs = _as_pdfs(pdfs, grid)[keep], zs[keep]
    ref = _scores(roundtrip(p, grid, reference), grid, zs)
    out: dict[str, dict[str, Any]] = {}
    for spec in formats:
        f = parse_pdf_format(spec)
        s = _scores(roundtrip(p, grid, f), grid, zs)
        dw = s["width68"] - ref["width68"]
        out[f.spec] = {
            "qp_representation": {"hist": "hist", "packed": "packed_interp", "quantiles": "quant"}[f.kind],
            "bytes_per_object": f.bytes_per_object(grid),
            "crps": s["crps"], "crps_change": s["crps"] - ref["crps"],
            "pit_ks": s["pit_ks"], "pit_ks_change": s["pit_ks"] - ref["pit_ks"],
            "sigma_mad": s["sigma_mad"], "sigma_mad_change": s["sigma_mad"] - ref["sigma_mad"],
            "width68_change": float(np.mean(dw)),
            "width68_rel_change_median": float(np.median(np.abs(dw) / np.maximum(ref["width68"], 1e-12))),
            "z_mean_abs_change_max": float(np.max(np.abs(s["z_mean"] - ref["z_mean"]))),
        }
    return out
