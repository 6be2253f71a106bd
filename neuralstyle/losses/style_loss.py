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
      compare: (moments of the generated image, statistics of the style, key) -> one value per
        batch element, with ``loss(f, s, key) == compare(moments(f), s, key)``; ``None`` when the
        family has no such split.
      statistics_reduction: how the moments reduce over positions: ``"mean"`` (a mean over
        positions of a per-position quantity that is zero for zero features, e.g. the Gram matrix
        divided by :math:`HW`), ``"sum"`` (the same, summed), or ``None``.  With ``compare``, it
        is what exact tiled optimization needs (:mod:`neuralstyle.tiling`): moments of tiles
        combine into the moments of the whole image.
      moments: features -> the additive statistics ``compare`` takes (e.g. the mean and the
        second moment :math:`E[xx^\top]`, from which a covariance follows); ``None``: ``target``
        is itself additive (the Gram matrix).  See :func:`moments_of`.
      target_from_moments: moments -> the style statistics ``target`` gives (e.g. with the square
        root of a covariance, computed once), so that ``target(f) == target_from_moments(
        moments(f))`` up to rounding; ``None``: the identity.  See :func:`target_of_moments`.
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
    moments: Optional[Callable[[Array], object]] = None
    target_from_moments: Optional[Callable[[object], object]] = None


def moments_of(loss: StyleLoss, features: Array):
    """The additive statistics of ``features`` that ``loss.compare`` takes."""
    return (loss.moments or loss.target)(features)


def target_of_moments(loss: StyleLoss, moments):
    """The style statistics (as ``loss.target`` gives them) from additive ``moments``."""
    return moments if loss.target_from_moments is None else loss.target_from_moments(moments)


def positions(features: Array) -> Array:
    """``(B, H, W, C)`` -> ``(B, H*W, C)``: one feature vector per position."""
    b, h, w, c = features.shape
    return features.reshape(b, h * w, c)
