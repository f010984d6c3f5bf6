"""Render the results JSON files as the Markdown tables of benchmarks/README.md.

    python benchmarks/tables.py            # rewrite the block between the README's result markers
    python benchmarks/tables.py --print    # print the tables only

Every number comes from ``benchmarks/results/*.json``; nothing is typed by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402

README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _head(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    where = f"{m.get('cpu', '?')}, {m.get('cpu_count', '?')} cores, torch {m.get('torch', '?')}"
    if m.get("gpu"):
        where += f", {m['gpu']}"
    return f"*{doc['date_utc'][:10]}, commit `{doc['commit']}`, {where}.*"


def _accuracy_rows(methods: dict[str, dict[str, Any]], timings: bool = True) -> list[str]:
    head = "| method | σ_MAD | bias | η (%) | CRPS | PIT KS |" + (" train s | predict s |" if timings else "")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, m in methods.items():
        row = (f"| {name} | {m['sigma_mad']:.5f} | {m['bias']:+.5f} | {100 * m['eta']:.2f} | {m['crps']:.5f} "
               f"| {m['pit_ks']:.3f} |")
        if timings:
            row += f" {m.get('train_s', float('nan')):.1f} | {m.get('predict_s', float('nan')):.2f} |"
        rows.append(row)
    return rows


def real_table() -> list[str]:
    doc = _load("real_catalog.json")
    if doc is None:
        return ["*No results yet: run `benchmarks/real_catalog.py`.*"]
    out = [_head(doc), "", f"SDSS MGS, {doc['data']['n_train']} training / {doc['data']['n_test']} test "
           "galaxies, 180 bins on 0-0.4, point estimate = PDF mean.", ""]
    if doc.get("note"):
        out += [f"Note: {doc['note']}; dates and commits per run in the JSON (`runs`).", ""]
    return out + _accuracy_rows(doc["methods"])


def mock_table() -> list[str]:
    doc = _load("mock_images.json")
    if doc is None:
        return ["*No results yet: run `benchmarks/mock_images.py`.*"]
    mock, split = doc["mock"], doc["split"]
    out = [_head(doc), "",
           f"`zpix simulate` SDSS mock: N = {mock['n_objects']}, seed {mock['seed']}; split seed {split['seed']}: "
           f"{split['n_test']} test, {split['n_val']} validation (CNN early stopping), training sets nested "
           f"subsets of {split['n_train_available']}. Status: {doc.get('status')}.", ""]
    out += _accuracy_rows(doc["methods"])
    cnn = doc["methods"].get("cnn", {})
    if cnn:
        cfg = cnn.get("config", {})
        out += ["", f"CNN: `{cfg.get('model')}`, {cnn.get('n_train')} training images, {cnn.get('epochs')} epochs "
                f"({cnn.get('steps')} steps), batch {cfg.get('batch_size')}, lr {cfg.get('lr')}, "
                f"patience {cfg.get('patience')}."]
    lc = doc.get("learning_curve", {})
    sizes = [str(s) for s in lc.get("n_train", [])]
    if sizes:
        out += ["", "Learning curve (σ_MAD on the same test objects):", "",
                "| n_train | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
        for m in ("cnn", "knn", "magnet"):
            vals = [f"{lc[m][s]:.5f}" if s in lc.get(m, {}) else "-" for s in sizes]
            out.append(f"| {m} | " + " | ".join(vals) + " |")
        details = {**lc.get("details", {}), sizes[-1]: {"cnn": cnn}}
        steps = [str(details.get(s, {}).get("cnn", {}).get("steps", "-")) for s in sizes]
        out.append("| cnn optimiser steps | " + " | ".join(steps) + " |")
    return out


def speed_table(name: str) -> list[str]:
    doc = _load(name)
    if doc is None:
        return [f"*No results yet ({name}).*"]
    out = [_head(doc), "", f"Device {doc['device']}, {doc.get('torch_threads')} threads, {doc.get('precision')}; "
           f"dense matmul roof **{doc['matmul_gflops']:.1f} GFLOP/s**.", "",
           "| model | GFLOP/img (fwd) | infer img/s | infer / roof | train img/s | train / roof | best layouts |",
           "|---|---|---|---|---|---|---|"]
    for model, m in doc.get("models", {}).items():
        out.append(f"| {model} | {m['forward_gflops_per_image']:.3f} | {m['infer_img_s']:.1f} (b{m['infer_batch']}) | "
                   f"{m['infer_roof_ratio']:.0%} | {m['train_img_s']:.1f} (b{m['train_batch']}) | "
                   f"{m['train_roof_ratio']:.0%} | {m['infer_variant']} / {m['train_variant']} |")
    variants = doc.get("variants", {})
    if variants:
        out += ["", "| model | layout | infer img/s | train img/s |", "|---|---|---|---|"]
        for model, vs in variants.items():
            for v, r in vs.items():
                if "error" in r:
                    out.append(f"| {model} | {v} | failed: {r['error'][:80]} | |")
                    continue
                tr = f"{r['train_img_s']:.1f}" if "train_img_s" in r else "-"
                out.append(f"| {model} | {v} | {r['infer_img_s']:.1f} | {tr} |")
    if "loader_img_s" in doc:
        ld = doc["loader"]
        out += ["", f"Cube-store DataLoader: **{doc['loader_img_s']:.0f} img/s** ({ld['num_workers']} workers, batch "
                f"{ld['batch_size']}); ratio to training img/s: "
                + ", ".join(f"{k} {v:.1f}×" for k, v in ld["vs_train_img_s"].items()) + "."]
    if "predict_end_to_end_ratio" in doc:
        p = doc["predict"]
        out += [f"`zpix predict` end to end ({p['model']}, {p['n']} objects, batch {p['batch_size']}): "
                f"{p['img_s']:.1f} img/s = **{doc['predict_end_to_end_ratio']:.0%}** of pure inference "
                f"({p['pure_infer_img_s']:.1f} img/s)."]
    if doc.get("predict_peak_rss_mb"):
        out += ["Peak RSS of `zpix predict` (" + doc["predict_rss"]["model"] + "): "
                + ", ".join(f"{int(n):,} objects {mb:.0f} MB" for n, mb in doc["predict_peak_rss_mb"].items()) + "."]
    return out


def kids_table() -> list[str]:
    doc = _load("kids_hybrid.json")
    if doc is None:
        return ["(not run yet)"]
    head = (f"*{doc['created_utc'][:10]}, commit `{doc['code']['commit']}`, KiDS-like mock N = {doc['mock']['n']:,} "
            f"(seed {doc['seed']}), {doc['n_train']:,} train / {doc['n_val']:,} val / {doc['n_test']:,} test, "
            "the same test objects for every row; point estimate = PDF mean.*")
    epochs = ", ".join(f"{k} {m['epochs']}" for k, m in {**doc["methods"], **doc.get("investigation", {})}.items())
    return [head, "", doc["table_markdown"], "", f"Epochs trained: {epochs}.  See `docs/kids_hybrid.md`."]


def _pm(m: dict[str, Any], key: str, scale: float = 1.0, fmt: str = ".5f") -> str:
    std = m.get(f"{key}_std")
    text = format(scale * m[key], fmt)
    return text + (f" ± {format(scale * std, fmt.lstrip('+'))}" if std is not None and std == std else "")


def multimodal_table() -> list[str]:
    doc = _load("multimodal.json")
    if doc is None:
        return ["(not run yet)"]
    d, c = doc["data"], doc["comparison"]
    out = [f"*{doc['date_utc'][:10]}, commit `{doc['code']['commit'][:7]}`, subset of the SDSS-like mock: "
           f"{d['n_train']:,} train / {d['n_val']:,} val / {d['n_test']:,} test, central {d['stamp']}×{d['stamp']} "
           f"pixels, {doc['budget']['epochs']} epochs (cosine), the same split for every run; mean ± std over "
           "seeds.*", "",
           "| method | σ_MAD | η (%) | bias | max tomo bias | seeds |", "|---|---|---|---|---|---|"]
    for m in doc["methods"].values():
        mean = {k.removesuffix("_mean"): v for k, v in m.items() if k.endswith("_mean")}
        std = {k.removesuffix("_std") + "_std": v for k, v in m.items() if k.endswith("_std")}
        m2 = {**mean, **std}
        out.append(f"| {m['model']} | {_pm(m2, 'sigma_mad')} | {_pm(m2, 'eta', 100, '.2f')} "
                   f"| {_pm(m2, 'bias', 1, '+.5f')} | {_pm(m2, 'max_tomo_bias')} | {m['n_seeds']} |")
    out += ["", f"σ_MAD gain of the multimodal network: {100 * c['sigma_mad_gain_of_multimodal']:.1f}% "
            f"(Welch t-test p = {c['welch_p']:.2f}: {'more' if c['exceeds_seed_noise'] else 'not more'} than seed "
            "noise); the paper reports 1.7% on SDSS with full networks.", "",
            f"Modality dropout (p = {doc['modality_dropout']['modality_dropout']:g}, seed "
            f"{doc['modality_dropout']['seed']}): Δσ_MAD when one modality is switched off at test time, 16-84% "
            "paired bootstrap; `docs/figures/multimodal_dropout.png`.", "",
            "| modality | Δσ_MAD off (dropout-trained) | Δσ_MAD off (no dropout) | σ_MAD alone (dropout-trained) |",
            "|---|---|---|---|"]
    drop, plain = doc["modality_dropout"], doc["modality_switch_without_dropout"]
    for name in drop["modalities"]:
        a, b = drop["off"][name], plain["off"][name]
        out.append(f"| {name} | {a['delta_sigma_mad']:+.5f} [{a['delta_sigma_mad_16_84'][0]:+.5f}, "
                   f"{a['delta_sigma_mad_16_84'][1]:+.5f}] | {b['delta_sigma_mad']:+.5f} | "
                   f"{drop['alone'][name]['sigma_mad']:.5f} |")
    out.append(f"| (all on) | σ_MAD {drop['all_on']['sigma_mad']:.5f} | σ_MAD {plain['all_on']['sigma_mad']:.5f} | |")
    return out


def domain_table() -> list[str]:
    doc = _load("domain_adaptation.json")
    if doc is None:
        return ["(not run yet)"]
    b, v, f = doc["budget"], doc["verdict"], doc["fields"]
    out = [f"*{doc['date_utc'][:10]}, commit `{doc['code']['commit'][:7]}`, {f['kind']}; "
           f"{f['source']['n_train']:,} training objects, {b['epochs']} epochs, {f['stamp']}×{f['stamp']} pixels, "
           f"mean ± std over seeds {b['seeds']}.*", "",
           "| method | target σ_MAD | target bias | target η (%) | target max tomo bias | source σ_MAD "
           "| source max tomo bias |", "|---|---|---|---|---|---|---|"]
    for name, m in doc["methods"].items():
        out.append(f"| {name} | {_pm(m, 'sigma_mad')} | {_pm(m, 'bias', 1, '+.5f')} | {_pm(m, 'eta', 100, '.2f')} "
                   f"| {_pm(m, 'max_tomo_bias')} | {_pm(m['source'], 'sigma_mad')} "
                   f"| {_pm(m['source'], 'max_tomo_bias')} |")
    out += ["", f"Share of the no_da → oracle gap closed by `da`: σ_MAD {v['gap_closed_sigma_mad']:.2f}, max tomo "
            f"bias {v['gap_closed_max_tomo_bias']:.2f} (`da_no_guided`: {v['gap_closed_sigma_mad_no_guided']:.2f}, "
            f"{v['gap_closed_max_tomo_bias_no_guided']:.2f}); source σ_MAD change "
            f"{100 * v['source_sigma_mad_change']:+.1f}%. See `docs/domain_adaptation.md`."]
    return out


def bias_table() -> list[str]:
    doc = _load("bias_correction.json")
    if doc is None:
        return ["(not run yet)"]
    out = [f"*{doc['date_utc'][:10]}, commit `{doc['commit'][:7]}`; test objects never used for any fit or "
           "choice; N_th and the edge-shift width chosen on validation rows.*", "",
           "| case | stage | σ_MAD | spec-z trend amplitude | N(z) KS | max \\|Δ⟨z⟩\\| (5 bins) |",
           "|---|---|---|---|---|---|"]
    stages = (("before", "before"), ("debiased", "debiased (steps 1-3)"),
              ("after", "debiased + photo-z calibration"), ("calibrated_only", "photo-z calibration alone"))
    for case, r in doc["runs"].items():
        f = r["fitted"]
        label = (f"{case} ({r['n_train']:,} train, N_th {f['n_th']}, edge scale {f['edge_scale']})")
        for key, name in stages:
            m = r[key]
            out.append(f"| {label if key == 'before' else ''} | {name} | {m['sigma_mad']:.5f} | "
                       f"{m['spec_z_trend_amplitude']:.4f} | {m['nz_ks']:.4f} | {m['max_tomo_bias']:.4f} |")
    out += ["", "See `docs/bias_correction.md` (ablations, σ per magnitude bin, targets)."]
    return out


def render() -> str:
    parts = ["### Real catalogue (`real_catalog.py` → `results/real_catalog.json`)", "", *real_table(), "",
             "### Images vs magnitudes on a mock (`mock_images.py` → `results/mock_images.json`)", "",
             *mock_table(), "",
             "### KiDS bright: magnitudes vs images vs both (`kids_hybrid.py` → `results/kids_hybrid.json`)", "",
             *kids_table(), "",
             "### Multimodal network and modality dropout (`multimodal.py` → `results/multimodal.json`)", "",
             *multimodal_table(), "",
             "### Domain adaptation between two fields (`domain_adaptation.py` → `results/domain_adaptation.json`)",
             "", *domain_table(), "",
             "### Bias correction, Lin et al. (`bias_correction.py` → `results/bias_correction.json`)", "",
             *bias_table(), "",
             "### Speed, CPU (`speed.py` → `results/speed.json`)", "", *speed_table("speed.json")]
    if (RESULTS / "speed_gpu.json").is_file():
        parts += ["", "### Speed, GPU (`speed.py --device cuda` → `results/speed_gpu.json`)", "",
                  *speed_table("speed_gpu.json")]
    return "\n".join(parts)


@click.command()
@click.option("--print", "print_only", is_flag=True, help="Print the tables instead of updating the README.")
def main(print_only: bool) -> None:
    """Update the results block of benchmarks/README.md from results/*.json."""
    text = render()
    if print_only:
        print(text)
        return
    readme = README.read_text()
    if START not in readme or END not in readme:
        raise click.ClickException(f"{README} has no {START} ... {END} block")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    print(f"updated {README}")


if __name__ == "__main__":
    main()
