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
    if "baseline_infer_img_s" not in doc:
        return [_head(doc), "", "*Results in an older layout; rerun speed.py.*"]
    d, m = doc["defaults"], doc["matmul"]
    hw = doc.get("hardware", {})
    f = doc["forward_gflops_per_image"]
    base_i = max(doc["baseline_infer_img_s"].values())
    base_t = max(doc.get("baseline_train_img_s", {0: float("nan")}).values())
    out = [_head(doc), "",
           f"Device {doc['device']}, {doc.get('torch_threads')} threads; dense matmul roof fp32 "
           f"**{m['float32']['gflops']:.0f}**, bf16 **{m['bfloat16']['gflops']:.0f} GFLOP/s**; {doc['model']} "
           f"{f:.3f} GFLOP/image (forward).  Defaults chosen on this machine (zpix.hardware): inference "
           f"precision **{d['inference_precision']}** (bf16 flags {hw.get('bf16_cpu_flags')}, measured bf16 "
           f"conv speed-up {hw.get('bf16_speedup_cpu')}x), predict batch {d['predict_batch']} run in slices of "
           f"{d['inference_chunk']}, training {d['training_precision']} at batch {d['train_batch']}, "
           f"{d['loader_workers']} loader worker(s).", "",
           "| path | images/s | x baseline | of roof |", "|---|---|---|---|"]

    def row(label: str, rate: float | None, base: float, flops: float, roof: float) -> None:
        if rate is not None:
            out.append(f"| {label} | {rate:.1f} | {rate / base:.2f} | {rate * flops / roof:.0%} |")

    r32, r16 = m["float32"]["gflops"], m["bfloat16"]["gflops"]
    for b, r in doc["fp32_eager_infer_img_s_by_batch"].items():
        row(f"inference fp32 eager, batch {b} (baseline at 32/64)", r, base_i, f, r32)
    for b, r in doc.get("bf16_body_infer_img_s", {}).items():
        row(f"inference bf16 body, batch {b}", r, base_i, f, r16)
    for b, r in doc.get("autocast_infer_img_s", {}).items():
        row(f"inference plain bf16 autocast, batch {b}", r, base_i, f, r16)
    di = doc["default_infer"]
    row(f"**inference default** ({di['precision']}, {di['read_batch']} in slices of {di['chunk']})", di["img_s"],
        base_i, f, r16 if di["precision"] == "bf16" else r32)
    comp = doc.get("fp32_compiled", {})
    if "img_s" in comp:
        row(f"inference fp32 compiled (inductor, frozen; compile {comp['compile_seconds']:.0f} s)", comp["img_s"],
            base_i, f, r32)
    for b, r in doc.get("fp32_eager_train_img_s_by_batch", doc.get("baseline_train_img_s", {})).items():
        row(f"training fp32 eager, batch {b} (baseline at 32/64)", r, base_t, 3 * f, r32)
    dt = doc.get("default_train")
    if dt:
        row(f"**training default** ({dt['precision']}, batch {dt['batch']} in slices of {dt.get('chunk')})",
            dt["img_s"], base_t, 3 * f,
            r16 if dt["precision"].startswith("bf16") else r32)
    for b, r in doc.get("bf16_mixed_train_img_s", {}).items():
        row(f"training bf16-mixed (ends fp32), batch {b}", r, base_t, 3 * f, r16)
    targets = {"best_infer_ratio": 2.0, "best_train_ratio": 1.6, "fp32_infer_ratio": 1.15,
               "predict_end_to_end_ratio": 0.9, "train_end_to_end_ratio": 0.9}
    out += ["", "Ratios (target): " + "; ".join(f"{k} **{doc[k]:.2f}** ({t})" for k, t in targets.items()
                                                if k in doc) + "."]
    if "predict" in doc:
        p = doc["predict"]
        out.append(f"`zpix predict` end to end on {p['n']:,} objects: {p['img_s']:.1f} img/s in {p['seconds']:.0f} s "
                   f"(pure default inference {p['pure_infer_img_s']:.1f}).")
    if "train" in doc:
        t = doc["train"]
        out.append(f"`zpix train` (pasquet2019 preset, batch {t['batch_size']}) between "
                   + " and ".join(f"{r['steps']} steps" for r in t["runs"].values())
                   + f": {t['img_s']:.1f} img/s (pure step {t['pure_step_img_s']:.1f}).")
    g = doc.get("bf16_vs_fp32")
    if g:
        out += ["", f"Accuracy guard ({g['n_test']:,} test objects of a trained pasquet2019-small, `{g['run']}`): "
                f"fp32 σ_MAD {g['fp32']['sigma_mad']:.5f}, bias {g['fp32']['bias']:+.5f}, "
                f"CRPS {g['fp32']['crps']:.5f}, "
                f"PIT KS {g['fp32']['pit_ks']:.4f}; guard {'**passed**' if g['passed'] else '**failed**'} "
                "(|Δσ_MAD| ≤ 1 %, |Δbias| ≤ 1e-4, |ΔCRPS| ≤ 1 %).", "",
                "| variant | Δσ_MAD | Δbias | ΔCRPS | ΔPIT KS | max abs(Δz_mean) | median abs(Δz_mean) |",
                "|---|---|---|---|---|---|---|"]
        for k, v in g["variants"].items():
            out.append(f"| {k} | {v['sigma_mad_rel_change']:+.2%} | {v['bias_change']:+.1e} | "
                       f"{v['crps_rel_change']:+.2%} | {v['pit_ks_change']:+.4f} | {v['max_abs_dz_mean']:.1e} | "
                       f"{v['median_abs_dz_mean']:.1e} |")
    st = doc.get("bf16_training")
    if st:
        f32, b16 = st["runs"]["32-true"], st["runs"]["bf16-mixed"]
        out += ["", f"Training seed study ({st['model']}, {st['n_train']:,} train / {st['n_test']:,} test objects, "
                f"{st['epochs']} epochs, batch {st['batch_size']}, {len(f32['runs'])} seeds each): σ_MAD fp32 "
                f"{f32['sigma_mad_mean']:.5f} ± {f32['sigma_mad_std']:.5f}, bf16-mixed {b16['sigma_mad_mean']:.5f} ± "
                f"{b16['sigma_mad_std']:.5f} (difference {st['mean_difference']:+.5f}; "
                f"{'within' if st['passed'] else 'outside'} the fp32 spread); seconds per run "
                f"{f32['seconds_mean']:.0f} vs {b16['seconds_mean']:.0f}."]
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


