"""Batched sweeps: N weight settings or N seeds optimized together through one compiled step.

:func:`stylize_batched` runs what N calls of :func:`neuralstyle.stylize` would run, with the
content, style and initialization shared (the initialization differs per seed when it is noise),
through the same driver (:func:`neuralstyle.driver.optimize`, of which ``stylize`` is the N = 1
case): the update step is ``jax.vmap``-ped over the objective (a pytree whose weight leaves get a
leading run axis, see :func:`~neuralstyle.driver.stack_runs`), the images, the optimizer states
and the per-run PRNG keys, then jit-compiled once for all N runs.  Under ``vmap`` the N batch-1
convolutions of VGG become one batch-N convolution.

Whether that is faster than N sequential runs depends on the machine: on a CPU that one image
already keeps busy, a batch only saves the per-step overhead (see ``benchmarks/batched.py``).
L-BFGS is batched too, with one line-search step length per run (see :mod:`neuralstyle.driver`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .driver import Monitor, optimize, stack_runs  # noqa: F401  (stack_runs: part of this module's API)
from .errors import ConfigError
from .objective import WEIGHT_FIELDS, StyleObjective
from .optim import LBFGS
from .stylize import check_memory, initial_image


@dataclass
class BatchedResult:
    """``images``: float32 ``(N, H, W, 3)`` in [0, 1], one per run, in the order of the settings;
    ``runs``: one metrics dict per run; ``metrics``: what the runs share (timings, sizes)."""

    images: np.ndarray
    runs: list
    metrics: dict


def sweep_settings(objective: StyleObjective, weights=None, seeds=None, seed: int = 0):
    """Normalize a sweep to N ``(weights dict, seed)`` pairs with every weight filled in.

    ``weights`` is a list of dicts with keys among ``content_weight``, ``style_weight`` and
    ``tv_weight`` (a missing key keeps the objective's value); ``seeds`` a list of ints.  With
    both, they pair up one to one; with one of them, the other is the objective's weights or
    ``seed`` for every run.
    """
    if weights is None and seeds is None:
        raise ConfigError("a batched sweep needs weights=[{...}, ...] or seeds=[...] (one per run)")
    if weights is not None:
        if isinstance(weights, dict) or not isinstance(weights, (list, tuple)) or not weights:
            raise ConfigError("weights must be a non-empty list of dicts such as "
                              "[{'style_weight': 1e-2}, {'style_weight': 1e-1}]")
        settings = []
        for i, w in enumerate(weights):
            if not isinstance(w, dict):
                raise ConfigError(f"weights[{i}] must be a dict, got {w!r}")
            unknown = sorted(set(w) - set(WEIGHT_FIELDS))
            if unknown:
                raise ConfigError(f"weights[{i}] has unknown key(s) {unknown}; expected some of "
                                  f"{list(WEIGHT_FIELDS)}")
            full = {k: getattr(objective, k) for k in WEIGHT_FIELDS}
            for k, v in w.items():
                try:
                    v = float(v)
                except (TypeError, ValueError):
                    raise ConfigError(f"weights[{i}].{k} must be a number, got {v!r}") from None
                if not math.isfinite(v) or v < 0:
                    raise ConfigError(f"weights[{i}].{k} must be finite and >= 0, got {v}")
                full[k] = v
            settings.append(full)
    if seeds is not None:
        if not isinstance(seeds, (list, tuple)) or not seeds:
            raise ConfigError("seeds must be a non-empty list of integers")
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in seeds):
            raise ConfigError(f"seeds must be integers, got {list(seeds)}")
        if weights is not None and len(seeds) != len(weights):
            raise ConfigError(f"weights has {len(weights)} settings but seeds has {len(seeds)}; "
                              "give one seed per setting (or leave seeds out)")
        seeds = [int(s) for s in seeds]
    n = len(weights) if weights is not None else len(seeds)
    if weights is None:
        settings = [{k: getattr(objective, k) for k in WEIGHT_FIELDS} for _ in range(n)]
    if seeds is None:
        seeds = [int(seed)] * n
    return settings, seeds


def stylize_batched(
    objective: StyleObjective,
    content: np.ndarray,
    style,
    weights: Optional[Sequence[dict]] = None,
    seeds: Optional[Sequence[int]] = None,
    optimizer: Union[optax.GradientTransformation, LBFGS, None] = None,
    steps: int = 100,
    init: Union[str, np.ndarray] = "content",
    seed: int = 0,
    progress: bool = True,
    style_blend: Optional[Sequence[float]] = None,
    snapshot_every: int = 0,
    snapshot_dir=None,
    callback=None,
) -> BatchedResult:
    """Optimize N images together, one per weight setting and/or seed, with one compiled step.

    Run ``k`` gives what ``stylize(objective.with_weights(**weights[k]), content, style,
    optimizer, steps, init, seed=seeds[k])`` gives (up to float rounding: the batch-N
    convolution may sum in another order than the batch-1 one).

    Args:
      objective, content, style, optimizer, steps, style_blend: as for
        :func:`neuralstyle.stylize` (an optax transformation or :class:`~neuralstyle.LBFGS`).
      init: ``"content"``, ``"style"``, ``"noise"`` (from each run's seed), one image for all
        runs, or a list of N images.
      weights: N dicts with keys among ``content_weight``, ``style_weight``, ``tv_weight``.
      seeds: N integer seeds (noise initialization and stochastic losses' projections).
      seed: the seed of every run when ``seeds`` is not given.
      progress: show a progress bar.
      snapshot_every, snapshot_dir: save ``snapshot_dir/run_KK/step_NNNNN.png`` every that many
        steps (0: never).
      callback: called as ``callback(step, images (N, H, W, 3), losses (N,))`` after every step.

    Returns:
      :class:`BatchedResult`.  Each run's metrics: its weights and seed, initial and final loss
      terms, loss history, ``steps`` completed (L-BFGS may stop early at a stationary point),
      ``function_evaluations``, and ``non_finite_step`` (``None``, or the step whose loss became
      NaN or infinite; that run's image is then its last finite one).  Shared metrics: ``runs`` (N),
      ``compile_time_s``, ``wall_time_s``, ``time_per_step_s`` (one batched step) and
      ``image_steps_per_s`` (N * steps / wall time) and ``history_elapsed_s`` (seconds from the
      loop's start until each step's losses were known, as in :func:`~neuralstyle.stylize`).
    """
    if optimizer is None:
        optimizer = optax.adam(0.02, b1=0.99, eps=0.1)
    if not isinstance(optimizer, (optax.GradientTransformation, LBFGS)):
        raise ConfigError(f"optimizer must be an optax GradientTransformation or neuralstyle.LBFGS, "
                          f"got {optimizer!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ConfigError(f"steps must be an integer >= 0, got {steps!r}")
    settings, run_seeds = sweep_settings(objective, weights, seeds, seed)
    n = len(settings)

    styles_list = style if isinstance(style, (list, tuple)) else [style]
    check_memory(content.shape[:2], optimizer, runs=n)
    objective.extractor.check_input(content.shape, "content image")
    for i, s in enumerate(styles_list):
        objective.extractor.check_input(s.shape, "style image" if i == 0 else f"style image {i}")
    if isinstance(init, str):
        starts = [initial_image(init, content, style, s) for s in run_seeds]
    else:
        starts = list(init) if isinstance(init, (list, tuple)) else [init] * n
        if len(starts) != n:
            raise ConfigError(f"init has {len(starts)} images for {n} runs; give one per run "
                              "(or one image for all)")
        for k, start in enumerate(starts):
            if tuple(np.shape(start)) != tuple(content.shape):
                raise ConfigError(f"initial image {k} has shape {np.shape(start)}, content has "
                                  f"{content.shape}")

    params = objective.params
    blend = None if style_blend is None else tuple(float(w) for w in style_blend)
    targets = jax.jit(objective.targets, static_argnames="blend")(
        params, jnp.asarray(content)[None], [jnp.asarray(s)[None] for s in styles_list], blend=blend)
    images = jnp.stack([jnp.asarray(s, jnp.float32)[None] for s in starts])  # (N, 1, H, W, 3)
    runs_objective = stack_runs([objective.with_weights(**w) for w in settings])
    keys = jnp.stack([jax.random.key(s) for s in run_seeds])

    monitor = Monitor(steps, n, progress, snapshot_dir, snapshot_every, callback)
    loop = optimize(runs_objective, optimizer, images, keys, params, targets, steps, monitor)
    runs = []
    for k in range(n):
        history = loop.histories[k]
        runs.append({
            "weights": {name: float(settings[k][name]) for name in WEIGHT_FIELDS},
            "seed": run_seeds[k],
            "initial": {"total": history[0][0], **history[0][1]} if history else None,
            "final": {"total": history[-1][0], **history[-1][1]} if history else None,
            "history": [h[0] for h in history],
            "history_elapsed_s": [round(t, 4) for t in loop.times[k]],
            "steps": max(len(history) - 1, 0),
            "function_evaluations": int(loop.evaluations[k]),
            "non_finite_step": loop.non_finite[k],
        })
    wall = loop.wall
    metrics = {
        "runs": n,
        "steps": steps,
        "optimizer": "LBFGS" if isinstance(optimizer, LBFGS) else "optax",
        "compile_time_s": loop.compile_time,
        "wall_time_s": wall,
        "time_per_step_s": wall / steps if steps else None,
        "image_steps_per_s": n * steps / wall if steps and wall > 0 else None,
        "history_elapsed_s": [round(e, 4) for e in loop.elapsed],
        "image_size": list(content.shape[:2]),
        "backbone": {"arch": objective.extractor.arch, "weights": objective.extractor.weights_source,
                     "layers": list(objective.extractor.layers)},
    }
    return BatchedResult(loop.images, runs, metrics)
