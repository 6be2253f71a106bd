"""Batched sweeps against sequential runs: ``python -m benchmarks.batched``.

For each size (default 128 and 256 px) and each N (default 1, 2, 4, 8), N Adam runs of the
TF-tutorial recipe (VGG19 ImageNet, astronaut + great_wave, content initialization,
``optax.adam(0.02, b1=0.99, eps=0.1)``) that differ in ``style_weight`` are run

* batched: one :func:`neuralstyle.stylize_batched` call (one compiled, vmapped step for all N);
* sequentially: N :func:`neuralstyle.stylize` calls, one per setting, as a user would run them
  (each call compiles its own step: the weights are Python floats in the trace).  The N
  sequential runs are the first N of one series of max(N) runs (every run is independent).

Reported per size and N: compile seconds, steady-state milliseconds per step (warm-up steps
excluded; a batched step advances N images), image-steps per second, the end-to-end wall time of
the whole sweep (compile + all steps), the ratio batched / sequential of both throughputs, the
peak RSS of each phase, the largest relative difference of each run's loss at the start image
between the batched and sequential runs (they compute the same objective: float32 rounding), and
the largest pixel difference after the steps (informative: Adam's first updates have the learning
rate's size whatever the gradient's, so rounding can move a pixel by a whole step).  Results:
``benchmarks/results/batched.json`` and ``batched.md`` (or ``--out DIR``).

    python -m benchmarks.batched                       # about 3 minutes on 2 quiet cores
    python -m benchmarks.batched --sizes 32 --ns 1 2 --warmup 1 --steps 1 --weights random
"""

from __future__ import annotations

import sys
import time

from benchmarks import harness
from benchmarks.harness import PeakMemory, cpu_snapshot, foreign_load, log, wait_until_quiet
from benchmarks.speed import CONTENT_IMAGE, STYLE_IMAGE

MEMORY_METHOD_HERE = ("peak resident set size (VmHWM) of the benchmark process during the batched "
                      "call, reset through /proc/self/clear_refs before it (so it includes what the "
                      "process already held: JAX, Keras, the VGG19 weights and earlier buffers)")
STYLE_WEIGHTS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0)


def _steady_ms(elapsed: list[float], warmup: int, steps: int) -> float:
    """Steady-state ms per step from a loop's ``history_elapsed_s``.  Entry ``i - 1`` is taken
    just after step ``i`` (whose loss output is then synchronized), the last entry after the
    final evaluation; so steps ``warmup + 1 .. warmup + steps`` took
    ``elapsed[warmup + steps - 1] - elapsed[warmup - 1]`` (0 for ``warmup = 0``)."""
    begin = elapsed[warmup - 1] if warmup else 0.0
    return 1000.0 * (elapsed[warmup + steps - 1] - begin) / steps