def domain_table(detail: bool = False) -> list[str]:
    """The domain-adaptation table; ``detail`` adds the fields' seeing/depth and every method's gap share."""
    doc = _load("domain_adaptation.json")
    if doc is None:
        return ["(not run yet)"]
    b, v, f = doc["budget"], doc["verdict"], doc["fields"]
    where = f["kind"]
    if f["source"].get("fields"):
        where += f": source fields {', '.join(f['source']['fields'])}, target fields {', '.join(f['target']['fields'])}"
    out = [f"*{doc['date_utc'][:10]}, commit `{doc['code']['commit'][:7]}`, {where}; "
           f"{f['source']['n_train']:,} training objects, {b['epochs']} epochs, {f['stamp']}×{f['stamp']} pixels, "
           f"DA weight {b['da_weight']:g}, mean ± std over seeds {b['seeds']}.*", "",
           "| method | target σ_MAD | target bias | target η (%) | target max tomo bias | source σ_MAD "
           "| source max tomo bias | seeds |", "|---|---|---|---|---|---|---|---|"]
    for name, m in doc["methods"].items():
        out.append(f"| {name} | {_pm(m, 'sigma_mad')} | {_pm(m, 'bias', 1, '+.5f')} | {_pm(m, 'eta', 100, '.2f')} "
                   f"| {_pm(m, 'max_tomo_bias')} | {_pm(m['source'], 'sigma_mad')} "
                   f"| {_pm(m['source'], 'max_tomo_bias')} | {m['n_seeds']} |")
    out += ["", f"Share of the no_da → oracle gap closed by `da`: σ_MAD {v['gap_closed_sigma_mad']:.2f}, max tomo "
            f"bias {v['gap_closed_max_tomo_bias']:.2f} (`da_no_guided`: {v['gap_closed_sigma_mad_no_guided']:.2f}, "
            f"{v['gap_closed_max_tomo_bias_no_guided']:.2f}); source σ_MAD change "
            f"{100 * v['source_sigma_mad_change']:+.1f}%"
            + (f"; target met: {'yes' if v['target_met'] else 'no'}" if "target_met" in v else "")
            + ("." if detail else ". See `docs/domain_adaptation.md`.")]
    if "gap_sigma_mad_se" in v:
        out += ["", f"The gap itself (no_da − oracle on the target, ± standard error of the difference of the seed "
                f"means): σ_MAD {v['gap_sigma_mad']:+.5f} ± {v['gap_sigma_mad_se']:.5f}, max tomo bias "
                f"{v['gap_max_tomo_bias']:+.5f} ± {v['gap_max_tomo_bias_se']:.5f}."]
    if detail and "gap_closed" in v:
        out += ["", "| method | gap closed, σ_MAD | gap closed, max tomo bias | source σ_MAD change |",
                "|---|---|---|---|"]
        for name, g in v["gap_closed"].items():
            out.append(f"| {name} | {g['sigma_mad']:+.2f} | {g['max_tomo_bias']:+.2f} | "
                       f"{100 * g['source_sigma_mad_change']:+.1f}% |")
    if detail and f.get("conditions"):
        role = {x: "source" for x in f["source"]["fields"]} | {x: "target" for x in f["target"]["fields"]}
        out += ["", f"Fields ({f['ranking']}; depth: 5σ point source, AB):", "",
                "| field | role | objects in store | FWHM g/r/i (\") | mean FWHM gri (\") | depth g/r/i | E(B−V) |",
                "|---|---|---|---|---|---|---|"]
        for name, c in sorted(f["conditions"].items(), key=lambda kv: kv[1]["fwhm_gri"]):
            fw, dp = c["fwhm_arcsec"], c["depth_5sigma"]
            out.append(f"| {name} | {role.get(name, 'unused')} | {c['n_objects']:,} | "
                       f"{fw['g']:.2f} / {fw['r']:.2f} / {fw['i']:.2f} | {c['fwhm_gri']:.2f} | "
                       f"{dp['g']:.2f} / {dp['r']:.2f} / {dp['i']:.2f} | {c['ebv']:.3f} |")
    return out


