"""Time to target: seconds (compile excluded and included) and updates until the loss of the
current iterate falls below a fixed target, Adam and L-BFGS, JAX and PyTorch, from the same start.

The target is fixed here, not chosen per run: astronaut content, great_wave style, long edge
256 px, content initialization, VGG19 ImageNet weights, the TF-tutorial objective.  5e7 is about
where Adam (0.02, b1=0.99, eps=0.1) is after 30-35 steps (earlier runs: 7.0e7 after 14 steps,
5.3e7 after 30).
"""

from __future__ import annotations

import os
import time

from benchmarks.harness import Load, log
from benchmarks.speed.common import CONTENT_IMAGE, STYLE_IMAGE, build_objective, load_images

TTT_SIZE = 256
TTT_TARGET = 5.0e7
TTT_MAX_STEPS = (150, 60)  # Adam steps, L-BFGS iterations


def spec_from_args(args) -> dict:
    return {"size": args.ttt_size, "target": args.ttt_target,
            "max_steps": {"adam": args.ttt_max_steps[0], "lbfgs": args.ttt_max_steps[1]}}


def record(target, losses, reached, compile_s, load, evaluations=None) -> dict:
    """``reached``: ``(updates, seconds)`` of the first iterate whose loss is below ``target``;
    ``load``: the :class:`~benchmarks.harness.Load` of the run."""
    steps, seconds = reached if reached else (None, None)
    return {"target": target, "reached": reached is not None, "steps": steps,
            "seconds": None if seconds is None else round(seconds, 3),
            "compile_s": None if compile_s is None else round(compile_s, 3),
            "seconds_with_compile": None if seconds is None else round(seconds + (compile_s or 0.0), 3),
            "iterates_evaluated": len(losses), "evaluations": evaluations,
            "final_loss": losses[-1] if losses else None, "losses": losses,
            "foreign_cpu_load": load.foreign}


def jax_run(spec: dict, built=None) -> dict:
    """In a JAX worker: Adam and neuralstyle's L-BFGS from the content image until the loss of
    the current iterate is below ``spec["target"]`` (at most ``spec["max_steps"]`` updates).
    ``built``: the :func:`~benchmarks.speed.common.build_objective` result of the worker."""
    import jax
    import jax.numpy as jnp

    from benchmarks.speed.jax_worker import compile_adam, prepare, run_lbfgs

    objective, weights_source, warnings = built or build_objective(spec)
    objective = jax.tree.map(jnp.asarray, objective)
    params, target, size = objective.params, spec["target"], spec["size"]
    targets, image, desc = prepare(objective, params, spec, size)
    result = {"weights": weights_source, "warnings": warnings, "images": desc}

    compiled, state, compile_s = compile_adam(objective, params, targets, image)
    x, losses, reached = image, [], None
    with Load() as load:
        t0 = time.perf_counter()
        for i in range(spec["max_steps"]["adam"] + 1):
            new_x, state, loss, _ = compiled(objective, x, state, params, targets)  # loss of x (i updates)
            losses.append(float(loss))
            if losses[-1] < target:
                reached = (i, time.perf_counter() - t0)
                break
            x = new_x
    result["adam"] = record(target, losses, reached, compile_s, load, evaluations=len(losses))
    log(f"  [jax ttt {size}px] Adam: {result['adam']['steps']} steps, {result['adam']['seconds']} s")
    del compiled

    with Load() as load:
        loop = run_lbfgs(objective, params, targets, image, spec["max_steps"]["lbfgs"], stop_below=target)
    losses = [h[0] for h in loop.histories[0]]
    reached = None
    if losses[-1] < target:  # the driver's clock starts after compiling, as t0 did above
        reached = (len(losses) - 1, loop.times[0][-1])
    result["lbfgs"] = record(target, losses, reached, loop.compile_time, load, int(loop.evaluations[0]))
    log(f"  [jax ttt {size}px] L-BFGS: {result['lbfgs']['steps']} iterations, {result['lbfgs']['seconds']} s")
    return result


