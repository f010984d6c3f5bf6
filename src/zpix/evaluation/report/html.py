"""One self-contained HTML page: tables of metrics and the figures embedded as base64 PNG."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: (key, label, format) of the main metrics table.
METRIC_ROWS: tuple[tuple[str, str, str], ...] = (
    ("n", "N objects", "{:,d}"),
    ("bias", "bias ⟨Δz⟩", "{:+.5f}"),
    ("mean_dz_raw", "⟨δz⟩ = ⟨z_phot − z_spec⟩", "{:+.5f}"),
    ("sigma_mad", "σ_MAD (Pasquet: median subtracted)", "{:.5f}"),
    ("nmad", "NMAD (Ilbert 2006: median not subtracted)", "{:.5f}"),
    ("sigma_std", "σ(Δz)", "{:.5f}"),
    ("eta", "η (|Δz| > 0.05)", "{:.3%}"),
    ("eta_0.15", "η (|Δz| > 0.15)", "{:.3%}"),
    ("mse", "MSE (z units²)", "{:.3e}"),
    ("mae", "MAE (z units)", "{:.5f}"),
    ("r2", "R²", "{:.4f}"),
    ("crps", "mean CRPS (Pasquet Eq. 4)", "{:.5f}"),
    ("pit_ks", "PIT KS distance from uniform", "{:.4f}"),
    ("pit_cvm", "PIT Cramér–von Mises statistic", "{:.3f}"),
    ("pit_outlier_rate", "PIT outliers (PIT < 1e-4 or > 1 − 1e-4)", "{:.3%}"),
    ("coverage68", "coverage of the 68% interval", "{:.3f}"),
    ("coverage95", "coverage of the 95% interval", "{:.3f}"),
    ("width68_median", "median 68% width", "{:.4f}"),
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1250px;
color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.fail{color:#b00;font-weight:600}.ok{color:#070}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;max-width:1100px}
.meta{font-size:.85em;color:#555}code{background:#f5f5f5;padding:0 .2em}
"""


def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def metrics_table(result: dict[str, Any]) -> str:
    names = list(result["methods"])
    rows = []
    for key, label, fmt in METRIC_ROWS:
        vals = [result["methods"][n]["overall"].get(key) for n in names]
        if all(v is None for v in vals):
            continue
        rows.append([html.escape(label), *[_fmt(v, fmt) for v in vals]])
    return _table(["metric", *map(html.escape, names)], rows)


def quality_cut_table(result: dict[str, Any]) -> str:
    rows = []
    for n, m in result["methods"].items():
        entries = [("full sample", m["overall"], None)]
        entries += [(f"widest {100 * v['fraction_removed']:g}% of PDFs removed", v, v["width68_max_kept"])
                    for v in m["quality_cuts"].values()]
        entries += [(f"worst-flagged {100 * v['fraction_removed']:g}% removed (quality)", v, None)
                    for v in m.get("flag_cuts", {}).values()]
        for label, v, wmax in entries:
            rows.append([html.escape(n), html.escape(label), _fmt(v["n"], "{:,d}"),
                         "–" if wmax is None else _fmt(wmax, "{:.4f}"), _fmt(v["bias"], "{:+.5f}"),
                         _fmt(v["sigma_mad"], "{:.5f}"), _fmt(v["eta"], "{:.3%}"), _fmt(v["crps"], "{:.5f}")])
    return _table(["method", "sample", "N", "max width kept", "bias", "σ_MAD", "η", "CRPS"], rows)


def nz_table(result: dict[str, Any]) -> str:
    rows = []
    for n, m in result["methods"].items():
        for t in m["nz"]["tomographic"]:
            if not t["n"]:
                continue
            ok = t["meets_requirement"]
            flag = '<span class="ok">yes</span>' if ok else '<span class="fail">no</span>'
            lo, hi = t["z_phot_range"]
            rows.append([html.escape(n), f"{lo:.3f} – {hi:.3f}", f"{t['n']:,}", f"{t['mean_z_spec']:.4f}",
                         _fmt(t["mean_z_spec_err"], "{:.4f}"), f"{t['mean_z_stack']:.4f}",
                         f"{t['delta_mean_z']:+.4f}", flag])
    req = next(iter(result["methods"].values()))["nz"]["overall"].get("requirement", 0.002)
    return _table(["method", "z_phot bin", "N", "⟨z_spec⟩", "± (std. err.)", "⟨z⟩ stacked PDFs",
                   "Δ⟨z⟩", f"|Δ⟨z⟩| &lt; {req:g}"], rows)


def png_base64(path: str | Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(
    result: dict[str, Any],
    figures: Sequence[tuple[str, str, Path]],
    title: str = "zpix photometric-redshift report",
) -> str:
    """The page: header, metric tables, then each (title, caption, png) figure embedded."""
    s = result["settings"]
    names = ", ".join(html.escape(n) for n in result["methods"])
    sources = "".join(f"<li><b>{html.escape(n)}</b>: <code>{html.escape(str(m['source']))}</code> "
                      f"({m['n_catalog']:,} objects, {m['n_with_spec']:,} with z_spec)</li>"
                      for n, m in result["methods"].items())
    figs = "".join(
        f'<h2 id="{html.escape(Path(p).stem)}">{html.escape(t)}</h2><figure>'
        f'<img alt="{html.escape(t)}" src="data:image/png;base64,{png_base64(p)}">'
        f"<figcaption>{html.escape(c)}</figcaption></figure>"
        for t, c, p in figures
    )
    toc = " · ".join(f'<a href="#{html.escape(Path(p).stem)}">{html.escape(t)}</a>' for t, _, p in figures)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="meta">Methods: {names}. Point estimate: <code>{html.escape(s['point_estimate'])}</code>.
Evaluated on the {result['n_common']:,} objects with a spectroscopic redshift
{'shared by all methods' if len(result['methods']) > 1 else ''}.
Δz = (z_phot − z_spec)/(1 + z_spec). zpix {html.escape(result['zpix_version'])}, {html.escape(result['created_utc'])}.
</p><ul class="meta">{sources}</ul>
<p class="meta">{toc}</p>
<h2>Metrics</h2>{metrics_table(result)}
<h2>Quality cuts: removing the widest PDFs (Pasquet et al. 2019, Table 2)</h2>{quality_cut_table(result)}
<h2>N(z) in tomographic bins</h2>{nz_table(result)}
{figs}
</body></html>
"""
