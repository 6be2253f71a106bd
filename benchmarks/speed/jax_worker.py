"""The JAX side, run in a worker process: the compiled Adam step and L-BFGS iterations through
the library's driver, per size, with peak memory and the FLOPs of the step.

* Adam: :func:`neuralstyle.optim.make_step` + ``jax.jit`` (compiled ahead of time, so compile time
  is apart), ``optax.adam(0.02, b1=0.99, eps=0.1)``, warm-up then timed steps.
* L-BFGS: :class:`neuralstyle.optim.LBFGS` through :func:`neuralstyle.optim.driver.optimize` (N = 1,
  as ``stylize`` runs it; its peak memory is that call's), then one ``direction`` and one
  ``trial`` call of :func:`neuralstyle.optim.make_lbfgs_functions`, for the breakdown.

On an accelerator the peak RSS is the host's; ``gpu_peak_mib`` is then the device allocator's
``peak_bytes_in_use`` of the whole process so far (XLA has no per-phase reset), read after each
size: with one size per worker, as ``benchmarks.speed`` runs them, it is that size's peak.
"""

from __future__ import annotations

import os
import time

from benchmarks.harness import Load, PeakMemory, log, stats, timed
from benchmarks.speed.common import build_objective, load_images, time_steps
from benchmarks.speed.flops import analytic_flops, jnp_matmul_yardstick, xla_flops


def prepare(objective, params, spec: dict, size: int):
    """``(targets, content image (1, H, W, 3), description, seconds)`` at ``size``; seconds: the
    targets' compile and computation, as ``neuralstyle.stylize`` does them (the images' loading
    left out)."""
    import jax
    import jax.numpy as jnp

    content, style, desc = load_images(spec, size)
    t = time.perf_counter()
    targets = jax.block_until_ready(
        jax.jit(objective.targets)(params, jnp.asarray(content)[None], jnp.asarray(style)[None]))
    return targets, jnp.asarray(content, jnp.float32)[None], desc, time.perf_counter() - t


def adam():
    import optax

    return optax.adam(0.02, b1=0.99, eps=0.1)


def compile_adam(objective, params, targets, image):
    """``(compiled step, initial optimizer state, compile seconds)``."""

    from neuralstyle.optim import make_step
    from neuralstyle.optim.driver import compile_ahead

    tx = adam()
    state = tx.init(image)
    t = time.perf_counter()
    compiled = compile_ahead(make_step(tx), objective, image, state, params, targets)  # as the driver compiles
    return compiled, state, time.perf_counter() - t


def time_adam(objective, params, targets, image, warmup: int, steps: int) -> dict:
    import jax

    with PeakMemory() as compile_mem:
        compiled, opt_state, compile_s = compile_adam(objective, params, targets, image)
    current = [image, opt_state]

    def step():
        x, s, loss, _ = jax.block_until_ready(compiled(objective, *current, params, targets))
        current[:] = x, s
        return float(loss)

    with PeakMemory() as mem:
        result = time_steps(step, warmup, steps)
    return {"compile_s": round(compile_s, 2), **result, "xla_flops": xla_flops(compiled),
            "memory": mem.result(), "compile_memory": compile_mem.result(),
            "program_buffers_mib": program_buffers_mib(compiled)}


def run_lbfgs(objective, params, targets, image, steps: int, monitor=None):
    """neuralstyle's L-BFGS through the library's driver: the
    :class:`~neuralstyle.optim.driver.LoopResult` of one run.  ``monitor``: the driver's
    :class:`~neuralstyle.optim.driver.Monitor` (default: a silent one; the time to target passes
    one that stops below the target or takes snapshots)."""
    import jax
    import jax.numpy as jnp

    from neuralstyle.optim import LBFGS
    from neuralstyle.optim.driver import Monitor, optimize, stack_runs

    return optimize(stack_runs([objective]), LBFGS(), image[None], jnp.stack([jax.random.key(0)]),
                    params, targets, steps, monitor or Monitor(steps, show=False))


