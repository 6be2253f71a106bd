r"""L-BFGS over the image pixels, the classic optimizer of Gatys et al. and jcjohnson/neural-style.

**Direction.**  :math:`d_k = H_k g_k` by the two-loop recursion (Nocedal & Wright, *Numerical
Optimization*, 2nd ed., Algorithm 7.4) over the curvature pairs

.. math::
    s_i = x_{i+1} - x_i, \qquad y_i = g_{i+1} - g_i, \qquad \rho_i = 1 / \langle y_i, s_i\rangle,

the last ``memory_size`` of them, with :math:`H_k^0 = \gamma_k I`,
:math:`\gamma_k = \langle s_{k-1}, y_{k-1}\rangle / \langle y_{k-1}, y_{k-1}\rangle` (eq. 7.20).
The iterate moves to the projection :math:`\mathrm{clip}(x_k - t\, d_k)` onto the pixel box.

**A history that costs what it must.**  The pairs are kept as PyTorch's ``torch.optim.LBFGS``
keeps them: a list that grows by one pair per iteration up to ``memory_size``, after which the
oldest pair's two buffers are donated to the newest one (written in place, never a copy).  The
recursion is a Python loop over the list whose steps are small compiled kernels (one dot product
and one ``axpy`` each, updating the working vector in place), compiled once per image shape
whatever the number of pairs, so the history never grows by copying into a larger buffer, never
holds unused capacity and never recompiles anything.  (A preallocated ring of ``memory_size``
pairs, as ``optax.scale_by_lbfgs`` keeps, held 2 x 100 image-sized vectors from the first
iteration: 2.5 GB at 1024x1024.)  A kernel call costs tens of microseconds, so the Python loop
adds milliseconds to an iteration of seconds.

**Departures**, each kept from the preallocated ``optax.scale_by_lbfgs`` memory this replaces, so
the iterates are the same:

* a pair with :math:`\langle y, s\rangle \le 10^{-10}` (possible after the projection onto the
  pixel box, or after a step that satisfies Armijo but not the curvature condition) gets
  :math:`\rho = 0`, i.e. it is skipped as PyTorch skips it, but it still takes a slot of the
  ``memory_size`` (its vectors are not stored when no run uses them), and :math:`\gamma = 1`
  after it (PyTorch keeps the previous :math:`\gamma`);
* the first iteration scales the gradient by :math:`\gamma_0 = \min(1, 1/\|g_0\|)` (optax's
  heuristic; Algorithm 7.5 leaves :math:`H_0` open).

**Line search.**  A backtracking (Armijo) search is driven from Python over one compiled trial
function, instead of ``optax.lbfgs``'s zoom line search inside ``lax.while_loop``: XLA's CPU
backend runs convolutions inside a loop body several times slower (jax-ml/jax#12868) and
``optax.lbfgs`` compiles its step twice.  A step of length 1 is accepted almost always, so an
iteration costs one forward and backward pass, like jcjohnson's fixed-step L-BFGS, while a rejected
step is still shrunk safely.  The loop that drives these functions is
:func:`neuralstyle.optim.driver.optimize`.

**Runs.**  Every array of the state has a leading run axis N >= 1 (the driver's batch of runs with
different weights); the runs share the list's length (every run adds a pair every pass), and a run
restarted alone (:func:`restart`) gives its older pairs :math:`\rho = 0`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError
from .steps import project, value_and_grad

#: A pair whose curvature :math:`\langle y, s\rangle` is not above this is skipped (:math:`\rho = 0`).
MIN_CURVATURE = 1e-10


@dataclass(frozen=True)
class LBFGS:
    """L-BFGS with a Python-driven backtracking line search (see the module docstring).

    Args:
      memory_size: number of curvature pairs kept (PyTorch's and Torch7's default is 100); the
        history grows to it one pair per iteration.
      max_linesearch: trial steps before an iteration gives up (then the memory is reset).
      c1: Armijo sufficient-decrease constant, in (0, 1).
      shrink: factor applied to the step length after a rejected trial, in (0, 1).
    """

    memory_size: int = 100
    max_linesearch: int = 20
    c1: float = 1e-4
    shrink: float = 0.5

    def __post_init__(self):
        for name in ("memory_size", "max_linesearch"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"LBFGS {name} must be an integer >= 1, got {value!r}")
        for name in ("c1", "shrink"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
                raise ConfigError(f"LBFGS {name} must be a number in (0, 1), got {value!r}")


def lbfgs(memory_size: int = 100, max_linesearch: int = 20, c1: float = 1e-4, shrink: float = 0.5) -> LBFGS:
    """Factory used by the Hydra config ``optimizer=lbfgs``."""
    return LBFGS(memory_size, max_linesearch, c1, shrink)


class LBFGSState(NamedTuple):
    """The curvature history of N >= 1 runs; every array has a leading run axis N.

    ``count``: ``(N,)`` iterations since the run started or restarted; ``image``, ``grad``: the
    point of the last direction call (:math:`x_{k-1}, g_{k-1}`; ``None`` before the first);
    ``s``, ``y``: the pairs, oldest first, at most ``memory_size`` (an entry is ``None`` where
    every run skipped the pair: it keeps its slot but holds no memory); ``rho``: ``(N,)`` per pair,
    :math:`1/\\langle y_i, s_i\\rangle`, or 0 where a run skips it.
    """

    count: Any
    image: Any
    grad: Any
    s: tuple
    y: tuple
    rho: tuple


def init_state(images) -> LBFGSState:
    """The empty history of ``images.shape[0]`` runs (nothing image-sized is allocated)."""
    return LBFGSState(jnp.zeros(images.shape[:1], jnp.int32), None, None, (), (), ())


def restart(state: LBFGSState, runs) -> LBFGSState:
    """The history with the runs where ``runs`` (``(N,)`` bool) is true emptied: all of them, the
    empty state (its memory freed); some, their ``count`` and every :math:`\\rho` zeroed (the
    other runs keep their pairs), and a pair no run uses any more releases its vectors."""
    runs = np.asarray(runs, bool)
    if runs.all():
        return init_state(state.count)
    if not runs.any():
        return state
    keep = jnp.asarray(~runs)
    rho = tuple(jnp.where(keep, r, 0.0) for r in state.rho)
    used = [bool(np.any(np.asarray(r))) for r in rho]
    return state._replace(
        count=jnp.where(keep, state.count, 0), rho=rho,
        s=tuple(v if u else None for v, u in zip(state.s, used)),
        y=tuple(v if u else None for v, u in zip(state.y, used)))


# ----------------------------------------------------------------- kernels (one run; vmapped below)


def _pair(image, grad, prev_image, prev_grad, count):
    """:math:`s, y, \\rho` of the newest pair and :math:`\\gamma_k` (eq. 7.20, or the first
    iteration's :math:`\\min(1, 1/\\|g\\|)`, or 1 after a skipped pair)."""
    s, y = image - prev_image, grad - prev_grad
    sy, yy = jnp.vdot(y, s), jnp.vdot(y, y)
    kept = (count > 0) & (sy > MIN_CURVATURE)
    rho = jnp.where(kept, 1.0 / jnp.where(kept, sy, 1.0), 0.0)
    gamma = jnp.where(count == 0, jnp.minimum(1.0, 1.0 / jnp.linalg.norm(grad)),
                      jnp.where(kept, sy / jnp.where(kept, yy, 1.0), 1.0))
    return s, y, rho, gamma


def _pair_into(image, grad, prev_image, prev_grad, count, old_s, old_y):
    """:func:`_pair`, written into the (donated) buffers of the pair it replaces."""
    del old_s, old_y
    return _pair(image, grad, prev_image, prev_grad, count)


def _first_scale(grad):
    return jnp.minimum(1.0, 1.0 / jnp.linalg.norm(grad))


def _first_loop(q, s, y, rho):
    """:math:`\\alpha_i = \\rho_i s_i^T q`, :math:`q \\leftarrow q - \\alpha_i y_i`."""
    alpha = rho * jnp.vdot(s, q)
    return q - alpha * y, alpha


def _scale(q, gamma):
    """:math:`r = H_k^0 q = \\gamma_k q`."""
    return gamma * q


def _second_loop(r, s, y, rho, alpha):
    """:math:`\\beta = \\rho_i y_i^T r`, :math:`r \\leftarrow r + s_i (\\alpha_i - \\beta)`."""
    beta = rho * jnp.vdot(y, r)
    return r + (alpha - beta) * s


def _runs(fn, donate=()):
    """``fn`` over a leading run axis, compiled (once per shape), the ``donate`` arguments'
    buffers reused for the outputs (``keep_unused``: also buffers the function does not read)."""
    return jax.jit(jax.vmap(fn), donate_argnums=donate, keep_unused=bool(donate))


_pair_runs = _runs(_pair)
_pair_into_runs = _runs(_pair_into, donate=(5, 6))
_first_scale_runs = _runs(_first_scale)
_first_loop_runs = _runs(_first_loop)  # q is the caller's gradient: not donated
_first_loop_in_place = _runs(_first_loop, donate=(0,))
_scale_runs = _runs(_scale)
_scale_in_place = _runs(_scale, donate=(0,))
_second_loop_in_place = _runs(_second_loop, donate=(0,))


def two_loop(grad, s, y, rho, gamma):
    """:math:`H_k g_k` by Algorithm 7.4 for N runs: ``s``, ``y``, ``rho`` the pairs oldest first
    (a ``None`` pair, skipped by every run, is left out: its weight is zero), ``gamma`` ``(N,)``.
    ``grad`` is read, not overwritten; the working vector is updated in place."""
    stored = [i for i in range(len(rho)) if s[i] is not None]
    q, alpha = grad, {}
    for i in reversed(stored):  # i = k-1, ..., k-m
        q, alpha[i] = (_first_loop_runs if q is grad else _first_loop_in_place)(q, s[i], y[i], rho[i])
    r = (_scale_runs if q is grad else _scale_in_place)(q, gamma)
    for i in stored:  # i = k-m, ..., k-1
        r = _second_loop_in_place(r, s[i], y[i], rho[i], alpha[i])
    return r


def warm_up(images) -> float:
    """Compile the direction's kernels for ``images``' shape (by running each once on zeros), so
    that the first iteration is not charged for them; returns the seconds taken."""
    import time

    start = time.perf_counter()
    zero = jnp.zeros_like(images)
    count = jnp.zeros(images.shape[:1], jnp.int32)
    gamma = _first_scale_runs(zero)
    s, y, rho, gamma = _pair_runs(zero, zero, zero, zero, count)
    s, y, rho, gamma = _pair_into_runs(zero, zero, zero, zero, count, s, y)
    q, alpha = _first_loop_runs(zero, s, y, rho)
    q, alpha = _first_loop_in_place(q, s, y, rho)
    r = _scale_in_place(q, gamma)
    jax.block_until_ready((_second_loop_in_place(r, s, y, rho, alpha), _scale_runs(zero, gamma)))
    return time.perf_counter() - start


class Trial(NamedTuple):
    image: Any
    loss: Any
    terms: Any
    grad: Any
    slope: Any  # <g_old, new_image - image>: the first-order predicted change of the loss


def make_lbfgs_functions(opt: LBFGS):
    """The two functions an L-BFGS iteration needs.

    ``direction(grad, state, image) -> (d, state)``, N >= 1 runs (leading axis), called from
    Python, not jitted (its kernels are): adds the pair from the previous call's point to
    ``(image, grad)`` to the history (dropping the oldest beyond ``opt.memory_size``, whose
    buffers it reuses: the oldest pair's arrays in ``state`` are consumed) and returns
    :math:`d = H g` by the two-loop recursion (:func:`two_loop`).  A pair with non-positive
    curvature gets weight zero (see the module docstring).  Start from :func:`init_state`.

    ``trial(objective, image, grad, d, t, params, targets) -> Trial``, one run, pure (the driver
    vmaps and compiles it once per image shape): the projected point ``clip(image - t d)`` with
    its loss, terms and gradient under ``objective``.
    """
    memory_size = opt.memory_size

    def direction(grad, state: LBFGSState, image):
        s, y, rho = list(state.s), list(state.y), list(state.rho)
        if state.image is None:  # the first iteration: no pair yet
            gamma = _first_scale_runs(grad)
        else:
            old_s = old_y = None
            if len(rho) == memory_size:  # full: the oldest pair goes, its buffers take the newest
                old_s, old_y, _ = s.pop(0), y.pop(0), rho.pop(0)
            if old_s is None:
                new_s, new_y, new_rho, gamma = _pair_runs(image, grad, state.image, state.grad, state.count)
            else:
                new_s, new_y, new_rho, gamma = _pair_into_runs(image, grad, state.image, state.grad,
                                                               state.count, old_s, old_y)
            if not np.any(np.asarray(new_rho)):  # skipped by every run: the slot, not the vectors
                new_s = new_y = None
            s.append(new_s)
            y.append(new_y)
            rho.append(new_rho)
        d = two_loop(grad, s, y, rho, gamma)
        return d, LBFGSState(state.count + 1, image, grad, tuple(s), tuple(y), tuple(rho))

    def trial(objective, image, grad, d, t, params, targets):
        new_image = project(image - t * d)
        (loss, terms), new_grad = value_and_grad(objective, params, new_image, targets)
        return Trial(new_image, loss, terms, new_grad, jnp.vdot(grad, new_image - image))

    return direction, trial


def history_vectors(state: LBFGSState) -> int:
    """Image-sized vectors (per run) the history holds: two per stored pair."""
    return sum(v is not None for v in state.s + state.y)
