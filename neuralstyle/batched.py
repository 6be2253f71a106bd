"""Batched sweeps: N weight settings or N seeds optimized together through one compiled step.

:func:`stylize_batched` runs what N calls of :func:`neuralstyle.stylize` would run, with the
content, style and initialization shared (the initialization differs per seed when it is noise),
but as one program: the update step of :func:`neuralstyle.optim.make_step` is ``jax.vmap``-ped
over the objective (a pytree whose weight leaves get a leading run axis, see :func:`stack_runs`),
the images, the optimizer states and the per-run PRNG keys (the ``key`` of the targets), then
jit-compiled once for all N runs.  Under ``vmap`` the N batch-1 convolutions of VGG become one
batch-N convolution.

Whether that is faster than N sequential runs depends on the machine: on a CPU that one image
already keeps busy, a batch only saves the per-step overhead (see ``benchmarks/batched.py``).

:class:`~neuralstyle.optim.LBFGS` is batched too: its two compiled functions (two-loop
``direction`` and the line-search ``trial``) are vmapped, and the Python-driven backtracking line
search keeps one step length per run, so each run accepts, shrinks or restarts as its sequential
run would.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from .errors import ConfigError
from .objective import WEIGHT_FIELDS, StyleObjective, Targets
from .optim import LBFGS, evaluate, make_lbfgs_functions, make_step
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


def stack_runs(objectives: Sequence[StyleObjective]) -> StyleObjective:
    """N objectives that differ only in weights as one objective whose leaves are ``(N,)``
    float32 arrays, for ``jax.vmap`` with ``in_axes=0`` over the objective."""
    return jax.tree.map(lambda *leaves: jnp.asarray(leaves, jnp.float32), *objectives)


#: ``in_axes`` of the targets in a batched step: everything shared but the per-run PRNG key.
RUN_TARGETS = Targets(content=None, style=None, blend=None, key=0, masks=None)

#: The key of step ``i`` of every run, ``fold_in(keys[k], i)`` (as :func:`neuralstyle.stylize`).
_step_keys = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


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

    loop = _loop_lbfgs if isinstance(optimizer, LBFGS) else _loop_optax
    bar = tqdm(total=steps, desc=f"stylize x{n}", disable=not progress, dynamic_ncols=True,
               unit="step")
    try:
        out = loop(runs_objective, optimizer, images, keys, params, targets, steps, bar)
    finally:
        bar.close()
    final_images, histories, non_finite, compile_time, wall, elapsed, evaluations = out

    runs = []
    for k in range(n):
        history = histories[k]
        runs.append({
            "weights": {name: float(settings[k][name]) for name in WEIGHT_FIELDS},
            "seed": run_seeds[k],
            "initial": {"total": history[0][0], **history[0][1]} if history else None,
            "final": {"total": history[-1][0], **history[-1][1]} if history else None,
            "history": [h[0] for h in history],
            "steps": max(len(history) - 1, 0),
            "function_evaluations": int(evaluations[k]),
            "non_finite_step": non_finite[k],
        })
    metrics = {
        "runs": n,
        "steps": steps,
        "optimizer": "LBFGS" if isinstance(optimizer, LBFGS) else "optax",
        "compile_time_s": compile_time,
        "wall_time_s": wall,
        "time_per_step_s": wall / steps if steps else None,
        "image_steps_per_s": n * steps / wall if steps and wall > 0 else None,
        "history_elapsed_s": [round(e, 4) for e in elapsed],
        "image_size": list(content.shape[:2]),
        "backbone": {"arch": objective.extractor.arch, "weights": objective.extractor.weights_source,
                     "layers": list(objective.extractor.layers)},
    }
    return BatchedResult(final_images, runs, metrics)


def _row(losses, terms, k) -> tuple:
    return float(losses[k]), {t: float(v[k]) for t, v in terms.items()}


def _loop_optax(objective, tx, images, keys, params, targets, steps, bar):
    """Adam & co: every run takes every step: run ``k`` of the vmapped step is
    :func:`~neuralstyle.optim.make_step` with run ``k``'s weights and key ``fold_in(keys[k], i)``."""
    n = images.shape[0]
    t0 = time.perf_counter()
    opt_states = jax.vmap(tx.init)(images)
    targets = targets._replace(key=_step_keys(keys, 0))
    compiled = jax.jit(jax.vmap(make_step(tx), in_axes=(0, 0, 0, None, RUN_TARGETS))).lower(
        objective, images, opt_states, params, targets).compile()
    value = jax.jit(jax.vmap(evaluate, in_axes=(0, None, 0, RUN_TARGETS))).lower(
        objective, params, images, targets).compile()
    compile_time = time.perf_counter() - t0

    histories = [[] for _ in range(n)]
    non_finite, good, elapsed = [None] * n, [None] * n, []

    def record(step, losses, terms, previous):
        losses, terms = np.asarray(losses), {t: np.asarray(v) for t, v in terms.items()}
        elapsed.append(time.perf_counter() - t0)
        for k in range(n):
            histories[k].append(_row(losses, terms, k))
            if not np.isfinite(losses[k]) and non_finite[k] is None:
                non_finite[k] = step  # keep the last finite image, as stylize's error does
                good[k] = None if step == 0 else np.asarray(previous[k, 0])

    t0 = time.perf_counter()
    previous = images
    for i in range(1, steps + 1):
        targets = targets._replace(key=_step_keys(keys, i))
        new_images, opt_states, losses, terms = compiled(objective, images, opt_states, params, targets)
        record(i - 1, losses, terms, previous)  # losses of the images after i-1 steps
        previous, images = images, new_images
        bar.update(1)
    losses, terms = value(objective, params, images, targets._replace(key=_step_keys(keys, steps)))
    record(steps, losses, terms, previous)
    wall = time.perf_counter() - t0
    out = np.array(images[:, 0])
    for k in range(n):
        if good[k] is not None:
            out[k] = good[k]
    return out, histories, non_finite, compile_time, wall, elapsed, [steps + 1] * n


