"""L-BFGS peak memory against torch.optim.LBFGS for the same history size (VGG19, 1024 px).

    python -m benchmarks.lbfgs_memory [--size 1024] [--wait-quiet 120]
    python -m benchmarks.lbfgs_memory --before HEAD~1      # also the library at an older revision
    python -m benchmarks.lbfgs_memory --quick --out /tmp/m # smoke run: 64 px, random weights

Two cases, each run by every implementation in its own fresh process (so that no allocator, thread
pool or high-water mark is shared):

* ``default history``: ``--history 100`` (both libraries' default), ``--iterations 3``: the
  history has 2 pairs at the last iteration, far from its size;
* ``full history``: ``--full-history 10``, ``--full-iterations 12``: both histories are full (11
  pairs were formed, 10 kept) for the last iterations.

Implementations: neuralstyle's :class:`~neuralstyle.optim.LBFGS` through the library's driver
(:func:`neuralstyle.optim.driver.optimize`, N = 1, as ``stylize`` runs it; its compilation is
inside the measured phase), and ``torch.optim.LBFGS(lr=1, max_iter=1, history_size=...,
line_search_fn="strong_wolfe")`` with a clamp after every iteration, as ``benchmarks/speed``
runs it (:class:`benchmarks.torch_reference.LBFGSRun`), on the same objective (the speed
benchmark's: ``+experiment=vgg19_wave``, astronaut / Great Wave, content initialization).  With
``--before REV`` the library's ``neuralstyle`` package at git revision ``REV`` runs the first case
too (the same worker code, an older optimizer; with ``--before-all-cases`` every case, for a
change that is not the optimizer's, e.g. the backbone's working memory).  The library measured is a commit (``--at``, default ``HEAD``)
extracted with ``git archive``, so that uncommitted work in the checkout stays out of the figures
(``--at worktree``: the checkout as it is).

XLA's instruction order: the memory-minimizing one that ``python -m neuralstyle.run`` asks for
(:func:`neuralstyle.entry.prefer_memory_minimizing_schedule`, recorded as ``XLA_FLAGS`` in the
report), or XLA's default with ``--xla-default-order``.

Memory: peak RSS of the worker process while it computes the targets (content features, Gram
matrices) and optimizes (``harness.PeakMemory``: VmHWM reset just before), and above the RSS just
before it (framework, weights and images loaded).  The targets are inside the measured phase
because the memory their computation leaves in the process's heap moves the baseline: with them
outside, a cheaper targets program (XLA's convolutions instead of Winograd's, 2026-12-02) lowered
the baseline by 130 MiB and raised "above baseline" by as much at the same absolute peak.  The
figures to compare are "above baseline" and, for the optimization alone, "above RSS after
targets".  Writes ``lbfgs_memory.json`` and ``lbfgs_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import REPO, Load, PeakMemory, log

IMPLEMENTATIONS = {"jax": "neuralstyle LBFGS at {rev} (JAX/XLA, driver)",
                   "torch": "torch.optim.LBFGS (strong Wolfe)",
                   "before": "neuralstyle LBFGS at {rev} (JAX/XLA, driver)"}


# --------------------------------------------------------------------------- workers (child)


def _setup(spec: dict):
    from benchmarks.speed.common import build_objective, load_images

    objective, source, warnings = build_objective(spec)
    content, style, desc = load_images(spec, spec["size"])
    return objective, source, warnings, content, style, desc


def rss_after_collection() -> float:
    """RSS in MiB after a garbage collection (taken once the targets are computed)."""
    import gc

    gc.collect()
    return harness.rss_mib()


def with_after_targets(memory: dict, after_targets: float) -> dict:
    """``memory`` (:meth:`PeakMemory.result`) with the peak above the RSS after the targets: the
    optimization's own memory, without what computing the targets left in the process's heap."""
    return dict(memory, after_targets_rss_mib=round(after_targets, 1),
                above_after_targets_mib=round(memory["peak_rss_mib"] - after_targets, 1))


def jax_worker(spec: dict) -> dict:
    """neuralstyle's L-BFGS, ``spec["iterations"]`` iterations with ``spec["history"]`` pairs."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from neuralstyle.optim import LBFGS
    from neuralstyle.optim.driver import Monitor, optimize, stack_runs

    objective, source, warnings, content, style, desc = _setup(spec)
    objective = jax.tree.map(jnp.asarray, objective)  # weight leaves as device arrays, as stylize passes them
    params = objective.params
    images = jnp.asarray(content, jnp.float32)[None, None]
    jax.block_until_ready(images)
    n = spec["iterations"]
    with PeakMemory() as mem, Load() as load:
        targets = jax.jit(objective.targets)(params, jnp.asarray(content)[None], jnp.asarray(style)[None])
        jax.block_until_ready(targets)
        after_targets = rss_after_collection()
        loop = optimize(stack_runs([objective]), LBFGS(memory_size=spec["history"]), images,
                        jnp.stack([jax.random.key(0)]), params, targets, n, Monitor(n, show=False))
    iterations = len(loop.histories[0]) - 1
    return {"weights": source, "warnings": warnings, "images": desc, "shape": list(content.shape),
            "iterations": iterations, "evaluations": int(loop.evaluations[0]),
            "pairs_formed": max(iterations - 1, 0), "pairs_held": min(max(iterations - 1, 0), spec["history"]),
            "s_per_iteration": float(np.median(np.diff(loop.elapsed)[1:])) if iterations > 1 else None,
            "compile_s": round(loop.compile_time, 2), "final_loss": loop.histories[0][-1][0],
            "memory": with_after_targets(mem.result(), after_targets), "other_load": load.foreign}


