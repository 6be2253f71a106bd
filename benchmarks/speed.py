"""Speed benchmark of one style-transfer step on the CPU: ``python -m benchmarks.speed``.

Measures, for VGG19 (ImageNet weights) and the TensorFlow-tutorial recipe (the
:meth:`neuralstyle.StyleObjective.build` defaults: content ``block5_conv2``, style
``block1_conv1..block5_conv1``, weights 1e4 / 1e-2 / 30, Gram "hw", content "mean", TV "l1"),
at 256, 512 and 1024 px by default:

1. the compiled Adam step (:func:`neuralstyle.optim.make_step` + ``jax.jit``,
   ``optax.adam(0.02, b1=0.99, eps=0.1)``): AOT compile time, then warm-up and timed steps;
2. one L-BFGS iteration (:class:`neuralstyle.optim.LBFGS` through
   :func:`neuralstyle.optim.make_lbfgs_functions`, driven exactly like ``stylize``'s loop:
   one ``direction`` call plus the line-search ``trial`` evaluations, usually one);
3. yardstick A: fp32 matmul throughput of NumPy's BLAS and of ``jnp.matmul`` on XLA CPU (the
   physical limit: every step's achieved GFLOP/s is reported as a fraction of it);
4. yardstick B: the same Adam step and ``torch.optim.LBFGS`` in PyTorch eager
   (:mod:`benchmarks.torch_reference`, same weights and losses; its objective is checked against
   the JAX objective), if torch is installed: every row's time as a ratio to PyTorch's;
5. peak memory of every phase (:class:`PeakMemory`: VmHWM of the worker process, reset per phase);
6. time to target: seconds (compile excluded and included) and updates until the loss falls
   below the fixed ``TTT_TARGET`` on astronaut + great_wave at ``TTT_SIZE`` px, Adam and L-BFGS,
   JAX and PyTorch, from the same start;
7. the FLOPs of one step (XLA's cost analysis, and an analytic count), and how time per step and
   memory grow with the pixel count (least-squares fit ``a + b * pixels`` with residuals);
8. XLA_FLAGS variants, each in a fresh subprocess (XLA reads XLA_FLAGS once, at start-up).

Every measurement runs in a subprocess of this script (``--worker``), so that XLA_FLAGS,
thread pools, memory high-water marks and the two frameworks never share a process.  Results go
to ``benchmarks/results/speed.json`` and ``speed.md`` (or ``--out DIR``).

Examples::

    python -m benchmarks.speed                      # full run (about 15 minutes on 2 quiet cores)
    python -m benchmarks.speed --variants none      # without the XLA_FLAGS variants (about 8)
    python -m benchmarks.speed --quick --out /tmp/b  # smoke test: 64 px, 2 steps, about a minute
    python -m benchmarks.speed --sizes 256 --variants none --xla-flags "--xla_cpu_enable_fast_math=true"
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import (  # noqa: F401  (machine_busy is part of this module's API)
    IMAGES as DEFAULT_IMAGE_DIR,
    REPO,
    RESULTS as DEFAULT_OUT,
    PeakMemory,
    cpu_snapshot,
    foreign_load,
    log,
    machine_busy,
    machine_info,
    stats,
    versions,
    wait_until_quiet,
)
CONTENT_IMAGE, STYLE_IMAGE = "astronaut", "great_wave"
TORCH_HINT = "pip install torch==2.13.0"

# Time to target: a fixed loss on a fixed pair (astronaut content, great_wave style, long edge
# 256 px, content initialization, VGG19 ImageNet weights, the TF-tutorial objective).  5e7 is
# about where Adam (0.02, b1=0.99, eps=0.1) is after 30-35 steps (speed.json / lbfgs.json of
# earlier runs: 7.0e7 after 14 steps, 5.3e7 after 30); fixed here, not chosen per run.
TTT_SIZE = 256
TTT_TARGET = 5.0e7
TTT_MAX_STEPS = (150, 60)  # Adam steps, L-BFGS iterations

# XLA_FLAGS variants tried by default (name, XLA_FLAGS, extra environment, note).  A variant
# whose flags this jaxlib does not know is reported as unavailable and not run (XLA aborts on
# unknown flags).
VARIANTS = [
    ("default (repeat)", "", {}, "same as the main run: shows the run-to-run spread"),
    ("no YNNPACK (Eigen convs)", "--xla_cpu_experimental_ynn_fusion_type=", {},
     "empty YNN fusion list: convolutions and dots go back to XLA's own Eigen-based thunks"),
    ("YNNPACK dots only", "--xla_cpu_experimental_ynn_fusion_type=individual_dot", {},
     "convolutions on Eigen, single dots on YNNPACK"),
    ("no YNNPACK, single-threaded Eigen",
     "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_multi_thread_eigen=false", {},
     "Eigen convolutions without the intra-op thread pool"),
    ("xla_cpu_multi_thread_eigen=false", "--xla_cpu_multi_thread_eigen=false", {}, ""),
    ("xla_cpu_use_xnnpack=false", "--xla_cpu_use_xnnpack=false", {}, ""),
    ("oneDNN (use_onednn + onednn_custom_call)",
     "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true", {}, ""),
    ("xla_cpu_use_mkl_dnn=true", "--xla_cpu_use_mkl_dnn=true", {}, "the pre-2023 flag name"),
    ("xla_cpu_use_thunk_runtime=false", "--xla_cpu_use_thunk_runtime=false", {},
     "the legacy (non-thunk) CPU runtime"),
    ("xla_cpu_enable_fast_math=true", "--xla_cpu_enable_fast_math=true", {}, ""),
    ("xla_cpu_prefer_vector_width=512", "--xla_cpu_prefer_vector_width=512", {}, ""),
    ("XNN graph fusion GREEDY",
     "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY", {}, ""),
    ("jax_default_matmul_precision=bfloat16", "", {"JAX_DEFAULT_MATMUL_PRECISION": "bfloat16"},
     "a jax config option, not an XLA flag"),
    ("bf16 experiment (Keras mixed_bfloat16)", "", {"_DTYPE_POLICY": "mixed_bfloat16"},
     "NOT acceptable for results: features and losses in bfloat16"),
]


# ============================================================================ helpers


MEMORY_METHOD = ("peak resident set size (VmHWM in /proc/self/status) of the worker subprocess, "
                 "reset through /proc/self/clear_refs before each phase, so a phase's peak "
                 "starts from the memory the process already holds (Python, JAX/Keras or torch, "
                 "VGG19 weights, targets); 'above baseline' subtracts the RSS just before the phase")
MEMORY_METHOD_FALLBACK = ("peak resident set size of the worker subprocess since it started "
                          "(resource.getrusage(RUSAGE_SELF).ru_maxrss; /proc/self/clear_refs "
                          "could not reset it, so later phases report the maximum so far)")


def _best_matmul_gflops(fn, n: int, repeats: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return round(2.0 * n**3 / best / 1e9, 1)


def numpy_matmul_yardstick(sizes=(2048, 4096), repeats=5) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for n in sizes:
        a = rng.random((n, n), dtype=np.float32)
        b = rng.random((n, n), dtype=np.float32)
        out[str(n)] = _best_matmul_gflops(lambda: a @ b, n, repeats)
    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")
        dep = cfg.get("Build Dependencies", {}).get("blas", {})
        blas = f"{dep.get('name', '?')} {dep.get('version', '')}".strip()
    except Exception:  # pragma: no cover - older NumPy
        pass
    return {"gflops": out, "best_gflops": max(out.values()), "library": blas,
            "numpy": np.__version__}


def _load_images(spec: dict, size: int):
    """Content and style images (H, W, 3) in [0, 1] and a description of what they are."""
    import numpy as np

    if spec["images"] == "photo":
        try:
            import neuralstyle

            content, style = neuralstyle.load_content_and_style(
                CONTENT_IMAGE, STYLE_IMAGE, size=size, image_dir=spec["image_dir"])
            return content, style, (f"content {CONTENT_IMAGE} {content.shape[1]}x{content.shape[0]}, "
                                    f"style {STYLE_IMAGE} {style.shape[1]}x{style.shape[0]} (W x H)")
        except Exception as err:  # no network and no local copy
            log(f"WARNING: could not load the example images ({err}); using random images")
    rng = np.random.default_rng(size)
    content = rng.random((size, size, 3), dtype=np.float32)
    style = rng.random((size, size, 3), dtype=np.float32)
    return content, style, f"random square images {size}x{size} (seeded)"


def hlo_summary(compiled) -> dict:
    """A fingerprint of the optimized HLO (metadata stripped) and where its convolutions went."""
    import hashlib

    try:
        text = compiled.as_text()
    except Exception:
        return {}
    entry = text[text.find("ENTRY"):]
    body = re.sub(r", metadata=\{[^}]*\}", "", text)
    return {"hash": hashlib.sha1(body.encode()).hexdigest()[:12],
            "entry_convolutions": len(re.findall(r" convolution\(", entry)),
            "ynn_fusions": entry.count('"kind":"__ynn_fusion"'),
            "onednn_custom_calls": len(re.findall(r'custom_call_target="__onednn', text))}


def _build_objective(spec: dict):
    import neuralstyle

    warnings = []
    policy = spec.get("dtype_policy")
    if policy:
        import keras

        keras.config.set_dtype_policy(policy)
    weights = spec["weights"]
    try:
        backbone = neuralstyle.VGG("vgg19", weights=None if weights == "random" else weights)
    except Exception as err:
        msg = f"WARNING: VGG19 weights {weights!r} unavailable ({err}); using random weights"
        log(msg)
        warnings.append(msg)
        backbone = neuralstyle.VGG("vgg19", weights=None)
    return neuralstyle.StyleObjective.build(backbone), backbone.weights_source, warnings


def analytic_flops(image_shape, objective) -> dict:
    """FLOPs of one value-and-gradient evaluation, counted from the layer shapes.

    Every 3x3 convolution up to the deepest requested layer costs ``2*9*Cin*Cout*H*W`` forward
    and the same again for the gradient with respect to its input (no weight gradients are
    needed), so convolutions cost 2x their forward FLOPs.  Each style layer's Gram matrix costs
    ``2*H*W*C^2`` forward and the same backward.  Element-wise work (ReLU, pooling, losses,
    Adam) is ignored.
    """
    h, w = image_shape[:2]
    conv_fwd = gram = 0.0
    style_layers = set(objective.style_layers)
    for layer in objective.extractor.model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            kh, kw, cin, cout = layer.kernel.shape
            conv_fwd += 2.0 * kh * kw * cin * cout * h * w
            if layer.name in style_layers:
                gram += 2.0 * 2.0 * h * w * cout * cout
        elif kind in ("MaxPooling2D", "MaxPool2x2", "AveragePooling2D"):
            h, w = h // 2, w // 2
    total = 2.0 * conv_fwd + gram
    return {"conv_forward_gflop": round(conv_fwd / 1e9, 3), "gram_gflop": round(gram / 1e9, 3),
            "total_gflop": round(total / 1e9, 3),
            "formula": "2 x sum_conv(2*9*Cin*Cout*H*W) + sum_style(4*H*W*C^2)"}


def _cost_flops(compiled) -> float | None:
    try:
        ca = compiled.cost_analysis()
        if isinstance(ca, (list, tuple)):
            ca = ca[0]
        return float(ca["flops"])
    except Exception:
        return None


# ============================================================================ workers


def worker_jax(spec: dict) -> dict:
    """Adam step (and optionally L-BFGS iterations and a matmul yardstick) in JAX/XLA."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from neuralstyle.optim import make_step

    result = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__,
              "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
              "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
              "sizes": {}}
    t0 = time.perf_counter()
    objective, weights_source, warnings = _build_objective(spec)
    result.update(weights=weights_source, warnings=warnings,
                  build_s=round(time.perf_counter() - t0, 2))
    objective = jax.tree.map(jnp.asarray, objective)  # weight leaves as device arrays, as stylize passes them
    params = objective.params
    tx = optax.adam(0.02, b1=0.99, eps=0.1)

    for size in spec["sizes"]:
        out = result["sizes"][str(size)] = {}
        content, style, desc = _load_images(spec, size)
        out["images"] = desc
        out["shape"] = list(content.shape)
        out["analytic_flops"] = analytic_flops(content.shape, objective)
        targets = jax.jit(objective.targets)(params, jnp.asarray(content)[None],
                                              jnp.asarray(style)[None])
        image = jnp.asarray(content, jnp.float32)[None]

        # ---- Adam
        opt_state = tx.init(image)
        with PeakMemory() as compile_mem:
            t = time.perf_counter()
            compiled = jax.jit(make_step(tx)).lower(objective, image, opt_state, params,
                                                   targets).compile()
            compile_s = time.perf_counter() - t
        losses, times = [], []
        x, s = image, opt_state
        with PeakMemory() as step_mem:
            for i in range(spec["warmup"] + spec["steps"]):
                if i == spec["warmup"]:
                    snap = cpu_snapshot()
                t = time.perf_counter()
                x, s, loss, _ = jax.block_until_ready(compiled(objective, x, s, params, targets))
                times.append(time.perf_counter() - t)
                losses.append(float(loss))
        adam = {"compile_s": round(compile_s, 2), "warmup": spec["warmup"],
                "warmup_ms": [round(1000 * v, 1) for v in times[: spec["warmup"]]],
                **stats(times[spec["warmup"]:]), "xla_flops": _cost_flops(compiled),
                "hlo": hlo_summary(compiled),
                "losses": losses, "foreign_cpu_load": foreign_load(snap, cpu_snapshot()),
                "memory": step_mem.result(), "compile_memory": compile_mem.result()}
        out["adam"] = adam
        log(f"  [jax {size}px] Adam: compile {adam['compile_s']} s, median "
             f"{adam['median_ms']:.0f} ms/step, peak RSS {adam['memory']['peak_rss_mib']} MiB, "
             f"foreign CPU load {adam['foreign_cpu_load']}")
        del compiled, x, s

        # ---- objective at the content image (for the PyTorch check)
        value, terms = jax.jit(objective)(params, image, targets)
        out["objective_at_content"] = {"total": float(value), **{k: float(v) for k, v in terms.items()}}

        # ---- L-BFGS
        if spec.get("lbfgs_steps", 0) > 0:
            out["lbfgs"] = _lbfgs_iterations(objective, params, targets, image, spec)
            lb = out["lbfgs"]
            log(f"  [jax {size}px] L-BFGS: compile {lb['compile_s']} s, median "
                 f"{lb['median_ms']:.0f} ms/iteration, {lb['evaluations_per_iteration']} "
                 f"evaluations/iteration")

    if spec.get("ttt"):  # time to target in this process (same objective, images loaded again)
        result["ttt"] = worker_ttt_jax(dict(spec, **spec["ttt"]), (objective, weights_source, warnings))
    if spec.get("matmul_sizes"):
        mm = {}
        f = jax.jit(jnp.matmul)
        for n in spec["matmul_sizes"]:
            a = jnp.asarray(np.random.default_rng(n).random((n, n), dtype=np.float32))
            mm[str(n)] = _best_matmul_gflops(lambda: f(a, a).block_until_ready(), n,
                                             spec["matmul_repeats"])
        result["jnp_matmul_gflops"] = mm
    return result


