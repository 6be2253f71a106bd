r"""MRF / patch-matching style loss (Li & Wand 2016), a :class:`~neuralstyle.losses.StyleLoss`.

The shared notation and the ``key`` argument: :mod:`neuralstyle.losses`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..errors import ConfigError
from .style_loss import StyleLoss

Array = jnp.ndarray


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