def time_lbfgs(objective, params, targets, image, warmup: int, steps: int) -> dict:
    """Time L-BFGS iterations through the driver; then, after its peak memory is taken, one trial
    evaluation (compiled separately) and one direction call with as many curvature pairs as the
    run's last iteration held (synthetic pairs), synchronized, for the breakdown."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from neuralstyle.optim import LBFGS, make_lbfgs_functions
    from neuralstyle.optim.lbfgs import init_state

    with PeakMemory() as mem, Load() as load:
        loop = run_lbfgs(objective, params, targets, image, warmup + steps)
    times = list(np.diff(loop.elapsed))  # one entry per iteration (a pass of the driver)
    iterations = len(loop.histories[0]) - 1
    opt = LBFGS()
    direction, trial_fn = make_lbfgs_functions(opt)
    final = jnp.asarray(loop.images[0])[None]
    zeros = jnp.zeros_like(final)
    trial = jax.jit(trial_fn).lower(objective, final, zeros, zeros, 0.0, params, targets).compile()
    at = trial(objective, final, zeros, zeros, 0.0, params, targets)
    pairs = min(max(iterations - 1, 0), opt.memory_size)  # the pairs of the run's last direction
    state = init_state(final[None])
    for j in range(pairs):  # y = s: pairs with positive curvature, all kept (the timed call adds the last)
        x = final[None] + 1e-3 * (j + 1)
        _, state = direction(at.grad[None] + (x - final[None]), state, x)
    d_times, t_times = [], []
    for _ in range(2 if image.size <= 3 * 512 * 512 else 1):  # 1 above 512 px: each takes seconds
        (d, state), seconds = timed(direction, at.grad[None], state, final[None])
        d_times.append(seconds)
        t_times.append(timed(trial, objective, final, at.grad, d[0], 1.0, params, targets)[1])
    return {"compile_s": round(loop.compile_time, 2), "warmup": warmup, **stats(times[warmup:]),
            "iterations": iterations,
            "evaluations_per_iteration": round((int(loop.evaluations[0]) - 1) / max(iterations, 1), 2),
            "trial_ms": round(1000 * min(t_times), 1), "direction_ms": round(1000 * min(d_times), 1),
            "direction_pairs": pairs, "xla_flops_trial": xla_flops(trial), "xla_flops_direction": None,
            "direction_flops_analytic": (8 * pairs + 9) * int(final.size),
            "final_loss": loop.histories[0][-1][0], "foreign_cpu_load": load.foreign,
            "memory_size": opt.memory_size, "memory": mem.result(),
            "memory_note": "compile and iterations together (one driver call); the breakdown after it"}


def program_buffers_mib(compiled) -> dict | None:
    """What the compiled program itself holds while it runs, from XLA's buffer assignment (MiB):
    its temporaries (activations, gradients, convolution workspaces), arguments and outputs.
    On a GPU this is the step's real footprint; the allocator's peak can be far above it, because
    XLA's convolution autotuning (at compile time) tries algorithms with large workspaces."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  not every backend or version offers it
        return None
    if analysis is None:
        return None
    return {k: round(getattr(analysis, f"{k}_size_in_bytes") / 2**20, 1) for k in ("temp", "argument", "output")}


def device_peak_mib():
    """The first device's allocator peak since the process started (MiB), or ``None`` on the CPU."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
    return None if peak is None else round(peak / 2**20, 1)


def worker(spec: dict) -> dict:
    """Adam (and L-BFGS when ``spec["lbfgs_steps"]``) at every size of ``spec["sizes"]``; then
    the time to target (``spec["ttt"]``) and the ``jnp.matmul`` yardstick (``spec["matmul_sizes"]``)."""
    import jax
    import jax.numpy as jnp

    from benchmarks.speed import ttt

    result = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__,
              "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
              "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
              "sizes": {}}
    t0 = time.perf_counter()
    objective, weights_source, warnings = build_objective(spec)
    result.update(weights=weights_source, warnings=warnings, build_s=round(time.perf_counter() - t0, 2))
    objective = jax.tree.map(jnp.asarray, objective)  # weight leaves as device arrays, as stylize passes them
    params = objective.params

    for size in spec["sizes"]:
        targets, image, desc, _ = prepare(objective, params, spec, size)
        out = result["sizes"][str(size)] = {"images": desc, "shape": list(image.shape[1:]),
                                            "analytic_flops": analytic_flops(image.shape[1:], objective)}
        a = out["adam"] = time_adam(objective, params, targets, image, spec["warmup"], spec["steps"])
        log(f"  [jax {size}px] Adam: compile {a['compile_s']} s, median {a['median_ms']:.0f} ms/step, "
            f"peak RSS {a['memory']['peak_rss_mib']} MiB, foreign CPU load {a['foreign_cpu_load']}")
        value, terms = jax.jit(objective)(params, image, targets)  # for the PyTorch check
        out["objective_at_content"] = {"total": float(value), **{k: float(v) for k, v in terms.items()}}
        if spec.get("lbfgs_steps", 0) > 0:
            lb = out["lbfgs"] = time_lbfgs(objective, params, targets, image, spec.get("lbfgs_warmup", 1),
                                           spec["lbfgs_steps"])
            log(f"  [jax {size}px] L-BFGS: compile {lb['compile_s']} s, median {lb['median_ms']:.0f} "
                f"ms/iteration, {lb['evaluations_per_iteration']} evaluations/iteration")
        out["gpu_peak_mib"] = device_peak_mib()

    if spec.get("ttt"):  # in this process: same objective, images loaded again
        result["ttt"] = ttt.jax_run(dict(spec, **spec["ttt"]), (objective, weights_source, warnings))
    if spec.get("matmul_sizes"):
        result["jnp_matmul_gflops"] = jnp_matmul_yardstick(spec["matmul_sizes"], spec["matmul_repeats"])
    return result
