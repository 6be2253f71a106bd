"""Optimizers over the image pixels and the compiled update steps that drive them.

* Any optax ``GradientTransformation`` (the TensorFlow tutorial's Adam is
  ``optax.adam(0.02, b1=0.99, eps=0.1)``) runs through :func:`make_step`: one jit-compiled pure
  function ``(objective, image, opt_state, params, targets) -> (image, opt_state, loss, terms)``.
* :class:`LBFGS` is the classic optimizer of Gatys et al. and of jcjohnson/neural-style.  It keeps
  optax's two-loop recursion (:func:`optax.scale_by_lbfgs`) but runs the backtracking (Armijo)
  line search from Python over one compiled trial function, instead of ``optax.lbfgs``'s zoom
  line search inside ``lax.while_loop``: XLA's CPU backend runs convolutions inside a loop body
  several times slower (jax-ml/jax#12868) and ``optax.lbfgs`` compiles its step twice.  A step
  of length 1 is accepted almost always, so an iteration costs one forward and backward pass,
  like jcjohnson's fixed-step L-BFGS, while a rejected step is still shrunk safely.

The objective (a :class:`~neuralstyle.objective.StyleObjective`, a pytree whose leaves are its
weights) is an argument of every compiled function, never closed over: one compiled program
serves every weight setting, and ``jax.vmap`` over the objective's leaves runs many at once.

Pixels are kept in ``[0, 1]`` by projecting every new image onto that box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


def project(image: jnp.ndarray) -> jnp.ndarray:
    """Keep pixel values in range (the TensorFlow tutorial's ``clip_0_1``)."""
    return jnp.clip(image, 0.0, 1.0)


def evaluate(objective: Callable, params, image, targets):
    """``objective(params, image, targets) -> (loss, terms)`` with the objective as an argument
    (so ``jax.jit(evaluate)`` compiles once for every weight setting)."""
    return objective(params, image, targets)


def _value_and_grad(objective, params, image, targets):
    return jax.value_and_grad(evaluate, argnums=2, has_aux=True)(objective, params, image, targets)


def make_step(tx: optax.GradientTransformation) -> Callable:
    """The pure update step for an optax optimizer (not yet jitted).

    Returns ``step(objective, image, opt_state, params, targets) -> (new_image, opt_state, loss,
    terms)`` where ``loss`` and ``terms`` are those of the input ``image``.  The objective is an
    argument: ``jax.jit(make_step(tx))`` traces once per image shape, whatever the weights.
    """

    def step(objective, image, opt_state, params, targets):
        (loss, terms), grad = _value_and_grad(objective, params, image, targets)
        updates, opt_state = tx.update(grad, opt_state, image)
        return project(optax.apply_updates(image, updates)), opt_state, loss, terms

    return step


# --------------------------------------------------------------------------- L-BFGS


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
        (loss, terms), new_grad = _value_and_grad(objective, params, new_image, targets)
        return Trial(new_image, loss, terms, new_grad, jnp.vdot(grad, new_image - image))

    return direction, trial
