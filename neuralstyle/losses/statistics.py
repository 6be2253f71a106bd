r"""Feature-statistics style losses: AdaIN's mean/std loss and the batch-norm statistics loss,
each a :class:`~neuralstyle.losses.StyleLoss`.

The shared notation and the ``key`` argument: :mod:`neuralstyle.losses`.
"""

from __future__ import annotations

import jax.numpy as jnp

from .style_loss import StyleLoss, positions as _positions

Array = jnp.ndarray


def channel_statistics(features: Array, eps: float = 1e-5) -> tuple[Array, Array]:
    r"""Per-channel mean :math:`\mu` and standard deviation :math:`\sigma = \sqrt{\mathrm{var} + \epsilon}`,
    each ``(B, C)``; the statistics adaptive instance normalization aligns."""
    x = _positions(features)
    mean = jnp.mean(x, axis=1)
    var = jnp.mean(jnp.square(x - mean[:, None, :]), axis=1)
    return mean, jnp.sqrt(var + eps)


def channel_moments(features: Array) -> tuple[Array, Array]:
    r"""Per-channel :math:`E[x]` and :math:`E[x^2]`, each ``(B, C)``: the additive form of
    :func:`channel_statistics` (means over positions, zero for zero features; tiles add up)."""
    x = _positions(features)
    return jnp.mean(x, axis=1), jnp.mean(jnp.square(x), axis=1)


def statistics_from_channel_moments(moments, eps: float = 1e-5) -> tuple[Array, Array]:
    r""":math:`(\mu, \sqrt{E[x^2] - \mu^2 + \epsilon})` from :func:`channel_moments` (the variance
    clipped at 0 against round-off)."""
    mean, second = moments
    return mean, jnp.sqrt(jnp.maximum(second - jnp.square(mean), 0.0) + eps)


def _channel_statistics_family(distance, eps: float) -> StyleLoss:
    """A :class:`StyleLoss` comparing per-channel ``(mean, std)`` by ``distance(mean, std, stats)``,
    directly from features or from their additive :func:`channel_moments` (tiling)."""

    def target(features):
        return channel_statistics(features, eps)

    def loss(features, stats, key=None):
        return distance(*channel_statistics(features, eps), stats)

    def compare(moments, stats, key=None):
        return distance(*statistics_from_channel_moments(moments, eps), stats)

    return StyleLoss(target, loss, compare=compare, statistics_reduction="mean", moments=channel_moments,
                     target_from_moments=lambda m: statistics_from_channel_moments(m, eps))


def _smooth_norm(v: Array, eps: float) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=-1) + eps) - jnp.sqrt(eps)


def mean_std_loss(eps: float = 1e-5) -> StyleLoss:
    r"""AdaIN statistics loss (Huang & Belongie 2017, eq. 11):
    :math:`\|\mu(x) - \mu(s)\|_2 + \|\sigma(x) - \sigma(s)\|_2`.

    Departure: the norms are computed as :math:`\sqrt{\|\cdot\|^2 + \epsilon} - \sqrt{\epsilon}`,
    zero where the statistics match and differentiable there.
    """

    def distance(mean, std, stats):
        return _smooth_norm(mean - stats[0], eps) + _smooth_norm(std - stats[1], eps)

    return _channel_statistics_family(distance, eps)


def bn_statistics_loss(eps: float = 1e-5) -> StyleLoss:
    r"""Batch-norm statistics loss (Li et al. 2017, "Demystifying Neural Style Transfer", eq. 10):
    :math:`\frac{1}{N}\sum_{c} (\mu_c(x) - \mu_c(s))^2 + (\sigma_c(x) - \sigma_c(s))^2`."""

    def distance(mean, std, stats):
        return jnp.mean(jnp.square(mean - stats[0]) + jnp.square(std - stats[1]), axis=-1)

    return _channel_statistics_family(distance, eps)
