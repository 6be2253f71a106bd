"""Which CPU convolution kernels the feed-forward networks' compiled programs use (a speed option
of this library, not of the papers).

On the CPU, XLA (jaxlib 0.10) hands convolutions and the element-wise operations around them to
YNNPACK fusions by default.  For the feed-forward networks (:mod:`neuralstyle.fast.transform`,
:mod:`neuralstyle.arbitrary`: many small-channel convolutions on large images, 9x9 kernels from and
to 3 channels) XLA's other path, its Eigen convolutions, is about three times faster: the fast
transform net (Keras's layers) on a 2-core Xeon (AVX-512) took 7.4 / 7.3 s per megapixel at 512 /
1024 px with YNNPACK and 2.2 / 2.3 s with Eigen (PyTorch eager: 2.4 / 2.9), and its train step
7.1 vs 3.3 s (with the rewrites of :func:`neuralstyle.fast.transform.fast_operations`;
``benchmarks/results/fast_speed.md``).  The switch is XLA's debug option
``xla_cpu_experimental_ynn_fusion_type`` set to the empty string (no YNNPACK fusions), passed per
program as a compiler option: no process-wide ``XLA_FLAGS`` is needed or changed, and the
optimization programs of the VGG backbone are left as XLA chooses.

``conv_backend``:

* ``"auto"`` (default): what this machine's tuning measured faster (``python -m neuralstyle.tune``,
  :func:`neuralstyle.tuning.fast_conv_backend`), and ``"eigen"`` without a tuning;
* ``"eigen"``: the option is set for the programs built with :func:`jit`, on the CPU
  backend when the installed XLA knows the option (older jaxlib versions, which have no YNNPACK
  fusions, and GPUs get plain :func:`jax.jit`);
* ``"xla"``: XLA's own default (YNNPACK fusions in jaxlib 0.10).

Both compute the same convolutions in float32 with different summation orders; the networks'
outputs agree to about 1e-6 ([0, 1] pixels), which ``tests/test_fast_xla.py`` checks (bound 1e-4,
with a trained-like network on AVX2 and AVX-512 machines alike).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from ..errors import ConfigError

CONV_BACKENDS = ("auto", "eigen", "xla")
DEFAULT_CONV_BACKEND = "auto"
#: ``"auto"`` without a tuning of this machine.
UNTUNED_CONV_BACKEND = "eigen"

#: The XLA debug option that selects YNNPACK fusions on the CPU; empty: none.
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"

#: Further compiler options of the *apply* programs (:func:`apply_jit`: a photo in, its result
#: out; compiled once per image size or bucket, run a few times): LLVM optimization level 1 of
#: XLA's default 3 cuts their XLA compile time by about a fifth (fast net: 0.95 -> 0.74 s at 512
#: and 1024 px on a 2-core Xeon) at the same run time and the same outputs (convolutions and
#: reductions are library calls either way; ``tests/test_fast_xla.py``).  Training steps keep
#: level 3.
APPLY_OPTIONS = {"xla_backend_optimization_level": 1}


def check_conv_backend(conv_backend: str) -> str:
    """``conv_backend`` if it is one of :data:`CONV_BACKENDS`, else a :class:`ConfigError`."""
    if conv_backend not in CONV_BACKENDS:
        raise ConfigError(f"conv_backend must be one of {CONV_BACKENDS}, got {conv_backend!r}")
    return conv_backend


@functools.lru_cache(maxsize=None)
def _option_known(name: str = YNN_OPTION, value=""):
    """Whether this XLA accepts the compiler option ``name=value`` (a tiny program is compiled
    once per process and option to find out; an XLA without it raises on unknown options)."""
    try:
        f = jax.jit(lambda x: x + 1, compiler_options={name: value})
        jax.block_until_ready(f(jnp.zeros((1,), jnp.float32)))
        return True
    except Exception:  # noqa: BLE001 - any failure: this XLA does not take the option
        return False


def resolve_conv_backend(conv_backend: str = DEFAULT_CONV_BACKEND) -> str:
    """``"eigen"`` or ``"xla"``: ``conv_backend`` with ``"auto"`` resolved by this machine's tuning
    (:mod:`neuralstyle.tuning`), else :data:`UNTUNED_CONV_BACKEND`."""
    check_conv_backend(conv_backend)
    if conv_backend != "auto":
        return conv_backend
    from ..tuning import fast_conv_backend

    return fast_conv_backend() or UNTUNED_CONV_BACKEND


def compiler_options(conv_backend: str = DEFAULT_CONV_BACKEND) -> Optional[dict]:
    """The compiler options of a feed-forward program under ``conv_backend`` (``None``: XLA's
    defaults)."""
    conv_backend = resolve_conv_backend(conv_backend)
    if conv_backend == "xla" or jax.default_backend() != "cpu" or not _option_known():
        return None
    return {YNN_OPTION: ""}


class _Jitted:
    """A jitted function with compiler options that can also be called inside another ``jax.jit``.

    JAX accepts ``compiler_options`` only on the outermost jit and raises on a nested one, so a
    call with traced arguments (inside someone's ``jax.jit``, ``grad``, ``vmap``) goes to the plain
    ``jax.jit(fn)``, whose computation the outer program then compiles with its own options.
    Top-level calls, ``lower`` and every other attribute (``_cache_size``, ...) are the optioned
    function's."""

    def __init__(self, fn: Callable, options: dict, **kwargs):
        self._plain = jax.jit(fn, **kwargs)
        self._optioned = jax.jit(fn, compiler_options=options, **kwargs)
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs)))
        return (self._plain if traced else self._optioned)(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._optioned, name)


def jit(fn: Callable, conv_backend: str = DEFAULT_CONV_BACKEND, **kwargs) -> Callable:
    """``jax.jit(fn, **kwargs)`` with the compiler options of ``conv_backend`` (see the module
    docstring); callable inside another jit too (then without them, see :class:`_Jitted`)."""
    options = compiler_options(conv_backend)
    if not options:
        return jax.jit(fn, **kwargs)
    return _Jitted(fn, {**options, **kwargs.pop("compiler_options", {})}, **kwargs)


def apply_options(conv_backend: str = DEFAULT_CONV_BACKEND) -> dict:
    """The options of :data:`APPLY_OPTIONS` this XLA knows, where ``conv_backend`` sets options at
    all (``"eigen"`` on the CPU); else ``{}``."""
    if not compiler_options(conv_backend):
        return {}
    return {k: v for k, v in APPLY_OPTIONS.items() if _option_known(k, v)}


def apply_jit(fn: Callable, conv_backend: str = DEFAULT_CONV_BACKEND, **kwargs) -> Callable:
    """:func:`jit` for an apply program (a stylizer's network on photos): with
    :data:`APPLY_OPTIONS` too, which make its compile cheaper at the same run time."""
    extra = apply_options(conv_backend)
    if extra:
        kwargs["compiler_options"] = {**extra, **kwargs.get("compiler_options", {})}
    return jit(fn, conv_backend, **kwargs)