def _seed_summary_rows(sm: dict, stages) -> list[str]:
    """Mean ± std over seeds of each stage's headline numbers, then how many seeds met each target."""
    out = ["| stage | σ_MAD | spec-z trend amplitude | N(z) KS | max \\|Δ⟨z⟩\\| (5 bins) | max \\|Δ⟨z⟩\\| per seed |",
           "|---|---|---|---|---|---|"]
    for key, name in stages:
        m = sm[key]
        out.append(f"| {name} | " + " | ".join(f"{m[k]['mean']:.{d}f} ± {m[k]['std']:.{d}f}" for k, d in (
            ("sigma_mad", 5), ("spec_z_trend_amplitude", 4), ("nz_ks", 4), ("max_tomo_bias", 4)))
            + " | " + " / ".join(f"{v:.4f}" for v in m["max_tomo_bias"]["values"]) + " |")
    return out + ["", "Targets met, seeds out of " + f"{sm['n_seeds']}: " + "; ".join(
        f"{t} {k}" for t, k in sm["targets_met"].items()) + "."]


def bias_crossfit_table() -> list[str]:
    doc = _load("bias_crossfit.json")
    if doc is None:
        return ["(not run yet)"]
    r = doc["runs"].get("sdss_mgs_crossfit")
    if r is None:
        return [f"(skipped: {doc.get('skipped')})"]
    out = [f"*{doc['date_utc'][:10]}, commit `{doc['commit'][:7]}`; SDSS MGS, magnitude network as a "
           f"{r['k_folds']}-fold ensemble over the {r['n_train_file']:,} training-file galaxies; N_th, the edge shift "
           "and the photo-z calibration fitted on their out-of-fold PDFs (σ_MAD tolerance "
           f"{doc['sigma_tolerance']}), scored on the {r['n_test']:,} test-file galaxies.*", "",
           "| seed | chosen | before: σ_MAD / trend / max \\|Δ⟨z⟩\\| | debiased | debiased + photo-z calibration "
           "| P(< 0.002), perfect calibration |", "|---|---|---|---|---|---|"]
    for seed, e in r["seeds"].items():
        c = e["chosen"]
        cells = [f"{e[st]['sigma_mad']:.5f} / {e[st]['spec_z_trend_amplitude']:.4f} / {e[st]['max_tomo_bias']:.4f}"
                 for st in ("before", "debiased", "after")]
        noise = e.get("after_max_tomo_bias_noise") or {}
        rng = ", range" if c.get("edge_density") == "range" else ""
        out.append(f"| {seed} | N_th {c['n_th']}, edge {c['edge_scale']}{rng} | " + " | ".join(cells)
                   + f" | {noise.get('perfect_calibration_p_below', float('nan')):.2f} |")
    if "seed_summary" in r:
        out += ["", *_seed_summary_rows(r["seed_summary"], (("before", "before"), ("debiased", "debiased (steps 1-3)"),
                                                            ("after", "debiased + photo-z calibration")))]
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
              ("after", "debiased + photo-z calibration"),
              ("after_fixed_50_per_bin", "… calibration with 50 per bin (variant, not the chosen rule)"),
              ("calibrated_only", "photo-z calibration alone"))
    for case, r in doc["runs"].items():
        f = r["fitted"]
        density = f.get("chosen", {}).get("edge_density", "balanced")
        label = (f"{case} ({r['n_train']:,} train, N_th {f['n_th']}, edge scale {f['edge_scale']}"
                 f"{', range-edge density' if density == 'range' else ''})")
        for key, name in stages:
            if key not in r:
                continue
            m = r[key]
            err = f" ± {m['max_tomo_bias_noise']['bootstrap_err']:.4f}" if "max_tomo_bias_noise" in m else ""
            out.append(f"| {label if key == 'before' else ''} | {name} | {m['sigma_mad']:.5f} | "
                       f"{m['spec_z_trend_amplitude']:.4f} | {m['nz_ks']:.4f} | {m['max_tomo_bias']:.4f}{err} |")
    noise = []
    for case, r in doc["runs"].items():
        nz = r["after"].get("max_tomo_bias_noise")
        if nz and "perfect_calibration_expected" in nz:
            cal = r["fitted"]["photoz_calibration"]["params"]
            noise.append(f"| {case} | {len(cal['knots'])} ({cal['min_per_bin']}) | {nz['noise_only_expected']:.4f} | "
                         f"{nz['perfect_calibration_expected']:.4f} ({r['n_val']:,} rows) | "
                         f"{nz['perfect_calibration_p_below']:.2f} |")
    if noise:
        out += ["", "± on max |Δ⟨z⟩|: bootstrap error over the test objects.  Noise level of max |Δ⟨z⟩| after the "
                "photo-z calibration (expected value if every bin were unbiased; P = chance of < 0.002):", "",
                "| case | photo-z bins (objects per bin) | from the test size alone | perfect calibration on the "
                "validation rows | P(< 0.002), perfect calibration |", "|---|---|---|---|---|", *noise]
    for case, r in doc["runs"].items():
        sm = r.get("seed_summary")
        if not sm:
            continue
        out += ["", f"{case}, {sm['n_seeds']} seeds ({', '.join(sm['seeds'])}: split, network, debiasing and "
                "calibration all redone; mean ± std):", "", *_seed_summary_rows(sm, stages[:3])]
    checks = [(c, r["photoz_rule_check"]) for c, r in doc["runs"].items() if "photoz_rule_check" in r]
    if checks:
        out += ["", "Bin-size rules of the photo-z calibration on synthetic samples drawn from each case's validation "
                "rows (no test row; `photoz_rule_check`): calibration error per tomographic bin, and max |Δ⟨z⟩| "
                "with the test sample's noise added:", "",
                "| case | rule | RMS calibration error per bin | E[max \\|Δ⟨z⟩\\|] | P(< 0.002) | bin sizes chosen |",
                "|---|---|---|---|---|---|"]
        for case, c in checks:
            for i, (rule, v) in enumerate(c["rules"].items()):
                chosen = ", ".join(f"{k}: {n}" for k, n in v["chosen"].items())
                head = f"{case} ({c['reps']} draws)" if i == 0 else ""
                out.append(f"| {head} "
                           f"| {rule} | {v['rms_calibration_err_per_bin']:.5f} | {v['expected_max_tomo_bias']:.4f} "
                           f"| {v['p_below_0.002']:.2f} | {chosen} |")
    stab = [(c, r["fitted"]["photoz_rule_stability"]) for c, r in doc["runs"].items()
            if "photoz_rule_stability" in r["fitted"]]
    if stab:
        out += ["", "Objects per photo-z bin picked on each case's own validation rows for CV partition seeds 0-9:", ""]
        out += [f"* {c}: default rule {v['default_rule']}; old rule (one 5-fold CV) {v['old_rule_5fold_rms']}"
                for c, v in stab]
    out += ["", "See `docs/bias_correction.md` (ablations, σ per magnitude bin, targets)."]
    return out