def _select(mask, new, old):
    """Per run, ``new`` where ``mask`` (N,) else ``old``, for pytrees with a leading N axis."""
    mask = jnp.asarray(mask)
    return jax.tree.map(
        lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b), new, old)


def _loop_lbfgs(objective, opt, images, keys, params, targets, steps, bar):
    """L-BFGS for N runs in lockstep passes; each pass does for every active run what one pass of
    ``neuralstyle.stylize``'s L-BFGS loop does (stochastic re-evaluation, direction, backtracking
    line search with a per-run step length, restart of a stale memory, stop), so run ``k``
    follows its sequential run.  A pass evaluates all N runs each line-search trial (the results
    of runs that already accepted a step are discarded), so a rare rejected step costs every run."""
    n = images.shape[0]
    direction_fn, trial_fn = make_lbfgs_functions(opt)
    init_state = jax.vmap(opt.direction_transform.init)
    states = init_state(images)
    zeros = jnp.zeros_like(images)
    ts = jnp.zeros((n,), jnp.float32)
    t0 = time.perf_counter()
    batched_trial = jax.jit(jax.vmap(trial_fn, in_axes=(0, 0, 0, 0, 0, None, RUN_TARGETS))).lower(
        objective, images, zeros, zeros, ts, params, targets._replace(key=keys)).compile()
    direction = jax.jit(jax.vmap(direction_fn)).lower(zeros, states, images).compile()
    compile_time = time.perf_counter() - t0
    stochastic = objective.style_loss.stochastic

    def trial(image, grad, d, t, run_keys):
        """The vmapped line-search trial: run ``k`` with its weights, step length and key."""
        return batched_trial(objective, image, grad, d, t, params, targets._replace(key=run_keys))

    histories = [[] for _ in range(n)]
    non_finite, elapsed = [None] * n, []
    evaluations = np.ones(n, int)
    done_steps = np.zeros(n, int)
    active = np.ones(n, bool)
    t0 = time.perf_counter()
    current = trial(images, zeros, zeros, ts, keys)

    def record(trial_out, which):
        losses = np.asarray(trial_out.loss)
        terms = {t: np.asarray(v) for t, v in trial_out.terms.items()}
        for k in np.flatnonzero(which):
            histories[k].append(_row(losses, terms, k))
        return losses

    losses = record(current, active)
    bad = ~np.isfinite(losses)
    for k in np.flatnonzero(bad):
        non_finite[k] = 0
    active &= ~bad & (steps > 0)
    elapsed.append(time.perf_counter() - t0)
    while active.any():
        pass_keys = keys
        if stochastic and (done_steps > 0).any():  # fresh randomness per iteration, as stylize
            pass_keys = jnp.stack([jax.random.fold_in(keys[k], int(done_steps[k]) + 1)
                                   if done_steps[k] > 0 else keys[k] for k in range(n)])
            fresh = trial(current.image, zeros, zeros, ts, pass_keys)
            redo = active & (done_steps > 0)
            current = _select(redo, fresh, current)
            evaluations += redo
        d, new_states = direction(current.grad, states, current.image)
        step = np.ones(n, np.float32)
        searching, accepted = active.copy(), None
        current_loss = np.asarray(current.loss)
        for _ in range(opt.max_linesearch):
            last = trial(current.image, current.grad, d, jnp.asarray(step), pass_keys)
            evaluations += searching
            value, slope = np.asarray(last.loss), np.asarray(last.slope)
            ok = searching & np.isfinite(value) & (value <= current_loss + opt.c1 * slope)
            accepted = last if accepted is None else _select(ok, last, accepted)
            searching &= ~ok
            if not searching.any():
                break
            step = np.where(searching, step * opt.shrink, step).astype(np.float32)
        took = active & ~searching
        failed = active & searching
        counts = np.asarray(states.count)
        restart = failed & (counts > 0)  # a stale curvature memory: steepest descent again
        for k in np.flatnonzero(failed & ~restart):  # a (projected) stationary point: stop
            if not np.isfinite(value[k]):
                non_finite[k] = int(done_steps[k]) + 1
            active[k] = False
        if took.any():
            done_steps += took
            record(accepted, took)
            current = _select(took, accepted, current)
            states = _select(took, new_states, states)
        if restart.any():
            states = _select(restart, init_state(current.image), states)
        active &= done_steps < steps
        bar.update(int(done_steps.min()) - bar.n if done_steps.min() > bar.n else 0)
        elapsed.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    return (np.array(current.image[:, 0]), histories, non_finite, compile_time, wall, elapsed,
            evaluations)
