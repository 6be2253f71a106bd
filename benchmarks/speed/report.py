"""The report: one row per (size, optimizer, implementation) with the derived figures (steps/s,
GFLOP/s, % of BLAS, time vs PyTorch, memory), the Markdown of ``speed.md`` and the console table.
The head (date, command, machine, versions) and the writing come from :mod:`benchmarks.harness`."""

from __future__ import annotations

from benchmarks import harness
from benchmarks.speed.ttt import setup_seconds


def fmt(v, spec="{:.0f}", dash="–"):
    return dash if v is None else spec.format(v)


def build_rows(report: dict) -> list[dict]:
    blas = report["yardsticks"]["numpy_blas"]["best_gflops"]
    jax_res, torch_res = report.get("jax", {}), report.get("torch") or {}
    torch_ms = {}  # (size, optimizer) -> PyTorch's median ms per step / iteration
    for size, t in (torch_res.get("sizes") or {}).items():
        torch_ms[(size, "Adam")] = t["adam"]["median_ms"]
        if "lbfgs" in t:
            torch_ms[(size, "L-BFGS")] = t["lbfgs"]["median_ms"]
    shapes = {size: r["shape"] for size, r in (jax_res.get("sizes") or {}).items()}

    def row(size, optimizer, impl, compile_s, r, flops, note=""):
        ms = r["median_ms"]
        gflops = flops / 1e9 / (ms / 1000) if flops else None
        ref = torch_ms.get((str(size), optimizer))
        mem = r.get("memory") or {}
        h, w = (shapes.get(str(size)) or [int(size), int(size)])[:2]
        return {"size": int(size), "pixels": h * w, "optimizer": optimizer, "implementation": impl,
                "compile_s": compile_s, "median_ms": ms, "mean_ms": r["mean_ms"],
                "min_ms": r["min_ms"], "steps_per_s": round(1000.0 / ms, 4),
                "gflop_per_step": round(flops / 1e9, 2) if flops else None,
                "gflops": round(gflops, 1) if gflops else None,
                "pct_blas": round(100 * gflops / blas, 1) if gflops else None,
                "time_vs_torch": round(ms / ref, 3) if ref else None,
                "peak_rss_mib": mem.get("peak_rss_mib"),
                "above_baseline_mib": mem.get("above_baseline_mib"),
                "foreign_cpu_load": r.get("foreign_cpu_load"), "note": note}

    rows = []
    for size, r in (jax_res.get("sizes") or {}).items():
        # the FLOPs of the math: a direct convolution's, counted from the layer shapes, for every
        # row alike (Winograd layers do fewer multiplications: their rate is an effective one)
        flops = r["analytic_flops"]["total_gflop"] * 1e9
        rows.append(row(size, "Adam", "JAX/XLA (make_step + jit)", r["adam"]["compile_s"], r["adam"], flops))
        trial_flops = None
        if "lbfgs" in r:
            lb = r["lbfgs"]
            trial_flops = flops
            it_flops = flops * lb["evaluations_per_iteration"] + (lb["xla_flops_direction"] or 0.0)
            rows.append(row(size, "L-BFGS", "JAX/XLA (LBFGS: direction + trial)", lb["compile_s"],
                            lb, it_flops,
                            f"{lb['evaluations_per_iteration']} evaluations/iteration; "
                            f"trial {lb['trial_ms']:.0f} ms, direction {lb['direction_ms']:.0f} ms"))
        if (size, "Adam") in torch_ms:
            rows.append(row(size, "Adam", "PyTorch eager (torch_reference)", None,
                            torch_res["sizes"][size]["adam"], flops))
        if (size, "L-BFGS") in torch_ms:
            tl = torch_res["sizes"][size]["lbfgs"]
            per_eval = trial_flops or flops
            rows.append(row(size, "L-BFGS", "PyTorch eager (torch.optim.LBFGS, strong Wolfe)", None,
                            tl, per_eval * tl["evaluations_per_iteration"] if per_eval else None,
                            f"{tl['evaluations_per_iteration']} evaluations/iteration"))
    return rows


