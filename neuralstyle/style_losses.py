r"""Style-loss families beyond the Gram matrix, each a :class:`~neuralstyle.losses.StyleLoss`.

Every family is a pair of pure functions of ``(B, H, W, C)`` feature maps: ``target(style
features) -> statistics`` (computed once) and ``loss(features, statistics, key) -> (B,)``.  ``key``
is a JAX PRNG key that changes every optimization step (see
:meth:`neuralstyle.objective.StyleObjective.terms`); only the stochastic families use it.

Notation: a layer has :math:`N` channels and :math:`M = HW` positions; :math:`x_i \in
\mathbb{R}^N` is the feature vector of the generated image at position :math:`i` and :math:`s_j`
that of the style image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .errors import ConfigError
from .losses import StyleLoss, gram_matrix

Array = jnp.ndarray


def _positions(features: Array) -> Array:
    """``(B, H, W, C)`` -> ``(B, H*W, C)``: one feature vector per position."""
    b, h, w, c = features.shape
    return features.reshape(b, h * w, c)


# --------------------------------------------------------------------------- mean / std


def channel_statistics(features: Array, eps: float = 1e-5) -> tuple[Array, Array]:
    r"""Per-channel mean :math:`\mu` and standard deviation :math:`\sigma = \sqrt{\mathrm{var} + \epsilon}`,
    each ``(B, C)``; the statistics adaptive instance normalization aligns."""
    x = _positions(features)
    mean = jnp.mean(x, axis=1)
    var = jnp.mean(jnp.square(x - mean[:, None, :]), axis=1)
    return mean, jnp.sqrt(var + eps)


def _smooth_norm(v: Array, eps: float) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=-1) + eps) - jnp.sqrt(eps)


def mean_std_loss(eps: float = 1e-5) -> StyleLoss:
    r"""AdaIN statistics loss (Huang & Belongie 2017, eq. 11):
    :math:`\|\mu(x) - \mu(s)\|_2 + \|\sigma(x) - \sigma(s)\|_2`.

    Departure: the norms are computed as :math:`\sqrt{\|\cdot\|^2 + \epsilon} - \sqrt{\epsilon}`,
    zero where the statistics match and differentiable there.
    """

    def target(features):
        return channel_statistics(features, eps)

    def loss(features, stats, key=None):
        mean, std = channel_statistics(features, eps)
        return _smooth_norm(mean - stats[0], eps) + _smooth_norm(std - stats[1], eps)

    return StyleLoss(target, loss)


def bn_statistics_loss(eps: float = 1e-5) -> StyleLoss:
    r"""Batch-norm statistics loss (Li et al. 2017, "Demystifying Neural Style Transfer", eq. 10):
    :math:`\frac{1}{N}\sum_{c} (\mu_c(x) - \mu_c(s))^2 + (\sigma_c(x) - \sigma_c(s))^2`."""

    def target(features):
        return channel_statistics(features, eps)

    def loss(features, stats, key=None):
        mean, std = channel_statistics(features, eps)
        return jnp.mean(jnp.square(mean - stats[0]) + jnp.square(std - stats[1]), axis=-1)

    return StyleLoss(target, loss)


# --------------------------------------------------------------------------- MMD

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


# --------------------------------------------------------------------------- sorting-based


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


# --------------------------------------------------------------------------- MRF


def extract_patches(features: Array, size: int = 3, stride: int = 1) -> Array:
    """``(B, P, size*size*C)`` patches of ``(B, H, W, C)`` features (valid positions only)."""
    if features.shape[1] < size or features.shape[2] < size:
        raise ConfigError(
            f"{size}x{size} patches need feature maps of at least {size}x{size}, but a style layer "
            f"is {features.shape[1]}x{features.shape[2]}: use a larger image or shallower layers"
        )
    patches = jax.lax.conv_general_dilated_patches(
        features, (size, size), (stride, stride), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    b, h, w, d = patches.shape
    return patches.reshape(b, h * w, d)


def mrf_loss(patch_size: int = 3, style_stride: int = 1) -> StyleLoss:
    r"""MRF / patch-matching style loss (Li & Wand 2016, eq. 2-3).

    Every ``patch_size`` x ``patch_size`` patch :math:`\Psi_i(x)` of the generated features is
    matched to the style patch with the highest normalized cross-correlation (cosine similarity),
    :math:`NN(i) = \arg\max_j \frac{\Psi_i(x)\cdot\Psi_j(s)}{|\Psi_i(x)||\Psi_j(s)|}`, and the loss is
    :math:`\sum_i \|\Psi_i(x) - \Psi_{NN(i)}(s)\|^2`; the matching is held constant
    (no gradient through the argmax), as in the paper.

    Departure: the sum over patches is divided by the number of patches and the patch size, so
    that the term's scale does not grow with the image; ``style_stride`` > 1 samples fewer style
    patches to save memory.
    """

    def target(features):
        patches = extract_patches(features, patch_size, style_stride)
        normalized = patches / (jnp.linalg.norm(patches, axis=-1, keepdims=True) + 1e-8)
        return {"patches": patches, "normalized": normalized}

    def loss(features, style, key=None):
        patches = extract_patches(features, patch_size, 1)
        similarity = jnp.einsum("bpd,bqd->bpq", patches, style["normalized"])  # |x| is per row
        nearest = jax.lax.stop_gradient(jnp.argmax(similarity, axis=-1))
        matched = jnp.take_along_axis(style["patches"], nearest[..., None], axis=1)
        return jnp.mean(jnp.square(patches - matched), axis=(1, 2))

    return StyleLoss(target, loss)
