"""The shared shape of every style-loss family: a pair of pure functions (:class:`StyleLoss`)."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax.numpy as jnp

Array = jnp.ndarray


class StyleLoss(NamedTuple):
    """A style-loss family as a pair of pure functions, like an optax transformation.

    Attributes:
      target: features of the style image ``(B, H, W, C)`` -> a pytree of statistics.
      loss: (features of the generated image, statistics, key) -> one value per batch element.
        ``key`` is a JAX PRNG key that changes every step; deterministic families ignore it.
      stochastic: whether ``loss`` uses ``key`` (L-BFGS then re-evaluates its current point
        under each new key).
      guidable: whether spatial guidance by masks is defined for the family (the guided Gram
        matrix of Gatys et al. 2017, sec. 4.1, see :func:`neuralstyle.objective.guide_features`).
      compare: (statistics of the generated image, statistics of the style, key) -> one value per
        batch element, with ``loss(f, s, key) == compare(target(f), s, key)``; ``None`` when the
        family has no such split.
      statistics_reduction: how ``target`` reduces over positions: ``"mean"`` (a mean over
        positions of a per-position quantity that is zero for zero features, e.g. the Gram matrix
        divided by :math:`HW`), ``"sum"`` (the same, summed), or ``None``.  With ``compare``, it
        is what exact tiled optimization needs (:mod:`neuralstyle.tiling`): statistics of tiles
        combine into the statistics of the whole image.
      blend: ``None`` (several style images are blended by summing their weighted losses,
        Gatys et al. 2017, sec. 4, which for the Gram loss is mixing their Gram matrices), or
        (list of statistics, weights summing to one) -> one statistics: the family's own mixture,
        e.g. mixing means and second moments for the Gaussian Wasserstein loss.
    """

    target: Callable[[Array], object]
    loss: Callable[..., Array]
    stochastic: bool = False
    guidable: bool = False
    compare: Optional[Callable[..., Array]] = None
    statistics_reduction: Optional[str] = None
    blend: Optional[Callable[..., object]] = None


def positions(features: Array) -> Array:
    """``(B, H, W, C)`` -> ``(B, H*W, C)``: one feature vector per position."""
    b, h, w, c = features.shape
    return features.reshape(b, h * w, c)
