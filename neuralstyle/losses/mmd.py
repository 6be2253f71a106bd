r"""Maximum-mean-discrepancy style loss (Li et al. 2017), a :class:`~neuralstyle.losses.StyleLoss`.

The shared notation and the ``key`` argument: :mod:`neuralstyle.losses`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..errors import ConfigError
from .gram import gram_matrix
from .style_loss import StyleLoss, positions as _positions

Array = jnp.ndarray


MMD_KERNELS = ("linear", "polynomial", "gaussian")


def kernel_matrix(x: Array, y: Array, kernel: str, degree: int = 2, offset: float = 0.0,
                  bandwidth: float | Array = 1.0) -> Array:
    r"""``(B, P, Q)`` kernel values between position sets ``x`` (B, P, N) and ``y`` (B, Q, N):
    linear :math:`x^\top y`, polynomial :math:`(x^\top y + c)^d`, Gaussian
    :math:`\exp(-\|x - y\|^2 / (2\sigma^2))`."""
    dots = jnp.einsum("bpn,bqn->bpq", x, y)
    if kernel == "linear":
        return dots
    if kernel == "polynomial":
        return jnp.power(dots + offset, degree)
    if kernel == "gaussian":
        sq = (jnp.sum(x * x, -1)[:, :, None] + jnp.sum(y * y, -1)[:, None, :] - 2.0 * dots)
        return jnp.exp(-jnp.maximum(sq, 0.0) / (2.0 * bandwidth))
    raise ConfigError(f"unknown MMD kernel {kernel!r}; expected one of {MMD_KERNELS}")


def mmd_squared(x: Array, y: Array, kernel: str, **kernel_args) -> Array:
    r"""Biased estimate of the squared maximum mean discrepancy between position sets:
    :math:`\frac{1}{P^2}\sum k(x_i, x_{i'}) + \frac{1}{Q^2}\sum k(y_j, y_{j'})
    - \frac{2}{PQ}\sum k(x_i, y_j)` (Li et al. 2017, eq. 5)."""
    kxx = jnp.mean(kernel_matrix(x, x, kernel, **kernel_args), axis=(1, 2))
    kyy = jnp.mean(kernel_matrix(y, y, kernel, **kernel_args), axis=(1, 2))
    kxy = jnp.mean(kernel_matrix(x, y, kernel, **kernel_args), axis=(1, 2))
    return kxx + kyy - 2.0 * kxy


def _subsample(x: Array, count: int, key) -> Array:
    """``count`` positions of ``x`` (B, M, N), drawn without replacement from ``key``."""
    if count is None or x.shape[1] <= count:
        return x
    index = jax.random.choice(key, x.shape[1], (count,), replace=False)
    return x[:, index, :]


def mmd_loss(kernel: str = "polynomial", degree: int = 2, offset: float = 0.0,
             max_positions: int | None = 1024) -> StyleLoss:
    r"""MMD style loss (Li et al. 2017) :math:`\frac{1}{Z}\mathrm{MMD}^2[x, s]`.

    With the polynomial kernel :math:`k(x, y) = (x^\top y)^2` this *is* the Gram loss:
    :math:`\mathrm{MMD}^2 = \|G_x/M - G_s/M\|_F^2`, so that :math:`Z = 4N^2` gives the paper's
    eq. 4 (Li et al., eq. 7).  :math:`Z` is :math:`N` for the linear kernel (the loss is then
    :math:`\|\mu_x - \mu_s\|^2/N`), :math:`4N^2` for polynomial and 1 for Gaussian, as in the paper.

    The Gaussian bandwidth :math:`\sigma^2` is the mean squared distance between the style
    positions, fixed when the target is computed (the paper uses the mean over sampled pairs).

    Departure: the kernel matrices cost :math:`O(M^2)`; for ``kernel="gaussian"`` or a polynomial
    with ``degree != 2`` or ``offset != 0``, at most ``max_positions`` random positions of each map
    are used, redrawn every step from the step's key (``None`` uses all).  The linear and
    degree-2 polynomial kernels use their exact closed forms through means and Gram matrices.
    """
    if kernel not in MMD_KERNELS:
        raise ConfigError(f"unknown MMD kernel {kernel!r}; expected one of {MMD_KERNELS}")
    exact_polynomial = kernel == "polynomial" and degree == 2 and offset == 0.0

    def target(features):
        s = _positions(features)
        stats = {"positions": s, "mean": jnp.mean(s, axis=1), "gram": gram_matrix(features, "hw")}
        if kernel == "gaussian":
            sample = s[:, :: max(1, s.shape[1] // 1024), :]
            sq = jnp.sum(jnp.square(sample[:, :, None, :] - sample[:, None, :, :]), axis=-1)
            stats["bandwidth"] = jnp.mean(sq, axis=(1, 2))
        return stats

    def loss(features, stats, key=None):
        n = features.shape[-1]
        if kernel == "linear":
            mean = jnp.mean(_positions(features), axis=1)
            return jnp.sum(jnp.square(mean - stats["mean"]), axis=-1) / n
        if exact_polynomial:
            diff = gram_matrix(features, "hw") - stats["gram"]
            return jnp.sum(jnp.square(diff), axis=(-2, -1)) / (4.0 * n**2)
        key = jax.random.key(0) if key is None else key
        kx, ks = jax.random.split(key)
        x = _subsample(_positions(features), max_positions, kx)
        s = _subsample(stats["positions"], max_positions, ks)
        if kernel == "gaussian":
            bandwidth = stats["bandwidth"][:, None, None]
            return mmd_squared(x, s, "gaussian", bandwidth=bandwidth)
        return mmd_squared(x, s, "polynomial", degree=degree, offset=offset) / (4.0 * n**2)

    return StyleLoss(target, loss, stochastic=kernel != "linear" and not exact_polynomial)
