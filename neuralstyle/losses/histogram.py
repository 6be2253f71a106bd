r"""Sorting-based style losses (sliced Wasserstein, histogram matching), each a
:class:`~neuralstyle.losses.StyleLoss`.

The shared notation and the ``key`` argument: :mod:`neuralstyle.losses`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .style_loss import StyleLoss, positions as _positions

Array = jnp.ndarray


def resample_sorted(sorted_values: Array, m: int) -> Array:
    """The quantile function given by ``sorted_values`` (B, M', K), sampled at ``m`` points by
    linear interpolation (identity when ``M' == m``)."""
    m_source = sorted_values.shape[1]
    if m_source == m:
        return sorted_values
    grid = (jnp.arange(m) + 0.5) * (m_source / m) - 0.5
    lo = jnp.clip(jnp.floor(grid).astype(jnp.int32), 0, m_source - 1)
    hi = jnp.clip(lo + 1, 0, m_source - 1)
    frac = jnp.clip(grid - lo, 0.0, 1.0)[None, :, None]
    return sorted_values[:, lo, :] * (1 - frac) + sorted_values[:, hi, :] * frac


def match_histograms(values: Array, sorted_target: Array) -> Array:
    """Exact histogram matching by ranks along axis 1: each entry of ``values`` (B, M, K) becomes
    the target's value at the same quantile (``sorted_target`` is sorted along axis 1)."""
    sorted_target = resample_sorted(sorted_target, values.shape[1])
    ranks = jnp.argsort(jnp.argsort(values, axis=1), axis=1)
    return jnp.take_along_axis(sorted_target, ranks, axis=1)


def sliced_wasserstein_loss(projections: int | None = None) -> StyleLoss:
    r"""Sliced Wasserstein style loss (Heitz et al. 2021, eq. 8).

    For :math:`K` random unit directions :math:`v_k` (``projections``, default :math:`N`), the
    squared 1-D Wasserstein distances between the projected feature distributions
    :math:`\{v_k^\top x_i\}` and :math:`\{v_k^\top s_j\}`, averaged over positions and directions:
    :math:`\frac{1}{KM}\sum_k \sum_i (\mathrm{sort}(x v_k)_i - \mathrm{sort}(s v_k)_i)^2`.
    The directions are redrawn every step from the step's key, as in the paper.  When the two maps
    have different sizes the style's sorted projections are resampled at :math:`M` quantiles.
    """

    def target(features):
        return _positions(features)

    def loss(features, style_positions, key=None):
        x = _positions(features)
        n = x.shape[-1]
        k = projections or n
        key = jax.random.key(0) if key is None else key
        directions = jax.random.normal(key, (n, k), x.dtype)
        directions = directions / jnp.linalg.norm(directions, axis=0, keepdims=True)
        sorted_x = jnp.sort(x @ directions, axis=1)
        sorted_s = resample_sorted(jnp.sort(style_positions @ directions, axis=1), x.shape[1])
        return jnp.mean(jnp.square(sorted_x - sorted_s), axis=(1, 2))

    return StyleLoss(target, loss, stochastic=True)


def histogram_loss() -> StyleLoss:
    r"""Histogram loss (Risser, Wilmot & Barnes 2017, eq. 4): :math:`\|F - R(F)\|^2` per layer,
    where :math:`R(F)` matches each channel's histogram to the style's and is held constant
    (no gradient through :math:`R`).

    Departure: :math:`R` is exact histogram matching by ranks (sorting), not the paper's 256-bin
    histogram remapping; the squared error is averaged over entries rather than summed.
    """

    def target(features):
        return jnp.sort(_positions(features), axis=1)

    def loss(features, sorted_style, key=None):
        x = _positions(features)
        remapped = jax.lax.stop_gradient(match_histograms(x, sorted_style))
        return jnp.mean(jnp.square(x - remapped), axis=(1, 2))

    return StyleLoss(target, loss)
