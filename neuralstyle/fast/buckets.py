r"""Size buckets: one compiled program serves every image size in a bucket, with the same output as
the network run at the image's own size.

``jax.jit`` compiles one XLA program per input shape.  Here an ``H x W`` photo is instead placed in
a buffer of a **bucket shape** (:func:`bucket_shape`: each side rounded up to a multiple of the
bucket step, e.g. 128 px), the network runs on the whole buffer with the image's own size passed
as a *traced* argument, and the result is cropped back.  Images whose sides round up to the same
multiples share one program.

Exactness.  The feed-forward networks here (Johnson et al. 2016, :mod:`neuralstyle.fast.transform`;
Ghiasi et al. 2017, :mod:`neuralstyle.arbitrary`) have two operations that see the whole image
and would change if the padded pixels were counted:

* **reflection padding before every convolution**: padding the *input* by reflection would only
  reproduce the first layer's view of the border.  Instead every ``ReflectionPadding2D`` reflects
  the **valid region** of its input (:func:`reflect_pad_valid`: the rows just inside the valid
  edge are mirrored to just outside it, at a traced position).  The padded buffer then holds, in
  its top-left ``valid + 2p`` window, exactly what the unbucketed layer's padded input holds, so
  a ``valid`` convolution (stride 1 or 2) gives exactly the unbucketed outputs in the valid window;
  outside it the buffer holds finite filler that never reaches a valid output;
* **instance normalization** (``GroupNormalization(groups=-1)`` and the conditional instance norm):
  mean and variance are taken over the valid region only (:func:`masked_moments`).

Every spatial tensor's valid extent is the same fraction of its buffer as the image's (the
networks only halve, double or keep sizes, and the image is first padded to a multiple of their
total stride, 4, as the unbucketed network does), so a layer finds its valid extent from its
input's static shape: ``valid * size // bucket`` (:func:`valid_extent`).  Upsampling, ReLU, sums,
tanh/sigmoid and 1x1 heads act pixel by pixel and need nothing.

The result equals the unbucketed network's up to float32 rounding (convolutions and reductions
over buffers of other shapes may sum in another order): ``tests/test_size_buckets.py`` checks
max |difference| <= 1e-4 on [0, 1] outputs at several sizes; measured figures are in
``benchmarks/results/buckets.md``.  Not in the papers: a serving-side device of this library.

Layers that would need more (zero-padded ``same`` convolutions, pooling, batch statistics) are
refused by :func:`check_model` with the layer's name, so a new architecture never silently loses
exactness.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from typing import Callable, Optional, Sequence, Union  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import ConfigError  # noqa: E402
from .transform import (  # noqa: E402
    STRIDE,
    CropLike,
    PadToMultiple,
    ReflectionPadding2D,
    fast_operations,
    instance_norm,
    is_instance_norm,
    padding_source,
)
from .ahead import Programs  # noqa: E402
from .xla import DEFAULT_CONV_BACKEND, apply_jit  # noqa: E402

#: Default bucket step in pixels (see ``benchmarks/results/buckets.md`` for the measurement).
DEFAULT_BUCKET = 128

BucketSpec = Union[int, Sequence[int], None]


# --------------------------------------------------------------------------- the bucket rule

def check_bucket(bucket: BucketSpec, multiple: int = STRIDE) -> Optional[tuple[int, ...]]:
    """Validate a bucket spec and return it as a tuple of sides (``None``: buckets off).

    ``bucket`` is ``None`` (one program per image size, as without buckets), a step ``s`` (every
    side rounded up to a multiple of ``s``), or an increasing list of sides (each side rounded up
    to the smallest entry at least as large; sides beyond the last entry are rounded up to a
    multiple of the last entry).  Every value must be a positive multiple of ``multiple`` (the
    networks' total stride, 4), so that a bucket holds the image padded to that multiple."""
    if bucket is None:
        return None
    if isinstance(bucket, bool) or isinstance(bucket, (str, bytes)):
        raise ConfigError(f"bucket must be null, a step in pixels (a multiple of {multiple}, e.g. 128) "
                          f"or an increasing list of sides, got {bucket!r}")
    try:
        values = [bucket] if isinstance(bucket, (int, float, np.number)) else list(bucket)
    except TypeError:
        raise ConfigError(f"bucket must be null, a step in pixels or a list of sides, got {bucket!r}") from None
    if not values:
        raise ConfigError("bucket: an empty list; use null to turn buckets off")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 or v % multiple:
            raise ConfigError(f"bucket: every side must be a positive multiple of {multiple} px "
                              f"(the network's total stride), got {v!r} in {bucket!r}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ConfigError(f"bucket: a list of sides must be strictly increasing, got {bucket!r}")
    return tuple(int(v) for v in values)


def bucket_side(n: int, sides: tuple[int, ...]) -> int:
    """The bucket side for an image side ``n`` (see :func:`check_bucket`)."""
    if len(sides) == 1:
        return -(-n // sides[0]) * sides[0]
    for s in sides:
        if n <= s:
            return s
    return -(-n // sides[-1]) * sides[-1]


def bucket_shape(height: int, width: int, sides: tuple[int, ...]) -> tuple[int, int]:
    """``(bucket height, bucket width)`` for an image of ``height x width``."""
    return bucket_side(height, sides), bucket_side(width, sides)


def to_bucket(image: np.ndarray, shape: tuple[int, int], multiple: int = STRIDE) -> tuple[np.ndarray, tuple[int, int]]:
    """``(buffer, valid)``: ``image`` (H, W, C) reflection-padded at the bottom and right to a
    multiple of ``multiple`` (what the network's ``PadToMultiple`` does), then zero-filled to
    ``shape``; ``valid`` is the padded size (the region the network computes exactly)."""
    h, w = image.shape[:2]
    vh, vw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    if vh > shape[0] or vw > shape[1]:
        raise ValueError(f"an image of {h}x{w} does not fit a {shape[0]}x{shape[1]} bucket")
    x = np.pad(image, ((0, vh - h), (0, vw - w), (0, 0)), mode="reflect")
    x = np.pad(x, ((0, shape[0] - vh), (0, shape[1] - vw), (0, 0)))
    return x, (vh, vw)


# --------------------------------------------------------------------------- exact operations

def valid_extent(size: int, valid, bucket: int):
    """The valid extent of a tensor side of ``size`` px when the image's valid extent is ``valid``
    (traced) in a bucket side of ``bucket`` px: ``valid * size // bucket`` (sizes are the bucket
    halved, quartered or doubled, and ``valid`` a multiple of 4, so the division is exact)."""
    return valid * size // bucket


def reflect_pad_valid(x: jnp.ndarray, p: int, valid_h, valid_w) -> jnp.ndarray:
    """Reflection padding by ``p`` of the valid top-left ``valid_h x valid_w`` region of ``x``
    (B, H, W, C), into a buffer of (B, H + 2p, W + 2p, C): its top-left ``valid + 2p`` window equals
    ``pad(x[:, :valid_h, :valid_w], p, mode="reflect")`` (the border pixel is not repeated, like
    :class:`~neuralstyle.fast.transform.ReflectionPadding2D`); the rest is finite filler."""
    return _gather_valid(x, p, valid_h, valid_w, "reflect")


def edge_pad_valid(x: jnp.ndarray, valid_h, valid_w) -> jnp.ndarray:
    """Edge padding by one pixel of the valid top-left ``valid_h x valid_w`` region of ``x``
    (B, H, W, C), into (B, H + 2, W + 2, C): its top-left ``valid + 2`` window equals
    ``pad(x[:, :valid_h, :valid_w], 1, mode="edge")`` (the padding of the sub-pixel form of
    upsampling + convolution, :func:`~neuralstyle.fast.transform.subpixel_conv`); the rest is
    finite filler."""
    return _gather_valid(x, 1, valid_h, valid_w, "edge")


def valid_padding_rows(n: int, p: int, valid, mode: str) -> jnp.ndarray:
    """The source row of each of the ``n + 2p`` rows of a side of ``n`` rows padded by ``p`` around
    its first ``valid`` rows (traced): :func:`~neuralstyle.fast.transform.padding_source` of the
    valid rows, clipped into ``[0, n)`` past ``valid + p`` (filler)."""
    return jnp.clip(padding_source(jnp.arange(n + 2 * p) - p, valid, mode, jnp), 0, n - 1)


def _gather_valid(x, p: int, valid_h, valid_w, mode: str):
    """Both sides of ``x`` padded around their valid region by two gathers (indices computed from
    the traced extents; :func:`valid_padding_rows`).  A gather rather than a concatenation and a
    dynamic update: XLA's CPU code generation is cheaper (the fast net's 128 px bucket program
    compiled in 0.72-0.84 s instead of 0.96-1.08 s at 213x320-1024x768 on a 2-core Xeon, same
    values bit for bit, same run time)."""
    x = jnp.take(x, valid_padding_rows(x.shape[1], p, valid_h, mode), axis=1, mode="clip")
    return jnp.take(x, valid_padding_rows(x.shape[2], p, valid_w, mode), axis=2, mode="clip")


def valid_mask(shape, valid_h, valid_w) -> jnp.ndarray:
    """Boolean (1, H, W, 1) mask of the top-left ``valid_h x valid_w`` region of a (B, H, W, C) shape."""
    rows = jnp.arange(shape[1]) < valid_h
    cols = jnp.arange(shape[2]) < valid_w
    return (rows[:, None] & cols[None, :])[None, :, :, None]


def masked_moments(x: jnp.ndarray, valid_h, valid_w) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-example, per-channel mean and biased variance of ``x`` (B, H, W, C) over its valid
    region (the two-pass formula of ``jnp.var``, which Keras's ``ops.moments`` uses); (B, 1, 1, C)."""
    mask = valid_mask(x.shape, valid_h, valid_w)
    n = jnp.asarray(valid_h * valid_w, x.dtype)
    mean = jnp.sum(jnp.where(mask, x, 0.0), axis=(1, 2), keepdims=True) / n
    var = jnp.sum(jnp.where(mask, jnp.square(x - mean), 0.0), axis=(1, 2), keepdims=True) / n
    return mean, var


def _conditional_instance_norm(layer, extent) -> Callable:
    """:class:`~neuralstyle.arbitrary.ConditionalInstanceNorm` with statistics over the valid region."""

    def call(inputs):
        x, gamma, beta = inputs
        mean, var = masked_moments(x, *extent(x))
        return (x - mean) * (gamma * jax.lax.rsqrt(var + layer.epsilon)) + beta

    return call


# --------------------------------------------------------------------------- the network

_POINTWISE = (keras.layers.ReLU, keras.layers.Activation, keras.layers.Rescaling, keras.layers.Add,
              keras.layers.Reshape, keras.layers.InputLayer)


def _is_conditional_norm(layer) -> bool:
    return type(layer).__name__ == "ConditionalInstanceNorm"


def check_model(model: keras.Model) -> int:
    """Raise :class:`ConfigError` naming the first layer that bucketing cannot run exactly; return
    the multiple the network pads its input to (its ``PadToMultiple``)."""
    pads = [layer for layer in model.layers if isinstance(layer, PadToMultiple)]
    if len(pads) != 1 or pads[0].multiple % STRIDE:
        raise ConfigError(f"bucket: {model.name} has no single PadToMultiple layer with a multiple of "
                          f"{STRIDE}; run it with bucket=null")
    for layer in model.layers:
        ok = (isinstance(layer, _POINTWISE + (ReflectionPadding2D, PadToMultiple, CropLike))
              or is_instance_norm(layer) or _is_conditional_norm(layer)
              or (isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation == "nearest")
              or (isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.Conv2DTranspose)
                  and (layer.padding == "valid" or tuple(layer.kernel_size) == (1, 1))
                  and tuple(layer.dilation_rate) == (1, 1)))
        if not ok:
            raise ConfigError(f"bucket: layer {layer.name!r} ({type(layer).__name__}) of {model.name} "
                              "cannot be run exactly in a size bucket (only reflection-padded valid "
                              "convolutions, instance norms, nearest upsampling and pointwise layers "
                              "can); run it with bucket=null")
    return pads[0].multiple


def bucketed_fn(model: keras.Model) -> Callable:
    """The pure function ``(trainable, non_trainable, inputs, valid, kernels=None) -> outputs`` of
    ``model`` run in a size bucket (see the module docstring; jit it: one program per bucket shape).

    ``inputs`` is what ``model`` takes (an image batch (B, Hb, Wb, 3), or ``[images, embeddings]``),
    the images already placed in the bucket by :func:`to_bucket`; ``valid`` is the int32 pair
    ``(valid height, valid width)`` returned by it; ``kernels``: the rewritten kernels of frozen
    weights (:func:`~neuralstyle.fast.transform.prepared_kernels`); ``given``: per-style layer
    outputs computed outside (:func:`~neuralstyle.fast.transform.conditioning_layers`).  The output
    has the bucket's shape; its top-left ``H x W`` window is the network's result for the
    ``H x W`` image."""
    check_model(model)

    def run(trainable, non_trainable, inputs, valid, kernels=None, given=None):
        images = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        bh, bw = images.shape[1], images.shape[2]

        def extent(x):
            return valid_extent(x.shape[1], valid[0], bh), valid_extent(x.shape[2], valid[1], bw)

        fast = fast_operations(model, edge_pad=lambda x: edge_pad_valid(x, *extent(x)), kernels=kernels,
                               given=given)

        def operation(layer):
            if _is_conditional_norm(layer):
                return _conditional_instance_norm(layer, extent)
            if is_instance_norm(layer):  # statistics over the valid region
                return instance_norm(layer, moments=lambda x: masked_moments(x, *extent(x)))
            if fast(layer) is not layer:  # given, space-to-depth, sub-pixel (its padding: of the valid region)
                return fast(layer)
            if isinstance(layer, PadToMultiple):
                return lambda x: x  # done on the host by to_bucket
            if isinstance(layer, CropLike):
                return lambda pair: pair[0]  # the caller crops
            if isinstance(layer, ReflectionPadding2D):
                return lambda x: reflect_pad_valid(x, layer.padding, *extent(x))
            return layer

        mapping = list(zip(model.trainable_variables, trainable))
        mapping += list(zip(model.non_trainable_variables, non_trainable))
        flat = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        with keras.StatelessScope(state_mapping=mapping):
            # Keras's own graph walk (what Functional.call does), with the bucket-aware
            # operations above in place of padding, normalization and crop.
            outputs = model._run_through_graph(flat, operation_fn=operation)
        return outputs[0] if isinstance(outputs, (list, tuple)) else outputs

    return run


class Bucketed:
    """``Bucketed(model, sides)(trainable, non_trainable, image, *extra)`` -> the ``(H, W, C)``
    result of ``model`` for one ``(H, W, 3)`` image (``extra``: further batched inputs such as a
    style embedding (1, 100)), through one compiled program per bucket shape.

    ``traces`` counts the programs traced (one per bucket shape and batch size), for tests;
    ``conv_backend`` selects the CPU convolution kernels (:mod:`neuralstyle.fast.xla`);
    :meth:`precompile` compiles a bucket's program ahead of use (:mod:`neuralstyle.fast.ahead`).

    :meth:`plan` (given the sizes about to be stylized, e.g. a folder's) marks the sizes that are
    alone in their bucket; :meth:`serves` is then false for them, and the stylizers run them at
    their own size, as without buckets: a bucket program saves compiles only when it serves two
    sizes or more, and costs more to compile and to run than the program of one size (padding,
    masked statistics; 20 photos of 5 sizes, fast net, 2-core Xeon: 15.3 s with every size in a
    128 px bucket of its own, 12.4 s at their own sizes; ``benchmarks/results/fast_folder_a1b6ae3.md``)."""

    def __init__(self, model: keras.Model, sides: tuple[int, ...], conv_backend: str = DEFAULT_CONV_BACKEND):
        self.multiple = check_model(model)
        self.sides = sides
        self.traces = 0
        self.alone: frozenset = frozenset()
        run = bucketed_fn(model)

        def counted(trainable, non_trainable, inputs, valid, kernels, given):
            self.traces += 1
            return run(trainable, non_trainable, inputs, valid, kernels, given)

        self._run = Programs(apply_jit(counted, conv_backend))

    def precompile(self, trainable, non_trainable, height: int, width: int, *extra, batch: int = 1,
                   kernels: Optional[dict] = None, given: Optional[dict] = None) -> None:
        """Compile ahead the program that ``batch`` images of ``height x width`` run in (their
        bucket's; :mod:`neuralstyle.fast.ahead`); ``extra``, ``kernels`` and ``given`` as for a
        call (arrays or ``jax.ShapeDtypeStruct``).  A no-op when that program is compiled already."""
        bh, bw = self.shape_for(height, width)
        images = jax.ShapeDtypeStruct((batch, bh, bw, 3), jnp.float32)
        self._run.compile(trainable, non_trainable, [images, *extra] if extra else images,
                          jax.ShapeDtypeStruct((2,), jnp.int32), kernels, given)

    def plan(self, sizes) -> "Bucketed":
        """Plan for the ``(height, width)`` sizes about to be stylized (``None`` entries skipped):
        the sizes alone in their bucket (no other planned size shares it) are then not served
        (:meth:`serves`); replaces an earlier plan.  Returns ``self``."""
        by_bucket: dict = {}
        for size in sizes:
            if size is not None:
                h, w = int(size[0]), int(size[1])
                by_bucket.setdefault(self.shape_for(h, w), set()).add((h, w))
        self.alone = frozenset(next(iter(s)) for s in by_bucket.values() if len(s) == 1)
        return self

    def serves(self, height: int, width: int) -> bool:
        """Whether an ``height x width`` image runs in its bucket: false for a size :meth:`plan`
        found alone in its bucket (its caller runs it at its own size), true otherwise."""
        return (int(height), int(width)) not in self.alone

    def shape_for(self, height: int, width: int) -> tuple[int, int]:
        """The bucket shape an ``height x width`` image runs in."""
        return bucket_shape(-(-height // self.multiple) * self.multiple,
                            -(-width // self.multiple) * self.multiple, self.sides)

    def __call__(self, trainable, non_trainable, images: np.ndarray, *extra,
                 kernels: Optional[dict] = None, given: Optional[dict] = None) -> np.ndarray:
        """``images`` (B, H, W, 3) of one size -> results (B, H, W, C); ``kernels``: the rewritten
        kernels of frozen weights (:func:`~neuralstyle.fast.transform.prepared_kernels`), else
        the program rewrites them itself; ``given``: see :func:`bucketed_fn`."""
        images = np.asarray(images, np.float32)
        h, w = images.shape[1:3]
        shape = self.shape_for(h, w)
        placed = [to_bucket(im, shape, self.multiple) for im in images]
        # NumPy in and out (crop included): no small programs compiled per size on this path
        batch = np.stack([p[0] for p in placed])
        valid = np.asarray(placed[0][1], np.int32)
        inputs = [batch, *extra] if extra else batch
        out = self._run(trainable, non_trainable, inputs, valid, kernels, given)
        return np.asarray(out)[:, :h, :w]


class BucketPlanning:
    """What a stylizer with size buckets (:class:`~neuralstyle.fast.Stylizer`,
    :class:`~neuralstyle.arbitrary.ArbitraryStylizer`) does with its ``bucketed`` (a
    :class:`Bucketed`, or ``None`` for one program per image size): plan a folder's sizes and say
    which program an image runs in."""

    bucketed: Optional[Bucketed] = None

    def plan_sizes(self, sizes) -> None:
        """The ``(height, width)`` sizes about to be stylized (:func:`~neuralstyle.fast.stylize_files`
        passes a folder's): a size alone in its bucket then runs at its own size, the cheaper
        program (:meth:`Bucketed.plan`).  Without buckets: nothing to plan."""
        if self.bucketed is not None:
            self.bucketed.plan(sizes)

    def in_bucket(self, height: int, width: int) -> bool:
        """Whether an ``height x width`` image runs in its size bucket's program (else in the
        program of its own size)."""
        return self.bucketed is not None and self.bucketed.serves(height, width)

    def program_shape(self, height: int, width: int) -> tuple[int, int]:
        """The ``(height, width)`` of the program an ``height x width`` image runs in: its
        bucket's shape, or its own size."""
        return self.bucketed.shape_for(height, width) if self.in_bucket(height, width) else (height, width)
