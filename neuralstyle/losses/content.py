"""Content loss (Gatys et al. 2016, eq. 1) and the seeds' normalizations of it."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from ..errors import ConfigError

Array = jnp.ndarray


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

    loss.reduction = "mean" if normalization == "mean" else "sum"  # over positions (for tiling)
    return loss