def _run_lbfgs(objective, params, targets, image, steps: int, stop_below=None):
    """neuralstyle's L-BFGS through the library's own driver (:func:`neuralstyle.optim.driver.optimize`,
    N = 1, as ``stylize`` runs it): the :class:`~neuralstyle.optim.driver.LoopResult`."""
    import jax
    import jax.numpy as jnp

    from neuralstyle.optim.driver import Monitor, optimize, stack_runs
    from neuralstyle.optim import LBFGS

    return optimize(stack_runs([objective]), LBFGS(), image[None], jnp.stack([jax.random.key(0)]),
                    params, targets, steps, Monitor(steps, show=False, stop_below=stop_below))


def _lbfgs_iterations(objective, params, targets, image, spec) -> dict:
    """Time L-BFGS iterations through the library's driver; then one trial evaluation and one
    direction call alone (compiled separately, synchronized) for the breakdown."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from neuralstyle.optim import LBFGS, make_lbfgs_functions

    warm, n = spec.get("lbfgs_warmup", 1), spec["lbfgs_steps"]
    with PeakMemory() as step_mem:
        snap = cpu_snapshot()
        loop = _run_lbfgs(objective, params, targets, image, warm + n)
    load = foreign_load(snap, cpu_snapshot())
    times = list(np.diff(loop.elapsed))  # one entry per iteration (a pass of the driver)
    iterations = len(loop.histories[0]) - 1
    opt = LBFGS()
    direction_fn, trial_fn = make_lbfgs_functions(opt)
    final = jnp.asarray(loop.images[0])[None]
    zeros = jnp.zeros_like(final)
    state = opt.direction_transform.init(final)
    trial = jax.jit(trial_fn).lower(objective, final, zeros, zeros, 0.0, params, targets).compile()
    direction = jax.jit(direction_fn).lower(zeros, state, final).compile()
    at = trial(objective, final, zeros, zeros, 0.0, params, targets)
    d_times, t_times = [], []
    for _ in range(2 if image.size <= 3 * 512 * 512 else 1):  # 1 above 512 px: each takes seconds
        t = time.perf_counter()
        d, _ = jax.block_until_ready(direction(at.grad, state, final))
        d_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        jax.block_until_ready(trial(objective, final, at.grad, d, 1.0, params, targets))
        t_times.append(time.perf_counter() - t)
    return {"compile_s": round(loop.compile_time, 2), "warmup": warm, **stats(times[warm:]),
            "iterations": iterations,
            "evaluations_per_iteration": round((int(loop.evaluations[0]) - 1) / max(iterations, 1), 2),
            "trial_ms": round(1000 * min(t_times), 1), "direction_ms": round(1000 * min(d_times), 1),
            "xla_flops_trial": _cost_flops(trial), "xla_flops_direction": _cost_flops(direction),
            "final_loss": loop.histories[0][-1][0], "foreign_cpu_load": load,
            "memory_size": opt.memory_size, "memory": step_mem.result(),
            "memory_note": "compile and iterations together (one driver call)"}


def worker_torch(spec: dict) -> dict:
    """The Adam step in PyTorch eager, with the JAX objective as a correctness check."""
    import jax
    import jax.numpy as jnp

    import torch

    from benchmarks import torch_reference as tr

    threads = tr.set_threads(os.cpu_count())
    result = {"torch": torch.__version__, "threads": threads, "sizes": {},
              "mkldnn": bool(torch.backends.mkldnn.is_available())}
    objective, weights_source, warnings = _build_objective(spec)
    result.update(weights=weights_source, warnings=warnings)
    params = objective.params
    tobj = tr.TorchObjective.from_jax_objective(objective)
    for size in spec["sizes"]:
        out = result["sizes"][str(size)] = {}
        content, style, desc = _load_images(spec, size)
        out["images"] = desc
        targets = jax.jit(objective.targets)(params, jnp.asarray(content)[None],
                                              jnp.asarray(style)[None])
        jax_value, jax_terms = jax.jit(objective)(params, jnp.asarray(content)[None], targets)
        c, s = tr.to_nchw(content), tr.to_nchw(style)
        tobj.set_targets(c, s)
        with torch.no_grad():
            tterms = {k: float(v) for k, v in tobj.terms(c).items()}
        tval = sum(tterms.values())
        out["check"] = {
            "jax_objective": float(jax_value), "torch_objective": tval,
            "relative_difference": abs(tval - float(jax_value)) / abs(float(jax_value)),
            "jax_terms": {k: float(v) for k, v in jax_terms.items()}, "torch_terms": tterms,
        }
        log(f"  [torch {size}px] objective at the content image: JAX {float(jax_value):.7g}, "
             f"torch {tval:.7g} (relative difference {out['check']['relative_difference']:.2e})")
        if spec.get("channels_last"):
            tobj.features.to(memory_format=torch.channels_last)
            c = c.contiguous(memory_format=torch.channels_last)
        losses, times = [], []
        with PeakMemory() as mem:
            x, step = tr.make_adam_step(tobj, c)
            for i in range(spec["warmup"] + spec["steps"]):
                if i == spec["warmup"]:
                    snap = cpu_snapshot()
                t = time.perf_counter()
                losses.append(float(step()))
                times.append(time.perf_counter() - t)
        out["adam"] = {"warmup": spec["warmup"],
                       "warmup_ms": [round(1000 * v, 1) for v in times[: spec["warmup"]]],
                       **stats(times[spec["warmup"]:]), "losses": losses,
                       "foreign_cpu_load": foreign_load(snap, cpu_snapshot()),
                       "memory": mem.result()}
        log(f"  [torch {size}px] Adam: median {out['adam']['median_ms']:.0f} ms/step, peak RSS "
             f"{out['adam']['memory']['peak_rss_mib']} MiB, foreign CPU load {out['adam']['foreign_cpu_load']}")
        del x, step
        if spec.get("lbfgs_steps", 0) > 0:
            warm, n = spec.get("lbfgs_warmup", 1), spec["lbfgs_steps"]
            times, evals = [], []
            with PeakMemory() as mem:
                lb = tr.LBFGSRun(tobj, c)
                for i in range(warm + n):
                    if i == warm:
                        snap = cpu_snapshot()
                    before = lb.evaluations
                    t = time.perf_counter()
                    lb.step()
                    times.append(time.perf_counter() - t)
                    evals.append(lb.evaluations - before)
            out["lbfgs"] = {"warmup": warm, **stats(times[warm:]), "evaluations": evals[warm:],
                            "evaluations_per_iteration": round(sum(evals[warm:]) / n, 2),
                            "final_loss": lb.losses[-1], "foreign_cpu_load": foreign_load(snap, cpu_snapshot()),
                            "memory": mem.result(), "optimizer": tr.LBFGS_DESC}
            log(f"  [torch {size}px] L-BFGS: median {out['lbfgs']['median_ms']:.0f} ms/iteration, "
                 f"{out['lbfgs']['evaluations_per_iteration']} evaluations/iteration")
            del lb
    if spec.get("ttt"):
        result["ttt"] = worker_ttt_torch(dict(spec, **spec["ttt"]), (objective, weights_source, warnings))
    if spec.get("matmul_sizes"):
        mm = {}
        for n in spec["matmul_sizes"]:
            a = torch.rand(n, n, generator=torch.Generator().manual_seed(n))
            mm[str(n)] = _best_matmul_gflops(lambda: a @ a, n, spec["matmul_repeats"])
        result["torch_matmul_gflops"] = mm
    return result


def _ttt_result(target, losses, reached, compile_s, snap, evaluations=None) -> dict:
    """``reached``: ``(updates, seconds)`` of the first iterate whose loss is below ``target``."""
    steps, seconds = reached if reached else (None, None)
    return {"target": target, "reached": reached is not None, "steps": steps,
            "seconds": None if seconds is None else round(seconds, 3),
            "compile_s": None if compile_s is None else round(compile_s, 3),
            "seconds_with_compile": None if seconds is None else round(seconds + (compile_s or 0.0), 3),
            "iterates_evaluated": len(losses), "evaluations": evaluations,
            "final_loss": losses[-1] if losses else None, "losses": losses,
            "foreign_cpu_load": foreign_load(snap, cpu_snapshot())}


def worker_ttt_jax(spec: dict, built=None) -> dict:
    """Time to target in JAX: Adam and neuralstyle's L-BFGS from the content image until the loss
    of the current iterate is below ``spec["target"]`` (at most ``spec["max_steps"]`` updates).
    ``built``: the ``_build_objective`` result of a worker that already has it."""
    import jax
    import jax.numpy as jnp
    import optax

    from neuralstyle.optim import make_step

    objective, weights_source, warnings = built or _build_objective(spec)
    objective = jax.tree.map(jnp.asarray, objective)
    params, target, size = objective.params, spec["target"], spec["size"]
    content, style, desc = _load_images(spec, size)
    targets = jax.jit(objective.targets)(params, jnp.asarray(content)[None], jnp.asarray(style)[None])
    image = jnp.asarray(content, jnp.float32)[None]
    result = {"weights": weights_source, "warnings": warnings, "images": desc}

    tx = optax.adam(0.02, b1=0.99, eps=0.1)
    t = time.perf_counter()
    state = tx.init(image)
    compiled = jax.jit(make_step(tx)).lower(objective, image, state, params, targets).compile()
    compile_s = time.perf_counter() - t
    x, losses, reached = image, [], None
    snap = cpu_snapshot()
    t0 = time.perf_counter()
    for i in range(spec["max_steps"]["adam"] + 1):
        new_x, state, loss, _ = compiled(objective, x, state, params, targets)  # loss of x (i updates)
        losses.append(float(loss))
        if losses[-1] < target:
            reached = (i, time.perf_counter() - t0)
            break
        x = new_x
    result["adam"] = _ttt_result(target, losses, reached, compile_s, snap, evaluations=len(losses))
    log(f"  [jax ttt {size}px] Adam: {result['adam']['steps']} steps, {result['adam']['seconds']} s")
    del compiled

    snap = cpu_snapshot()
    loop = _run_lbfgs(objective, params, targets, image, spec["max_steps"]["lbfgs"], stop_below=target)
    losses, evaluations, compile_s = [h[0] for h in loop.histories[0]], int(loop.evaluations[0]), loop.compile_time
    reached = None
    if losses[-1] < target:  # the driver's clock starts after compiling, as t0 did here
        reached = (len(losses) - 1, loop.times[0][-1])
    result["lbfgs"] = _ttt_result(target, losses, reached, compile_s, snap, evaluations)
    log(f"  [jax ttt {size}px] L-BFGS: {result['lbfgs']['steps']} iterations, "
         f"{result['lbfgs']['seconds']} s")
    return result


def worker_ttt_torch(spec: dict, built=None) -> dict:
    """Time to target of the PyTorch reference: Adam and ``torch.optim.LBFGS`` (see
    :class:`benchmarks.torch_reference.LBFGSRun`), same objective, start and target as JAX."""
    from benchmarks import torch_reference as tr

    tr.set_threads(os.cpu_count())
    objective, weights_source, warnings = built or _build_objective(spec)  # torch copies its weights
    target, size = spec["target"], spec["size"]
    content, style, desc = _load_images(spec, size)
    tobj = tr.TorchObjective.from_jax_objective(objective)
    c = tr.to_nchw(content)
    tobj.set_targets(c, tr.to_nchw(style))
    result = {"weights": weights_source, "warnings": warnings, "images": desc}

    x, step = tr.make_adam_step(tobj, c)
    losses, reached = [], None
    snap = cpu_snapshot()
    t0 = time.perf_counter()
    for i in range(spec["max_steps"]["adam"] + 1):
        losses.append(float(step()))  # loss of the image after i updates
        if losses[-1] < target:
            reached = (i, time.perf_counter() - t0)
            break
    result["adam"] = _ttt_result(target, losses, reached, None, snap, evaluations=len(losses))
    log(f"  [torch ttt {size}px] Adam: {result['adam']['steps']} steps, {result['adam']['seconds']} s")
    del x, step

    lb = tr.LBFGSRun(tobj, c)
    reached = None
    snap = cpu_snapshot()
    t0 = time.perf_counter()
    for i in range(spec["max_steps"]["lbfgs"] + 1):
        lb.step()  # starts by evaluating the current iterate (after i updates)
        if lb.iterate_losses[-1] < target:
            reached = (i, lb.iterate_times[-1] - t0)
            break
    result["lbfgs"] = _ttt_result(target, lb.iterate_losses, reached, None, snap, lb.evaluations)
    result["lbfgs"]["optimizer"] = tr.LBFGS_DESC
    log(f"  [torch ttt {size}px] L-BFGS: {result['lbfgs']['steps']} iterations, "
         f"{result['lbfgs']['seconds']} s")
    return result


WORKERS = {"jax": worker_jax, "torch": worker_torch, "ttt_jax": worker_ttt_jax,
           "ttt_torch": worker_ttt_torch}


QUIET = {"wait_s": 0.0, "retries": 0, "threshold": 0.15}


def _max_load(result: dict) -> float:
    loads = [0.0]
    for r in list((result.get("sizes") or {}).values()) + [result]:
        for part in ("adam", "lbfgs"):
            if isinstance(r.get(part), dict) and r[part].get("foreign_cpu_load") is not None:
                loads.append(r[part]["foreign_cpu_load"])
    return max(loads)


def run_worker(kind: str, spec: dict, xla_flags: str | None, extra_env: dict | None = None,
               timeout: float = 1800) -> dict:
    """:func:`_run_worker_once`, waiting for a quiet machine first and re-running a measurement
    disturbed by other processes (``--wait-quiet``, ``--retries``)."""
    best: dict = {}
    for attempt in range(QUIET["retries"] + 1):
        if QUIET["wait_s"] > 0:
            wait_until_quiet(QUIET["wait_s"])
        result = _run_worker_once(kind, spec, xla_flags, extra_env, timeout)
        load = _max_load(result)
        result["attempts"] = attempt + 1
        if "error" in result:
            return result
        if not best or load < _max_load(best):  # keep the least disturbed attempt
            best = result
        if load <= QUIET["threshold"]:
            break
        if attempt < QUIET["retries"]:
            log(f"  (other processes used {100 * load:.0f}% of the CPU during the timing: re-running)")
    best["attempts"] = attempt + 1
    return best


def _run_worker_once(kind: str, spec: dict, xla_flags: str | None, extra_env: dict | None = None,
                     timeout: float = 1800) -> dict:
    """Run ``worker_<kind>(spec)`` in a fresh interpreter with the given XLA_FLAGS."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("KERAS_BACKEND", "jax")
    if xla_flags is None:
        env.pop("XLA_FLAGS", None)
    else:
        env["XLA_FLAGS"] = xla_flags
    spec = dict(spec)
    for k, v in (extra_env or {}).items():
        if k == "_DTYPE_POLICY":
            spec["dtype_policy"] = v
        else:
            env[k] = v
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.speed", "--worker", kind,
               "--spec", json.dumps(spec), "--result", str(result_path)]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        wall = time.perf_counter() - t
        for line in proc.stdout.splitlines():
            if line.startswith(("  [", "WARNING")):
                log(line)
        if proc.returncode != 0 or not result_path.exists():
            tail = "\n".join(proc.stdout.strip().splitlines()[-8:])
            return {"error": f"worker exited with status {proc.returncode}", "output_tail": tail}
        result = json.loads(result_path.read_text())
        result["process_wall_s"] = round(wall, 1)
        return result