def measure(objective, content, style, n_max: int, ns: list[int], warmup: int, steps: int,
            wait_s: float) -> dict:
    import numpy as np
    import optax

    from neuralstyle import stylize, stylize_batched

    opt = optax.adam(0.02, b1=0.99, eps=0.1)
    total = warmup + steps
    settings = [{"style_weight": w} for w in STYLE_WEIGHTS[:n_max]]

    # sequential: max(N) independent stylize() runs
    seq = []
    if wait_s:
        wait_until_quiet(wait_s)
    for k, w in enumerate(settings):
        snap = cpu_snapshot()
        with PeakMemory() as mem:
            t = time.perf_counter()
            r = stylize(objective.with_weights(**w), content, style, opt, steps=total, progress=False)
            wall = time.perf_counter() - t
        m = r.metrics
        seq.append({"weights": w, "compile_s": m["compile_time_s"], "wall_s": wall,
                    "ms_per_step": _steady_ms(m["history_elapsed_s"], warmup, steps),
                    "initial_loss": m["initial"]["total"], "final_loss": m["final"]["total"], "image": r.image,
                    "memory": mem.result(), "foreign_cpu_load": foreign_load(snap, cpu_snapshot())})
        log(f"  sequential run {k + 1}/{n_max}: compile {m['compile_time_s']:.1f} s, "
             f"{seq[-1]['ms_per_step']:.0f} ms/step, load {seq[-1]['foreign_cpu_load']}")

    rows = []
    for n in ns:
        if wait_s:
            wait_until_quiet(wait_s)
        snap = cpu_snapshot()
        with PeakMemory() as mem:
            t = time.perf_counter()
            b = stylize_batched(objective, content, style, weights=settings[:n], optimizer=opt,
                                steps=total, progress=False)
            wall = time.perf_counter() - t
        load = foreign_load(snap, cpu_snapshot())
        bm = b.metrics
        batched_ms = _steady_ms(bm["history_elapsed_s"], warmup, steps)
        s = seq[:n]
        seq_ms = float(np.mean([r["ms_per_step"] for r in s]))
        seq_wall = sum(r["wall_s"] for r in s)
        row = {
            "n": n,
            "batched": {"compile_s": round(bm["compile_time_s"], 2), "ms_per_step": round(batched_ms, 1),
                        "image_steps_per_s": round(1000.0 * n / batched_ms, 3),
                        "wall_s": round(wall, 2), "images_per_s_end_to_end": round(n / wall, 4),
                        "memory": mem.result(), "foreign_cpu_load": load},
            "sequential": {"compile_s": round(sum(r["compile_s"] for r in s), 2),
                           "ms_per_step": round(seq_ms, 1),
                           "image_steps_per_s": round(1000.0 / seq_ms, 3),
                           "wall_s": round(seq_wall, 2), "images_per_s_end_to_end": round(n / seq_wall, 4),
                           "peak_rss_mib": max(r["memory"]["peak_rss_mib"] or 0 for r in s),
                           "foreign_cpu_load": max(r["foreign_cpu_load"] or 0 for r in s)},
            # the check (see the module docstring); the pixel difference is informative only
            "max_relative_initial_loss_difference": float(max(
                abs(b.runs[k]["initial"]["total"] - s[k]["initial_loss"]) / abs(s[k]["initial_loss"])
                for k in range(n))),
            "max_abs_pixel_difference": float(max(np.abs(b.images[k] - s[k]["image"]).max()
                                                  for k in range(n))),
            "max_relative_loss_difference": float(max(
                abs(b.runs[k]["final"]["total"] - s[k]["final_loss"]) / abs(s[k]["final_loss"])
                for k in range(n))),
        }
        row["ratio_steady"] = round(row["batched"]["image_steps_per_s"]
                                    / row["sequential"]["image_steps_per_s"], 3)
        row["ratio_end_to_end"] = round(row["batched"]["images_per_s_end_to_end"]
                                        / row["sequential"]["images_per_s_end_to_end"], 3)
        rows.append(row)
        log(f"  N={n}: batched {batched_ms:.0f} ms/step ({row['batched']['image_steps_per_s']:.2f} "
             f"image-steps/s), sequential {seq_ms:.0f} ms/step; ratio {row['ratio_steady']:.2f} "
             f"(end to end {row['ratio_end_to_end']:.2f}); load {load}")
    for r in seq:
        del r["image"]
    return {"rows": rows, "sequential_runs": seq}


