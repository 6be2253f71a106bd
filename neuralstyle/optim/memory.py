"""How much memory an optimization run needs, and a refusal before a run that cannot fit."""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Optional

import jax

from ..errors import ConfigError
from .lbfgs import LBFGS


#: Peak memory of one VGG19 forward and backward pass per output pixel, measured with
#: ``benchmarks/pyramid.py`` (last in 739b3b5) and ``benchmarks/speed`` (5.0 GB peak RSS at 1024x1024 with Adam,
#: about 1 GB of it the process before the first step), rounded up.
BYTES_PER_PIXEL = 4_500
#: Fixed cost of the process (JAX, Keras, the backbone's weights).
BASE_BYTES = 1.5e9


#: Whole-image arrays of a tiled run per pixel: the image, its gradient, two Adam moments, the
#: content targets and the accumulated statistics' share (float32), rounded up.
TILED_BYTES_PER_PIXEL = 96


def estimate_memory_bytes(shape: tuple[int, int], optimizer=None, runs: int = 1,
                          window: Optional[tuple[int, int]] = None) -> float:
    """A rough upper estimate of the peak memory of ``runs`` runs at ``shape = (H, W)``.

    Activations and their gradients (:data:`BYTES_PER_PIXEL`), plus the optimizer's own state:
    Adam keeps two moments (8 bytes a channel value), L-BFGS ``2 * memory_size`` image-sized
    vectors (its history grows to that in its first ``memory_size`` iterations).  With tiled optimization (``window``: the largest padded tile, see
    :mod:`neuralstyle.tiling`) the activations are those of one window, and the whole image costs
    :data:`TILED_BYTES_PER_PIXEL`.  It is meant to refuse sizes that cannot fit, not to predict to
    the megabyte.
    """
    pixels = float(shape[0]) * float(shape[1])
    optimizer_state = 3 * 4 * 2 * optimizer.memory_size if isinstance(optimizer, LBFGS) else 0
    if window is not None:
        window_pixels = float(window[0]) * float(window[1])
        return (BASE_BYTES + window_pixels * BYTES_PER_PIXEL
                + pixels * (TILED_BYTES_PER_PIXEL + optimizer_state))
    per_pixel = BYTES_PER_PIXEL + 3 * 4 * 4 + optimizer_state  # image, gradient, two moments (fp32)
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
                 runs: int = 1, window: Optional[tuple[int, int]] = None) -> None:
    """Raise :class:`ConfigError` if ``runs`` runs at ``shape`` (tiled in ``window``s, if given)
    need more memory than the machine has (see :func:`estimate_memory_bytes`)."""
    need, have = estimate_memory_bytes(shape, optimizer, runs, window), available_memory_bytes()
    if have is not None and need > have:
        batch = f"{runs} runs at " if runs > 1 else "a "
        advice = "use smaller tiles (tile.size)" if window is not None else \
            "use a smaller size, or tiled optimization (tile.size=512)"
        raise ConfigError(
            f"{what}: {batch}{shape[1]}x{shape[0]} px run needs about {need / 1e9:.3g} GB, more than "
            f"the {have / 1e9:.3g} GB this machine has; {advice}"
        )


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or ``None`` where the C library has none (macOS, musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Hand the pages the C heap holds free back to the operating system (glibc's
    ``malloc_trim(0)``); ``False`` where the C library cannot (nothing done).

    XLA's CPU runtime and compiler allocate with ``malloc``.  When a program finishes, glibc keeps
    its freed buffers, and LLVM's freed compile-time memory, in its arenas.  Often the next
    program cannot reuse them: its large buffers are ``mmap``-ed, and they end up next to the kept
    ones.  Calling this after compiling (:func:`~neuralstyle.optim.driver.compile_ahead`) lowered the
    peak RSS of L-BFGS on VGG19 at 1024 px by 128 MiB (history 100, 3 iterations) and 160 MiB
    (history 10, 12 iterations), to 0.98x and 0.94x ``torch.optim.LBFGS``'s above the same
    baseline (``benchmarks/results/lbfgs_memory.md``, same run).  It takes about 0.05 s; the memory
    it frees was not in use, so nothing is recomputed."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