def ttt_spec(args) -> dict:
    return {"size": args.ttt_size, "target": args.ttt_target,
            "max_steps": {"adam": args.ttt_max_steps[0], "lbfgs": args.ttt_max_steps[1]}}


def time_to_target(args, base_spec: dict, main_flags: str, with_torch: bool,
                   attached: dict) -> dict:
    """Seconds and updates to the fixed target loss, JAX and PyTorch, Adam and L-BFGS.

    ``attached``: results already measured by the main workers at the time-to-target size
    (``{"jax": ..., "torch": ...}``); what is missing runs in its own worker."""
    tspec = ttt_spec(args)
    spec = dict(base_spec, matmul_sizes=[], **tspec)
    out = {"size": args.ttt_size, "target": args.ttt_target, "pair": f"{CONTENT_IMAGE} + {STYLE_IMAGE}",
           "init": "content", "max_steps": tspec["max_steps"], "warnings": []}
    res = attached.get("jax")
    if res is None:
        log(f"time to target {args.ttt_target:g} at {args.ttt_size} px: JAX ...")
        res = run_worker("ttt_jax", spec, main_flags)
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
                out["ratios"][opt] = {
                    k: (round(j[k] / t[k], 3) if j[k] and t[k] else None)
                    for k in ("seconds", "seconds_with_compile")}
    for impl in ("jax", "torch"):
        for opt in ("adam", "lbfgs"):
            r = out.get(impl, {}).get(opt)
            if r is not None and not r["reached"]:
                out["warnings"].append(
                    f"time to target: {impl} {opt} did not reach {args.ttt_target:g} within "
                    f"{tspec['max_steps'][opt]} updates (last loss {r['final_loss']:.4g})")
    return out


