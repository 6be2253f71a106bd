"""``python -m benchmarks.speed``: the options, the plan (steps per size), the order of the
measurements (each in a worker process), and the assembled report.

Examples::

    python -m benchmarks.speed                       # full run (about 8 minutes on 2 quiet cores)
    python -m benchmarks.speed --quick --out /tmp/b  # smoke test: 64 px, 2 steps, about a minute
    python -m benchmarks.speed --sizes 512 --steps 2 --lbfgs-steps 1 --ttt-size 512 --ttt-quality \
        --name ttt_512                               # time to loss and to quality at 512 px
    python -m benchmarks.speed --sizes 256 --xla-flags "--xla_cpu_experimental_ynn_fusion_type="
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time

from benchmarks import harness
from benchmarks.harness import log, wait_until_quiet
from benchmarks.speed import ttt
from benchmarks.speed.common import CONTENT_IMAGE, STYLE_IMAGE, TORCH_HINT
from benchmarks.speed.flops import numpy_matmul_yardstick
from benchmarks.speed.report import build_rows, markdown, print_summary
from benchmarks.speed.scaling import scaling
from benchmarks.speed.workers import QUIET, WORKERS, run_worker, serve

MEMORY_METHOD = harness.MEMORY_METHOD + "; the measuring process is each measurement's worker subprocess"


def parse_args(argv=None):
    p = harness.parser("python -m benchmarks.speed", "Speed benchmark of one style-transfer step "
                       "on the CPU (JAX/XLA against PyTorch eager).", "speed")
    p.add_argument("--sizes", type=int, nargs="+", help="long edges in px (default: 256 512 1024)")
    p.add_argument("--steps", type=int, help="timed Adam steps per size (default: 6 up to 256 px, 4 up to 512, 3 above)")
    p.add_argument("--warmup", type=int, help="warm-up Adam steps (default: 3 up to 256 px, 2 up to 512, 1 above)")
    p.add_argument("--lbfgs-steps", type=int, help="timed L-BFGS iterations after 1 warm-up (default: 3 up to 256 px, 2 up to 512, 1 above; 0: skip)")
    p.add_argument("--ttt-size", type=int, default=ttt.TTT_SIZE,
                   help=f"size of the time-to-target runs (default {ttt.TTT_SIZE}; 0: skip them)")
    p.add_argument("--ttt-target", type=float,
                   help="the target loss of the time-to-target runs (default: the one fixed for the "
                        f"size in benchmarks/speed/ttt.py, {ttt.TTT_TARGETS})")
    p.add_argument("--ttt-max-steps", type=int, nargs=2, metavar=("ADAM", "LBFGS"),
                   help="give up after this many Adam steps and L-BFGS iterations (default: fixed per "
                        f"size, {ttt.TTT_MAX_STEPS})")
    p.add_argument("--ttt-quality", action="store_true",
                   help="also the time to a fixed quality: every time-to-target run takes all its "
                        "updates, with snapshots graded afterwards by the quality benchmark's "
                        f"distances against the target fixed per size ({ttt.QUALITY_TARGETS})")
    p.add_argument("--ttt-snapshot-every", type=int, nargs=2, metavar=("ADAM", "LBFGS"),
                   default=list(ttt.SNAPSHOT_EVERY),
                   help="with --ttt-quality: a snapshot every this many Adam steps and L-BFGS "
                        f"iterations (default {ttt.SNAPSHOT_EVERY[0]} and {ttt.SNAPSHOT_EVERY[1]})")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 64 px, 2 steps, time to target and to quality at 64 px with at "
                        "most 2 updates and a snapshot after each (about a minute and a half)")
    p.add_argument("--xla-flags", default="",
                   help="XLA_FLAGS of the JAX runs (appended to any XLA_FLAGS in the environment)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a Hydra override of the JAX runs' recipe (+experiment=vgg19_wave), for "
                        "example backbone.conv=winograd; repeat for several")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager reference")
    p.add_argument("--torch-device", default="cpu",
                   help="where the PyTorch reference runs: 'cpu' (default) or 'cuda' (with a GPU; "
                        "needs --ttt-size 0, the time to target runs PyTorch on the CPU only)")
    p.add_argument("--weights", default="imagenet", help="'imagenet' (default), 'random' or a weights file")
    p.add_argument("--images", choices=("photo", "random"), default="photo",
                   help=f"'photo': {CONTENT_IMAGE} content + {STYLE_IMAGE} style (default); 'random': square noise")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before each measurement, wait up to S seconds until other processes use "
                        "under 10%% of the CPU (default 0: do not wait)")
    p.add_argument("--retries", type=int, default=0,
                   help="re-run a measurement during which other processes used over 15%% of the CPU "
                        "up to this many times (default 0)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def steps_for(size: int, args) -> tuple[int, int, int]:
    """(warm-up Adam steps, timed Adam steps, timed L-BFGS iterations) at ``size``."""
    k = 0 if size <= 256 else 1 if size <= 512 else 2
    warmup = args.warmup if args.warmup is not None else (3, 2, 1)[k]
    steps = args.steps if args.steps is not None else (6, 4, 3)[k]
    lbfgs = args.lbfgs_steps if args.lbfgs_steps is not None else (3, 2, 1)[k]
    return warmup, steps, lbfgs


def apply_quick(args) -> tuple[list[int], list[int], int]:
    """``(sizes, matmul sizes, matmul repeats)``; ``--quick`` also shortens every default."""
    if not args.quick:
        return sorted(set(args.sizes or [256, 512, 1024])), [2048, 4096], 5
    args.warmup = 1 if args.warmup is None else args.warmup
    args.steps = 2 if args.steps is None else args.steps
    args.lbfgs_steps = 2 if args.lbfgs_steps is None else args.lbfgs_steps
    args.ttt_size = 64 if args.ttt_size == ttt.TTT_SIZE else args.ttt_size
    args.ttt_max_steps = args.ttt_max_steps or [2, 2]
    args.ttt_quality = True
    if list(args.ttt_snapshot_every) == list(ttt.SNAPSHOT_EVERY):
        args.ttt_snapshot_every = [1, 1]
    return sorted(set(args.sizes or [64])), [1024], 2


def size_spec(args, base_spec, size, plan, first: bool) -> dict:
    w, n, lb = plan[size]
    return dict(base_spec, sizes=[size], warmup=w, steps=n, lbfgs_steps=lb, lbfgs_warmup=1,
                matmul_sizes=base_spec["matmul_sizes"] if first else [],
                ttt=ttt.spec_from_args(args) if size == args.ttt_size else None)


def measure_jax(args, report, sizes, plan, base_spec, xla_flags, attached) -> bool:
    """One worker per size (each starts from the same state); the worker at the time-to-target
    size also runs the time to target after its measurements."""
    report["jax"] = {"sizes": {}}
    for s in sizes:
        log(f"JAX/XLA {s} px (XLA_FLAGS={xla_flags!r}) ...")
        res = run_worker("jax", size_spec(args, base_spec, s, plan, s == sizes[0]), xla_flags)
        if "error" in res:
            print(f"error: the JAX run failed: {res['error']}\n{res.get('output_tail', '')}", file=sys.stderr)
            return False
        report["jax"]["sizes"].update(res.pop("sizes"))
        if "ttt" in res:
            attached["jax"] = res.pop("ttt")
        if "jnp_matmul_gflops" in res:
            report["yardsticks"]["jnp_matmul"] = res.pop("jnp_matmul_gflops")
        report["jax"].update(res)
        report["warnings"] += res.get("warnings", [])
    sizes_res = report["jax"]["sizes"]
    report["weights"] = report["jax"].get("weights")
    report["images"] = "; ".join(f"{s} px: {sizes_res[str(s)]['images']}" for s in sizes)
    report["flops"] = {str(s): {"xla_gflop": (sizes_res[str(s)]["adam"]["xla_flops"] or 0) / 1e9 or None,
                                "analytic": sizes_res[str(s)]["analytic_flops"]} for s in sizes}
    return True


def compare(jax_size: dict, torch_size: dict) -> dict:
    """The PyTorch reference check at one size: objective at the content image and Adam losses."""
    jl, tl = jax_size["adam"]["losses"], torch_size["adam"]["losses"]
    k = min(len(jl), len(tl))
    c = dict(torch_size["check"])
    c.update(ok=c["relative_difference"] < 1e-3, trajectory_steps=k,
             jax_last_loss=jl[k - 1], torch_last_loss=tl[k - 1],
             trajectory_max_relative_difference=max(abs(a - b) / abs(a) for a, b in zip(jl[:k], tl[:k])))
    return c


def measure_torch(args, report, sizes, plan, base_spec, attached) -> None:
    report["torch"] = None
    if args.no_torch:
        log("PyTorch reference: skipped (--no-torch)")
        return
    if importlib.util.find_spec("torch") is None:
        msg = f"PyTorch reference skipped: torch is not installed ({TORCH_HINT} to include it)"
        log(msg)
        report["warnings"].append(msg)
        return
    report["torch"], report["checks"] = {"sizes": {}}, {}
    for s in sizes:
        log(f"PyTorch eager {s} px ...")
        res = run_worker("torch", size_spec(args, base_spec, s, plan, s == sizes[0]), None)
        if "error" in res:
            msg = f"PyTorch reference at {s} px failed: {res['error']}"
            log(msg + "\n" + res.get("output_tail", ""))
            report["warnings"].append(msg)
            continue
        report["torch"]["sizes"].update(res.pop("sizes"))
        if "ttt" in res:
            attached["torch"] = res.pop("ttt")
        if "torch_matmul_gflops" in res:
            report["yardsticks"]["torch_matmul"] = res.pop("torch_matmul_gflops")
        report["torch"].update(res)
        c = report["checks"][str(s)] = compare(report["jax"]["sizes"][str(s)], report["torch"]["sizes"][str(s)])
        if not c["ok"]:
            report["warnings"].append(f"{s} px: PyTorch objective differs from JAX by "
                                      f"{c['relative_difference']:.2e} (relative)")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return serve(args.worker, args.spec, args.result)
    if args.torch_device != "cpu" and args.ttt_size and not args.no_torch:
        raise SystemExit(f"--torch-device {args.torch_device} needs --ttt-size 0: the time to target "
                         "runs the PyTorch reference on the CPU only")
    args.ttt_snapshot_dir = tempfile.mkdtemp(prefix="ns-ttt-snapshots-")  # --ttt-quality's images
    try:
        return measure(args, argv)
    finally:
        shutil.rmtree(args.ttt_snapshot_dir, ignore_errors=True)


def measure(args, argv) -> int:
    """Plan, measure in workers, assemble and write the report."""
    started = time.perf_counter()
    QUIET.update(wait_s=args.wait_quiet, retries=args.retries)
    sizes, matmul_sizes, matmul_repeats = apply_quick(args)
    plan = {s: steps_for(s, args) for s in sizes}
    xla_flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), args.xla_flags) if f)
    report = harness.report(
        "benchmarks.speed", argv,
        config={"sizes": sizes, "plan": {str(s): dict(zip(("warmup", "steps", "lbfgs_steps"), p))
                                         for s, p in plan.items()},
                "xla_flags": xla_flags, "weights": args.weights, "images": args.images,
                "overrides": list(args.override),
                "steps_desc": "; ".join(f"{s} px: {w} warm-up + {n} timed Adam steps, 1 + {lb} "
                                        f"L-BFGS iterations" for s, (w, n, lb) in plan.items()),
                "time_to_target": ttt.spec_from_args(args, with_dir=False)},
        memory_method=MEMORY_METHOD, warnings=[])
    log(f"neuralstyle speed benchmark: sizes {sizes}, {report['machine'].get('nproc')} CPUs, "
        f"{report['machine'].get('cpu_model')}")

    log("yardstick: NumPy BLAS fp32 matmul ...")  # in this process: NumPy only, no JAX
    if args.wait_quiet > 0:
        wait_until_quiet(args.wait_quiet)
    report["yardsticks"] = {"numpy_blas": numpy_matmul_yardstick(matmul_sizes, matmul_repeats)}
    log(f"  NumPy BLAS: {report['yardsticks']['numpy_blas']['gflops']} GFLOP/s")

    base_spec = {"weights": args.weights, "images": args.images, "image_dir": args.image_dir,
                 "overrides": list(args.override), "torch_device": args.torch_device,
                 "matmul_sizes": matmul_sizes, "matmul_repeats": matmul_repeats}
    attached_ttt: dict = {}
    if not measure_jax(args, report, sizes, plan, base_spec, xla_flags, attached_ttt):
        return 1
    measure_torch(args, report, sizes, plan, base_spec, attached_ttt)
    report["time_to_target"] = None
    if args.ttt_size:
        report["time_to_target"] = ttt.time_to_target(args, base_spec, xla_flags,
                                                       with_torch=report["torch"] is not None,
                                                       attached=attached_ttt)
        report["warnings"] += report["time_to_target"].pop("warnings", [])

    report["rows"] = build_rows(report)
    report["scaling"] = scaling(report["rows"])
    report["total_wall_s"] = round(time.perf_counter() - started, 1)
    loads = [r["foreign_cpu_load"] for r in report["rows"] if r.get("foreign_cpu_load") is not None]
    if loads and max(loads) > 0.1:
        report["warnings"].append(
            f"other processes used up to {100 * max(loads):.0f}% of the machine's CPU time during "
            "some timed loops (column foreign_cpu_load in the JSON): those timings are inflated")
    harness.write_report(args.out, args.name, report, markdown(report))
    print_summary(report)
    print(f"(total {report['total_wall_s']:.0f} s)")
    return 0