def calibration_table(name: str = "calibration.json") -> list[str]:
    doc = _load(name)
    if doc is None:
        return ["(not run yet)"]
    out = [f"*{doc['date_utc'][:10]}, commit `{doc['commit'][:7]}`; fitted on validation rows, scored on test rows "
           f"never used for fitting; chain `{'+'.join(doc['default_chain'])}`.*", "",
           "| run | fit / test | chain | PIT KS | coverage68 | CRPS | σ_MAD |", "|---|---|---|---|---|---|---|"]
    for case, r in doc["runs"].items():
        b, a = r["before"], r["after"]
        v = r["variants"]["auto"]
        chain = "+".join(v["steps"] + (["keep-mean"] if v.get("keep_mean") else [])) or "none"
        out.append(f"| {case} | {r['n_fit']:,} / {r['n_test']:,} | {chain} "
                   f"| {b['pit_ks']:.4f} → {a['pit_ks']:.4f} | {b['coverage68']:.3f} → {a['coverage68']:.3f} "
                   f"| {b['crps']:.5f} → {a['crps']:.5f} | {b['sigma_mad']:.5f} → {a['sigma_mad']:.5f} |")
    out += ["", "See `docs/calibration.md` (every chain, quality-score AUC and cuts, PIT histograms)."]
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
             "### Bias correction with cross-fitting, SDSS MGS (`bias_crossfit.py` → `results/bias_crossfit.json`)",
             "", *bias_crossfit_table(), "",
             "### Calibration (`calibration.py` → `results/calibration.json`)", "", *calibration_table(), ""]
    parts += ["### Speed, CPU (`speed.py` → `results/speed.json`)", "", *speed_table("speed.json")]
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