def _linear_fit(x: list[float], y: list[float]) -> dict:
    """Least-squares ``y = a + b x`` with residuals, and the exponent ``p`` of ``y ~ x^p``."""
    import numpy as np

    x_, y_ = np.asarray(x, float), np.asarray(y, float)
    (a, b), *_ = np.linalg.lstsq(np.stack([np.ones_like(x_), x_], 1), y_, rcond=None)
    fit = a + b * x_
    p = float(np.polyfit(np.log(x_), np.log(y_), 1)[0]) if len(x_) > 1 else None
    return {"a": float(a), "b": float(b), "fitted": [round(float(v), 2) for v in fit],
            "residuals": [round(float(v), 2) for v in y_ - fit],
            "relative_residuals": [round(float(v), 4) for v in (y_ - fit) / y_],
            "power_law_exponent": None if p is None else round(p, 3)}


def scaling(rows: list[dict]) -> list[dict]:
    """Time per step and peak memory against pixel count, per implementation and optimizer,
    with least-squares fits ``ms = a + b * pixels`` and ``MiB = a + b * pixels``."""
    groups: dict = {}
    for r in rows:
        if r["implementation"].startswith("XLA variant") or "channels_last" in r["implementation"]:
            continue
        groups.setdefault((r["implementation"], r["optimizer"]), []).append(r)
    out = []
    for (impl, opt), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["pixels"])
        entry = {"implementation": impl, "optimizer": opt, "sizes": [r["size"] for r in rs],
                 "pixels": [r["pixels"] for r in rs], "ms_per_step": [r["median_ms"] for r in rs],
                 "ms_per_megapixel": [round(r["median_ms"] / (r["pixels"] / 1e6), 1) for r in rs],
                 "peak_rss_mib": [r["peak_rss_mib"] for r in rs],
                 "above_baseline_mib": [r["above_baseline_mib"] for r in rs]}
        if len(rs) >= 2:
            t = _linear_fit(entry["pixels"], entry["ms_per_step"])
            entry["time_fit"] = dict(t, a_ms=round(t["a"], 1), b_ms_per_megapixel=round(t["b"] * 1e6, 1))
            worst = max(abs(v) for v in t["relative_residuals"])
            entry["time_linear"] = worst < 0.1 if len(rs) >= 3 else None  # 2 points fit any line
            if all(v is not None for v in entry["above_baseline_mib"]):
                m = _linear_fit(entry["pixels"], entry["above_baseline_mib"])
                entry["memory_fit"] = dict(m, a_mib=round(m["a"], 1),
                                           b_mib_per_megapixel=round(m["b"] * 1e6, 1))
        out.append(entry)
    return out


