r"""Loss functions of optimization-based style transfer, as pure functions of arrays.

Feature maps are ``(batch, height, width, channels)`` arrays (NHWC, the Keras layout).
Every function here is a plain ``jax.numpy`` function: jit it, vmap it, differentiate it.

Notation follows Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural
Networks", CVPR 2016 (below: *the paper*): a layer :math:`l` has :math:`N_l` channels and
:math:`M_l = H_l W_l` positions; :math:`F^l \in \mathbb{R}^{N_l \times M_l}` are the features of
the generated image, :math:`P^l` those of the content image, and the Gram matrix is
:math:`G^l_{ij} = \sum_k F^l_{ik} F^l_{jk}`.

The seed implementations normalize these sums differently; each normalization is a named
choice so that a recipe can be reproduced exactly:

=================  ===========================================  ==================================
name               style term of one layer                      used by
=================  ===========================================  ==================================
``"raw"``          :math:`\sum_{ij} (G_{ij} - A_{ij})^2`        plain Gram, no normalization
``"hw"``           :math:`\mathrm{mean}_{ij}((G_{ij}-A_{ij})/M)^2`  TensorFlow tutorial
``"chw"``          :math:`\mathrm{mean}_{ij}((G_{ij}-A_{ij})/(NM))^2`  seeds' TF code (fast-style)
``"paper"``        :math:`\frac{1}{4N^2M^2}\sum_{ij}(G_{ij}-A_{ij})^2`   the paper, eq. 4
=================  ===========================================  ==================================
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp

from .errors import ConfigError

Array = jnp.ndarray


# --------------------------------------------------------------------------- Gram matrices

GRAM_NORMALIZATIONS = ("raw", "hw", "chw", "paper")


def gram_matrix(features: Array, normalization: str = "raw") -> Array:
    r"""Gram matrix :math:`G_{ij} = \sum_k F_{ik} F_{jk}` of ``(B, H, W, C)`` features.

    Returns a ``(B, C, C)`` array divided by :math:`H W` for ``"hw"`` and ``"paper"``
    (the paper's :math:`1/(4N^2M^2)` is then a mean over the :math:`N^2` entries, divided by
    4), by :math:`C H W` for ``"chw"``, and not at all for ``"raw"``.
    """
    b, h, w, c = features.shape
    flat = features.reshape(b, h * w, c)
    gram = jnp.einsum("bki,bkj->bij", flat, flat)
    return gram / _gram_divisor(normalization, h * w, c)


def _gram_divisor(normalization: str, positions: int, channels: int) -> float:
    if normalization == "raw":
        return 1.0
    if normalization in ("hw", "paper"):
        return float(positions)
    if normalization == "chw":
        return float(positions * channels)
    raise ConfigError(
        f"unknown Gram normalization {normalization!r}; expected one of {GRAM_NORMALIZATIONS}"
    )


def gram_style_layer_loss(gram: Array, target_gram: Array, normalization: str = "paper") -> Array:
    r"""Style term of one layer from two Gram matrices made with the same ``normalization``.

    ``"raw"`` sums the squared differences; ``"hw"`` and ``"chw"`` average them over the
    :math:`C^2` entries (TensorFlow tutorial: ``tf.reduce_mean((G - A)**2)``; fast-style TF code:
    ``2 * tf.nn.l2_loss(G - A) / A.size``); ``"paper"`` is eq. 4 of the paper,
    :math:`E_l = \frac{1}{4 N_l^2 M_l^2}\sum_{ij}(G^l_{ij} - A^l_{ij})^2`, which with Gram matrices
    already divided by :math:`M_l` is the mean over entries divided by 4.
    Returns one value per batch element.
    """
    sq = jnp.square(gram - target_gram)
    if normalization == "raw":
        return jnp.sum(sq, axis=(-2, -1))
    if normalization in ("hw", "chw"):
        return jnp.mean(sq, axis=(-2, -1))
    if normalization == "paper":
        return jnp.mean(sq, axis=(-2, -1)) / 4.0
    raise ConfigError(
        f"unknown Gram normalization {normalization!r}; expected one of {GRAM_NORMALIZATIONS}"
    )


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
    """

    target: Callable[[Array], object]
    loss: Callable[..., Array]
    stochastic: bool = False
    guidable: bool = False


