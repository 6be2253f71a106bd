r"""The image transformation network of Johnson, Alahi & Fei-Fei, "Perceptual Losses for Real-Time
Style Transfer and Super-Resolution", ECCV 2016 (below: *the paper*), as a Keras model.

Architecture (the paper's supplementary material, Table 1, with the changes that the later
reference implementations adopted; each departure is listed):

====================================  =======================================================
layer                                 output
====================================  =======================================================
input, RGB in [0, 1]                  H x W x 3
reflection pad to a multiple of 4     H' x W' x 3 (H' = 4 ceil(H / 4))
9x9 conv, stride 1                    H' x W' x w
3x3 conv, stride 2                    H'/2 x W'/2 x 2w
3x3 conv, stride 2                    H'/4 x W'/4 x 4w
``residual_blocks`` x residual block  H'/4 x W'/4 x 4w
2x nearest upsampling + 3x3 conv      H'/2 x W'/2 x 2w
2x nearest upsampling + 3x3 conv      H' x W' x w
9x9 conv, tanh, scaled to [0, 1]      H' x W' x 3, cropped back to H x W x 3
====================================  =======================================================

Every convolution is preceded by reflection padding of ``kernel // 2`` and (but the last)
followed by instance normalization and a ReLU.  A residual block is pad-conv-IN-ReLU-pad-conv-IN
plus the identity.  ``w`` is ``width`` (32 in the paper).

Departures from the paper, all as in the authors' later code (jcjohnson/fast-neural-style) and in
pytorch/examples ``fast_neural_style``:

* instance normalization (Ulyanov et al. 2016, "Instance Normalization: The Missing Ingredient
  for Fast Stylization") instead of batch normalization;
* reflection padding before every convolution instead of zero padding, and residual blocks with
  padded convolutions instead of the paper's unpadded ones with a cropped shortcut;
* upsampling by nearest-neighbour resizing followed by a 3x3 convolution instead of fractionally
  strided (transposed) convolutions, which cause checkerboard artefacts (Odena, Dumoulin & Olah,
  "Deconvolution and Checkerboard Artifacts", Distill 2016);
* the output is ``(tanh(x) + 1) / 2``, i.e. pixels in [0, 1] like every image in neuralstyle
  (the paper scales tanh to [0, 255]);
* inputs of any size: the image is reflection-padded to a multiple of 4 (the two stride-2
  convolutions) and the output cropped back, so the output always has the input's size.

Instance normalization is Keras's ``GroupNormalization(groups=-1)`` (one group per channel), so
only the two padding/cropping layers below are custom; they are registered with Keras under the
package name ``neuralstyle`` and a saved model file loads with ``keras.saving.load_model`` once
``neuralstyle.fast`` is imported (or with ``custom_objects=CUSTOM_OBJECTS``).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from typing import Callable, NamedTuple, Optional  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import ConfigError  # noqa: E402
from ..initializers import glorot_uniform  # noqa: E402,F401  (neuralstyle.fast.transform.glorot_uniform)

#: The product of the strides of the downsampling convolutions: inputs are padded to a multiple.
STRIDE = 4


@keras.saving.register_keras_serializable(package="neuralstyle")
class ReflectionPadding2D(keras.layers.Layer):
    """Reflection padding of ``padding`` pixels on each side of the two spatial axes (NHWC).

    Like ``torch.nn.ReflectionPad2d``: the border pixel is not repeated
    (``[a b c]`` padded by 1 is ``[b a b c b]``).
    """

    def __init__(self, padding: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.padding = int(padding)

    def call(self, x):
        p = self.padding
        return keras.ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        grow = lambda n: None if n is None else n + 2 * self.padding  # noqa: E731
        return (b, grow(h), grow(w), c)

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}


@keras.saving.register_keras_serializable(package="neuralstyle")
class PadToMultiple(keras.layers.Layer):
    """Reflection-pad the bottom and right edges so that height and width are multiples of
    ``multiple`` (at most ``multiple - 1`` pixels each; :class:`CropLike` removes them again)."""

    def __init__(self, multiple: int = STRIDE, **kwargs):
        super().__init__(**kwargs)
        self.multiple = int(multiple)

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        ph, pw = -h % self.multiple, -w % self.multiple
        if ph == 0 and pw == 0:
            return x
        return keras.ops.pad(x, [[0, 0], [0, ph], [0, pw], [0, 0]], mode="reflect")

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        up = lambda n: None if n is None else -(-n // self.multiple) * self.multiple  # noqa: E731
        return (b, up(h), up(w), c)

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="neuralstyle")
class CropLike(keras.layers.Layer):
    """``CropLike()([x, reference])`` is the top-left ``reference``-sized window of ``x``."""

    def call(self, inputs):
        x, reference = inputs
        return x[:, : reference.shape[1], : reference.shape[2], :]

    def compute_output_shape(self, input_shapes):
        x, reference = input_shapes
        return (x[0], reference[1], reference[2], x[3])


#: Pass as ``custom_objects`` to ``keras.saving.load_model`` if neuralstyle.fast is not imported.
CUSTOM_OBJECTS = {
    "neuralstyle>ReflectionPadding2D": ReflectionPadding2D,
    "neuralstyle>PadToMultiple": PadToMultiple,
    "neuralstyle>CropLike": CropLike,
}


def _conv(x, filters: int, kernel: int, stride: int, name: str, norm: bool = True, relu: bool = True):
    x = ReflectionPadding2D(kernel // 2, name=f"{name}_pad")(x)
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid", name=f"{name}_conv",
                            kernel_initializer="zeros")(x)  # see glorot_uniform
    if norm:
        x = keras.layers.GroupNormalization(groups=-1, epsilon=1e-5, name=f"{name}_in")(x)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def _residual(x, filters: int, name: str):
    y = _conv(x, filters, 3, 1, f"{name}_a")
    y = _conv(y, filters, 3, 1, f"{name}_b", relu=False)
    return keras.layers.Add(name=f"{name}_add")([x, y])


def _upsample(x, filters: int, name: str):
    x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_resize")(x)
    return _conv(x, filters, 3, 1, name)


def transform_net(width: int = 32, residual_blocks: int = 5, seed: int = 0,
                  name: str = "transform_net") -> keras.Model:
    """Build the transformation network (see the module docstring) with fresh weights.

    Args:
      width: channels of the first convolution (32 in the paper); the network has ``width``,
        ``2 width`` and ``4 width`` channels at full, half and quarter resolution.
      residual_blocks: number of residual blocks at quarter resolution (5 in the paper).
      seed: seeds the Glorot-uniform kernels (biases start at zero, instance norms at identity).

    The model maps ``(B, H, W, 3)`` RGB images in [0, 1] to images of the same shape in [0, 1],
    for any ``H, W >= 2``.
    """
    if int(width) < 1 or int(residual_blocks) < 0:
        raise ConfigError(f"transform net: width must be >= 1 and residual_blocks >= 0, got "
                          f"width={width}, residual_blocks={residual_blocks}")
    width, residual_blocks = int(width), int(residual_blocks)
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = PadToMultiple(STRIDE, name="pad_to_multiple")(inputs)
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_signed")(x)  # [0, 1] -> [-1, 1]
    x = _conv(x, width, 9, 1, "down1")
    x = _conv(x, 2 * width, 3, 2, "down2")
    x = _conv(x, 4 * width, 3, 2, "down3")
    for i in range(residual_blocks):
        x = _residual(x, 4 * width, f"res{i + 1}")
    x = _upsample(x, 2 * width, "up1")
    x = _upsample(x, width, "up2")
    x = _conv(x, 3, 9, 1, "out", norm=False, relu=False)
    x = keras.layers.Activation("tanh", name="tanh")(x)
    x = keras.layers.Rescaling(0.5, offset=0.5, name="to_pixels")(x)  # [-1, 1] -> [0, 1]
    outputs = CropLike(name="crop")([x, inputs])
    model = keras.Model(inputs, outputs, name=name)
    glorot_uniform(model, int(seed))
    return model


class TransformParams(NamedTuple):
    """The weights of a transform net as JAX arrays, in the order ``stateless_call`` expects."""

    trainable: list
    non_trainable: list


def get_params(model: keras.Model) -> TransformParams:
    """Current weights of ``model`` (pass them to :func:`apply_fn`'s function and to train steps)."""
    return TransformParams([jnp.asarray(v.value) for v in model.trainable_variables],
                           [jnp.asarray(v.value) for v in model.non_trainable_variables])


def set_params(model: keras.Model, params: TransformParams) -> keras.Model:
    """Assign ``params`` to ``model``'s variables (before saving it); returns ``model``."""
    for variable, value in zip(model.trainable_variables, params.trainable):
        variable.assign(jax.device_get(value))
    for variable, value in zip(model.non_trainable_variables, params.non_trainable):
        variable.assign(jax.device_get(value))
    return model


# --------------------------------------------------------------------------- padding by gathering

def padding_source(j, n, mode: str = "reflect", xp=np):
    """The source row of padded row ``j`` of a side whose rows ``0 .. n - 1`` are kept (``j < 0``:
    before them, ``j >= n``: after them): ``"reflect"`` mirrors without repeating the border row
    (``[a b c]`` by 1: ``[b a b c b]``, as :class:`ReflectionPadding2D`), ``"edge"`` repeats it.
    ``xp``: ``numpy`` for constant indices, ``jax.numpy`` for a traced ``n`` (size buckets)."""
    if mode == "edge":
        return xp.clip(j, 0, n - 1)
    return xp.where(j < 0, -j, xp.where(j < n, j, 2 * (n - 1) - j))


def padding_rows(n: int, before: int, after: int, mode: str = "reflect") -> np.ndarray:
    """The source index of every row of a side of ``n`` rows padded by ``before`` and ``after``
    (:func:`padding_source`)."""
    if mode == "reflect" and max(before, after) >= n:
        raise ValueError(f"reflection padding by {max(before, after)} needs more than {n} rows")
    return padding_source(np.arange(-before, n + after), n, mode)


def gather_pad(x: jnp.ndarray, top: int, bottom: int, left: int, right: int, mode: str = "reflect") -> jnp.ndarray:
    """``jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), mode)`` for NHWC ``x``
    (``mode`` ``"reflect"`` or ``"edge"``), computed as two gathers with constant indices
    (:func:`padding_rows`) instead of concatenations of reversed slices.

    Same values, bit for bit; why: XLA's CPU code generation of the gathers is cheaper.  The fast
    net's apply program with every padding gathered compiles in 0.42-0.48 s instead of 0.55-0.58 s
    (213x320-1024x768, 2-core Xeon AVX-512) and runs as fast.  Used by the apply programs
    (:func:`fast_operations` with ``gather_pads``); training keeps the concatenations, whose
    gradient is slices rather than a scatter."""
    if top or bottom:
        x = x[:, padding_rows(x.shape[1], top, bottom, mode)]
    if left or right:
        x = x[:, :, padding_rows(x.shape[2], left, right, mode)]
    return x


# --------------------------------------------------------------------------- space-to-depth

#: Block side of :func:`space_to_depth_conv` (4: the 9x9 kernel becomes 3x3, 3 outputs become 48).
SPACE_TO_DEPTH_BLOCK = 4


def space_to_depth_kernel(kernel: jnp.ndarray, block: int) -> jnp.ndarray:
    """The kernel ``(k, k, C, O)`` of a stride-1 convolution rewritten for its space-to-depth form:
    ``(K, K, b*b*C, b*b*O)`` with ``K = ceil((k + b - 1) / b)``, where
    ``W'[K1, K2, (i1, i2, c), (o1, o2, o)] = W[b K1 + i1 - o1, b K2 + i2 - o2, c, o]`` (zero where
    the index falls outside ``[0, k)``): input pixel ``(b J + i)`` meets output pixel ``(b I + o)``
    through kernel tap ``b (J - I) + i - o``."""
    k, _, c, o = kernel.shape
    taps = -(-(k + block - 1) // block)
    index = (block * np.arange(taps)[:, None, None] + np.arange(block)[None, :, None]
             - np.arange(block)[None, None, :])  # (K, i, o) -> tap
    inside = (index >= 0) & (index < k)
    index = np.clip(index, 0, k - 1)
    w = kernel[index[:, :, :, None, None, None], index[None, None, None, :, :, :]]  # K1 i1 o1 K2 i2 o2 C O
    mask = (inside[:, :, :, None, None, None] & inside[None, None, None, :, :, :])[..., None, None]
    w = jnp.where(mask, w, jnp.zeros((), w.dtype)).transpose(0, 3, 1, 4, 6, 2, 5, 7)  # K1 K2 i1 i2 C o1 o2 O
    return w.reshape(taps, taps, block * block * c, block * block * o)


def space_to_depth_conv(x: jnp.ndarray, kernel: jnp.ndarray, bias: Optional[jnp.ndarray] = None,
                        block: int = SPACE_TO_DEPTH_BLOCK, folded: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """A "valid" stride-1 convolution of ``x`` (B, H, W, C) with ``kernel`` (k, k, C, O), computed on
    ``block x block`` pixel blocks: input and output are folded into channels (space to depth), the
    kernel rewritten by :func:`space_to_depth_kernel`, and the result unfolded.

    Why: a convolution with few output channels and a large kernel, like the transform net's last
    9x9 convolution (32 -> 3), is a matrix product with 3 columns, which CPUs run far below their
    peak.  Folded by 4 it is a 3x3 convolution 512 -> 48 (1.8x the FLOPs, run at several times the
    rate): at 1024 px on a 2-core Xeon (AVX-512) 1.13 -> 0.59 s.  The sum is the same but in
    another order: outputs agree with ``lax.conv`` to float32 rounding (``tests/test_fast_transform.py``).
    Any size: ``x`` is zero-extended at the bottom and right to whole blocks (those zeros meet only
    outputs beyond ``H - k + 1``, which are cropped).  ``folded``: ``space_to_depth_kernel(kernel,
    block)`` computed once beforehand (:func:`rewritten_kernels`), so that the program does not
    rewrite a frozen kernel on every call."""
    k, _, c, o = kernel.shape
    b, h, w, _ = x.shape
    oh, ow = h - k + 1, w - k + 1
    taps = -(-(k + block - 1) // block)
    bh, bw = -(-oh // block), -(-ow // block)  # output blocks
    x = jnp.pad(x, ((0, 0), (0, block * (bh + taps - 1) - h), (0, block * (bw + taps - 1) - w), (0, 0)))
    x = x.reshape(b, bh + taps - 1, block, bw + taps - 1, block, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, bh + taps - 1, bw + taps - 1, block * block * c)
    if folded is None:
        folded = space_to_depth_kernel(kernel, block)
    y = jax.lax.conv_general_dilated(x, folded.astype(x.dtype), (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y.reshape(b, bh, bw, block, block, o).transpose(0, 1, 3, 2, 4, 5).reshape(b, bh * block, bw * block, o)
    y = y[:, :oh, :ow]
    return y if bias is None else y + jnp.reshape(bias, (1, 1, 1, -1)).astype(y.dtype)


def runs_space_to_depth(layer) -> bool:
    """Whether :func:`fast_operations` computes ``layer`` by :func:`space_to_depth_conv`: a plain
    ``Conv2D`` ("valid", stride 1, no dilation, no activation) with a kernel of at least 7 and at
    most 4 filters (the transform nets' last convolution; measured: the 3 -> 32 first one is not
    faster folded)."""
    return (type(layer) is keras.layers.Conv2D and layer.padding == "valid"
            and tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1)
            and layer.kernel_size[0] == layer.kernel_size[1] >= 7 and layer.filters <= 4
            and layer.groups == 1 and layer.data_format == "channels_last"
            and layer.activation in (None, keras.activations.linear))


# --------------------------------------------------------------------------- sub-pixel upsampling

#: ``_SUBPIXEL_TAPS[a, p, k]``: in output row phase ``a`` of a nearest 2x upsampling followed by a
#: reflection-padded 3x3 convolution, kernel row ``k`` lands on row ``p`` of a 3x3 window of the
#: edge-padded low-resolution input (phase 0 sees input rows i-1, i, i; phase 1 rows i, i, i+1).
_SUBPIXEL_TAPS = np.array([[[1, 0, 0], [0, 1, 1], [0, 0, 0]],
                           [[0, 0, 0], [1, 1, 0], [0, 0, 1]]], np.float32)


def subpixel_kernels(kernel: jnp.ndarray) -> jnp.ndarray:
    """The four 2x2 kernels ``(2 [a], 2 [b], 2, 2, C, O)`` of the output phases of
    :func:`subpixel_conv` for the 3x3 ``kernel`` (3, 3, C, O): for output phase ``(a, b)``, the sums
    of the taps that meet the same low-resolution pixel (:data:`_SUBPIXEL_TAPS`)."""
    taps = jnp.asarray(_SUBPIXEL_TAPS, kernel.dtype)
    k = jnp.einsum("apk,bql,klco->abpqco", taps, taps, kernel)  # per phase, a 3x3 window ...
    # ... of which phase (a, b) uses rows a, a + 1 and columns b, b + 1
    return jnp.stack([jnp.stack([k[a, b, a:a + 2, b:b + 2] for b in (0, 1)]) for a in (0, 1)])


def subpixel_kernel(kernel: jnp.ndarray) -> jnp.ndarray:
    """The one 2x2 kernel ``(2, 2, C, 4 O)`` that :func:`subpixel_conv` convolves with: the four
    phase kernels of :func:`subpixel_kernels` side by side, output channel ``(a, b, o)``."""
    phases = subpixel_kernels(kernel)  # (a, b, p, q, C, O)
    c, o = phases.shape[-2:]
    return phases.transpose(2, 3, 4, 0, 1, 5).reshape(2, 2, c, 4 * o)


def subpixel_conv(x: jnp.ndarray, kernel: jnp.ndarray, bias: Optional[jnp.ndarray] = None,
                  phases: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """``Conv2D(3x3, valid)(ReflectionPadding2D(1)(UpSampling2D(2, nearest)(x0)))`` computed from
    ``x``, which is ``x0`` (B, H, W, C) *edge*-padded by one pixel (B, H + 2, W + 2, C): one 2x2
    convolution on the low-resolution image with the four output phases' kernels side by side,
    whose outputs are interleaved (B, 2H, 2W, O).

    Exact: the upsampled image reflected by one pixel is the low-resolution image edge-padded by
    one pixel and then upsampled (its row -1 is upsampled row 1, i.e. row 0), and an output pixel of
    phase ``(a, b)`` sees only 2x2 distinct input pixels, whose kernel taps are summed
    (:data:`_SUBPIXEL_TAPS`): output pixel ``(2i + a, 2j + b)`` is phase ``(a, b)``'s 2x2
    convolution at window ``(i + a, j + b)`` of ``x``.  The sum of products is the same in another
    order (float32 rounding): 4/9 of the FLOPs, and neither the upsampled nor the padded full-size
    image is ever written; at 1024 px on a 2-core Xeon the two upsampling convolutions took 0.63 +
    0.46 s, as four 2x2 convolutions 0.37 + 0.23 s.  One convolution with 4 O outputs over the
    ``(H + 1) x (W + 1)`` windows instead of four over shifted ``H x W`` slices of ``x`` (this
    library before) computes (H + 1)(W + 1) / HW as much, runs as fast (apply and train step), and
    leaves out of each compiled program the four input slices and four phase-kernel slices per
    layer: the fast net's apply program has 35 instead of 51 LLVM kernels and compiles in about
    0.74 instead of 0.9 s at 480x640, and a first run over a folder of 5 sizes spent 4.4-6.3
    instead of 6.3-8.7 CPU-seconds compiling (2-core AMD EPYC, AVX2; README, Speed, and
    ``benchmarks/results/fast_folder_avx2.md``).
    Same idea as the sub-pixel convolution of Shi et al. 2016 ("Real-Time Single Image and Video
    Super-Resolution Using an Efficient Sub-Pixel CNN"), here an exact rewrite of Odena et al.'s
    resize-convolution rather than a learned layer.  ``phases``: ``subpixel_kernel(kernel)``
    computed once beforehand (:func:`rewritten_kernels`)."""
    b, hp, wp, c = x.shape
    h, w, o = hp - 2, wp - 2, kernel.shape[-1]
    if phases is None:
        phases = subpixel_kernel(kernel)
    z = jax.lax.conv_general_dilated(x, phases.astype(x.dtype), (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    z = z.reshape(b, h + 1, w + 1, 2, 2, o)  # window (i, j), phase (a, b)
    rows = [jnp.stack([z[:, a:a + h, bb:bb + w, a, bb] for bb in (0, 1)], axis=3) for a in (0, 1)]
    y = jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, o)  # (B, H, 2 [a], W, 2 [b], O)
    return y if bias is None else y + jnp.reshape(bias, (1, 1, 1, -1)).astype(y.dtype)


# --------------------------------------------------------------------------- instance normalization

def is_instance_norm(layer) -> bool:
    """A ``GroupNormalization`` with one group per channel (Keras sets ``groups=-1`` to the
    channel count when it builds the layer): the transform net's instance norms."""
    if not isinstance(layer, keras.layers.GroupNormalization) or layer.axis not in (-1, 3):
        return False
    channels = layer.gamma.shape[0] if layer.scale else layer.beta.shape[0] if layer.center else None
    return layer.groups == -1 or layer.groups == channels


def instance_moments(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-example, per-channel mean and biased variance of ``x`` (B, H, W, C) over H and W, by the
    two-pass formula of ``jnp.var`` (which Keras's ``ops.moments`` uses); each (B, 1, 1, C)."""
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    return mean, jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)


def instance_norm(layer: keras.layers.GroupNormalization, moments: Callable = instance_moments) -> Callable:
    """``layer`` (:func:`is_instance_norm`) as a function of ``x`` (B, H, W, C): Ulyanov et al.
    2016, eq. 3, ``gamma (x - mean) / sqrt(var + epsilon) + beta`` with the statistics ``moments(x)``
    (default :func:`instance_moments`; size buckets pass statistics over the valid region), in
    Keras's arithmetic order (``x * inv + (beta - mean * inv)``) and, like Keras, in float32 for
    lower-precision inputs.

    Why not the Keras layer itself: ``GroupNormalization`` reshapes into groups and computes the
    mean twice (``ops.moments``), so its program holds three reductions per layer where two do.
    Same outputs to float32 rounding; on a 2-core AMD EPYC (AVX2), four interleaved rounds against
    the Keras layer: the XLA compile of the fast net's apply programs for the 5 folder sizes took
    4.3-5.7 instead of 5.0-6.6 CPU-seconds (by 5-19%, median 14%) at the same run time, and the
    transform net's forward and backward pass at batch 4 x 256 px 5.6-5.8 instead of 6.1-6.9 s."""

    def call(x):
        dtype = x.dtype
        x = x.astype(jnp.promote_types(dtype, jnp.float32))
        mean, var = moments(x)
        inv = jax.lax.rsqrt(var + layer.epsilon)
        if layer.scale:
            inv = inv * jnp.reshape(layer.gamma.value, (1, 1, 1, -1)).astype(x.dtype)
        res = -mean * inv
        if layer.center:
            res = res + jnp.reshape(layer.beta.value, (1, 1, 1, -1)).astype(x.dtype)
        return (x * inv + res).astype(layer.compute_dtype)

    return call


def _consumers(layer) -> list:
    return [node.operation for node in layer._outbound_nodes]


def subpixel_chains(model: keras.Model) -> dict[str, str]:
    """``{layer name: role}`` for every nearest 2x ``UpSampling2D`` -> ``ReflectionPadding2D(1)`` ->
    3x3 "valid" stride-1 ``Conv2D`` chain of ``model`` in which each layer feeds only the next
    (roles ``"resize"``, ``"pad"``, ``"conv"``): the chains :func:`fast_operations` runs as
    :func:`subpixel_conv`."""
    roles = {}
    for layer in model.layers:
        if not (isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation == "nearest"
                and tuple(layer.size) == (2, 2) and layer.data_format == "channels_last"):
            continue
        after = _consumers(layer)
        if len(after) != 1 or not isinstance(after[0], ReflectionPadding2D) or after[0].padding != 1:
            continue
        pad, after = after[0], _consumers(after[0])
        conv = after[0] if len(after) == 1 else None
        if (type(conv) is keras.layers.Conv2D and tuple(conv.kernel_size) == (3, 3) and conv.padding == "valid"
                and tuple(conv.strides) == (1, 1) and tuple(conv.dilation_rate) == (1, 1) and conv.groups == 1
                and conv.data_format == "channels_last" and conv.activation in (None, keras.activations.linear)):
            roles.update({layer.name: "resize", pad.name: "pad", conv.name: "conv"})
    return roles


def fast_operations(model: keras.Model, edge_pad=None, kernels: Optional[dict] = None, gather_pads: bool = False,
                    given: Optional[dict] = None):
    """``operation_fn(layer)`` for ``model._run_through_graph`` (:func:`apply_fn`, size buckets):
    each chain of :func:`subpixel_chains` as :func:`subpixel_conv` (the upsampling passes the small
    image on, the padding becomes ``edge_pad(x)``, default one pixel of edge padding, and the
    convolution computes the upsampled result), each layer of :func:`runs_space_to_depth` as
    :func:`space_to_depth_conv`, each instance norm (:func:`is_instance_norm`) as
    :func:`instance_norm`, every other layer as itself.  Call the operations inside a
    ``keras.StatelessScope`` that maps the weights.

    ``kernels``: the rewritten kernels of :func:`rewritten_kernels`, computed once for frozen
    weights; without them the program rewrites the layers' kernels itself (as training must).
    ``gather_pads``: reflection and edge paddings by :func:`gather_pad` (apply programs: cheaper
    to compile, same values).  ``given``: ``{layer name: output}`` computed outside the program,
    returned by those layers in place of computing them (a conditional network's per-style values,
    :func:`conditioning_layers`)."""
    roles = subpixel_chains(model)
    kernels, given = kernels or {}, given or {}
    if edge_pad is None and gather_pads:
        edge_pad = lambda x: gather_pad(x, 1, 1, 1, 1, "edge")  # noqa: E731
    elif edge_pad is None:
        edge_pad = lambda x: jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")  # noqa: E731

    def bias(layer):
        return layer.bias.value if layer.use_bias else None

    def operation(layer):
        if layer.name in given:
            return lambda *_: given[layer.name]
        role = roles.get(layer.name)
        if role == "resize":
            return lambda x: x
        if role == "pad":
            return edge_pad
        if role == "conv":
            return lambda x: subpixel_conv(x, layer.kernel.value, bias(layer), phases=kernels.get(layer.name))
        if runs_space_to_depth(layer):
            return lambda x: space_to_depth_conv(x, layer.kernel.value, bias(layer), folded=kernels.get(layer.name))
        if is_instance_norm(layer):
            return instance_norm(layer)
        if gather_pads and isinstance(layer, ReflectionPadding2D):
            return lambda x: gather_pad(x, *[layer.padding] * 4)
        if gather_pads and isinstance(layer, PadToMultiple):
            return lambda x: gather_pad(x, 0, -x.shape[1] % layer.multiple, 0, -x.shape[2] % layer.multiple)
        return layer

    return operation


def rewritten_kernels(model: keras.Model, trainable) -> dict:
    """``{layer name: kernel}``: the kernels :func:`fast_operations` computes with, rewritten from
    ``trainable`` (the values of ``model.trainable_variables``): :func:`subpixel_kernel` for the
    sub-pixel convolutions, :func:`space_to_depth_kernel` for the space-to-depth ones.

    A stylizer's weights are frozen, so it computes these once (:func:`prepared_kernels`) and passes
    them to its apply programs: a program (one per image size or size bucket) then neither rewrites
    the kernels on every call nor compiles the rewriting (``benchmarks/results/fast_folder.md``)."""
    roles = subpixel_chains(model)
    out = {}
    with keras.StatelessScope(state_mapping=list(zip(model.trainable_variables, trainable))):
        for layer in model.layers:
            if roles.get(layer.name) == "conv":
                out[layer.name] = subpixel_kernel(layer.kernel.value)
            elif runs_space_to_depth(layer):
                out[layer.name] = space_to_depth_kernel(layer.kernel.value, SPACE_TO_DEPTH_BLOCK)
    return out


def prepared_kernels(model: keras.Model, trainable) -> dict:
    """:func:`rewritten_kernels` of ``trainable``, computed now (one small program)."""
    return jax.jit(lambda t: rewritten_kernels(model, t))(list(trainable))


def apply_fn(model: keras.Model, rewrites: bool = True, gather_pads: bool = False):
    """The pure function ``(params, images, kernels=None) -> stylized images`` of ``model`` (jit it
    freely).

    ``rewrites`` (default on): convolutions with a large kernel and few outputs run in the
    equivalent space-to-depth form (:func:`space_to_depth_conv`) and upsampling + convolution as
    sub-pixel convolutions (:func:`subpixel_conv`), same outputs to float32 rounding
    (:func:`fast_operations`); off: every layer as Keras computes it (``model.stateless_call``).
    ``kernels``: :func:`prepared_kernels` of ``params.trainable``, for frozen weights;
    ``gather_pads``: paddings by :func:`gather_pad` (for programs that are not differentiated)."""

    def apply(params: TransformParams, images: jnp.ndarray, kernels: Optional[dict] = None) -> jnp.ndarray:
        if not rewrites:
            outputs, _ = model.stateless_call(params.trainable, params.non_trainable, images)
            return outputs
        return fast_call(model, params.trainable, params.non_trainable, images, kernels, gather_pads)

    return apply


def fast_call(model: keras.Model, trainable, non_trainable, inputs, kernels: Optional[dict] = None,
              gather_pads: bool = False, given: Optional[dict] = None):
    """``model.stateless_call(trainable, non_trainable, inputs)[0]`` with the rewrites of
    :func:`fast_operations` (a functional model without state updates, such as the transform nets
    here; ``inputs`` an array or a list of arrays; ``kernels``: :func:`prepared_kernels` of
    ``trainable``, for frozen weights; ``gather_pads`` and ``given``: see :func:`fast_operations`)."""
    mapping = list(zip(model.trainable_variables, trainable))
    mapping += list(zip(model.non_trainable_variables, non_trainable))
    flat = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    with keras.StatelessScope(state_mapping=mapping):
        outputs = model._run_through_graph(flat, operation_fn=fast_operations(model, kernels=kernels,
                                                                              gather_pads=gather_pads, given=given))
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def _parents(layer) -> list[str]:
    return [parent.operation.name for node in layer._inbound_nodes for parent in node.parent_nodes]


def conditioning_layers(model: keras.Model, image_input: int = 0) -> list[str]:
    """Names of the layers of ``model`` that are computed from its other inputs alone (not from
    ``model.inputs[image_input]``) and feed a layer on the image's path, in graph order.

    For a conditional network such as the arbitrary-style transformer (Ghiasi et al. 2017,
    :mod:`neuralstyle.arbitrary`) these are the conditional norms' gamma and beta heads: per-style
    values, the same for every image size.  A stylizer computes them in a small program of
    their own (:func:`conditioning_fn`) and gives them to its apply programs (``given`` of
    :func:`fast_call`), which then neither compute nor compile them: one program per image size
    compiled 0.60 -> 0.47 s for the released transformer (26 heads) on the 2-core Xeon (one
    480x640 and one 456x800 program each way), same outputs; the folder figures are in
    ``benchmarks/results/fast_folder.md``."""
    image = model.inputs[image_input]._keras_history.operation.name
    on_image, grown = {image}, True
    while grown:  # until every layer downstream of the image is found, whatever the listing order
        grown = False
        for layer in model.operations:
            if layer.name not in on_image and any(parent in on_image for parent in _parents(layer)):
                on_image.add(layer.name)
                grown = True
    return [layer.name for layer in model.operations
            if layer.name not in on_image and not isinstance(layer, keras.layers.InputLayer)
            and any(c.name in on_image for c in _consumers(layer))]


def conditioning_fn(model: keras.Model, image_input: int = 0):
    """The pure function ``(trainable, other inputs) -> {layer name: output}`` of the
    :func:`conditioning_layers` of ``model`` (jit it; ``other inputs``: the model's inputs but the
    image, a list), to pass as ``given`` to :func:`fast_call` with the same ``trainable``."""
    names = conditioning_layers(model, image_input)
    others = [t for i, t in enumerate(model.inputs) if i != image_input]
    branch = keras.Model(others, [model.get_layer(name).output for name in names])

    def values(trainable, inputs) -> dict:
        with keras.StatelessScope(state_mapping=list(zip(model.trainable_variables, trainable))):
            outputs = branch(list(inputs))
        return dict(zip(names, outputs if isinstance(outputs, (list, tuple)) else [outputs]))

    return values
