"""Coarse-to-fine benchmark: time to a target loss at the final size, pyramid vs direct, and a
1024 px output with its peak memory.

    python -m benchmarks.pyramid                 # final size 512 (time to target) + 1024 px run
    python -m benchmarks.pyramid --size 128 --direct-steps 4 --levels-steps 4,2 --big-size 0 --out /tmp/x

Both runs use the TensorFlow-tutorial objective (VGG19 ImageNet weights, astronaut / great_wave)
and its Adam settings, or ``--optimizer lbfgs`` (neuralstyle's L-BFGS) for both.  "Time to
target" counts compile time and step time of every level, from the first compile to the first
final-size step whose loss is at or below the target; the targets are the losses the direct run
reaches after each of ``--target-steps`` steps (default: its last).  The 1-minute load average
before and after each part is recorded: other work on the machine slows both runs.  Each part
runs in its own process so that its peak resident memory (``ru_maxrss``) is its own.  Writes
``pyramid.json`` and ``pyramid.md`` into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks import harness

REPO = harness.REPO


def _objective(weights):
    from neuralstyle import VGG, StyleObjective

    return StyleObjective.build(VGG("vgg19", weights=weights))


OPTIMIZERS = {"adam": "Adam(0.02, b1=0.99, eps 0.1)", "lbfgs": "neuralstyle.lbfgs()"}


def _optimizer(name: str):
    """The tutorial's Adam settings, or neuralstyle's L-BFGS (the paper's optimizer)."""
    if name == "lbfgs":
        from neuralstyle import lbfgs

        return lbfgs()
    import optax

    return optax.adam(0.02, b1=0.99, eps=0.1)


def part_direct(args) -> dict:
    from neuralstyle import load_content_and_style, stylize

    content, style = load_content_and_style("astronaut", "great_wave", args.size, image_dir=args.image_dir)
    result = stylize(_objective(args.weights), content, style, _optimizer(args.optimizer),
                     steps=args.direct_steps, init=args.init, progress=False)
    m = result.metrics
    return {"size": list(content.shape[:2]), "steps": m["steps"], "compile_s": m["compile_time_s"],
            "history": m["history"], "elapsed": m["history_elapsed_s"],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def part_pyramid(args, size, steps) -> dict:
    from neuralstyle import load_content_and_style, stylize_pyramid

    content, style = load_content_and_style("astronaut", "great_wave", size, image_dir=args.image_dir)
    t0 = time.perf_counter()
    result = stylize_pyramid(_objective(args.weights), content, style, _optimizer(args.optimizer),
                             steps=steps, levels=len(steps), init=args.init, progress=False)
    total = time.perf_counter() - t0
    levels = [{"size": lv["image_size"], "steps": lv["steps"], "compile_s": lv["compile_time_s"],
               "wall_s": lv["wall_time_s"], "history": lv["history"], "elapsed": lv["history_elapsed_s"]}
              for lv in result.metrics["levels"]]
    return {"size": list(content.shape[:2]), "levels": levels, "total_s": total,
            "final_loss": result.metrics["final"]["total"],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(args, part, extra):
    cmd = [sys.executable, "-m", "benchmarks.pyramid", "--child", part, "--size", str(args.size),
           "--direct-steps", str(args.direct_steps), "--levels-steps", args.levels_steps,
           "--big-size", str(args.big_size), "--big-steps", args.big_steps, "--weights", str(args.weights),
           "--image-dir", str(args.image_dir), "--init", args.init,
           "--optimizer", args.optimizer]  # the parent computes the targets
    print("running", part, "...", flush=True)
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{part} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


def time_to_target(levels: list, target: float):
    """Seconds (compile + steps of all levels) until the final level's loss <= target."""
    before = sum(lv["compile_s"] + lv["wall_s"] for lv in levels[:-1])
    last = levels[-1]
    for loss, t in zip(last["history"], last["elapsed"]):
        if loss <= target:
            return before + last["compile_s"] + t
    return None


def main(argv=None):
    p = harness.parser("benchmarks.pyramid", __doc__.splitlines()[0], None)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--direct-steps", type=int, default=80)
    p.add_argument("--levels-steps", default="150,60,40", help="pyramid steps per level, coarsest first")
    p.add_argument("--big-size", type=int, default=1024, help="0 skips the large-output run")
    p.add_argument("--big-steps", default="40,15,5")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--init", default="content", choices=["content", "noise"])
    p.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS),
                   help="the same optimizer (fresh state per level) for the direct run and every level")
    p.add_argument("--target-steps", default=None,
                   help="comma-separated direct step counts whose losses are the targets (default: the last)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.weights in ("null", "none"):
        args.weights = None
    steps = [int(s) for s in args.levels_steps.split(",")]
    if args.child == "direct":
        print(json.dumps(part_direct(args)))
        return
    if args.child == "pyramid":
        print(json.dumps(part_pyramid(args, args.size, steps)))
        return
    if args.child == "big":
        print(json.dumps(part_pyramid(args, args.big_size, [int(s) for s in args.big_steps.split(",")])))
        return

    direct = _child(args, "direct", None)
    pyramid = _child(args, "pyramid", None)
    big = _child(args, "big", None) if args.big_size else None
    target_steps = ([int(n) for n in args.target_steps.split(",")] if args.target_steps
                    else [direct["steps"]])
    targets = []
    for n in target_steps:
        n = min(n, direct["steps"])
        direct_time = direct["compile_s"] + direct["elapsed"][n]
        pyramid_time = time_to_target(pyramid["levels"], direct["history"][n])
        targets.append({"direct_steps": n, "loss": direct["history"][n], "direct_s": direct_time,
                        "pyramid_s": pyramid_time,
                        "speedup": None if pyramid_time is None else direct_time / pyramid_time})
    target, direct_time, pyramid_time = (targets[-1][k] for k in ("loss", "direct_s", "pyramid_s"))
    report = harness.report(
        "benchmarks.pyramid", argv,
        optimizer=OPTIMIZERS[args.optimizer], init=args.init,
        target_loss=target, direct=direct, pyramid=pyramid, big=big,
        direct_time_to_target_s=direct_time, pyramid_time_to_target_s=pyramid_time,
        targets=targets,
    )
    lines = harness.markdown_header("Coarse-to-fine benchmark", report)[:-1] + [
        "- objective: TensorFlow-tutorial recipe, VGG19 "
        f"({'ImageNet' if args.weights else 'random'} weights), astronaut / great_wave, {OPTIMIZERS[args.optimizer]}, "
        f"initialized from the {args.init}", "",
        f"Targets: the losses of the direct run ({OPTIMIZERS[args.optimizer]} at {direct['size'][1]}x{direct['size'][0]} px) after "
        "the step counts below; time to target counts every compile and step from the start.", "",
        "| target: direct loss after | loss | direct (s) | pyramid (s) | speed-up |", "|---|---:|---:|---:|---:|",
        *(f"| {t['direct_steps']} steps | {t['loss']:.4g} | {t['direct_s']:.1f} | "
          + ("not reached | - |" if t["pyramid_s"] is None else f"{t['pyramid_s']:.1f} | {t['speedup']:.2f}x |")
          for t in targets),
        "",
        f"1-minute load average (before, after): direct {direct['load_1min']}, pyramid {pyramid['load_1min']}"
        " (2 vCPUs: above about 2 means other work competed for the cores).", "",
        "| run | levels (px, steps) | time to target (s, compile included) | final loss | peak RSS (MiB) |",
        "|---|---|---:|---:|---:|",
        f"| direct | {direct['size'][0]} px x {direct['steps']} | {direct_time:.1f} | {target:.4g} | {direct['peak_rss_mib']:.0f} |",
        "| pyramid | " + ", ".join(f"{lv['size'][0]} px x {lv['steps']}" for lv in pyramid["levels"])
        + f" | {'not reached' if pyramid_time is None else f'{pyramid_time:.1f}'} | {pyramid['final_loss']:.4g} | {pyramid['peak_rss_mib']:.0f} |",
    ]
    if big:
        lines.append("| large output | " + ", ".join(f"{lv['size'][0]}x{lv['size'][1]} px x {lv['steps']}" for lv in big["levels"])
                     + f" | (total {big['total_s']:.1f}) | {big['final_loss']:.4g} | {big['peak_rss_mib']:.0f} |")
        lines += ["", "Large-output levels (compile s, ms/step): " + "; ".join(
            f"{lv['size'][0]}x{lv['size'][1]}: {lv['compile_s']:.1f}, {1000 * lv['wall_s'] / max(lv['steps'], 1):.0f}"
            for lv in big["levels"])]
    name = args.name or ("pyramid" if args.init == "content" else f"pyramid_{args.init}")
    harness.write_report(args.out, name, report, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
