r"""The style-transfer objective: weighted content, style and total-variation terms.

.. math::

   \mathcal{L}(x) = \alpha \sum_{l \in C} w_l\, \mathcal{L}_c(F^l(x), P^l)
                  + \beta  \sum_{l \in S} w_l\, \mathcal{L}_s(F^l(x), A^l)
                  + \gamma\, \mathrm{TV}(x)

(Gatys et al. 2016, eq. 7, with the total-variation regularizer of Johnson et al. 2016 and of
the TensorFlow tutorial).  :math:`P^l` are the content image's features and :math:`A^l` the style
image's statistics (Gram matrices for the Gram loss), computed once by :meth:`StyleObjective.targets`.

:class:`StyleObjective` is a JAX pytree: its weights (:math:`\alpha`, :math:`\beta`, :math:`\gamma`
and the per-layer :math:`w_l`) are its leaves, while the feature extractor, the layer names and
the loss functions are static (part of the tree structure).  Compiled steps take the objective as
an argument, so one compiled program serves every weight setting, and a batch of weight settings is
one objective whose leaves have a leading axis, ``jax.vmap``-ped over.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from .backbones import VGG, BackboneParams, FeatureExtractor
from .errors import ConfigError
from .backbones import canonical_layer_name, layer_weights
from .losses import StyleLoss, content_loss, gram_loss, total_variation_loss


class Targets(NamedTuple):
    """What the generated image is compared with: content features, style statistics, and the
    PRNG key of the current step (stochastic losses such as the sliced Wasserstein distance draw
    their random projections from it; the optimization loops replace it every step)."""

    content: dict
    style: tuple  # one {layer: statistics} dict per style image
    blend: jax.Array  # the weight of each style image (Gatys et al. 2017, sec. 4: style mixing)
    key: jax.Array
    masks: Optional[jax.Array] = None  # (styles, H, W) guidance masks at the image's size, or None


def guide_features(features: jnp.ndarray, mask: jnp.ndarray):
    r"""Guided features of Gatys et al. 2017 (sec. 4.1, eq. 4-5) for one region.

    The ``(H, W)`` mask is resized to the layer, :math:`T^l`, and the features become
    :math:`F^l \circ T^l \sqrt{M_l / \sum T^{l\,2}}`: a Gram matrix divided by :math:`M_l = H_l W_l`
    of these is the guided Gram matrix :math:`(F \circ T)^	op (F \circ T) / \sum T^2`, the style
    statistics of the region alone.  Returns ``(guided features, active)`` where ``active`` is 0
    when the mask is empty at this layer (the region then contributes nothing).
    """
    _, h, w, _ = features.shape
    guide = jax.image.resize(mask, (h, w), "linear", antialias=True)
    energy = jnp.sum(jnp.square(guide))
    active = (energy > 1e-12).astype(features.dtype)
    scale = jnp.sqrt(h * w / jnp.maximum(energy, 1e-12))
    return features * (guide * scale)[None, :, :, None], active


def style_blend_weights(blend, count: int) -> tuple[float, ...]:
    """Mixing weights of ``count`` style images, normalized to sum to one (default: equal)."""
    if blend is None:
        return (1.0 / count,) * count
    weights = tuple(float(w) for w in blend)
    if len(weights) != count or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(
            f"style_blend_weights must be {count} non-negative numbers with a positive sum "
            f"(one per style image), got {list(weights)}"
        )
    total = sum(weights)
    return tuple(w / total for w in weights)


WEIGHT_FIELDS = ("content_weight", "style_weight", "tv_weight")
#: The pytree leaves of a :class:`StyleObjective` (the per-layer weights are tuples of leaves).
DATA_FIELDS = ("content_layer_weights", "style_layer_weights") + WEIGHT_FIELDS
#: Its static part: compared by equality (the extractor and loss functions by identity).
META_FIELDS = ("extractor", "content_layers", "style_layers", "content_loss", "style_loss", "tv_loss")


def mix_style_statistics(style_loss, statistics: list, weights) -> tuple[list, tuple]:
    """``(statistics, weights)`` of several style images: unchanged (their weighted losses are
    summed), or, for a family with its own mixture (``StyleLoss.blend``, e.g. means and second
    moments of the Gaussian Wasserstein loss), one target per layer with weight 1."""
    if len(statistics) < 2 or style_loss.blend is None:
        return list(statistics), tuple(weights)
    mixed = jnp.asarray(weights, jnp.float32)
    layers = statistics[0].keys()
    return [{n: style_loss.blend([s[n] for s in statistics], mixed) for n in layers}], (1.0,)


@partial(jax.tree_util.register_dataclass, data_fields=list(DATA_FIELDS),
         meta_fields=list(META_FIELDS))
@dataclass(frozen=True, eq=False)  # hashed by identity: leaves may be arrays or tracers
class StyleObjective:
    """A pure objective ``(params, image, targets) -> (total, terms)``; build it with :meth:`build`.

    ``terms`` holds the weighted contributions ``content``, ``style`` and ``tv`` (they add up to
    ``total``).  Images are ``(B, H, W, 3)`` RGB in ``[0, 1]``; the total is summed over the batch.

    A pytree whose leaves are the weights ``content_layer_weights``, ``style_layer_weights``
    (tuples, one leaf per layer), ``content_weight``, ``style_weight`` and ``tv_weight``; two
    objectives that differ only in weights (e.g. ``dataclasses.replace(objective, style_weight=1.0)``)
    have the same tree structure, so a step compiled for one runs the other without retracing.
    """

    extractor: FeatureExtractor
    content_layers: tuple[str, ...]
    content_layer_weights: tuple[float, ...]
    style_layers: tuple[str, ...]
    style_layer_weights: tuple[float, ...]
    content_weight: float = 1e4
    style_weight: float = 1e-2
    tv_weight: float = 30.0
    content_loss: Callable = field(default_factory=lambda: content_loss("mean"))
    style_loss: StyleLoss = field(default_factory=lambda: gram_loss("hw"))
    tv_loss: Callable = field(default_factory=lambda: total_variation_loss("l1"))

    @classmethod
    def build(
        cls,
        backbone: VGG,
        content_layers: Sequence[str] = ("block5_conv2",),
        style_layers: Sequence[str] = (
            "block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1",
        ),
        content_layer_weights: Union[str, Sequence[float]] = "mean",
        style_layer_weights: Union[str, Sequence[float]] = "mean",
        **weights_and_losses,
    ) -> "StyleObjective":
        """Resolve layer names (Keras or paper), per-layer weights, and cut the backbone once."""
        for name in WEIGHT_FIELDS:
            if name in weights_and_losses:
                weights_and_losses[name] = _weight(weights_and_losses[name], name)
        content = tuple(canonical_layer_name(n, backbone.arch) for n in content_layers)
        style = tuple(canonical_layer_name(n, backbone.arch) for n in style_layers)
        extractor = backbone.extractor(content + style)
        return cls(
            extractor=extractor,
            content_layers=content,
            content_layer_weights=layer_weights(content_layer_weights, content, "content layer"),
            style_layers=style,
            style_layer_weights=layer_weights(style_layer_weights, style, "style layer"),
            **weights_and_losses,
        )

    @property
    def params(self) -> BackboneParams:
        return self.extractor.params

    def with_weights(self, **weights) -> "StyleObjective":
        """A copy with other term weights ``content_weight``, ``style_weight`` and ``tv_weight``
        (``dataclasses.replace`` with the names checked; Python ints become floats, so the copy
        has the same leaf types and runs a step compiled for the original without retracing)."""
        unknown = sorted(set(weights) - set(WEIGHT_FIELDS))
        if unknown:
            raise ConfigError(f"unknown objective weight(s) {unknown}; expected some of "
                              f"{list(WEIGHT_FIELDS)}")
        return replace(self, **{k: _weight(v, k) for k, v in weights.items()})

    def targets(self, params: BackboneParams, content: jnp.ndarray, style, blend=None,
                masks=None) -> Targets:
        """Content features of ``content`` (1, H, W, 3) and style statistics of ``style``: one
        (1, H, W, 3) image or a list of them, mixed with weights ``blend`` (default: equal).

        Several styles are blended by summing their weighted losses, or, for a family with its own
        mixture (``StyleLoss.blend``, e.g. the Gaussian Wasserstein loss), into one target.

        ``masks`` (one (H, W) array in [0, 1] per style image, at the content's size) assigns
        regions of the image to styles (spatial control, Gatys et al. 2017, sec. 4.1); then each
        region's term has weight 1 unless ``blend`` says otherwise, and an all-zero mask leaves its
        style out.
        """
        styles = list(style) if isinstance(style, (list, tuple)) else [style]
        if masks is not None:
            masks = jnp.asarray(masks, jnp.float32)
            if masks.ndim != 3 or masks.shape[0] != len(styles) or masks.shape[1:] != content.shape[1:3]:
                raise ConfigError(
                    f"style masks must be one {content.shape[1]}x{content.shape[2]} (H x W) mask per "
                    f"style image ({len(styles)}), got an array of shape {tuple(masks.shape)}"
                )
            if not self.style_loss.guidable:
                raise ConfigError("spatial masks are defined for the Gram loss only (guided Gram "
                                  "matrices, Gatys et al. 2017); use style_loss=gram")
            blend = (1.0,) * len(styles) if blend is None else blend
            weights = tuple(float(w) for w in blend)
            style_blend_weights(weights, len(styles))  # validate; masks keep absolute weights
        else:
            weights = style_blend_weights(blend, len(styles))
        # one forward pass each: XLA's convolutions compile faster than Winograd (same features)
        content_features = self.extractor.apply(params, content, winograd=False)
        statistics = []
        for image in styles:
            features = self.extractor.apply(params, image, winograd=False)
            statistics.append({n: self.style_loss.target(features[n]) for n in self.style_layers})
        if masks is None:
            statistics, weights = mix_style_statistics(self.style_loss, statistics, weights)
        return Targets(
            content={n: content_features[n] for n in self.content_layers},
            style=tuple(statistics),
            blend=jnp.asarray(weights, jnp.float32),
            key=jax.random.key(0),
            masks=masks,
        )

    def terms(self, params: BackboneParams, image: jnp.ndarray, targets: Targets) -> dict:
        """Weighted content, style and TV terms, each summed over the batch."""
        features = self.extractor.apply(params, image)
        content = sum(
            w * self.content_loss(features[n], targets.content[n])
            for n, w in zip(self.content_layers, self.content_layer_weights)
        )
        style = 0.0
        for k, statistics in enumerate(targets.style):
            for i, (n, w) in enumerate(zip(self.style_layers, self.style_layer_weights)):
                layer_features, active = features[n], 1.0
                if targets.masks is not None:
                    layer_features, active = guide_features(layer_features, targets.masks[k])
                key = jax.random.fold_in(targets.key, i)
                style = style + targets.blend[k] * w * active * self.style_loss.loss(
                    layer_features, statistics[n], key)
        return {
            "content": self.content_weight * jnp.sum(content),
            "style": self.style_weight * jnp.sum(style),
            "tv": self.tv_weight * jnp.sum(self.tv_loss(image)),
        }

    def __call__(self, params: BackboneParams, image: jnp.ndarray, targets: Targets):
        terms = self.terms(params, image, targets)
        return terms["content"] + terms["style"] + terms["tv"], terms


def _weight(value, name: str):
    """A Python int weight as a float (an int leaf would compile another program)."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return float(value) if isinstance(value, int) else value