def torch_run(spec: dict, built=None) -> dict:
    """In a PyTorch worker: Adam and ``torch.optim.LBFGS`` (see
    :class:`benchmarks.torch_reference.LBFGSRun`), same objective, start and target as JAX."""
    from benchmarks import torch_reference as tr

    tr.set_threads(os.cpu_count())
    objective, weights_source, warnings = built or build_objective(spec)  # torch copies its weights
    target, size = spec["target"], spec["size"]
    content, style, desc = load_images(spec, size)
    tobj = tr.TorchObjective.from_jax_objective(objective)
    c = tr.to_nchw(content)
    tobj.set_targets(c, tr.to_nchw(style))
    result = {"weights": weights_source, "warnings": warnings, "images": desc}

    _, step = tr.make_adam_step(tobj, c)
    losses, reached = [], None
    with Load() as load:
        t0 = time.perf_counter()
        for i in range(spec["max_steps"]["adam"] + 1):
            losses.append(float(step()))  # loss of the image after i updates
            if losses[-1] < target:
                reached = (i, time.perf_counter() - t0)
                break
    result["adam"] = record(target, losses, reached, None, load, evaluations=len(losses))
    log(f"  [torch ttt {size}px] Adam: {result['adam']['steps']} steps, {result['adam']['seconds']} s")
    del step

    lb = tr.LBFGSRun(tobj, c)
    reached = None
    with Load() as load:
        t0 = time.perf_counter()
        for i in range(spec["max_steps"]["lbfgs"] + 1):
            lb.step()  # starts by evaluating the current iterate (after i updates)
            if lb.iterate_losses[-1] < target:
                reached = (i, lb.iterate_times[-1] - t0)
                break
    result["lbfgs"] = dict(record(target, lb.iterate_losses, reached, None, load, lb.evaluations),
                           optimizer=tr.LBFGS_DESC)
    log(f"  [torch ttt {size}px] L-BFGS: {result['lbfgs']['steps']} iterations, {result['lbfgs']['seconds']} s")
    return result


def time_to_target(args, base_spec: dict, xla_flags: str, with_torch: bool, attached: dict) -> dict:
    """In the parent: the time-to-target section of the report.  ``attached``: the results the
    main workers already measured at the time-to-target size (``{"jax": ..., "torch": ...}``);
    what is missing runs in its own worker."""
    from benchmarks.speed.workers import run_worker

    tspec = spec_from_args(args)
    spec = dict(base_spec, matmul_sizes=[], **tspec)
    out = {"size": args.ttt_size, "target": args.ttt_target, "pair": f"{CONTENT_IMAGE} + {STYLE_IMAGE}",
           "init": "content", "max_steps": tspec["max_steps"], "warnings": []}
    res = attached.get("jax")
    if res is None:
        log(f"time to target {args.ttt_target:g} at {args.ttt_size} px: JAX ...")
        res = run_worker("ttt_jax", spec, xla_flags)
    if "error" in res:
        out["warnings"].append(f"time to target (JAX) failed: {res['error']}")
        log(out["warnings"][-1] + "\n" + res.get("output_tail", ""))
        return out
    out["images"], out["weights"] = res["images"], res["weights"]
    out["jax"] = {k: res[k] for k in ("adam", "lbfgs")}
    if with_torch:
        res = attached.get("torch")
        if res is None:
            log("time to target: PyTorch ...")
            res = run_worker("ttt_torch", spec, None)
        if "error" in res:
            out["warnings"].append(f"time to target (PyTorch) failed: {res['error']}")
        else:
            out["torch"] = {k: res[k] for k in ("adam", "lbfgs")}
            out["ratios"] = {}
            for opt in ("adam", "lbfgs"):
                j, t = out["jax"][opt], out["torch"][opt]
                out["ratios"][opt] = {k: (round(j[k] / t[k], 3) if j[k] and t[k] else None)
                                      for k in ("seconds", "seconds_with_compile")}
    for impl in ("jax", "torch"):
        for opt in ("adam", "lbfgs"):
            r = out.get(impl, {}).get(opt)
            if r is not None and not r["reached"]:
                out["warnings"].append(
                    f"time to target: {impl} {opt} did not reach {args.ttt_target:g} within "
                    f"{tspec['max_steps'][opt]} updates (last loss {r['final_loss']:.4g})")
    return out
