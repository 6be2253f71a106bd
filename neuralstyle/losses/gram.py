r"""Gram-matrix style loss (Gatys et al. 2016) with the seeds' normalizations.

Feature maps are ``(batch, height, width, channels)`` arrays (NHWC, the Keras layout).
Every function in :mod:`neuralstyle.losses` is a plain ``jax.numpy`` function: jit it, vmap it, differentiate it.

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

import jax.numpy as jnp

from ..errors import ConfigError
from .style_loss import StyleLoss

Array = jnp.ndarray


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


def gram_loss(normalization: str = "hw") -> StyleLoss:
    """Gram-matrix style loss (Gatys et al. 2016, eq. 3-4) with a named normalization."""
    _gram_divisor(normalization, 1, 1)  # validate eagerly, not at trace time

    def target(features):
        return gram_matrix(features, normalization)

    def compare(gram, target_gram, key=None):
        return gram_style_layer_loss(gram, target_gram, normalization)

    def loss(features, target_gram, key=None):
        return compare(gram_matrix(features, normalization), target_gram)

    return StyleLoss(target, loss, guidable=True, compare=compare,
                     statistics_reduction="sum" if normalization == "raw" else "mean")
