"""Total-variation regularizers of the generated image (anisotropic L1, L2, and the beta-norm of
Mahendran & Vedaldi 2015)."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from ..errors import ConfigError

Array = jnp.ndarray


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
