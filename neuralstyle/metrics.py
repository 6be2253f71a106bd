r"""Quality metrics measured with a network that the optimization does not use.

Grading a stylization with the loss it was optimized for rewards the optimizer for matching its
own objective.  These metrics use torchvision's ImageNet **VGG16** (the optimization backbone is
Keras/Caffe VGG19), at the five layers of LPIPS:

* :func:`lpips` — the Learned Perceptual Image Patch Similarity of Zhang et al., "The
  Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018 (VGG variant,
  linear layers v0.1), as a **content distance**:

  .. math::

     d(x, x_0) = \sum_l \frac{1}{H_l W_l} \sum_{h,w} \big\| w_l \odot
                 (\hat y^l_{hw} - \hat y^l_{0,hw}) \big\|_2^2

  where :math:`\hat y^l` are the ReLU outputs of conv1_2, conv2_2, conv3_3, conv4_3 and conv5_3
  unit-normalized along channels (:math:`y / (\|y\|_2 + 10^{-10})`, as in the reference code) and
  :math:`w_l \ge 0` are the learned per-channel weights (a 1x1 convolution without bias).  The
  paper writes :math:`w_l` inside the squared norm; the reference code (and this function)
  applies it to the squared difference, :math:`\sum_c w_{l,c} (\Delta\hat y_c)^2`.  The
  reference code maps images from ``[-1, 1]`` with its ``ScalingLayer`` (shift
  ``[-.030, -.088, -.188]``, scale ``[.458, .448, .450]``), which is torchvision's ImageNet
  mean/std normalization of ``[0, 1]`` images: ``VGG(arch="vgg16", weights="torchvision")``
  applies exactly that, so images here are RGB in ``[0, 1]``.  Dropout in the reference's linear
  layers is inactive at evaluation and is omitted.

* :func:`style_distance` — a **style distance** on the same network's features, either

  - ``"gram"``: the mean over the five layers of the relative Frobenius error of the Gram
    matrices, :math:`\|G^l(x) - G^l(s)\|_F / \|G^l(s)\|_F` with :math:`G^l = F^{l\top}F^l/(H_lW_l)`
    (Gatys et al. 2016's statistic; relative so that each layer counts equally and images of
    different sizes compare), or
  - ``"swd"``: the sliced 2-Wasserstein distance between the feature distributions (Heitz et al.
    2021, eq. 8) along ``projections`` fixed random unit directions (seed 0, so the metric is
    deterministic), relative to the root mean square of the style's projected features, averaged
    over the layers.  The style's sorted projections are resampled at the image's number of
    positions when the sizes differ.

  Both are 0 when the image has the style image's feature statistics.

Everything here is a pure function of arrays except :class:`PerceptualMetrics`, which holds the
network and its LPIPS weights; :func:`lpips` and :func:`style_distance` use a shared default
instance built on the real weights (fetched through :func:`neuralstyle.backbones.weights.resolve_lpips_vgg16`).
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .backbones import VGG, BackboneParams
from .errors import ConfigError, ImageError
from .losses import gram_matrix, resample_sorted

Array = jnp.ndarray

#: LPIPS compares these VGG16 layers (ReLU outputs of conv1_2, conv2_2, conv3_3, conv4_3, conv5_3).
LPIPS_LAYERS = ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3")
STYLE_DISTANCES = ("gram", "swd")


# --------------------------------------------------------------------------- pure functions


def unit_normalize(features: Array, eps: float = 1e-10) -> Array:
    r"""Features divided by their L2 norm along channels, :math:`y / (\|y\|_2 + \epsilon)`
    (LPIPS's ``normalize_tensor``)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True))
    return features / (norm + eps)


def lpips_layer_distance(features_a: Array, features_b: Array, lin: Array) -> Array:
    """One layer's LPIPS term: channel-weighted squared difference of unit-normalized
    ``(B, H, W, C)`` features, averaged over positions; one value per batch element."""
    diff = jnp.square(unit_normalize(features_a) - unit_normalize(features_b))
    return jnp.mean(diff @ lin, axis=(1, 2))


def lpips_from_features(features_a: Mapping[str, Array], features_b: Mapping[str, Array],
                        lins: Sequence[Array], layers: Sequence[str] = LPIPS_LAYERS) -> Array:
    """LPIPS from precomputed features: the sum over ``layers`` of :func:`lpips_layer_distance`."""
    return sum(lpips_layer_distance(features_a[n], features_b[n], w) for n, w in zip(layers, lins))


def relative_gram_distance(features: Array, style_gram: Array) -> Array:
    r""":math:`\|G(x) - G_s\|_F / \|G_s\|_F` with Gram matrices divided by :math:`HW`, per batch
    element (``style_gram`` is ``(1 or B, C, C)``, from :func:`neuralstyle.losses.gram_matrix` with
    ``"hw"``)."""
    diff = gram_matrix(features, "hw") - style_gram
    return jnp.sqrt(jnp.sum(jnp.square(diff), axis=(1, 2)) / jnp.sum(jnp.square(style_gram), axis=(1, 2)))


def fixed_directions(channels: int, count: int, seed: int = 0) -> Array:
    """``count`` unit vectors in ``R^channels`` drawn uniformly from ``jax.random.key(seed)``."""
    v = jax.random.normal(jax.random.key(seed), (channels, count), jnp.float32)
    return v / jnp.linalg.norm(v, axis=0, keepdims=True)


def sorted_projections(features: Array, directions: Array) -> Array:
    """Projections of every position of ``(B, H, W, C)`` features on ``directions`` (C, K),
    sorted along positions: ``(B, H*W, K)``."""
    b, h, w, c = features.shape
    projected = jnp.swapaxes(features.reshape(b, h * w, c) @ directions, 1, 2)  # (B, K, H*W)
    # sorted along the last axis and swapped back: the same values, but XLA's CPU sort is ~3x
    # faster along the minor axis (measured at 512 px, block1: 8 s instead of 22 s on 2 cores)
    return jnp.swapaxes(jnp.sort(projected, axis=-1), 1, 2)


def relative_sliced_wasserstein(features: Array, style_sorted: Array, directions: Array) -> Array:
    r"""Sliced 2-Wasserstein distance between the position distributions of ``features`` and of
    the style (given as its sorted projections ``(1, M', K)`` on ``directions``), divided by the
    root mean square of the style's projections; one value per batch element."""
    x = sorted_projections(features, directions)
    s = resample_sorted(style_sorted, x.shape[1])
    w2 = jnp.mean(jnp.square(x - s), axis=(1, 2))
    return jnp.sqrt(w2 / jnp.mean(jnp.square(style_sorted), axis=(1, 2)))


# --------------------------------------------------------------------------- the network


def _as_batch(image, what: str) -> jnp.ndarray:
    x = jnp.asarray(image, jnp.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ImageError(f"{what} must be an (H, W, 3) or (B, H, W, 3) RGB array, got shape {x.shape}")
    return x


class PerceptualMetrics:
    """LPIPS and style distances on a VGG16 (default: torchvision ImageNet weights + LPIPS v0.1).

    Args:
      backbone: a VGG16 :class:`~neuralstyle.backbones.VGG`; default
        ``VGG("vgg16", weights="torchvision")``.
      lins: the five LPIPS channel weights ``(C,)``; default: those shipped with the torchvision
        weights (:func:`neuralstyle.backbones.weights.load_lpips_vgg16`).  Must be given with any other
        backbone (for example random weights in tests).
      projections: directions of the sliced Wasserstein distance per layer.
    """

    def __init__(self, backbone: Optional[VGG] = None, lins: Optional[Sequence] = None,
                 projections: int = 128):
        if backbone is None:
            backbone = VGG("vgg16", weights="torchvision")
        if backbone.arch != "vgg16":
            raise ConfigError(f"LPIPS is defined on VGG16, got a {backbone.arch} backbone")
        if lins is None:
            if "torchvision" not in str(backbone.weights):
                raise ConfigError("pass the LPIPS linear weights (lins=...) with a backbone that "
                                  "does not use weights='torchvision'")
            from .backbones.weights import load_lpips_vgg16, resolve_lpips_vgg16

            _, lins = load_lpips_vgg16(resolve_lpips_vgg16().path)
        self.lins = tuple(jnp.asarray(w, jnp.float32).reshape(-1) for w in lins)
        self.extractor = backbone.extractor(LPIPS_LAYERS)
        channels = [int(self.extractor.model.get_layer(n).filters) for n in LPIPS_LAYERS]
        if len(self.lins) != len(LPIPS_LAYERS) or any(w.shape[0] != c for w, c in zip(self.lins, channels)):
            raise ConfigError(f"LPIPS needs 5 linear weights with {channels} channels, got shapes "
                              f"{[tuple(w.shape) for w in self.lins]}")
        self.params: BackboneParams = self.extractor.params
        self.directions = tuple(fixed_directions(c, projections, seed=i) for i, c in enumerate(channels))
        self.weights_source = self.extractor.weights_source
        self._features = jax.jit(self.extractor.apply)
        self._distances = jax.jit(self._distances_of)  # one program per image shape, not dozens of eager ones

    def features(self, images) -> dict:
        """The five LPIPS-layer feature maps of ``(H, W, 3)`` or ``(B, H, W, 3)`` images in [0, 1]."""
        return self._features(self.params, self._checked_batch(images))

    def _checked_batch(self, images) -> jnp.ndarray:
        """``(H, W, 3)`` or ``(B, H, W, 3)`` images as a batch the extractor accepts, or a clear error."""
        x = _as_batch(images, "image")
        self.extractor.check_input(x.shape[1:], "image")
        return x

    def style_statistics(self, style) -> dict:
        """What :meth:`style_distance_from_features` compares with: the style image's Gram
        matrices and sorted projections per layer (compute once per style image)."""
        f = self.features(style)
        if next(iter(f.values())).shape[0] != 1:
            raise ImageError("style statistics are computed from a single style image")
        return {n: (gram_matrix(f[n], "hw"), sorted_projections(f[n], d))
                for n, d in zip(LPIPS_LAYERS, self.directions)}

    def lpips_from_features(self, features_a, features_b) -> np.ndarray:
        return np.asarray(lpips_from_features(features_a, features_b, self.lins))

    def style_distance_from_features(self, features, statistics, kind: str = "gram") -> np.ndarray:
        if kind not in STYLE_DISTANCES:
            raise ConfigError(f"unknown style distance {kind!r}; expected one of {STYLE_DISTANCES}")
        return np.asarray(self._style_distance(features, statistics, kind))

    def _style_distance(self, features, statistics, kind: str) -> Array:
        """The mean over the LPIPS layers of the ``kind`` distance (traceable)."""
        per_layer = []
        for n, d in zip(LPIPS_LAYERS, self.directions):
            gram, projected = statistics[n]
            if kind == "gram":
                per_layer.append(relative_gram_distance(features[n], gram))
            else:
                per_layer.append(relative_sliced_wasserstein(features[n], projected, d))
        return sum(per_layer) / len(per_layer)

    def _distances_of(self, params, images, content_features, style_statistics) -> dict:
        """:meth:`distances` of a batch, traceable: one feature pass, then the three distances."""
        features = self.extractor.apply(params, images)
        return {"lpips": lpips_from_features(features, content_features, self.lins),
                "swd": self._style_distance(features, style_statistics, "swd"),
                "gram": self._style_distance(features, style_statistics, "gram")}

    def distances(self, image, content_features, style_statistics) -> dict:
        """The quality benchmark's three distances of one ``(H, W, 3)`` image, as floats:
        ``lpips`` to the content (given as its :meth:`features`), ``swd`` and ``gram`` to the style
        (given as its :meth:`style_statistics`); lower is closer for all three.  One feature pass,
        compiled with the distances into one program per image shape (at 64 px on the 2-core AMD
        EPYC, compiled at XLA's level 0 as in the tests: the first call took 1.2 s instead of 3.9 s
        eagerly, later calls 0.29 s instead of 0.36 s)."""
        values = self._distances(self.params, self._checked_batch(image), content_features, style_statistics)
        return {k: float(v[0]) for k, v in values.items()}

    def lpips(self, image_a, image_b) -> np.ndarray:
        """LPIPS distance per image; ``image_a`` and ``image_b`` must have the same shape."""
        a, b = _as_batch(image_a, "image_a"), _as_batch(image_b, "image_b")
        if a.shape != b.shape:
            raise ImageError(f"LPIPS compares images of the same shape, got {a.shape} and {b.shape}")
        return self.lpips_from_features(self.features(a), self.features(b))

    def style_distance(self, image, style, kind: str = "gram") -> np.ndarray:
        """Style distance of each image to the single ``style`` image (any size)."""
        return self.style_distance_from_features(self.features(image), self.style_statistics(style),
                                                 kind)


@functools.lru_cache(maxsize=1)
def default_metrics() -> PerceptualMetrics:
    """The shared :class:`PerceptualMetrics` on torchvision VGG16 with the LPIPS v0.1 weights."""
    return PerceptualMetrics()


def metrics_network(weights: str = "torchvision") -> PerceptualMetrics:
    """``"torchvision"``: the shared :func:`default_metrics`; ``"random"``: VGG16 with random
    weights (seed 1) and random LPIPS channel weights (uniform in [0, 1), seed 0), for smoke runs
    and tests that must not fetch weights: the shapes of the real metrics, meaningless values."""
    if weights == "torchvision":
        return default_metrics()
    if weights != "random":
        raise ConfigError(f"metric weights must be 'torchvision' or 'random', got {weights!r}")
    rng = np.random.default_rng(0)
    return PerceptualMetrics(VGG("vgg16", weights=None, seed=1),
                             [rng.uniform(0, 1, c) for c in (64, 128, 256, 512, 512)])


def _scalar_or_array(values: np.ndarray, image) -> "float | np.ndarray":
    return float(values[0]) if np.ndim(image) == 3 else values


def lpips(image_a, image_b):
    """LPIPS (VGG16, Zhang et al. 2018) between RGB images in [0, 1]: a float for ``(H, W, 3)``
    images, one value per image for ``(B, H, W, 3)`` batches."""
    return _scalar_or_array(default_metrics().lpips(image_a, image_b), image_a)


def style_distance(image, style, kind: str = "gram"):
    """Style distance (``"gram"`` or ``"swd"``, see the module docstring) of ``image`` to ``style``
    on torchvision VGG16 features: a float for one ``(H, W, 3)`` image."""
    return _scalar_or_array(default_metrics().style_distance(image, style, kind), image)
