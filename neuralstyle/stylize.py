"""The optimization loop of Gatys et al.: ``stylize(objective, content, style, ...)``.

Hydra-free; :mod:`neuralstyle.run` is a thin command-line layer over it.  The loop compiles its
step once (ahead of time, so compile time is measured apart from step time), shows a progress bar
with the current losses and an ETA, writes periodic snapshots, and stops with
:class:`~neuralstyle.errors.NonFiniteLossError` (carrying the last finite image) if the loss
becomes NaN or infinite.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .errors import ConfigError, ImageError, Interrupted, NonFiniteLossError
from .images import load_image, resize, resolve_image
from .objective import StyleObjective
from .driver import Monitor, optimize, stack_runs
from .optim import LBFGS

INIT_KINDS = ("content", "style", "noise", "file")


@dataclass
class StylizeResult:
    """The stylized image (float32 ``(H, W, 3)`` in [0, 1]) and the run's metrics."""

    image: np.ndarray
    metrics: dict


def load_content_and_style(content, style, size: Optional[int] = None, style_scale: float = 1.0,
                           image_dir=None):
    """Load the content image at long edge ``size`` and the style image at ``style_scale`` times it.

    ``content`` and ``style`` are file paths or names of example images (see
    :func:`neuralstyle.images.resolve_image`); ``style`` may be a list of them (style mixing),
    and then a list of images is returned.  As in jcjohnson/neural-style, the style image's
    long edge is ``ceil(style_scale * content long edge)``.
    """
    if not style_scale > 0:
        raise ConfigError(f"style_scale must be positive, got {style_scale}")
    content_image = _load_named("content", content, image_dir, size)
    style_long = math.ceil(style_scale * max(content_image.shape[:2]))
    if isinstance(style, (list, tuple)):
        if not style:
            raise ConfigError("style is an empty list; give at least one style image")
        return content_image, [_load_named(f"style[{i}]", s, image_dir, style_long)
                               for i, s in enumerate(style)]
    return content_image, _load_named("style", style, image_dir, style_long)


def _load_named(role: str, name, image_dir, long_edge) -> np.ndarray:
    try:
        return load_image(resolve_image(name, image_dir), long_edge)
    except ImageError as err:
        raise ImageError(f"{role}: {err}") from None


def initial_image(kind: str, content: np.ndarray, style: np.ndarray, seed: int = 0,
                  noise_mean: float = 0.5, noise_std: float = 0.25,
                  path: Union[str, Path, None] = None) -> np.ndarray:
    """The starting point: the content image, the style image resized to it, seeded noise, or a file.

    Noise is ``clip(N(noise_mean, noise_std^2))`` per pixel from ``jax.random.key(seed)``.
    """
    shape = content.shape
    if kind == "content":
        return content
    if kind == "style":
        return resize(style[0] if isinstance(style, (list, tuple)) else style, shape[:2])
    if kind == "noise":
        noise = noise_mean + noise_std * jax.random.normal(jax.random.key(seed), shape, jnp.float32)
        return np.clip(np.asarray(noise), 0.0, 1.0)
    if kind == "file":
        if path is None:
            raise ConfigError("init kind 'file' needs a path (init.path=...)")
        return resize(load_image(path), shape[:2])
    raise ConfigError(f"unknown init {kind!r}; expected one of {INIT_KINDS}")


#: Peak memory of one VGG19 forward and backward pass per output pixel, measured with
#: ``benchmarks/pyramid.py`` and ``benchmarks/speed.py`` (5.0 GB peak RSS at 1024x1024 with Adam,
#: about 1 GB of it the process before the first step), rounded up.
BYTES_PER_PIXEL = 4_500
#: Fixed cost of the process (JAX, Keras, the backbone's weights).
BASE_BYTES = 1.5e9