def markdown(report: dict) -> str:
    cfg, y, jax_res = report["config"], report["yardsticks"], report.get("jax") or {}
    lines = harness.markdown_header("neuralstyle CPU speed benchmark", report)[:-1] + [
        f"- JAX backend {jax_res.get('backend', '?')} ({', '.join(jax_res.get('devices', [])) or '?'})",
        f"- model: VGG19, weights {report.get('weights', '?')}; TF-tutorial recipe (content "
        "block5_conv2; style block1_conv1..block5_conv1; weights 1e4/1e-2/30; Gram 'hw', content "
        "'mean', TV 'l1'); batch 1, float32",
        f"- images: {report.get('images', '?')}",
        f"- main-run XLA_FLAGS: `{cfg['xla_flags'] or '(none)'}`; recipe overrides of the JAX runs: "
        f"`{' '.join(cfg.get('overrides') or []) or '(none)'}`; steps: {cfg['steps_desc']}",
        "",
        "| size | optimizer | implementation | compile s | ms/step (median) | ms/step (mean) "
        "| steps/s | GFLOP/s | % of BLAS matmul | time vs PyTorch | peak RSS MiB (above baseline) "
        "| other load |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        mem = ("–" if r.get("peak_rss_mib") is None else
               f"{r['peak_rss_mib']:.0f} ({fmt(r.get('above_baseline_mib'), '{:.0f}')})")
        lines.append(
            f"| {r['size']} | {r['optimizer']} | {r['implementation']} | "
            f"{fmt(r['compile_s'], '{:.1f}')} | {r['median_ms']:.0f} | {r['mean_ms']:.0f} | "
            f"{r['steps_per_s']:.3g} | {fmt(r['gflops'], '{:.1f}')} | {fmt(r['pct_blas'], '{:.0f}%')} | "
            f"{fmt(r['time_vs_torch'], '{:.2f}')} | {mem} | {fmt(r['foreign_cpu_load'], '{:.0%}')} |")
    lines += [
        "",
        "ms/step of L-BFGS is per accepted iteration (neuralstyle: one `direction` call plus its "
        "line-search trials; PyTorch: one `torch.optim.LBFGS.step` with its strong-Wolfe search, "
        "plus the clamp). steps/s = 1000 / median ms. GFLOP/s uses the FLOPs of the math, the same for "
        "every row: a direct convolution's, counted from the layer shapes (below), times the "
        "evaluations per iteration for L-BFGS; layers computed by Winograd F(2x2, 3x3) "
        "(`backbone.conv=auto`, the default) do fewer multiplications, so their rate is an "
        "effective one, and XLA's cost analysis of the compiled step (below) counts fewer FLOPs. \"time vs PyTorch\" is this row's median time divided by PyTorch's for the same "
        "optimizer at the same size (below 1 = faster than PyTorch). \"other load\" is the share of "
        "the machine's CPU time used by other processes during the timed steps (a disturbed "
        "measurement if it is more than a few %). Memory: " + report["memory_method"]
        + "; the compile phase's peak is in the JSON (`compile_memory`).",
        "",
        "## Yardsticks and FLOPs",
        "",
        f"- NumPy BLAS ({y['numpy_blas']['library']}) fp32 matmul GFLOP/s: "
        + ", ".join(f"{n}: {g}" for n, g in y["numpy_blas"]["gflops"].items())
        + f" (best {y['numpy_blas']['best_gflops']}, the 100% of the table)",
    ]
    if y.get("jnp_matmul"):
        lines.append("- `jnp.matmul` under jit (XLA CPU) GFLOP/s: "
                     + ", ".join(f"{n}: {g}" for n, g in y["jnp_matmul"].items()))
    if y.get("torch_matmul"):
        lines.append("- `torch.matmul` GFLOP/s: " + ", ".join(f"{n}: {g}" for n, g in y["torch_matmul"].items()))
    for size, f in report.get("flops", {}).items():
        lines.append(f"- {size} px: XLA cost analysis {fmt(f['xla_gflop'], '{:.1f}')} GFLOP/step; "
                     f"analytic {f['analytic']['total_gflop']:.1f} GFLOP "
                     f"(conv forward {f['analytic']['conv_forward_gflop']:.1f} x 2 + Gram "
                     f"{f['analytic']['gram_gflop']:.1f}; {f['analytic']['formula']})")
    lines += markdown_ttt(report.get("time_to_target"))
    lines += markdown_scaling(report.get("scaling") or [])
    checks = report.get("checks", {})
    if checks:
        lines += ["", "## PyTorch reference check", ""]
        for size, c in checks.items():
            lines.append(f"- {size} px: objective at the content image: JAX {c['jax_objective']:.7g}, "
                         f"PyTorch {c['torch_objective']:.7g}, relative difference "
                         f"{c['relative_difference']:.1e} ({'OK' if c['ok'] else 'MISMATCH'}); "
                         f"loss after {c['trajectory_steps']} Adam steps: JAX {c['jax_last_loss']:.6g}, "
                         f"PyTorch {c['torch_last_loss']:.6g}")
    lines += harness.warnings_section(report)
    return "\n".join(lines) + "\n"