def gram_loss(normalization: str = "hw") -> StyleLoss:
    """Gram-matrix style loss (Gatys et al. 2016, eq. 3-4) with a named normalization."""
    _gram_divisor(normalization, 1, 1)  # validate eagerly, not at trace time

    def target(features):
        return gram_matrix(features, normalization)

    def loss(features, target_gram, key=None):
        return gram_style_layer_loss(gram_matrix(features, normalization), target_gram, normalization)

    return StyleLoss(target, loss, guidable=True)


# --------------------------------------------------------------------------- content

CONTENT_NORMALIZATIONS = ("paper", "sum", "mean")


def content_loss(normalization: str = "mean") -> Callable[[Array, Array], Array]:
    r"""Squared-error content loss between features and target features, per batch element.

    * ``"paper"``: :math:`\frac12\sum_{ij}(F_{ij} - P_{ij})^2` (Gatys et al. 2016, eq. 1);
    * ``"sum"``: :math:`\sum_{ij}(F_{ij} - P_{ij})^2` (Keras ``neural_style_transfer`` example);
    * ``"mean"``: the mean over all entries (TensorFlow tutorial; fast-style TF code).
    """
    if normalization not in CONTENT_NORMALIZATIONS:
        raise ConfigError(
            f"unknown content normalization {normalization!r}; expected one of "
            f"{CONTENT_NORMALIZATIONS}"
        )

    def loss(features: Array, target: Array) -> Array:
        sq = jnp.square(features - target)
        axes = tuple(range(1, sq.ndim))
        if normalization == "mean":
            return jnp.mean(sq, axis=axes)
        total = jnp.sum(sq, axis=axes)
        return 0.5 * total if normalization == "paper" else total

    return loss


# --------------------------------------------------------------------------- total variation

TV_KINDS = ("l1", "l2", "beta")


def total_variation(image: Array, kind: str = "l1", beta: float = 2.0, eps: float = 1e-8) -> Array:
    r"""Total variation of ``(B, H, W, C)`` images, one value per batch element.

    With :math:`d^x_{ijc} = x_{i,j+1,c} - x_{ijc}` and :math:`d^y_{ijc} = x_{i+1,j,c} - x_{ijc}`:

    * ``"l1"``: :math:`\sum |d^x| + \sum |d^y|` (anisotropic; ``tf.image.total_variation``, as in
      the TensorFlow tutorial);
    * ``"l2"``: :math:`\sum (d^x)^2 + \sum (d^y)^2`;
    * ``"beta"``: :math:`\sum_{ijc} ((d^x_{ijc})^2 + (d^y_{ijc})^2)^{\beta/2}` over the
      :math:`(H-1)\times(W-1)` positions where both differences exist (Mahendran & Vedaldi 2015,
      eq. 5; the Keras example uses :math:`\beta = 2.5`).  ``eps`` is added inside the power so
      that the gradient is finite for :math:`\beta < 2` at flat regions (a departure from the
      formula of at most :math:`(HWC)\,\epsilon^{\beta/2}`).
    """
    dx = image[:, :, 1:, :] - image[:, :, :-1, :]
    dy = image[:, 1:, :, :] - image[:, :-1, :, :]
    axes = (1, 2, 3)
    if kind == "l1":
        return jnp.sum(jnp.abs(dx), axis=axes) + jnp.sum(jnp.abs(dy), axis=axes)
    if kind == "l2":
        return jnp.sum(jnp.square(dx), axis=axes) + jnp.sum(jnp.square(dy), axis=axes)
    if kind == "beta":
        both = jnp.square(dx[:, :-1, :, :]) + jnp.square(dy[:, :, :-1, :])
        return jnp.sum(jnp.power(both + eps, beta / 2.0), axis=axes)
    raise ConfigError(f"unknown total-variation kind {kind!r}; expected one of {TV_KINDS}")


def total_variation_loss(kind: str = "l1", beta: float = 2.0) -> Callable[[Array], Array]:
    """Factory for :func:`total_variation` with a fixed ``kind`` and ``beta`` (a config target)."""
    if kind not in TV_KINDS:
        raise ConfigError(f"unknown total-variation kind {kind!r}; expected one of {TV_KINDS}")

    def loss(image: Array) -> Array:
        return total_variation(image, kind, beta)

    return loss