def estimate_memory_bytes(shape: tuple[int, int], optimizer=None, runs: int = 1) -> float:
    """A rough upper estimate of the peak memory of ``runs`` runs at ``shape = (H, W)``.

    Activations and their gradients (:data:`BYTES_PER_PIXEL`), plus the optimizer's own state:
    Adam keeps two moments (8 bytes a channel value), L-BFGS ``2 * memory_size`` image-sized
    vectors.  It is meant to refuse sizes that cannot fit, not to predict to the megabyte.
    """
    pixels = float(shape[0]) * float(shape[1])
    per_pixel = BYTES_PER_PIXEL + 3 * 4 * 4  # the image, its gradient and two moments (fp32)
    if isinstance(optimizer, LBFGS):
        per_pixel += 3 * 4 * 2 * optimizer.memory_size
    return BASE_BYTES + runs * pixels * per_pixel


def available_memory_bytes() -> Optional[float]:
    """Memory of the device that runs the step: an accelerator's limit, or the host's RAM."""
    try:
        device = jax.devices()[0]
        if device.platform != "cpu":
            stats = device.memory_stats() or {}
            if stats.get("bytes_limit"):
                return float(stats["bytes_limit"])
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # no sysconf on this platform
        return None


def check_memory(shape: tuple[int, int], optimizer=None, what: str = "the image",
                 runs: int = 1) -> None:
    """Raise :class:`ConfigError` if ``runs`` runs at ``shape`` need more memory than the
    machine has (see :func:`estimate_memory_bytes`)."""
    need, have = estimate_memory_bytes(shape, optimizer, runs), available_memory_bytes()
    if have is not None and need > have:
        batch = f"{runs} runs at " if runs > 1 else "a "
        raise ConfigError(
            f"{what}: {batch}{shape[1]}x{shape[0]} px run needs about {need / 1e9:.3g} GB, more than "
            f"the {have / 1e9:.3g} GB this machine has; use a smaller size"
        )


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

    check_memory(content.shape[:2], optimizer)
    objective.extractor.check_input(content.shape, "content image")
    for i, s in enumerate(style if isinstance(style, (list, tuple)) else [style]):
        objective.extractor.check_input(s.shape, "style image" if i == 0 else f"style image {i}")
    params = objective.params
    styles = [jnp.asarray(s)[None] for s in (style if isinstance(style, (list, tuple)) else [style])]
    blend = None if style_blend is None else tuple(float(w) for w in style_blend)
    masks = None if style_masks is None else jnp.asarray(np.stack(style_masks), jnp.float32)
    targets = jax.jit(objective.targets, static_argnames="blend")(
        params, jnp.asarray(content)[None], styles, blend=blend, masks=masks)
    if not isinstance(optimizer, (LBFGS, optax.GradientTransformation)):
        raise ConfigError(
            f"optimizer must be an optax GradientTransformation or neuralstyle.LBFGS, got {optimizer!r}"
        )
    monitor = Monitor(steps, 1, progress, snapshot_dir, snapshot_every, callback)
    try:
        loop = optimize(stack_runs([objective]), optimizer, jnp.asarray(start, jnp.float32)[None, None],
                        jnp.stack([jax.random.key(seed)]), params, targets, steps, monitor)
    except Interrupted as stop:
        raise Interrupted(stop.step, stop.image[0]) from None
    if loop.non_finite[0] is not None:
        step = loop.non_finite[0]
        raise NonFiniteLossError(step, loop.images[0] if step > 0 else None, step - 1,
                                 loop.non_finite_terms[0])
    history, times = loop.histories[0], loop.times[0]
    completed = len(history) - 1
    metrics = {
        "final": {"total": history[-1][0], **history[-1][1]},
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
    return StylizeResult(np.asarray(loop.images[0]), metrics)


def on_device(objective):
    """The objective with its weight leaves as device arrays: passed to a compiled step every
    iteration without converting Python floats each time (same dtypes, same compiled program)."""
    return jax.tree.map(jnp.asarray, objective)


def pyramid_shapes(shape: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """``(H, W)`` of each level, coarsest first: the final shape halved ``levels - 1`` times."""
    if levels < 1:
        raise ConfigError(f"pyramid levels must be >= 1, got {levels}")
    h, w = shape
    return [(max(1, round(h / 2**k)), max(1, round(w / 2**k))) for k in range(levels - 1, -1, -1)]


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
    **stylize_kwargs,
) -> StylizeResult:
    """Coarse-to-fine optimization: an image pyramid from ``content.shape / 2**(levels-1)`` up to
    the content's size, each level started from the previous result upsampled (bicubic).

    This is the multi-resolution scheme of Gatys et al. 2017 (sec. 6, "high-resolution images")
    and of jcjohnson/neural-style's multires recipe: the coarse levels are cheap and fix the
    large-scale structure, the fine levels add detail.  The style image (and any masks) are
    resized with the content, keeping their relative scale.  Each level compiles its own step once.

    Measured (``benchmarks/results/pyramid*.md``, TensorFlow-tutorial objective, quiet 2-core
    CPU): from noise at 512 px with :func:`~neuralstyle.optim.lbfgs`, levels of 30, 15 and 30
    iterations reach the losses of 20 and 30 direct iterations 1.2x and 1.25x sooner and end
    1.57x lower.  With the tutorial's Adam (b1 = 0.99, fresh state per level) it is slower
    (0.87x-0.89x), and from the content image it does not pay: the upsampled result of a level
    starts the next level at a *higher* loss than the content image does (the Gram statistics of
    VGG features change with the image scale and upsampling loses fine detail).

    ``steps`` is one number for every level or a list, coarsest first.  Returns the final
    level's result; ``metrics["levels"]`` holds each level's metrics and ``metrics["wall_time_s"]``
    and ``metrics["compile_time_s"]`` the totals.
    """
    shapes = pyramid_shapes(content.shape[:2], levels)
    per_level = [steps] * levels if isinstance(steps, int) else [int(s) for s in steps]
    if len(per_level) != levels:
        raise ConfigError(f"pyramid steps has {len(per_level)} entries for {levels} levels")
    styles = style if isinstance(style, (list, tuple)) else [style]
    snapshot_dir = stylize_kwargs.pop("snapshot_dir", None)
    full_h = content.shape[0]
    image, level_metrics = init, []
    for level, (shape, level_steps) in enumerate(zip(shapes, per_level)):
        factor = shape[0] / full_h
        level_content = resize(content, shape)
        level_styles = [resize(s, (max(1, round(s.shape[0] * factor)), max(1, round(s.shape[1] * factor))))
                        for s in styles]
        level_masks = None if style_masks is None else [
            resize(np.repeat(np.asarray(m, np.float32)[..., None], 3, -1), shape)[..., 0] for m in style_masks]
        start = image if isinstance(image, str) else resize(image, shape)
        result = stylize(
            objective, level_content,
            level_styles if isinstance(style, (list, tuple)) else level_styles[0],
            optimizer=optimizer, steps=level_steps, init=start, seed=seed, progress=progress,
            style_blend=style_blend, style_masks=level_masks,
            snapshot_dir=None if snapshot_dir is None else Path(snapshot_dir) / f"level{level}",
            **stylize_kwargs,
        )
        image = result.image
        level_metrics.append({k: v for k, v in result.metrics.items() if k != "backbone"})
    metrics = dict(result.metrics)
    metrics["levels"] = level_metrics
    metrics["steps"] = sum(m["steps"] for m in level_metrics)
    metrics["wall_time_s"] = sum(m["wall_time_s"] for m in level_metrics)
    metrics["compile_time_s"] = sum(m["compile_time_s"] for m in level_metrics)
    metrics["time_per_step_s"] = None  # differs per level: see metrics["levels"]
    return StylizeResult(image, metrics)