IMPLEMENTATIONS = (("jax", "neuralstyle (JAX/XLA)"), ("torch", "PyTorch eager"))


def ttt_records(ttt: dict, key=None):
    """``(optimizer name, implementation name, record, ratios vs PyTorch)`` of every
    time-to-target run; ``key="quality"``: its time-to-quality record instead."""
    for opt, name in (("adam", "Adam"), ("lbfgs", "L-BFGS")):
        for impl, impl_name in IMPLEMENTATIONS:
            r = (ttt.get(impl) or {}).get(opt)
            if r is not None and key:
                r = r.get(key)
            if r is not None:
                ratios = ttt.get("quality_ratios" if key else "ratios") or {}
                yield name, impl_name, r, (ratios.get(opt, {}) if impl == "jax" else {})


def markdown_ttt(ttt) -> list[str]:
    if not ttt or "jax" not in ttt:
        return []
    lines = ["", f"## Time to target (loss < {ttt['target']:g})", "",
             f"{ttt['pair']} at {ttt['size']} px ({ttt.get('images', '')}), weights "
             f"{ttt.get('weights', '?')}, initialized with the content image; the target is fixed per "
             "size in `benchmarks/speed/ttt.py` (TTT_TARGETS), not chosen per run. Seconds run from "
             "the first step until the implementation has evaluated an iterate below the target "
             "(setup excluded, and included in the next column: computing the targets, in JAX with "
             "their program's compile, and compiling the step); steps = updates applied to that "
             f"iterate; at most {ttt['max_steps']['adam']} Adam steps / {ttt['max_steps']['lbfgs']} "
             "L-BFGS iterations.", "",
             "| optimizer | implementation | steps | evaluations | seconds | setup s | seconds incl. setup "
             "| final loss | vs PyTorch (s) | vs PyTorch (s incl. setup) | other load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, impl_name, r, ratio in ttt_records(ttt):
        setup = setup_seconds(r.get("compile_s"), r.get("setup_s"))
        lines.append(
            f"| {name} | {impl_name} | {fmt(r['steps'])} | {fmt(r['evaluations'])} | "
            f"{fmt(r['seconds'], '{:.1f}')} | {setup:.1f} | {fmt(r['seconds_with_setup'], '{:.1f}')} | "
            f"{r['final_loss']:.4g} | {fmt(ratio.get('seconds'), '{:.2f}')} | "
            f"{fmt(ratio.get('seconds_with_setup'), '{:.2f}')} | "
            f"{fmt(r['foreign_cpu_load'], '{:.0%}')} |")
    return lines + markdown_quality(ttt)


def markdown_quality(ttt: dict) -> list[str]:
    """The time-to-quality table (``--ttt-quality``)."""
    q = ttt.get("quality_target")
    if not q or not any(r for *_, r, _ in ttt_records(ttt, "quality")):
        return []
    c = ttt.get("quality_at_content") or {}
    lines = ["", f"## Time to quality (SWD <= {q['swd']:g} with LPIPS <= {q['lpips']:g})", "",
             "The same runs, which here take all their updates. Quality = the quality benchmark's "
             "distances (`neuralstyle.metrics`, torchvision VGG16, weights "
             f"{ttt.get('metric_weights', '?')}): style distance SWD (relative sliced Wasserstein "
             "distance to the style image's features, 5 LPIPS layers) and content distance LPIPS "
             "(to the content photo); lower is closer for both. The target (fixed per size in "
             f"`benchmarks/speed/ttt.py`, QUALITY_TARGETS, calibrated at {q['calibrated_at']} px) is "
             f"met by the first snapshot with SWD <= {q['swd']:g} while LPIPS <= {q['lpips']:g}. "
             f"The content photo itself: SWD {fmt(c.get('swd'), '{:.3f}')}, Gram "
             f"{fmt(c.get('gram'), '{:.3f}')}, LPIPS 0. Snapshots are taken every k updates (column "
             "k), so a time is an upper bound with k updates' resolution; it is the run's clock when "
             "that iterate's loss was known (as above), the snapshot copies (PyTorch only; JAX "
             "keeps a reference) taken off. They are graded after the runs, in another process "
             f"({fmt(ttt.get('grading_s'), '{:.0f}')} s). Other load: as in the table above (the "
             "same runs).", "",
             "| optimizer | implementation | k | steps | seconds | seconds incl. setup | SWD / LPIPS / "
             "Gram there | SWD / LPIPS at the end | vs PyTorch (s) | vs PyTorch (s incl. setup) |",
             "|---|---|---:|---:|---:|---:|---|---|---:|---:|"]
    for name, impl_name, r, ratio in ttt_records(ttt, "quality"):
        k = r["snapshot_steps"].index(r["steps"]) if r["reached"] else None
        there = "–" if k is None else f"{r['swd'][k]:.3f} / {r['lpips'][k]:.3f} / {r['gram'][k]:.3f}"
        lines.append(
            f"| {name} | {impl_name} | {r['snapshot_every']} | {fmt(r['steps'])} | "
            f"{fmt(r['seconds'], '{:.1f}')} | {fmt(r['seconds_with_setup'], '{:.1f}')} | {there} | "
            f"{r['swd'][-1]:.3f} / {r['lpips'][-1]:.3f} (after {r['snapshot_steps'][-1]}) | "
            f"{fmt(ratio.get('seconds'), '{:.2f}')} | {fmt(ratio.get('seconds_with_setup'), '{:.2f}')} |")
    return lines


def markdown_scaling(entries: list[dict]) -> list[str]:
    entries = [e for e in entries if "time_fit" in e]
    if not entries:
        return []
    lines = ["", "## Cost against image size", "",
             "Median time per step (ms) and peak RSS above the phase's baseline (MiB) per pixel "
             "count; least-squares fit ms = a + b * pixels with the residual of each size (measured "
             "minus fit, relative to measured), and the exponent p of a power-law fit ms ~ pixels^p "
             "(p = 1: linear).", "",
             "| optimizer | implementation | pixels | ms/step | ms per megapixel | fit a (ms) | "
             "fit b (ms/megapixel) | relative residuals | p | peak MiB above baseline | "
             "memory fit b (MiB/megapixel) |",
             "|---|---|---|---|---|---:|---:|---|---:|---|---:|"]
    for e in entries:
        t, m = e["time_fit"], e.get("memory_fit") or {}
        lines.append(
            f"| {e['optimizer']} | {e['implementation']} | {' / '.join(str(p) for p in e['pixels'])} | "
            f"{' / '.join(f'{v:.0f}' for v in e['ms_per_step'])} | "
            f"{' / '.join(f'{v:.0f}' for v in e['ms_per_megapixel'])} | {t['a_ms']:.0f} | "
            f"{t['b_ms_per_megapixel']:.0f} | "
            f"{' / '.join(f'{100 * v:+.1f}%' for v in t['relative_residuals'])} | "
            f"{fmt(t['power_law_exponent'], '{:.2f}')} | "
            f"{' / '.join(fmt(v) for v in e['above_baseline_mib'])} | "
            f"{fmt(m.get('b_mib_per_megapixel'), '{:.0f}')} |")
    verdict = {True: "yes", False: "no", None: "not testable with 2 sizes"}
    lines += ["", "Linear in pixels (every residual of the 3+ sizes under 10%): " + "; ".join(
        f"{e['optimizer']} {e['implementation']}: {verdict[e['time_linear']]}" for e in entries) + "."]
    return lines


def print_summary(report: dict) -> None:
    """The console table, the time-to-target lines and the warnings."""
    head = ("size", "optimizer", "implementation", "compile s", "ms/step", "mean ms",
            "steps/s", "GFLOP/s", "%BLAS", "vs torch", "peak MiB")
    rows = [(str(r["size"]), r["optimizer"], r["implementation"], fmt(r["compile_s"], "{:.1f}"),
             f"{r['median_ms']:.0f}", f"{r['mean_ms']:.0f}", f"{r['steps_per_s']:.3g}",
             fmt(r["gflops"], "{:.1f}"), fmt(r["pct_blas"], "{:.0f}%"),
             fmt(r["time_vs_torch"], "{:.2f}"), fmt(r.get("peak_rss_mib"))) for r in report["rows"]]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    print()
    for line in [head] + rows:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)))
    ttt = report.get("time_to_target") or {}
    q = ttt.get("quality_target") or {}
    for key, what in ((None, f"loss < {ttt.get('target', 0):g}"),
                      ("quality", f"SWD <= {q.get('swd', 0):g} with LPIPS <= {q.get('lpips', 0):g}")):
        for name, impl_name, r, ratio in ttt_records(ttt, key):
            print(f"time to {what} at {ttt['size']} px, {impl_name} {name}: "
                  f"{fmt(r['steps'])} updates, {fmt(r['seconds'], '{:.1f}')} s "
                  f"({fmt(r['seconds_with_setup'], '{:.1f}')} s with setup)"
                  + (f", {ratio['seconds']:.2f} x PyTorch's" if ratio.get("seconds") else ""))
    for w in report["warnings"]:
        print("WARNING:", w)