def torch_worker(spec: dict) -> dict:
    """``torch.optim.LBFGS`` (strong Wolfe), ``spec["iterations"]`` iterations, ``spec["history"]``."""
    import numpy as np

    from benchmarks import torch_reference as tr

    threads = tr.set_threads(os.cpu_count())
    objective, source, warnings, content, style, desc = _setup(spec)
    tobj = tr.TorchObjective.from_jax_objective(objective)
    c = tr.to_nchw(content)
    times = []
    with PeakMemory() as mem, Load() as load:
        tobj.set_targets(c, tr.to_nchw(style))
        after_targets = rss_after_collection()
        run = tr.LBFGSRun(tobj, c, history_size=spec["history"])
        for _ in range(spec["iterations"]):
            t = time.perf_counter()
            run.step()
            times.append(time.perf_counter() - t)
    state = run.opt.state[run.x]
    return {"weights": source, "warnings": warnings, "images": desc, "shape": list(content.shape),
            "iterations": spec["iterations"], "evaluations": run.evaluations, "threads": threads,
            "pairs_formed": max(spec["iterations"] - 1, 0), "pairs_held": len(state.get("old_dirs", [])),
            "s_per_iteration": float(np.median(times[1:])) if len(times) > 1 else None,
            "final_loss": run.losses[-1],
            "memory": with_after_targets(mem.result(), after_targets), "other_load": load.foreign}


WORKERS = {"jax": jax_worker, "before": jax_worker, "torch": torch_worker}


# --------------------------------------------------------------------------- parent


