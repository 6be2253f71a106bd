"""neuralstyle: neural style transfer on Keras 3 (JAX backend), JAX, optax and Hydra.

Quick use from Python (no Hydra involved)::

    import optax
    from neuralstyle import VGG, StyleObjective, gram_loss, load_content_and_style, stylize

    content, style = load_content_and_style("photo.jpg", "great_wave", size=256)
    objective = StyleObjective.build(VGG("vgg19", weights="imagenet"),
                                     content_layers=["block5_conv2"],
                                     style_layers=["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"],
                                     content_weight=1e4, style_weight=1e-2, tv_weight=30,
                                     style_loss=gram_loss("hw"))
    result = stylize(objective, content, style, optax.adam(0.02, b1=0.99, eps=0.1), steps=100)
"""

import os

# Keras reads its backend once, at import: set it before anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "jax")
if os.environ["KERAS_BACKEND"] != "jax":  # pragma: no cover - a user's explicit choice
    raise ImportError(
        f"neuralstyle needs the JAX backend of Keras, but KERAS_BACKEND={os.environ['KERAS_BACKEND']!r}"
    )

from .backbones import (  # noqa: E402
    VGG,
    BackboneParams,
    FeatureExtractor,
    caffe_preprocess,
    canonical_layer_name,
    keras_layer_names,
    layer_weights,
)
from .errors import (  # noqa: E402
    ConfigError,
    ImageError,
    LayerError,
    NeuralStyleError,
    NonFiniteLossError,
    WeightsError,
)
from .images import initial_image, load_content_and_style, load_image, resolve_image, save_image  # noqa: E402
from .losses import (  # noqa: E402
    StyleLoss,
    bn_statistics_loss,
    content_loss,
    gaussian_wasserstein_loss,
    gram_loss,
    gram_matrix,
    gram_style_layer_loss,
    histogram_loss,
    mean_std_loss,
    mmd_loss,
    mrf_loss,
    sliced_wasserstein_loss,
    total_variation,
    total_variation_loss,
)
from .objective import StyleObjective, Targets  # noqa: E402
from .optim import LBFGS, make_lbfgs_functions, make_step, optimize  # noqa: E402
from .optim.lbfgs import lbfgs  # noqa: E402
from .stylize import (  # noqa: E402
    BatchedResult,
    StylizeResult,
    pyramid_shapes,
    stylize,
    stylize_batched,
    stylize_pyramid,
)
from .arbitrary import ArbitraryStylizer, style_predictor, style_transformer  # noqa: E402

__all__ = [
    "VGG", "BackboneParams", "FeatureExtractor", "caffe_preprocess",
    "ConfigError", "ImageError", "LayerError", "NeuralStyleError", "NonFiniteLossError",
    "WeightsError", "load_image", "resolve_image", "save_image", "canonical_layer_name",
    "keras_layer_names", "layer_weights", "StyleLoss", "content_loss", "gram_loss", "gram_matrix",
    "gram_style_layer_loss", "total_variation", "total_variation_loss", "StyleObjective",
    "Targets", "LBFGS", "lbfgs", "make_lbfgs_functions", "make_step", "optimize", "StylizeResult",
    "initial_image", "load_content_and_style", "stylize", "bn_statistics_loss", "histogram_loss",
    "mean_std_loss", "mmd_loss", "mrf_loss", "sliced_wasserstein_loss", "pyramid_shapes",
    "stylize_pyramid", "BatchedResult", "stylize_batched",
    "ArbitraryStylizer", "style_predictor", "style_transformer", "gaussian_wasserstein_loss",
]
__version__ = "0.1.0"
