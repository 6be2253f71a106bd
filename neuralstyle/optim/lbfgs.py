"""L-BFGS over the image pixels, the classic optimizer of Gatys et al. and jcjohnson/neural-style.

It keeps optax's two-loop recursion (:func:`optax.scale_by_lbfgs`) but runs the backtracking
(Armijo) line search from Python over one compiled trial function, instead of ``optax.lbfgs``'s
zoom line search inside ``lax.while_loop``: XLA's CPU backend runs convolutions inside a loop body
several times slower (jax-ml/jax#12868) and ``optax.lbfgs`` compiles its step twice.  A step of
length 1 is accepted almost always, so an iteration costs one forward and backward pass, like
jcjohnson's fixed-step L-BFGS, while a rejected step is still shrunk safely.  The loop that drives
these functions is :func:`neuralstyle.optim.driver.optimize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax.numpy as jnp
import optax

from .steps import project, value_and_grad


@dataclass(frozen=True)
class LBFGS:
    """L-BFGS with a Python-driven backtracking line search (see the module docstring).

    Args:
      memory_size: number of curvature pairs kept (PyTorch's and Torch7's default is 100).
      max_linesearch: trial steps before an iteration gives up (then the memory is reset).
      c1: Armijo sufficient-decrease constant.
      shrink: factor applied to the step length after a rejected trial.
    """

    memory_size: int = 100
    max_linesearch: int = 20
    c1: float = 1e-4
    shrink: float = 0.5

    @property
    def direction_transform(self) -> optax.GradientTransformation:
        return optax.scale_by_lbfgs(memory_size=self.memory_size)


def lbfgs(memory_size: int = 100, max_linesearch: int = 20, c1: float = 1e-4, shrink: float = 0.5) -> LBFGS:
    """Factory used by the Hydra config ``optimizer=lbfgs``."""
    return LBFGS(memory_size, max_linesearch, c1, shrink)


class Trial(NamedTuple):
    image: Any
    loss: Any
    terms: Any
    grad: Any
    slope: Any  # <g_old, new_image - image>: the first-order predicted change of the loss


def make_lbfgs_functions(opt: LBFGS):
    """The two pure functions an L-BFGS iteration needs (both compiled once per image shape).

    ``direction(grad, state, image) -> (d, state)``: the two-loop recursion; a curvature pair with
    non-positive ``<dy, ds>`` (possible after projection onto the pixel box, or with a step
    that satisfies Armijo but not the curvature condition) is stored with weight zero, i.e. skipped,
    as PyTorch's L-BFGS does.

    ``trial(objective, image, grad, d, t, params, targets) -> Trial``: the projected point
    ``clip(image - t d)`` with its loss, terms and gradient under ``objective``.
    """
    tx = opt.direction_transform

    def direction(grad, state, image):
        curvature = jnp.vdot(grad - state.updates, image - state.params)
        skip = (state.count > 0) & ~(curvature > 1e-10)
        state = state._replace(
            params=jnp.where(skip, image, state.params),
            updates=jnp.where(skip, grad, state.updates),
        )
        return tx.update(grad, state, image)

    def trial(objective, image, grad, d, t, params, targets):
        new_image = project(image - t * d)
        (loss, terms), new_grad = value_and_grad(objective, params, new_image, targets)
        return Trial(new_image, loss, terms, new_grad, jnp.vdot(grad, new_image - image))

    return direction, trial