# ============================================================================ XLA flags


_PROBE_CODE = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"


def _probe(xla_flags: str) -> subprocess.CompletedProcess | None:
    env = dict(os.environ, XLA_FLAGS=xla_flags)
    try:
        return subprocess.run([sys.executable, "-c", _PROBE_CODE], env=env, capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None


def known_xla_flags() -> set[str]:
    """Names of XLA flags this jaxlib accepts, from the usage text XLA prints when a known flag
    gets a bad value (it aborts on unknown flags; see :func:`check_flags` for the rest)."""
    proc = _probe("--xla_dump_hlo_as_text=not_a_bool")
    text = "" if proc is None else proc.stdout + proc.stderr
    return set(re.findall(r"--(xla_[a-z0-9_]+)=", text))


def check_flags(xla_flags: str, known: set[str], cache: dict) -> list[str]:
    """The flags of ``xla_flags`` that this jaxlib rejects (each unlisted one is probed)."""
    bad = []
    for flag in shlex.split(xla_flags):
        name = flag.lstrip("-").split("=", 1)[0]
        if name in known:
            continue
        if flag not in cache:
            proc = _probe(flag)
            cache[flag] = proc is not None and proc.returncode == 0
        if not cache[flag]:
            bad.append(name)
    return bad


# ============================================================================ report


def _fmt(v, spec="{:.0f}", dash="–"):
    return dash if v is None else spec.format(v)


def build_rows(report: dict) -> list[dict]:
    blas = report["yardsticks"]["numpy_blas"]["best_gflops"]
    rows = []
    jax_res = report.get("jax", {})
    torch_res = report.get("torch") or {}
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

    step_flops = {}
    for size, r in (jax_res.get("sizes") or {}).items():
        flops = r["adam"]["xla_flops"] or r["analytic_flops"]["total_gflop"] * 1e9
        step_flops[size] = flops
        rows.append(row(size, "Adam", "JAX/XLA (make_step + jit)", r["adam"]["compile_s"],
                        r["adam"], flops))
        trial_flops = None
        if "lbfgs" in r:
            lb = r["lbfgs"]
            it_flops = None
            if lb["xla_flops_trial"]:
                trial_flops = lb["xla_flops_trial"]
                it_flops = (lb["xla_flops_trial"] * lb["evaluations_per_iteration"]
                            + (lb["xla_flops_direction"] or 0.0))
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
        if size in (torch_res.get("channels_last") or {}):
            rows.append(row(size, "Adam", "PyTorch eager, channels_last", None,
                            torch_res["channels_last"][size], flops))
    for v in report.get("variants", []):
        if "adam" not in v:
            continue
        size = str(v["size"])
        rows.append(row(size, "Adam", f"XLA variant: {v['name']}", v["adam"]["compile_s"],
                        v["adam"], step_flops.get(size) or v["adam"].get("xla_flops"),
                        v.get("xla_flags") or v.get("env", "")))
    return rows


def markdown(report: dict) -> str:
    m, ver, cfg = report["machine"], report["versions"], report["config"]
    y = report["yardsticks"]
    lines = [
        "# neuralstyle CPU speed benchmark",
        "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- machine: {m['nproc']} CPUs, {m.get('cpu_model', '?')} ({m.get('cpu_family_model', '')}; "
        f"{m.get('simd', '')}{'; VM' if m.get('hypervisor') else ''}), {m.get('ram_gib', '?')} GiB RAM, "
        f"JAX backend {(report.get('jax') or {}).get('backend', '?')} "
        f"({', '.join((report.get('jax') or {}).get('devices', [])) or '?'}), "
        f"load average at start {' '.join(m.get('loadavg_at_start', []))}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if v),
        f"- model: VGG19, weights {report.get('weights', '?')}; TF-tutorial recipe (content "
        "block5_conv2; style block1_conv1..block5_conv1; weights 1e4/1e-2/30; Gram 'hw', content "
        "'mean', TV 'l1'); batch 1, float32",
        f"- images: {report.get('images', '?')}",
        f"- main-run XLA_FLAGS: `{cfg['xla_flags'] or '(none)'}`; steps: {cfg['steps_desc']}",
        "",
        "| size | optimizer | implementation / variant | compile s | ms/step (median) | ms/step (mean) "
        "| steps/s | GFLOP/s | % of BLAS matmul | time vs PyTorch | peak RSS MiB (above baseline) "
        "| other load |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        mem = ("–" if r.get("peak_rss_mib") is None else
               f"{r['peak_rss_mib']:.0f} ({_fmt(r.get('above_baseline_mib'), '{:.0f}')})")
        lines.append(
            f"| {r['size']} | {r['optimizer']} | {r['implementation']} | "
            f"{_fmt(r['compile_s'], '{:.1f}')} | {r['median_ms']:.0f} | {r['mean_ms']:.0f} | "
            f"{r['steps_per_s']:.3g} | "
            f"{_fmt(r['gflops'], '{:.1f}')} | {_fmt(r['pct_blas'], '{:.0f}%')} | "
            f"{_fmt(r['time_vs_torch'], '{:.2f}')} | {mem} | {_fmt(r['foreign_cpu_load'], '{:.0%}')} |")
    lines += [
        "",
        "ms/step of L-BFGS is per accepted iteration (neuralstyle: one `direction` call plus its "
        "line-search trials; PyTorch: one `torch.optim.LBFGS.step` with its strong-Wolfe search, "
        "plus the clamp). steps/s = 1000 / median ms. GFLOP/s uses the FLOPs of the math (XLA "
        "cost analysis of the default-flags JAX step, times the evaluations per iteration for "
        "L-BFGS), also for PyTorch and the variants. \"time vs PyTorch\" is this row's median "
        "time divided by PyTorch's for the same optimizer at the same size (below 1 = faster than "
        "PyTorch). \"other load\" is the share of the machine's CPU time used by other processes "
        "during the timed steps (a disturbed measurement if it is more than a few %). Memory: "
        + report.get("memory_method", MEMORY_METHOD) + "; the compile phase's peak is in speed.json "
        "(`compile_memory`).",
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
        lines.append("- `torch.matmul` GFLOP/s: "
                     + ", ".join(f"{n}: {g}" for n, g in y["torch_matmul"].items()))
    for size, f in report.get("flops", {}).items():
        lines.append(f"- {size} px: XLA cost analysis {_fmt(f['xla_gflop'], '{:.1f}')} GFLOP/step; "
                     f"analytic {f['analytic']['total_gflop']:.1f} GFLOP "
                     f"(conv forward {f['analytic']['conv_forward_gflop']:.1f} x 2 + Gram "
                     f"{f['analytic']['gram_gflop']:.1f}; {f['analytic']['formula']})")
    lines += _markdown_ttt(report.get("time_to_target"))
    lines += _markdown_scaling(report.get("scaling") or [])
    checks = report.get("checks", {})
    if checks:
        lines += ["", "## PyTorch reference check", ""]
        for size, c in checks.items():
            lines.append(f"- {size} px: objective at the content image: JAX {c['jax_objective']:.7g}, "
                         f"PyTorch {c['torch_objective']:.7g}, relative difference "
                         f"{c['relative_difference']:.1e} ({'OK' if c['ok'] else 'MISMATCH'}); "
                         f"loss after {c['trajectory_steps']} Adam steps: JAX {c['jax_last_loss']:.6g}, "
                         f"PyTorch {c['torch_last_loss']:.6g}")
    if report.get("variants"):
        base_hlo = {}
        for size, r in (report.get("jax") or {}).get("sizes", {}).items():
            base_hlo[int(size)] = r["adam"].get("hlo", {}).get("hash")
        lines += ["", "## XLA_FLAGS variants", "",
                  "Compiled HLO: whether the optimized program differs from the main run's (flags "
                  "that leave it unchanged can still change code generation or the runtime); "
                  "convolutions left outside YNNPACK fusions / YNNPACK fusions.", "",
                  "| variant | XLA_FLAGS / env | result | compiled HLO |", "|---|---|---|---|"]
        for v in report["variants"]:
            hlo = (v.get("adam") or {}).get("hlo") or {}
            if not hlo:
                hlo_desc = "–"
            else:
                same = "same as main run" if hlo.get("hash") == base_hlo.get(v["size"]) else "differs"
                hlo_desc = f"{same}; {hlo['entry_convolutions']} plain convs, {hlo['ynn_fusions']} YNN fusions"
            flags = " ".join(x for x in (v.get("xla_flags"), v.get("env")) if x) or "(none)"
            if "adam" in v:
                res = (f"{v['adam']['median_ms']:.0f} ms/step (compile {v['adam']['compile_s']:.1f} s)"
                       + (f"; XLA FLOPs {v['adam']['xla_flops'] / 1e9:.1f} G"
                          if v["adam"].get("xla_flops") else "")
                       + (f"; loss after {v['steps']} steps differs from the main run's by "
                          f"{v['adam']['loss_vs_main_run']:.1e}" if "loss_vs_main_run" in v["adam"] else ""))
            else:
                res = v.get("skipped") or v.get("error", "?")
            note = f" — {v['note']}" if v.get("note") else ""
            lines.append(f"| {v['name']}{note} | `{flags}` | {res} | {hlo_desc} |")
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def _markdown_ttt(ttt) -> list[str]:
    if not ttt or "jax" not in ttt:
        return []
    lines = ["", f"## Time to target (loss < {ttt['target']:g})", "",
             f"{ttt['pair']} at {ttt['size']} px ({ttt.get('images', '')}), weights "
             f"{ttt.get('weights', '?')}, initialized with the content image; the target is fixed in "
             "`benchmarks/speed.py` (TTT_TARGET), not chosen per run. Seconds run from the first "
             "step until the implementation has evaluated an iterate below the target (compile "
             "excluded, and included in the next column); steps = updates applied to that iterate; "
             f"at most {ttt['max_steps']['adam']} Adam steps / {ttt['max_steps']['lbfgs']} L-BFGS "
             "iterations.", "",
             "| optimizer | implementation | steps | evaluations | seconds | seconds incl. compile "
             "| final loss | vs PyTorch (s) | vs PyTorch (s incl. compile) | other load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for opt, name in (("adam", "Adam"), ("lbfgs", "L-BFGS")):
        for impl, impl_name in (("jax", "neuralstyle (JAX/XLA)"), ("torch", "PyTorch eager")):
            r = (ttt.get(impl) or {}).get(opt)
            if r is None:
                continue
            ratio = (ttt.get("ratios") or {}).get(opt, {}) if impl == "jax" else {}
            lines.append(
                f"| {name} | {impl_name} | {_fmt(r['steps'])} | {_fmt(r['evaluations'])} | "
                f"{_fmt(r['seconds'], '{:.1f}')} | {_fmt(r['seconds_with_compile'], '{:.1f}')} | "
                f"{r['final_loss']:.4g} | {_fmt(ratio.get('seconds'), '{:.2f}')} | "
                f"{_fmt(ratio.get('seconds_with_compile'), '{:.2f}')} | "
                f"{_fmt(r['foreign_cpu_load'], '{:.0%}')} |")
    return lines


def _markdown_scaling(entries: list[dict]) -> list[str]:
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
            f"{_fmt(t['power_law_exponent'], '{:.2f}')} | "
            f"{' / '.join(_fmt(v) for v in e['above_baseline_mib'])} | "
            f"{_fmt(m.get('b_mib_per_megapixel'), '{:.0f}')} |")
    verdict = {True: "yes", False: "no", None: "not testable with 2 sizes"}
    lines += ["", "Linear in pixels (every residual of the 3+ sizes under 10%): " + "; ".join(
        f"{e['optimizer']} {e['implementation']}: {verdict[e['time_linear']]}"
        for e in entries) + "."]
    return lines


def print_table(report: dict) -> None:
    head = ("size", "optimizer", "implementation / variant", "compile s", "ms/step", "mean ms",
            "steps/s", "GFLOP/s", "%BLAS", "vs torch", "peak MiB")
    rows = [(str(r["size"]), r["optimizer"], r["implementation"], _fmt(r["compile_s"], "{:.1f}"),
             f"{r['median_ms']:.0f}", f"{r['mean_ms']:.0f}", f"{r['steps_per_s']:.3g}",
             _fmt(r["gflops"], "{:.1f}"), _fmt(r["pct_blas"], "{:.0f}%"),
             _fmt(r["time_vs_torch"], "{:.2f}"), _fmt(r.get("peak_rss_mib"))) for r in report["rows"]]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    for line in [head] + rows:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)))


