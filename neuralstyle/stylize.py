"""Stylize by optimization (Gatys et al.): one run (:func:`stylize`), a pyramid of them
(:func:`stylize_pyramid`), or N runs at once (:func:`stylize_batched`).

Hydra-free; :mod:`neuralstyle.run` and :mod:`neuralstyle.run_batched` are thin command-line layers
over it.  All three go through the one driver, :func:`neuralstyle.optim.driver.optimize`, whose
loop owner compiles the step once (ahead of time, so compile time is measured apart from step
time), shows progress with the current losses and an ETA, writes periodic snapshots, and stops
with :class:`~neuralstyle.errors.NonFiniteLossError` (carrying the last finite image) if the loss
becomes NaN or infinite.

``stylize`` is the N = 1 case of the driver.  :func:`stylize_batched` runs what N calls of
``stylize`` would run, with the content, style and initialization shared (the initialization
differs per seed when it is noise): the update step is ``jax.vmap``-ped over the objective (a
pytree whose weight leaves get a leading run axis, see :func:`~neuralstyle.optim.driver.stack_runs`),
the images, the optimizer states and the per-run PRNG keys, then jit-compiled once for all N runs.
Under ``vmap`` the N batch-1 convolutions of VGG become one batch-N convolution.  Whether that is
faster than N sequential runs depends on the machine: on a CPU that one image already keeps busy,
a batch only saves the per-step overhead (see ``benchmarks/batched.py``).  L-BFGS is batched too,
with one line-search step length per run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .errors import ConfigError, Interrupted, NonFiniteLossError
from .images.initial import initial_image
from .images.io import resize
from .objective import WEIGHT_FIELDS, StyleObjective
from .optim.driver import Monitor, optimize, resize_opt_state, stack_runs
from .optim.lbfgs import LBFGS
from .optim.memory import check_memory
from .tiling import TiledObjective


@dataclass
class StylizeResult:
    """The stylized image (float32 ``(H, W, 3)`` in [0, 1]) and the run's metrics; ``opt_state``
    is the final optax state (batched over one run), for a warm start at the next scale."""

    image: np.ndarray
    metrics: dict
    opt_state: object = None


def stylize(
    objective: StyleObjective,
    content: np.ndarray,
    style: np.ndarray,
    optimizer: Union[optax.GradientTransformation, LBFGS, None] = None,
    steps: int = 100,
    init: Union[str, np.ndarray] = "content",
    seed: int = 0,
    snapshot_every: int = 0,
    snapshot_dir: Union[str, Path, None] = None,
    progress: bool = True,
    callback: Optional[Callable[[int, np.ndarray, float], None]] = None,
    style_blend: Optional[Sequence[float]] = None,
    style_masks: Optional[Sequence[np.ndarray]] = None,
    average_decay: Optional[float] = None,
    opt_state=None,
    tile_size: Optional[int] = None,
    tile_halo: Optional[int] = None,
) -> StylizeResult:
    """Optimize the pixels of an image so that ``objective`` is minimal.

    Args:
      objective: a :class:`~neuralstyle.objective.StyleObjective`.
      content, style: float32 ``(H, W, 3)`` images in [0, 1] (see :func:`load_content_and_style`);
        ``style`` may be a list of images, mixed with the weights ``style_blend``.
      optimizer: an optax ``GradientTransformation`` (default: the TensorFlow tutorial's
        ``optax.adam(0.02, b1=0.99, eps=0.1)``) or an :class:`~neuralstyle.optim.LBFGS`.
      steps: optimizer iterations.
      init: ``"content"``, ``"style"``, ``"noise"`` or an image array of the content's shape.
      seed: seed of the noise initialization.
      snapshot_every: save ``snapshot_dir/step_NNNNN.png`` every that many steps (0: never).
      progress: show a tqdm progress bar with the losses and an ETA.
      callback: called as ``callback(step, image, loss)`` after every step.
      style_blend: weights of several style images (normalized to sum to 1; default equal).
      style_masks: one ``(H, W)`` mask in [0, 1] per style image, at the content's size: spatial
        control with guided Gram matrices (Gatys et al. 2017, sec. 4.1); each region's term
        then has weight 1 (or its ``style_blend`` weight, unnormalized).
      average_decay: ``None``, or the decay (e.g. 0.99) of an exponential moving average of the
        iterates, bias-corrected, which becomes the result (see :mod:`neuralstyle.optim.driver`);
        ``metrics["final"]`` is then the average's loss and ``metrics["final_iterate"]`` the last
        iterate's.
      opt_state: an optax state to start from (``StylizeResult.opt_state`` of an earlier run,
        resized with :func:`~neuralstyle.optim.driver.resize_opt_state` to this image's shape).
      tile_size, tile_halo: exact tiled optimization (:mod:`neuralstyle.tiling`) when the image is
        larger than ``tile_size`` px on a side: peak memory then follows the tile, not the image,
        and the optimization is the untiled one.  ``tile_halo`` defaults to the exact halo of the
        deepest layer.  Needs the Gram loss and no style masks.

    Returns:
      :class:`StylizeResult` with the final image and metrics (initial and final loss terms,
      per-step loss history, compile time, time per step, sizes, backbone, weights source).
    """
    if steps < 0:
        raise ConfigError(f"steps must be >= 0, got {steps}")
    if optimizer is None:
        optimizer = optax.adam(0.02, b1=0.99, eps=0.1)
    start = initial_image(init, content, style, seed) if isinstance(init, str) else init
    if tuple(start.shape) != tuple(content.shape):
        raise ConfigError(f"initial image has shape {start.shape}, content has {content.shape}")

    tiled = None
    if tile_size is not None and max(content.shape[:2]) > int(tile_size):
        if style_masks is not None:
            raise ConfigError("tiled optimization does not support style_masks; use tile.size=null")
        tiled = TiledObjective(objective, int(tile_size), tile_halo)
    check_memory(content.shape[:2], optimizer,
                 window=None if tiled is None else tiled.largest_window(content.shape[:2]))
    objective.extractor.check_input(content.shape, "content image")
    for i, s in enumerate(style if isinstance(style, (list, tuple)) else [style]):
        objective.extractor.check_input(s.shape, "style image" if i == 0 else f"style image {i}")
    params = objective.params
    styles = [jnp.asarray(s)[None] for s in (style if isinstance(style, (list, tuple)) else [style])]
    blend = None if style_blend is None else tuple(float(w) for w in style_blend)
    masks = None if style_masks is None else jnp.asarray(np.stack(style_masks), jnp.float32)
    if tiled is None:
        targets = jax.jit(objective.targets, static_argnames="blend")(
            params, jnp.asarray(content)[None], styles, blend=blend, masks=masks)
    else:
        targets = tiled.targets(objective, params, jnp.asarray(content)[None], styles, blend=blend)
    if not isinstance(optimizer, (LBFGS, optax.GradientTransformation)):
        raise ConfigError(
            f"optimizer must be an optax GradientTransformation or neuralstyle.LBFGS, got {optimizer!r}"
        )
    monitor = Monitor(steps, 1, progress, snapshot_dir, snapshot_every, callback)
    try:
        loop = optimize(stack_runs([objective]), optimizer, jnp.asarray(start, jnp.float32)[None, None],
                        jnp.stack([jax.random.key(seed)]), params, targets, steps, monitor,
                        average_decay=average_decay, opt_state=opt_state,
                        evaluator=None if tiled is None else tiled.evaluator())
    except Interrupted as stop:
        raise Interrupted(stop.step, stop.image[0]) from None
    if loop.non_finite[0] is not None:
        step = loop.non_finite[0]
        raise NonFiniteLossError(step, loop.images[0] if step > 0 else None, step - 1,
                                 loop.non_finite_terms[0])
    history, times = loop.histories[0], loop.times[0]
    completed = len(history) - 1
    final = history[-1] if loop.average_losses is None else loop.average_losses[0]
    metrics = {
        "final": {"total": final[0], **final[1]},
        "initial": {"total": history[0][0], **history[0][1]},
        "steps": completed,
        "steps_requested": steps,
        "function_evaluations": int(loop.evaluations[0]),
        "wall_time_s": loop.wall,
        "time_per_step_s": loop.wall / completed if completed else None,
        "compile_time_s": loop.compile_time,
        "image_size": list(content.shape[:2]),
        "style_size": [list(s.shape[1:3]) for s in styles] if len(styles) > 1 else list(styles[0].shape[1:3]),
        "style_blend": [float(w) for w in targets.blend],
        "backbone": {
            "arch": objective.extractor.arch,
            "pooling": objective.extractor.pooling,
            "weights": objective.extractor.weights_source,
            "layers": list(objective.extractor.layers),
        },
        "optimizer": type(optimizer).__name__ if isinstance(optimizer, LBFGS) else "optax",
        "history": [h[0] for h in history],
        "history_elapsed_s": [round(t, 4) for t in times],
    }
    if tiled is not None:
        metrics["tile"] = {"size": tiled.tile, "halo": tiled.halo,
                           "tiles": len(tiled.tiles(content.shape[:2])),
                           "largest_window": list(tiled.largest_window(content.shape[:2]))}
    if average_decay is not None:
        metrics["average_decay"] = float(average_decay)
        metrics["final_iterate"] = {"total": history[-1][0], **history[-1][1]}
    return StylizeResult(np.asarray(loop.images[0]), metrics, loop.opt_state)


def pyramid_shapes(shape: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """``(H, W)`` of each level, coarsest first: the final shape halved ``levels - 1`` times."""
    if levels < 1:
        raise ConfigError(f"pyramid levels must be >= 1, got {levels}")
    h, w = shape
    return [(max(1, round(h / 2**k)), max(1, round(w / 2**k))) for k in range(levels - 1, -1, -1)]


def multiscale_shapes(shape: tuple[int, int], start_size: int, factor: float = 2.0) -> list[tuple[int, int]]:
    """``(H, W)`` of each scale, smallest first: long edges ``L / factor**k`` for ``k = K .. 0``,
    where ``L`` is the final long edge and ``K = round(log(L / start_size) / log(factor))`` (so the
    first long edge is within a factor ``sqrt(factor)`` of ``start_size``); the aspect is kept.
    ``factor`` 2 gives 128, 256, 512; ``sqrt(2)`` gives 128, 181, 256, 362, 512."""
    if not factor > 1.0:
        raise ConfigError(f"pyramid.factor must be > 1, got {factor}")
    if not start_size >= 1:
        raise ConfigError(f"pyramid.start_size must be >= 1 px, got {start_size}")
    h, w = shape
    long_edge = max(h, w)
    k_max = max(0, round(math.log(long_edge / start_size) / math.log(factor)))
    shapes = []
    for k in range(k_max, -1, -1):
        scale = factor ** -k
        scaled = (max(1, round(h * scale)), max(1, round(w * scale)))
        if not shapes or scaled != shapes[-1]:
            shapes.append(scaled)
    return shapes


def stylize_pyramid(
    objective: StyleObjective,
    content: np.ndarray,
    style,
    optimizer=None,
    steps: Union[int, Sequence[int]] = 100,
    levels: int = 3,
    init: Union[str, np.ndarray] = "content",
    seed: int = 0,
    progress: bool = True,
    style_blend: Optional[Sequence[float]] = None,
    style_masks: Optional[Sequence[np.ndarray]] = None,
    shapes: Optional[Sequence[tuple[int, int]]] = None,
    warm_start: bool = False,
    average_decay: Optional[float] = None,
    **stylize_kwargs,
) -> StylizeResult:
    """Coarse-to-fine optimization over a sequence of scales up to the content's size, each scale
    started from the previous scale's result, upsampled (bicubic).

    This is the multi-resolution scheme of Gatys et al. 2017 (sec. 6, "high-resolution images")
    and of jcjohnson/neural-style's multires recipe: the coarse scales are cheap and fix the
    large-scale structure, the fine scales add detail.  The style image (and any masks) are
    resized with the content, keeping their relative scale.  Each scale compiles its own step once.

    Scales: ``shapes`` (smallest first, e.g. :func:`multiscale_shapes` from about 128 px growing
    by 2 or sqrt(2), as in crowsonkb/style-transfer-pytorch), or by default ``levels`` scales
    halving the size (:func:`pyramid_shapes`).

    ``warm_start`` carries the optimizer over the scales: an optax state (Adam's first and second
    moments) is resized to the next scale and rescaled to its smaller per-pixel gradients
    (:func:`~neuralstyle.optim.driver.resize_opt_state`) instead of starting afresh; an L-BFGS memory is reset (its curvature pairs belong to the old
    shape).  With ``average_decay`` each scale's result, and so the next scale's start, is its
    averaged iterate.  Without a warm start, measured (``benchmarks/results/pyramid*.md``,
    TensorFlow-tutorial objective, quiet 2-core CPU): from noise at 512 px with
    :func:`~neuralstyle.optim.lbfgs`, levels of 30, 15 and 30 iterations reach the losses of 20
    and 30 direct iterations 1.2x and 1.25x sooner and end 1.57x lower; with the tutorial's Adam
    (b1 = 0.99, fresh state per level) it is slower (0.87x-0.89x).

    ``steps`` is one number for every scale or a list, smallest first.  Returns the final scale's
    result; ``metrics["levels"]`` holds each scale's metrics and ``metrics["wall_time_s"]`` and
    ``metrics["compile_time_s"]`` the totals.
    """
    shapes = list(shapes) if shapes is not None else pyramid_shapes(content.shape[:2], levels)
    if tuple(shapes[-1]) != tuple(content.shape[:2]):
        raise ConfigError(f"the last scale {tuple(shapes[-1])} must be the content's shape "
                          f"{tuple(content.shape[:2])}")
    levels = len(shapes)
    per_level = [steps] * levels if isinstance(steps, int) else [int(s) for s in steps]
    if len(per_level) != levels:
        raise ConfigError(f"pyramid steps has {len(per_level)} entries for {levels} scales "
                          f"({', '.join(f'{w}x{h}' for h, w in shapes)})")
    styles = style if isinstance(style, (list, tuple)) else [style]
    snapshot_dir = stylize_kwargs.pop("snapshot_dir", None)
    full_h = content.shape[0]
    image, opt_state, level_metrics = init, None, []
    for level, (shape, level_steps) in enumerate(zip(shapes, per_level)):
        factor = shape[0] / full_h
        level_content = resize(content, shape)
        level_styles = [resize(s, (max(1, round(s.shape[0] * factor)), max(1, round(s.shape[1] * factor))))
                        for s in styles]
        level_masks = None if style_masks is None else [
            resize(np.repeat(np.asarray(m, np.float32)[..., None], 3, -1), shape)[..., 0] for m in style_masks]
        start = image if isinstance(image, str) else resize(image, shape)
        if opt_state is not None:  # per-pixel gradients of mean losses scale as 1 / pixels
            previous = shapes[level - 1]
            opt_state = resize_opt_state(opt_state, shape, previous[0] * previous[1] / (shape[0] * shape[1]))
        result = stylize(
            objective, level_content,
            level_styles if isinstance(style, (list, tuple)) else level_styles[0],
            optimizer=optimizer, steps=level_steps, init=start, seed=seed, progress=progress,
            style_blend=style_blend, style_masks=level_masks, average_decay=average_decay,
            opt_state=opt_state,
            snapshot_dir=None if snapshot_dir is None else Path(snapshot_dir) / f"level{level}",
            **stylize_kwargs,
        )
        image = result.image
        opt_state = result.opt_state if warm_start else None
        level_metrics.append({k: v for k, v in result.metrics.items() if k != "backbone"})
    metrics = dict(result.metrics)
    metrics["levels"] = level_metrics
    metrics["scales"] = [list(shape) for shape in shapes]
    metrics["warm_start"] = bool(warm_start)
    metrics["steps"] = sum(m["steps"] for m in level_metrics)
    metrics["wall_time_s"] = sum(m["wall_time_s"] for m in level_metrics)
    metrics["compile_time_s"] = sum(m["compile_time_s"] for m in level_metrics)
    metrics["time_per_step_s"] = None  # differs per level: see metrics["levels"]
    return StylizeResult(image, metrics, result.opt_state)


# --------------------------------------------------------------------------- N > 1: batched sweeps


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
    average_decay: Optional[float] = None,
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
      average_decay: as for :func:`neuralstyle.stylize`: each run's result is its averaged iterate.

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
    loop = optimize(runs_objective, optimizer, images, keys, params, targets, steps, monitor,
                    average_decay=average_decay)
    runs = []
    for k in range(n):
        history = loop.histories[k]
        final = (history[-1] if history else None) if loop.average_losses is None else loop.average_losses[k]
        runs.append({
            "weights": {name: float(settings[k][name]) for name in WEIGHT_FIELDS},
            "seed": run_seeds[k],
            "initial": {"total": history[0][0], **history[0][1]} if history else None,
            "final": {"total": final[0], **final[1]} if final else None,
            **({} if average_decay is None or not history else
               {"final_iterate": {"total": history[-1][0], **history[-1][1]}}),
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
        "average_decay": None if average_decay is None else float(average_decay),
        "backbone": {"arch": objective.extractor.arch, "weights": objective.extractor.weights_source,
                     "layers": list(objective.extractor.layers)},
    }
    return BatchedResult(loop.images, runs, metrics)
