"""Optimizers over the image pixels and the compiled update steps that drive them.

* Any optax ``GradientTransformation`` (the TensorFlow tutorial's Adam is
  ``optax.adam(0.02, b1=0.99, eps=0.1)``) runs through :func:`make_step`: one jit-compiled pure
  function ``(objective, image, opt_state, params, targets) -> (image, opt_state, loss, terms)``.
* :class:`~neuralstyle.optim.lbfgs.LBFGS` (in :mod:`.lbfgs`) reuses :func:`value_and_grad` and
  :func:`project` for its trial points.

The objective (a :class:`~neuralstyle.objective.StyleObjective`, a pytree whose leaves are its
weights) is an argument of every compiled function, never closed over: one compiled program
serves every weight setting, and ``jax.vmap`` over the objective's leaves runs many at once.

Pixels are kept in ``[0, 1]`` by projecting every new image onto that box.
"""

from __future__ import annotations

from typing import Callable

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


def value_and_grad(objective, params, image, targets):
    return jax.value_and_grad(evaluate, argnums=2, has_aux=True)(objective, params, image, targets)


def make_step(tx: optax.GradientTransformation) -> Callable:
    """The pure update step for an optax optimizer (not yet jitted).

    Returns ``step(objective, image, opt_state, params, targets) -> (new_image, opt_state, loss,
    terms)`` where ``loss`` and ``terms`` are those of the input ``image``.  The objective is an
    argument: ``jax.jit(make_step(tx))`` traces once per image shape, whatever the weights.
    """

    update = make_update(tx)

    def step(objective, image, opt_state, params, targets):
        (loss, terms), grad = value_and_grad(objective, params, image, targets)
        image, opt_state = update(grad, opt_state, image)
        return image, opt_state, loss, terms

    return step


def make_update(tx: optax.GradientTransformation) -> Callable:
    """``update(grad, opt_state, image) -> (new_image, opt_state)``: the optax update, applied and
    projected onto the pixel box (the second half of :func:`make_step`, for gradients computed
    elsewhere, e.g. tile by tile)."""

    def update(grad, opt_state, image):
        updates, opt_state = tx.update(grad, opt_state, image)
        return project(optax.apply_updates(image, updates)), opt_state

    return update