def markdown(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    lines = [
        "# Batched sweeps vs sequential runs",
        "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- machine: {m['nproc']} CPUs, {m.get('cpu_model', '?')} ({m.get('simd', '')}"
        f"{'; VM' if m.get('hypervisor') else ''}), {m.get('ram_gib', '?')} GiB RAM, no GPU; load "
        f"average at start {' '.join(m.get('loadavg_at_start', []))}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v),
        f"- recipe: VGG19 weights {report.get('weights', '?')}, TF-tutorial objective, "
        f"{CONTENT_IMAGE} + {STYLE_IMAGE}, content initialization, optax.adam(0.02, b1=0.99, eps=0.1); "
        f"run k has style_weight {list(STYLE_WEIGHTS)}[k]; {cfg['warmup']} warm-up + "
        f"{cfg['steps']} timed steps per run",
        "",
        "Batched: one `stylize_batched` call (one compiled vmapped step). Sequential: N `stylize` "
        "calls (each compiles its own step). ms/step is steady state (warm-up excluded); a batched "
        "step advances all N images, so image-steps/s = N * 1000 / ms. End to end = compile + "
        "all steps (targets included) of the whole sweep of N runs. Ratio = batched throughput / "
        "sequential throughput (above 1: batching is faster). Initial loss diff: batched against "
        "sequential loss of each run at the start image (the same objective: float32 rounding). "
        "Pixel diff after the steps: informative only (Adam's first updates have the learning "
        "rate's size whatever the gradient's, so rounding can move a pixel by a step). "
        "Peak RSS: " + MEMORY_METHOD_HERE + ".",
        "",
    ]

    def cells(size, r):
        b, s = r["batched"], r["sequential"]
        return [size, r["n"], f"{b['ms_per_step']:.0f}", f"{b['image_steps_per_s']:.3g}", f"{s['ms_per_step']:.0f}",
                f"{s['image_steps_per_s']:.3g}", f"**{r['ratio_steady']:.2f}**", f"{b['compile_s']:.1f}",
                f"{s['compile_s']:.1f}", f"{b['wall_s']:.1f}", f"{s['wall_s']:.1f}", f"{r['ratio_end_to_end']:.2f}",
                f"{b['memory']['peak_rss_mib']:.0f}",
                f"{r['max_relative_initial_loss_difference']:.1e}",
                f"{r['max_abs_pixel_difference']:.1e}",
                f"{b['foreign_cpu_load'] or 0:.0%} / {s['foreign_cpu_load']:.0%}"]

    lines += harness.markdown_table(
        ["size", "N", "batched ms/step", "batched image-steps/s", "sequential ms/step", "sequential image-steps/s",
         "ratio (steady)", "batched compile s", "sequential compile s (sum)", "batched wall s",
         "sequential wall s", "ratio (end to end)", "batched peak RSS MiB", "max rel. initial loss diff",
         "max pixel diff after the steps", "other load (batched / sequential)"],
        (cells(size, r) for size, res in report["sizes"].items() for r in res["rows"]), align="r" * 16)
    lines += harness.warnings_section(report)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = harness.parser("benchmarks.batched", __doc__.split("\n")[0], "batched")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 8],
                   help=f"batch sizes N (at most {len(STYLE_WEIGHTS)})")
    p.add_argument("--warmup", type=int, default=1, help="warm-up steps per run (default 1)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per run (default 3)")
    p.add_argument("--weights", default="imagenet", help="'imagenet' (default) or 'random'")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before the sequential series and before each batched run, wait up to S "
                        "seconds for other processes to use under 10%% of the CPU")
    args = p.parse_args(argv)
    ns = sorted(set(args.ns))
    if ns[0] < 1 or ns[-1] > len(STYLE_WEIGHTS) or args.steps < 1 or args.warmup < 0:
        p.error(f"--ns must lie in 1..{len(STYLE_WEIGHTS)}, --steps >= 1, --warmup >= 0")

    from neuralstyle import VGG, StyleObjective, load_content_and_style

    report = harness.report(
        "benchmarks.batched", argv,
        config={"sizes": args.sizes, "ns": ns, "warmup": args.warmup, "steps": args.steps,
                "style_weights": list(STYLE_WEIGHTS[:ns[-1]])},
        memory_method=MEMORY_METHOD_HERE, sizes={}, warnings=[])
    started = time.perf_counter()
    backbone = VGG("vgg19", weights=None if args.weights == "random" else args.weights)
    report["weights"] = backbone.weights_source
    objective = StyleObjective.build(backbone)
    for size in args.sizes:
        content, style = load_content_and_style(CONTENT_IMAGE, STYLE_IMAGE, size=size,
                                                image_dir=args.image_dir)
        log(f"{size} px (content {content.shape[1]}x{content.shape[0]}), N = {ns} ...")
        res = measure(objective, content, style, ns[-1], ns, args.warmup, args.steps, args.wait_quiet)
        res["shape"] = list(content.shape)
        report["sizes"][str(size)] = res
    loads = [x for res in report["sizes"].values() for r in res["rows"]
             for x in (r["batched"]["foreign_cpu_load"], r["sequential"]["foreign_cpu_load"]) if x]
    if loads and max(loads) > 0.1:
        report["warnings"].append(f"other processes used up to {100 * max(loads):.0f}% of the CPU "
                                  "during some measurements: those timings are inflated")
    report["total_wall_s"] = round(time.perf_counter() - started, 1)
    md = markdown(report)
    print(md)
    harness.write_report(args.out, args.name, report, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