# ============================================================================ main


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", help="long edges in px (default: 256 512 1024)")
    p.add_argument("--steps", type=int, help="timed Adam steps per size (default: 6 up to 256 px, 4 up to 512, 3 above)")
    p.add_argument("--warmup", type=int, help="warm-up Adam steps (default: 3 up to 256 px, 2 up to 512, 1 above)")
    p.add_argument("--lbfgs-steps", type=int, help="timed L-BFGS iterations after 1 warm-up (default: 3 up to 256 px, 2 up to 512, 1 above; 0: skip)")
    p.add_argument("--ttt-size", type=int, default=TTT_SIZE,
                   help=f"size of the time-to-target runs (default {TTT_SIZE}; 0: skip them)")
    p.add_argument("--ttt-target", type=float, default=TTT_TARGET,
                   help=f"the fixed target loss of the time-to-target runs (default {TTT_TARGET:g}, "
                        f"for the default size, weights and images)")
    p.add_argument("--ttt-max-steps", type=int, nargs=2, metavar=("ADAM", "LBFGS"),
                   default=list(TTT_MAX_STEPS), help="give up after this many updates "
                   f"(default {TTT_MAX_STEPS[0]} Adam steps, {TTT_MAX_STEPS[1]} L-BFGS iterations)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 64 px, 2 steps, no XLA variants, time to target at 64 px "
                        "with at most 2 updates (well under a minute)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: benchmarks/results)")
    p.add_argument("--xla-flags", default="",
                   help="XLA_FLAGS of the main JAX run (appended to any XLA_FLAGS in the environment)")
    p.add_argument("--variants", default=None,
                   help="'all' (default; 'none' with --quick), 'none', or comma-separated indices into the variant list (see --list-variants)")
    p.add_argument("--variant-size", type=int, help="size of the variant runs (default: 256, or the smallest size)")
    p.add_argument("--variant-steps", type=int, default=5, help="timed steps per variant (after 2 warm-up steps)")
    p.add_argument("--list-variants", action="store_true", help="print the XLA_FLAGS variants and exit")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager reference")
    p.add_argument("--torch-channels-last", action="store_true",
                   help="also time PyTorch with channels_last (NHWC) memory format (an extra row)")
    p.add_argument("--weights", default="imagenet", help="'imagenet' (default), 'random' or a weights file")
    p.add_argument("--images", choices=("photo", "random"), default="photo",
                   help=f"'photo': {CONTENT_IMAGE} content + {STYLE_IMAGE} style (default); 'random': square noise")
    p.add_argument("--image-dir", default=os.environ.get("NEURALSTYLE_IMAGE_DIR", str(DEFAULT_IMAGE_DIR)))
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