def run_worker(kind: str, spec: dict, library: Path | None, timeout: float = 1800) -> dict:
    """``kind``'s worker in a fresh interpreter, importing ``neuralstyle`` from ``library`` (a
    folder holding the package, see :func:`extract_revision`; ``None``: the checkout) and the
    benchmarks from this checkout."""
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "jax")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.lbfgs_memory", "--worker", kind,
               "--spec", json.dumps(spec), "--result", str(result_path)]
        try:  # under -m the working directory is the first entry of sys.path: its package wins
            proc = subprocess.run(cmd, cwd=library or REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if proc.returncode != 0 or not result_path.exists():
            return {"error": f"worker exited with status {proc.returncode}",
                    "output_tail": "\n".join(proc.stdout.strip().splitlines()[-12:])}
        return json.loads(result_path.read_text())


def extract_revision(rev: str, into: Path) -> str:
    """The ``neuralstyle`` package at git revision ``rev`` into ``into``, with its config tree
    inside it (``neuralstyle/conf``, as in a wheel, so that no other checkout's configs are
    found); returns the full commit id.  Measuring a commit keeps uncommitted work in the
    checkout out of the figures."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "archive", commit, "neuralstyle", "conf"], cwd=REPO,
                             capture_output=True, check=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    shutil.move(str(into / "conf"), str(into / "neuralstyle" / "conf"))
    return commit


def cases(args) -> list[dict]:
    return [{"case": "default history", "history": args.history, "iterations": args.iterations},
            {"case": "full history", "history": args.full_history, "iterations": args.full_iterations}]


def history_mib(shape, pairs: int) -> float:
    """The history's own size: ``pairs`` x (s, y), float32 images of ``shape``."""
    h, w, c = shape
    return round(2 * pairs * h * w * c * 4 / 2**20, 1)


def markdown(rep: dict) -> str:
    a = rep["args"]
    lines = harness.markdown_header(
        f"L-BFGS peak memory against torch.optim.LBFGS, VGG19 at {a['size']} px", rep)
    first = next((r for r in rep["rows"] if "error" not in r), {})
    lines += [
        f"Speed benchmark objective (`+experiment=vgg19_wave`, weights {first.get('weights', '?')}); "
        f"{first.get('images', '?')}; content initialization.  Each row is a fresh worker process; "
        "peak RSS covers the targets, the optimizer's construction and all its iterations (for "
        "neuralstyle also the compilation of the targets and the trial); 'above baseline' subtracts "
        "the RSS just before (framework, weights and images loaded; the targets are computed inside "
        "the measured phase).  History MiB = pairs held x 2 x one float32 image.",
        "",
        "| case | implementation | history size | iterations | pairs held | history MiB | peak RSS MiB "
        "| above baseline MiB | vs PyTorch | above RSS after targets MiB | vs PyTorch | s/iteration "
        "| evaluations | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rep["rows"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['implementation']} | {r['history']} | – | – | – | "
                         f"error: {r['error']} | – | – | – | – | – | – | – |")
            continue
        m = r["memory"]
        ratio = "–" if r.get("vs_torch") is None else f"{r['vs_torch']:.2f}"
        ratio_after = "–" if r.get("vs_torch_after_targets") is None else f"{r['vs_torch_after_targets']:.2f}"
        spi = "–" if r["s_per_iteration"] is None else f"{r['s_per_iteration']:.1f}"
        load = "–" if r["other_load"] is None else f"{100 * r['other_load']:.0f}%"
        lines.append(f"| {r['case']} | {r['implementation']} | {r['history']} | {r['iterations']} | "
                     f"{r['pairs_held']} | {r['history_mib']} | {m['peak_rss_mib']} | "
                     f"{m['above_baseline_mib']} | {ratio} | {m.get('above_after_targets_mib', '–')} | "
                     f"{ratio_after} | {spi} | {r['evaluations']} | {load} |")
    lines += ["", "vs PyTorch: peak RSS above baseline (or above the RSS after the targets) divided by "
              "torch.optim.LBFGS's in the same case (at most 1: no more memory than PyTorch for the same "
              "history size).  Above the RSS after the targets leaves out what computing the targets left "
              "in the process's heap (JAX: XLA's freed buffers of the targets program, which glibc keeps "
              "until the driver hands them back after compiling the step, "
              "neuralstyle.optim.memory.release_freed_memory).  s/iteration: "
              "median over the iterations after the first (context only; benchmarks/speed times "
              "them).  Other load: the share of the machine's CPU other processes used during the "
              "phase."]
    if rep.get("verdict"):
        lines += ["", rep["verdict"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = harness.parser("benchmarks.lbfgs_memory", __doc__.splitlines()[0], "lbfgs_memory")
    p.add_argument("--size", type=int, default=1024, help="long edge in px (default 1024)")
    p.add_argument("--history", type=int, default=100, help="history size of the first case")
    p.add_argument("--iterations", type=int, default=3, help="iterations of the first case")
    p.add_argument("--full-history", type=int, default=10, help="history size of the full case")
    p.add_argument("--full-iterations", type=int, default=12, help="iterations of the full case")
    p.add_argument("--weights", default="imagenet", help="imagenet, or random for a smoke run")
    p.add_argument("--no-torch", action="store_true", help="skip torch.optim.LBFGS")
    p.add_argument("--at", default="HEAD", metavar="REV",
                   help="git revision of the neuralstyle measured (default HEAD: committed code only); "
                        "'worktree': the checkout as it is")
    p.add_argument("--before", metavar="REV", help="also run the library's neuralstyle at git REV")
    p.add_argument("--before-all-cases", action="store_true",
                   help="run --before in every case (default: the first only)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before each worker, wait up to S seconds for other processes to go quiet")
    p.add_argument("--xla-default-order", action="store_true",
                   help="keep XLA's default (concurrency-optimized) instruction order; by default the "
                        "workers run with the memory-minimizing order that python -m neuralstyle.run "
                        "asks for (neuralstyle.entry.prefer_memory_minimizing_schedule)")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, random weights, 2/4 iterations")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](json.loads(args.spec))
        import neuralstyle

        result["neuralstyle_path"] = str(Path(neuralstyle.__file__).parent)
        Path(args.result).write_text(json.dumps(result))
        return result
    if args.quick:
        args.size, args.weights, args.iterations, args.full_history, args.full_iterations = 64, "random", 2, 2, 4

    try:
        import torch  # noqa: F401
        have_torch = not args.no_torch
    except ImportError:
        log("torch is not installed: only neuralstyle's rows")
        have_torch = False
    if not args.xla_default_order:  # as the CLI runs: the workers inherit XLA_FLAGS
        from neuralstyle.entry import prefer_memory_minimizing_schedule

        prefer_memory_minimizing_schedule()
    rep = harness.report("benchmarks.lbfgs_memory", argv,
                         args={**vars(args), "image_dir": str(args.image_dir), "out": str(args.out)},
                         memory_method=harness.MEMORY_METHOD + "; each row is its own worker process")
    kinds = ["jax"] + (["torch"] if have_torch else []) + (["before"] if args.before else [])
    with tempfile.TemporaryDirectory() as tmp:
        libraries, commits = {}, {}
        if args.at != "worktree":
            commits["jax"] = extract_revision(args.at, Path(tmp) / "at")
            libraries["jax"] = libraries["torch"] = Path(tmp) / "at"
        if args.before:
            commits["before"] = extract_revision(args.before, Path(tmp) / "before")
            libraries["before"] = Path(tmp) / "before"
        rep["commits"] = commits
        rows = []
        cases_ = cases(args)
        for case in cases_:
            spec = {"weights": args.weights, "images": "photo", "image_dir": str(args.image_dir),
                    "size": args.size, "history": case["history"], "iterations": case["iterations"]}
            for kind in kinds:
                if kind == "before" and case is not cases_[0] and not args.before_all_cases:
                    continue  # a preallocated history differs from a grown one only while it is not full
                if args.wait_quiet > 0:
                    harness.wait_until_quiet(args.wait_quiet)
                rev = "" if kind == "torch" else commits[kind][:7] if kind in commits else "the checkout"
                name = IMPLEMENTATIONS[kind].format(rev=rev)
                log(f"{case['case']}: {name}, history {case['history']}, {case['iterations']} iterations")
                t = time.perf_counter()
                r = run_worker(kind, spec, libraries.get(kind))
                row = {**case, "implementation": name, "kind": kind, **r,
                       "process_wall_s": round(time.perf_counter() - t, 1)}
                if "error" not in r:
                    row["history_mib"] = history_mib(r["shape"], r["pairs_held"])
                    log(f"  peak RSS {r['memory']['peak_rss_mib']} MiB, above baseline "
                        f"{r['memory']['above_baseline_mib']} MiB, {r['pairs_held']} pairs held, "
                        f"other load {r['other_load']}")
                else:
                    log(f"  error: {r['error']}\n{r.get('output_tail', '')}")
                rows.append(row)
    for row in rows:
        ref = next((r for r in rows if r["case"] == row["case"] and r["kind"] == "torch" and "error" not in r), None)
        if ref is not None and "error" not in row:
            row["vs_torch"] = round(row["memory"]["above_baseline_mib"] / ref["memory"]["above_baseline_mib"], 3)
            row["vs_torch_after_targets"] = round(row["memory"]["above_after_targets_mib"]
                                                  / ref["memory"]["above_after_targets_mib"], 3)
    rep["rows"] = rows
    ours = [r for r in rows if r["kind"] == "jax" and r.get("vs_torch") is not None]
    if ours:
        holds = all(r["vs_torch"] <= 1.0 for r in ours)
        holds_after = all(r["vs_torch_after_targets"] <= 1.0 for r in ours)
        rep["verdict"] = ("Peak RSS above baseline (targets included) no more than torch.optim.LBFGS's for the "
                          f"same history size at {args.size} px: {'yes' if holds else 'no'} ("
                          + "; ".join(f"{r['case']}: {r['vs_torch']:.2f}x" for r in ours) + "); above the RSS "
                          f"after the targets (the optimization alone): {'yes' if holds_after else 'no'} ("
                          + "; ".join(f"{r['case']}: {r['vs_torch_after_targets']:.2f}x" for r in ours) + ").")
    harness.write_report(Path(args.out), args.name, rep, markdown(rep))
    return rep


if __name__ == "__main__":
    main()