def _steps_for(size: int, args) -> tuple[int, int, int]:
    k = 0 if size <= 256 else 1 if size <= 512 else 2
    warmup = args.warmup if args.warmup is not None else (3, 2, 1)[k]
    steps = args.steps if args.steps is not None else (6, 4, 3)[k]
    lbfgs = args.lbfgs_steps if args.lbfgs_steps is not None else (3, 2, 1)[k]
    return warmup, steps, lbfgs


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.spec)
        result = WORKERS[args.worker](spec)
        Path(args.result).write_text(json.dumps(result))
        return 0
    if args.list_variants:
        for i, (name, flags, env, note) in enumerate(VARIANTS):
            print(f"{i:2d}  {name}: XLA_FLAGS={flags!r} env={env} {note}")
        return 0

    started = time.perf_counter()
    QUIET.update(wait_s=args.wait_quiet, retries=args.retries)
    if args.quick:
        sizes = args.sizes or [64]
        args.warmup = 1 if args.warmup is None else args.warmup
        args.steps = 2 if args.steps is None else args.steps
        args.lbfgs_steps = 2 if args.lbfgs_steps is None else args.lbfgs_steps
        args.variants = args.variants or "none"
        args.ttt_size = 64 if args.ttt_size == TTT_SIZE else args.ttt_size
        args.ttt_max_steps = [2, 2] if list(args.ttt_max_steps) == list(TTT_MAX_STEPS) else args.ttt_max_steps
        matmul_sizes, matmul_repeats = [1024], 2
    else:
        sizes = args.sizes or [256, 512, 1024]
        matmul_sizes, matmul_repeats = [2048, 4096], 5
    args.variants = args.variants or "all"
    sizes = sorted(set(sizes))
    plan = {s: _steps_for(s, args) for s in sizes}
    argv_list = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m benchmarks.speed"] + [shlex.quote(a) for a in argv_list])
    env_flags = os.environ.get("XLA_FLAGS", "")
    main_flags = " ".join(f for f in (env_flags, args.xla_flags) if f)
    report = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command, "machine": machine_info(), "versions": versions(),
        "config": {"sizes": sizes, "plan": {str(s): dict(zip(("warmup", "steps", "lbfgs_steps"), p))
                                            for s, p in plan.items()},
                   "xla_flags": main_flags, "weights": args.weights, "images": args.images,
                   "steps_desc": "; ".join(f"{s} px: {w} warm-up + {n} timed Adam steps, 1 + {lb} "
                                           f"L-BFGS iterations" for s, (w, n, lb) in plan.items()),
                   "time_to_target": {"size": args.ttt_size, "target": args.ttt_target,
                                      "max_steps": {"adam": args.ttt_max_steps[0],
                                                    "lbfgs": args.ttt_max_steps[1]}}},
        "memory_method": MEMORY_METHOD,
        "warnings": [],
    }
    log(f"neuralstyle speed benchmark: sizes {sizes}, {report['machine'].get('nproc')} CPUs, "
         f"{report['machine'].get('cpu_model')}")

    # ---- which XLA flags exist
    wanted_variants = []
    if args.variants != "none":
        idx = range(len(VARIANTS)) if args.variants == "all" else [int(i) for i in args.variants.split(",")]
        wanted_variants = [VARIANTS[i] for i in idx]
    known, probe_cache = set(), {}
    if wanted_variants or main_flags:
        known = known_xla_flags()
        if main_flags:
            unknown = check_flags(main_flags, known, probe_cache)
            if unknown:
                print(f"error: this jaxlib does not know the XLA flag(s) {unknown}", file=sys.stderr)
                return 2

    # ---- yardstick A (NumPy BLAS, in this process: NumPy only, no jax)
    log("yardstick A: NumPy BLAS fp32 matmul ...")
    if args.wait_quiet > 0:
        wait_until_quiet(args.wait_quiet)
    report["yardsticks"] = {"numpy_blas": numpy_matmul_yardstick(matmul_sizes, matmul_repeats)}
    log(f"  NumPy BLAS: {report['yardsticks']['numpy_blas']['gflops']} GFLOP/s")

    base_spec = {"weights": args.weights, "images": args.images, "image_dir": args.image_dir,
                 "matmul_sizes": matmul_sizes, "matmul_repeats": matmul_repeats}

    # ---- main JAX run: one process per size so each starts from the same state; the worker at
    # the time-to-target size also runs the time to target after its measurements
    attached_ttt: dict = {}
    report["jax"] = {"sizes": {}}
    for s in sizes:
        w, n, lb = plan[s]
        log(f"JAX/XLA {s} px (XLA_FLAGS={main_flags!r}) ...")
        spec = dict(base_spec, sizes=[s], warmup=w, steps=n, lbfgs_steps=lb, lbfgs_warmup=1,
                    matmul_sizes=matmul_sizes if s == sizes[0] else [],
                    ttt=ttt_spec(args) if s == args.ttt_size else None)
        res = run_worker("jax", spec, main_flags)
        if "error" in res:
            print(f"error: the JAX run failed: {res['error']}\n{res.get('output_tail', '')}", file=sys.stderr)
            return 1
        report["jax"]["sizes"].update(res.pop("sizes"))
        if "ttt" in res:
            attached_ttt["jax"] = res.pop("ttt")
        if "jnp_matmul_gflops" in res:
            report["yardsticks"]["jnp_matmul"] = res.pop("jnp_matmul_gflops")
        report["jax"].update(res)
        report["warnings"] += res.get("warnings", [])
    report["weights"] = report["jax"].get("weights")
    report["images"] = "; ".join(f"{s} px: {report['jax']['sizes'][str(s)]['images']}" for s in sizes)
    report["flops"] = {str(s): {"xla_gflop": (report["jax"]["sizes"][str(s)]["adam"]["xla_flops"] or 0) / 1e9 or None,
                                "analytic": report["jax"]["sizes"][str(s)]["analytic_flops"]}
                       for s in sizes}

    # ---- yardstick B: PyTorch eager
    report["torch"] = None
    if args.no_torch:
        log("PyTorch reference: skipped (--no-torch)")
    elif importlib.util.find_spec("torch") is None:
        msg = f"PyTorch reference skipped: torch is not installed ({TORCH_HINT} to include it)"
        log(msg)
        report["warnings"].append(msg)
    else:
        report["torch"] = {"sizes": {}}
        report["checks"] = {}
        for s in sizes:
            w, n, lb = plan[s]
            if args.torch_channels_last:
                log(f"PyTorch eager {s} px, channels_last ...")
                res = run_worker("torch", dict(base_spec, sizes=[s], warmup=w, steps=n,
                                               matmul_sizes=[], channels_last=True), None)
                if "error" not in res:
                    report["torch"].setdefault("channels_last", {})[str(s)] = res["sizes"][str(s)]["adam"]
            log(f"PyTorch eager {s} px ...")
            spec = dict(base_spec, sizes=[s], warmup=w, steps=n, lbfgs_steps=lb, lbfgs_warmup=1,
                        matmul_sizes=matmul_sizes if s == sizes[0] else [],
                        ttt=ttt_spec(args) if s == args.ttt_size else None)
            res = run_worker("torch", spec, None)
            if "error" in res:
                msg = f"PyTorch reference at {s} px failed: {res['error']}"
                log(msg + "\n" + res.get("output_tail", ""))
                report["warnings"].append(msg)
                continue
            report["torch"]["sizes"].update(res.pop("sizes"))
            if "ttt" in res:
                attached_ttt["torch"] = res.pop("ttt")
            if "torch_matmul_gflops" in res:
                report["yardsticks"]["torch_matmul"] = res.pop("torch_matmul_gflops")
            report["torch"].update(res)
            t = report["torch"]["sizes"][str(s)]
            jl, tl = report["jax"]["sizes"][str(s)]["adam"]["losses"], t["adam"]["losses"]
            k = min(len(jl), len(tl))
            c = dict(t["check"])
            c.update(ok=c["relative_difference"] < 1e-3, trajectory_steps=k,
                     jax_last_loss=jl[k - 1], torch_last_loss=tl[k - 1],
                     trajectory_max_relative_difference=max(abs(a - b) / abs(a) for a, b in zip(jl[:k], tl[:k])))
            report["checks"][str(s)] = c
            if not c["ok"]:
                report["warnings"].append(f"{s} px: PyTorch objective differs from JAX by "
                                          f"{c['relative_difference']:.2e} (relative)")

    # ---- time to target
    report["time_to_target"] = None
    if args.ttt_size:
        report["time_to_target"] = time_to_target(args, base_spec, main_flags,
                                                  with_torch=report["torch"] is not None,
                                                  attached=attached_ttt)
        report["warnings"] += report["time_to_target"].pop("warnings", [])

    # ---- XLA_FLAGS variants
    report["variants"] = []
    if wanted_variants:
        vsize = args.variant_size or (256 if 256 in sizes else sizes[0])
        log(f"XLA_FLAGS variants at {vsize} px (2 warm-up + {args.variant_steps} timed steps each) ...")
        for name, flags, env, note in wanted_variants:
            v = {"name": name, "size": vsize, "xla_flags": flags, "note": note,
                 "steps": 2 + args.variant_steps,
                 "env": " ".join(f"{k}={val}" for k, val in env.items()
                                 ).replace("_DTYPE_POLICY", "keras dtype policy")}
            missing = check_flags(flags, known, probe_cache)
            if missing:
                v["skipped"] = f"not available in jaxlib {report['versions']['jaxlib']} (unknown flag {', '.join(missing)})"
                log(f"  {name}: {v['skipped']}")
            else:
                spec = dict(base_spec, sizes=[vsize], warmup=2, steps=args.variant_steps,
                            lbfgs_steps=0, matmul_sizes=[])
                res = run_worker("jax", spec, flags, env)
                if "error" in res:
                    v["error"] = res["error"]
                    log(f"  {name}: FAILED ({res['error']})")
                else:
                    r = res["sizes"][str(vsize)]
                    v["adam"] = {k: r["adam"][k] for k in ("compile_s", "median_ms", "mean_ms", "min_ms",
                                                          "ms", "xla_flops", "foreign_cpu_load", "hlo")}
                    v["adam"]["final_loss"] = r["adam"]["losses"][-1]
                    main_losses = report["jax"]["sizes"].get(str(vsize), {}).get("adam", {}).get("losses", [])
                    k = len(r["adam"]["losses"])
                    if len(main_losses) >= k:
                        v["adam"]["loss_vs_main_run"] = abs(r["adam"]["losses"][-1] - main_losses[k - 1]) / abs(main_losses[k - 1])
                    v["objective_at_content"] = r["objective_at_content"]["total"]
                    log(f"  {name}: {v['adam']['median_ms']:.0f} ms/step")
            report["variants"].append(v)

    if known:
        report["xla_cpu_flags_known"] = sorted(f for f in known if f.startswith("xla_cpu"))
        report["xla_flags_probed"] = probe_cache
    report["rows"] = build_rows(report)
    report["scaling"] = scaling(report["rows"])
    report["total_wall_s"] = round(time.perf_counter() - started, 1)
    loads = [r["foreign_cpu_load"] for r in report["rows"] if r.get("foreign_cpu_load") is not None]
    if loads and max(loads) > 0.1:
        report["warnings"].append(
            f"other processes used up to {100 * max(loads):.0f}% of the machine's CPU time during "
            "some timed loops (column foreign_cpu_load in speed.json): those timings are inflated")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    (args.out / "speed.md").write_text(md)
    print()
    print_table(report)
    ttt = report.get("time_to_target") or {}
    for impl in ("jax", "torch"):
        for opt in ("adam", "lbfgs"):
            r = (ttt.get(impl) or {}).get(opt)
            if r:
                ratio = (ttt.get("ratios") or {}).get(opt, {}).get("seconds") if impl == "jax" else None
                print(f"time to loss < {ttt['target']:g} at {ttt['size']} px, {impl} {opt}: "
                      f"{_fmt(r['steps'])} updates, {_fmt(r['seconds'], '{:.1f}')} s "
                      f"({_fmt(r['seconds_with_compile'], '{:.1f}')} s with compile)"
                      + (f", {ratio:.2f} x PyTorch's" if ratio else ""))
    for w in report["warnings"]:
        print("WARNING:", w)
    print(f"\nwrote {args.out / 'speed.json'} and {args.out / 'speed.md'} "
          f"(total {report['total_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
