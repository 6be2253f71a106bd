r"""The one optimization driver: N >= 1 runs of one objective through one compiled step.

:func:`optimize` is the only optimization loop of the library.  :func:`neuralstyle.stylize` is
its N = 1 case, :func:`neuralstyle.stylize_batched` its N > 1 case, and the pyramid calls
``stylize`` per level.  Runs differ in their objective's weights (a stacked objective, see
:func:`stack_runs`), their initial image and their PRNG key; everything else (content features,
style statistics, masks, the frozen backbone) is shared.

* **optax** (any ``GradientTransformation``): the pure step of :func:`neuralstyle.optim.make_step`
  is ``jax.vmap``-ped over the runs and compiled once; every run takes every step.
* **L-BFGS** (:class:`~neuralstyle.optim.LBFGS`): the line-search ``trial`` is vmapped and
  compiled once; the two-loop ``direction`` runs over a curvature history that grows one pair per
  iteration (its small kernels compiled once per shape, whatever the history's length: see
  :mod:`neuralstyle.optim.lbfgs`); the backtracking (Armijo) search is driven from Python with one
  step length per run, so each run accepts, shrinks or restarts as it would alone.  (A
  Python-driven search is what makes L-BFGS fast on XLA's CPU backend: see
  :mod:`neuralstyle.optim`.)

The loop owner, :class:`Monitor`, does the rest the same way for every N: the progress bar (with
the losses when N = 1), snapshots, the callback, the non-finite check (a run whose loss becomes
NaN or infinite stops and keeps its last finite image) and Ctrl-C (raises
:class:`~neuralstyle.errors.Interrupted` with the current images).

**Averaged iterate** (``average_decay``): the result is an exponential moving average of the
iterates, :math:`\bar x_t = d\,\bar x_{t-1} + (1-d)\,x_t` with bias correction
:math:`\bar x_t / (1 - d^{t+1})` (:func:`optax.ema` with ``debias=True``; :math:`x_0`, the initial
image, is the first term), as in crowsonkb/style-transfer-pytorch.  The average smooths the
high-frequency noise that the last iterates of Adam carry; snapshots, the callback, Ctrl-C and the
result show the average, and its loss is evaluated once at the end (the per-step history is the
iterates').  For L-BFGS a run's average advances with its accepted steps.

**Evaluator** (``evaluator``): the objective's value and gradient computed by a Python function
instead of inside the compiled step, e.g. tile by tile (:meth:`neuralstyle.tiling.TiledObjective.evaluator`);
the optimizer update and the line search stay the same.  Compilation then happens during the first
step (``compile_time`` is 0).

**Warm start** (``opt_state``): an optax state carried over from an earlier call (e.g. the previous
scale of a multiscale run, resized with :func:`resize_opt_state`); L-BFGS always starts with an
empty memory.

Randomness: step ``i`` of run ``k`` uses the key ``fold_in(keys[k], i)`` (optax), or, for
L-BFGS with a stochastic loss, ``fold_in(keys[k], i + 1)`` from its second iteration on, fixed
within the line search.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ..errors import ConfigError, Interrupted
from ..images.io import save_image
from ..objective import StyleObjective, Targets
from ..tuning import step_compiler_options
from .lbfgs import LBFGS, Trial, init_state, make_lbfgs_functions, warm_up
from .lbfgs import restart as restart_runs
from .memory import release_freed_memory
from .steps import evaluate, make_step, make_update, project


def stack_runs(objectives: Sequence[StyleObjective]) -> StyleObjective:
    """N objectives that differ only in weights as one objective whose leaves are ``(N,)``
    float32 arrays, for ``jax.vmap`` with ``in_axes=0`` over the objective."""
    return jax.tree.map(lambda *leaves: jnp.asarray(leaves, jnp.float32), *objectives)


#: ``in_axes`` of the targets in a batched step: everything shared but the per-run PRNG key.
RUN_TARGETS = Targets(content=None, style=None, blend=None, key=0, masks=None)

#: The key of step ``i`` of every run: ``fold_in(keys[k], i)``.
_step_keys = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


class IterateAverage:
    """Bias-corrected exponential moving average of N runs' images (:func:`optax.ema`), compiled
    once per shape: ``start(images)`` and ``update(images, state)`` both return
    ``(averaged images, state)``."""

    def __init__(self, decay: float):
        if not 0.0 <= float(decay) < 1.0:
            raise ConfigError(f"average_decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        tx = optax.ema(self.decay, debias=True)
        self.update = jax.jit(jax.vmap(lambda x, state: tx.update(x, state)))
        self.start = jax.jit(jax.vmap(lambda x: tx.update(x, tx.init(x))))


def resize_opt_state(state, shape: tuple[int, int], gradient_scale: float = 1.0):
    r"""An optax state of N runs resized to images of ``shape = (H, W)``: every leaf shaped like the
    ``(N, 1, H0, W0, C)`` images (Adam's first and second moments, momentum) is resized bilinearly
    (a convex combination, so second moments stay non-negative); counts and scalars are kept.

    ``gradient_scale`` is how much smaller a pixel's gradient is at the new shape: the moments are
    rescaled to it (first moments and momentum by it, Adam's second moment by its square), so that
    the carried state weighs against the new gradients as it did against the old ones.  For losses
    that are means over positions (the Gram matrix divided by :math:`HW`, the mean content error)
    a pixel's gradient scales as one over the number of pixels, so the multiscale driver passes
    ``old pixels / new pixels``.  Adam's normalized update :math:`m / \sqrt{v}` is unchanged by it.
    """
    def resize(leaf, scale=gradient_scale):
        if getattr(leaf, "ndim", 0) == 5:
            return scale * jax.image.resize(leaf, leaf.shape[:2] + tuple(shape) + leaf.shape[4:], "linear")
        return leaf

    def resize_state(node):
        if isinstance(node, optax.ScaleByAdamState):
            return node._replace(mu=resize(node.mu), nu=resize(node.nu, gradient_scale ** 2))
        return jax.tree.map(resize, node)

    return jax.tree.map(resize_state, state, is_leaf=lambda n: isinstance(n, optax.ScaleByAdamState))


@dataclass
class LoopResult:
    """What :func:`optimize` returns.

    ``images``: ``(N, H, W, 3)``, each run's final image (its last finite one if it diverged);
    ``histories``: per run, ``(loss, terms)`` of every image it reached, the initial one first;
    ``times``: per run, seconds from the loop's start until each of its history entries was
    known; ``non_finite``: per run, ``None`` or the step whose loss was not finite (its terms in
    ``non_finite_terms``); ``evaluations``: objective evaluations per run; ``elapsed``: seconds
    from the loop's start until the end of each step (optax) or pass (L-BFGS) of all runs;
    ``compile_time`` and ``wall`` in seconds.  With an averaged iterate, ``images`` are the
    averages, ``iterates`` the last iterates and ``average_losses`` per run ``(loss, terms)`` of the
    average; ``opt_state`` is the final optax state (``None`` for L-BFGS).
    """

    images: np.ndarray
    histories: list
    times: list
    non_finite: list
    non_finite_terms: list
    evaluations: np.ndarray
    compile_time: float
    wall: float
    elapsed: list
    iterates: Optional[np.ndarray] = None
    average_losses: Optional[list] = None
    opt_state: object = None


def compile_ahead(fn, *args):
    """``jax.jit(fn)`` compiled ahead of time for ``args``, with the compiler options this
    machine's tuning chose (:func:`neuralstyle.tuning.step_compiler_options`; none without a
    tuning); a type error becomes a ConfigError.  Afterwards the heap memory that compiling (and the
    programs before it, e.g. the targets') freed goes back to the operating system
    (:func:`~neuralstyle.optim.memory.release_freed_memory`)."""
    options = step_compiler_options()
    try:
        compiled = jax.jit(fn, **({"compiler_options": options} if options else {})).lower(*args).compile()
    except (TypeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0]
        raise ConfigError(
            f"could not compile the update step ({first_line}); check the optimizer and loss "
            "settings (e.g. a learning rate given as a string)"
        ) from None
    release_freed_memory()
    return compiled


def _format(loss: float, terms: dict) -> str:
    return f"loss={loss:.4g} " + " ".join(f"{k}={v:.3g}" for k, v in terms.items())


class Monitor:
    """The loop owner's side effects, the same for every N: progress bar, snapshots, callback,
    and the current images (for Ctrl-C).

    With ``stop_below``, the loop ends as soon as every run's loss is below it (time to a target
    loss).  Snapshots go to ``snapshot_dir/step_NNNNN.png`` (N = 1) or ``snapshot_dir/run_KK/...``
    (N > 1) every ``snapshot_every`` steps; a non-finite image is never saved.  ``callback`` is
    called as ``callback(step, image, loss)`` after every step with run 0's image ``(H, W, 3)``
    and loss when N = 1, and with all images ``(N, H, W, 3)`` and losses ``(N,)`` when N > 1.
    """

    def __init__(self, steps: int, runs: int = 1, show: bool = True, snapshot_dir=None,
                 snapshot_every: int = 0, callback: Optional[Callable] = None, desc: str = "stylize",
                 stop_below: Optional[float] = None):
        self.steps, self.runs, self.show, self.desc = steps, runs, show, desc
        self.stop_below = stop_below
        self.snapshots = Path(snapshot_dir) if snapshot_dir and snapshot_every else None
        self.every, self.callback = snapshot_every, callback
        self.bar = None
        self.step, self.images, self.losses = 0, None, None

    def start(self, images) -> None:
        """Called once the step is compiled: the bar starts here."""
        self.images = images
        self.bar = tqdm(total=self.steps, desc=self.desc if self.runs == 1 else f"{self.desc} x{self.runs}",
                        disable=not self.show, dynamic_ncols=True, unit="step")

    def losses_known(self, losses: np.ndarray, terms: dict) -> None:
        self.losses = losses = np.asarray(losses)
        if self.bar is not None and self.runs == 1:
            self.bar.set_postfix_str(_format(float(losses[0]), {k: float(v[0]) for k, v in terms.items()}),
                                     refresh=False)

    def advanced(self, step: int, images) -> None:
        """The runs' images after ``step`` steps (device arrays ``(N, 1, H, W, 3)``)."""
        self.step, self.images = step, images
        if self.bar is not None and step > self.bar.n:
            self.bar.update(step - self.bar.n)
        snapshot = self.snapshots is not None and step % self.every == 0
        if not snapshot and self.callback is None:
            return  # no copy of the images off the device
        pixels = np.asarray(images[:, 0])
        if snapshot:
            for k, image in enumerate(pixels):
                if np.all(np.isfinite(image)):
                    folder = self.snapshots if self.runs == 1 else self.snapshots / f"run_{k:02d}"
                    save_image(image, folder / f"step_{step:05d}.png")
        if self.callback is not None:
            losses = None if self.losses is None else np.asarray(self.losses, np.float64)
            if self.runs == 1:
                self.callback(step, pixels[0], None if losses is None else float(losses[0]))
            else:
                self.callback(step, pixels, losses)

    def reached(self) -> bool:
        """Every run's latest loss is below ``stop_below`` (never, without one): the loop stops."""
        return (self.stop_below is not None and self.losses is not None
                and bool(np.all(self.losses < self.stop_below)))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def optimize(objective: StyleObjective, optimizer, images, keys, params, targets: Targets,
             steps: int, monitor: Monitor, average_decay: Optional[float] = None,
             opt_state=None, evaluator: Optional[Callable] = None) -> LoopResult:
    """Minimize ``objective`` over N images together.

    Args:
      objective: a stacked objective (:func:`stack_runs`): its weight leaves have a leading run
        axis N.
      optimizer: an optax ``GradientTransformation`` or an :class:`~neuralstyle.optim.LBFGS`.
      images: ``(N, 1, H, W, 3)`` initial images in [0, 1].
      keys: ``(N,)`` PRNG keys, one per run.
      params, targets: the frozen backbone weights and the shared targets.
      steps: iterations per run (L-BFGS may stop a run early at a stationary point).
      monitor: the :class:`Monitor` (progress, snapshots, callback).
      average_decay: ``None``, or the decay of the averaged iterate that becomes the result.
      opt_state: optax only: the initial optimizer state of the N runs (default: ``init``).
      evaluator: ``None`` (the objective is evaluated inside the compiled step), or a function
        ``(objective, params, images, targets) -> ((losses (N,), terms), gradients)`` with the
        shapes of the batched step, called from Python every step; its attribute ``value``, if
        present, gives ``(losses, terms)`` alone (used for the final loss).

    Raises :class:`~neuralstyle.errors.Interrupted` on Ctrl-C, with the current ``(N, H, W, 3)``
    images and the number of completed steps.
    """
    if not isinstance(optimizer, (optax.GradientTransformation, LBFGS)):
        raise ConfigError(f"optimizer must be an optax GradientTransformation or neuralstyle.LBFGS, "
                          f"got {optimizer!r}")
    monitor.images = images
    average = None if average_decay is None else IterateAverage(average_decay)
    try:
        if isinstance(optimizer, LBFGS):
            return _lbfgs_loop(objective, optimizer, images, keys, params, targets, steps, monitor,
                               average, evaluator)
        return _optax_loop(objective, optimizer, images, keys, params, targets, steps, monitor,
                           average, opt_state, evaluator)
    except KeyboardInterrupt:
        raise Interrupted(monitor.step, np.asarray(monitor.images[:, 0])) from None
    finally:
        monitor.close()


class _Records:
    """Per-run histories and the non-finite bookkeeping shared by both loops."""

    def __init__(self, n: int, start: float):
        self.histories, self.times = [[] for _ in range(n)], [[] for _ in range(n)]
        self.non_finite, self.non_finite_terms = [None] * n, [None] * n
        self.elapsed, self.start = [], start

    def tick(self) -> None:
        """The end of a step (optax) or pass (L-BFGS) of all runs."""
        self.elapsed.append(time.perf_counter() - self.start)

    def add(self, step_of, losses, terms, which) -> np.ndarray:
        """Record run ``k``'s loss for every ``k`` in ``which``; return the runs that just became
        non-finite.  ``step_of[k]`` is the step whose image the loss belongs to."""
        losses = np.asarray(losses)
        terms = {t: np.asarray(v) for t, v in terms.items()}
        now = time.perf_counter() - self.start
        new_bad = np.zeros(len(self.histories), bool)
        for k in np.flatnonzero(which):
            row = (float(losses[k]), {t: float(v[k]) for t, v in terms.items()})
            if math.isfinite(row[0]):
                self.histories[k].append(row)
                self.times[k].append(now)
            elif self.non_finite[k] is None:
                self.non_finite[k], self.non_finite_terms[k] = int(step_of[k]), row[1]
                new_bad[k] = True
        return new_bad


def _evaluated_step(tx, evaluator):
    """The batched optax step with the value and gradient from ``evaluator``."""
    update = jax.jit(jax.vmap(make_update(tx)))

    def step(objective, images, opt_states, params, targets):
        (losses, terms), grads = evaluator(objective, params, images, targets)
        images, opt_states = update(grads, opt_states, images)
        return images, opt_states, losses, terms

    value = getattr(evaluator, "value", None)  # a cheaper loss-only evaluation, if it has one
    if value is None:
        def value(objective, params, images, targets):
            return evaluator(objective, params, images, targets)[0]
    return step, value


def _evaluated_trial(evaluator):
    """The batched L-BFGS line-search trial with the value and gradient from ``evaluator``."""

    @jax.jit
    @jax.vmap
    def move(image, grad, d, t):
        new_image = project(image - t * d)
        return new_image, jnp.vdot(grad, new_image - image)

    def trial(objective, image, grad, d, t, params, targets):
        new_image, slope = move(image, grad, d, t)
        (loss, terms), new_grad = evaluator(objective, params, new_image, targets)
        return Trial(new_image, loss, terms, new_grad, slope)

    return trial


def _optax_loop(objective, tx, images, keys, params, targets, steps, monitor, average=None,
                opt_states=None, evaluator=None):
    """Every run takes every step; a run whose loss becomes non-finite keeps its last finite image
    (the loop ends early once every run has)."""
    n = images.shape[0]
    t0 = time.perf_counter()
    if opt_states is None:
        opt_states = jax.vmap(tx.init)(images)
    targets = targets._replace(key=_step_keys(keys, 0))
    if evaluator is None:
        compiled = compile_ahead(jax.vmap(make_step(tx), in_axes=(0, 0, 0, None, RUN_TARGETS)),
                            objective, images, opt_states, params, targets)
        value = compile_ahead(jax.vmap(evaluate, in_axes=(0, None, 0, RUN_TARGETS)),
                         objective, params, images, targets)
    else:
        compiled, value = _evaluated_step(tx, evaluator)
    compile_time = time.perf_counter() - t0

    monitor.start(images)
    t0 = time.perf_counter()
    records = _Records(n, t0)
    final = np.array(images[:, 0])
    live = np.ones(n, bool)
    previous, done = images, 0
    if average is not None:  # what is shown and returned: the averaged iterate
        shown, avg_state = average.start(images)
        previous_shown = shown
    for i in range(1, steps + 1):
        targets = targets._replace(key=_step_keys(keys, i))
        new_images, opt_states, losses, terms = compiled(objective, images, opt_states, params, targets)
        bad = records.add([i - 1] * n, losses, terms, live)  # losses of the images after i-1 steps
        records.tick()
        monitor.losses_known(losses, terms)
        for k in np.flatnonzero(bad):
            last_finite = previous if average is None else previous_shown
            final[k] = np.asarray(last_finite[k, 0]) if i > 1 else final[k]
        live &= ~bad
        if not live.any() or monitor.reached():
            break
        previous, images, done = images, new_images, i
        if average is not None:
            previous_shown = shown
            shown, avg_state = average.update(images, avg_state)
        monitor.advanced(i, images if average is None else shown)
    else:
        losses, terms = value(objective, params, images, targets)
        bad = records.add([steps] * n, losses, terms, live)
        records.tick()
        monitor.losses_known(losses, terms)
        for k in np.flatnonzero(bad):
            final[k] = np.asarray((previous if average is None else previous_shown)[k, 0])
        live &= ~bad
    wall = time.perf_counter() - t0
    iterates = np.asarray(images[:, 0])
    last = iterates if average is None else np.asarray(shown[:, 0])
    final[live] = last[live]
    evaluations = np.full(n, done + 1)
    average_losses = None
    if average is not None:
        average_losses = _rows(*value(objective, params, shown, targets))
    return LoopResult(final, records.histories, records.times, records.non_finite,
                      records.non_finite_terms, evaluations, compile_time, wall, records.elapsed,
                      iterates, average_losses, opt_states)


def _rows(losses, terms) -> list:
    """Per run ``(loss, {term: value})`` from batched ``(N,)`` losses and terms."""
    losses = np.asarray(losses)
    terms = {t: np.asarray(v) for t, v in terms.items()}
    return [(float(losses[k]), {t: float(v[k]) for t, v in terms.items()}) for k in range(len(losses))]


def _select(mask, new, old):
    """Per run, ``new`` where ``mask`` (N,) else ``old``, for pytrees with a leading N axis.
    When every run (or none) is selected nothing is copied (N = 1 selects all or nothing every
    iteration)."""
    mask = np.asarray(mask)
    if mask.all():
        return new
    if not mask.any():
        return old
    mask = jnp.asarray(mask)
    return jax.tree.map(
        lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b), new, old)


def _lbfgs_loop(objective, opt, images, keys, params, targets, steps, monitor, average=None,
                evaluator=None):
    """L-BFGS for N runs in lockstep passes; each pass does for every active run what one
    iteration of a single run does (stochastic re-evaluation, direction, backtracking line search
    with its own step length, restart of a stale memory, stop).  A pass evaluates all N runs each
    line-search trial (the results of runs that already accepted a step are discarded), so a rare
    rejected step costs every run."""
    n = images.shape[0]
    direction, trial_fn = make_lbfgs_functions(opt)
    states = init_state(images)
    zeros = jnp.zeros_like(images)
    ts = jnp.zeros((n,), jnp.float32)
    t0 = time.perf_counter()
    if evaluator is None:
        batched_trial = compile_ahead(jax.vmap(trial_fn, in_axes=(0, 0, 0, 0, 0, None, RUN_TARGETS)),
                                 objective, images, zeros, zeros, ts, params, targets._replace(key=keys))
    else:
        batched_trial = _evaluated_trial(evaluator)
    # the curvature history starts empty and grows one pair per iteration, its oldest pair's
    # buffers reused once full: it costs what it must, as torch.optim.LBFGS's does
    warm_up(images)
    compile_time = time.perf_counter() - t0
    stochastic = objective.style_loss.stochastic

    def trial(image, grad, d, t, run_keys):
        """The vmapped line-search trial: run ``k`` with its weights, step length and key."""
        return batched_trial(objective, image, grad, d, t, params, targets._replace(key=run_keys))

    monitor.start(images)
    t0 = time.perf_counter()
    records = _Records(n, t0)
    evaluations = np.ones(n, int)
    done_steps = np.zeros(n, int)
    current = trial(images, zeros, zeros, ts, keys)
    bad = records.add(done_steps, current.loss, current.terms, np.ones(n, bool))
    records.tick()
    monitor.losses_known(np.asarray(current.loss), current.terms)
    if average is not None:
        shown, avg_state = average.start(current.image)
    active = ~bad & (steps > 0) & (not monitor.reached())
    while active.any():
        pass_keys = keys
        if stochastic and (done_steps > 0).any():  # fresh randomness per iteration
            pass_keys = jnp.stack([jax.random.fold_in(keys[k], int(done_steps[k]) + 1)
                                   if done_steps[k] > 0 else keys[k] for k in range(n)])
            fresh = trial(current.image, zeros, zeros, ts, pass_keys)
            redo = active & (done_steps > 0)
            current = _select(redo, fresh, current)
            evaluations += redo
        counts = np.asarray(states.count)  # read first: the call consumes the oldest pair of `states`
        d, states = direction(current.grad, states, current.image)
        step = np.ones(n, np.float32)
        searching, accepted = active.copy(), None
        current_loss = np.asarray(current.loss)
        for _ in range(opt.max_linesearch):
            last = trial(current.image, current.grad, d, jnp.asarray(step), pass_keys)
            evaluations += searching
            value, slope = np.asarray(last.loss), np.asarray(last.slope)
            ok = searching & np.isfinite(value) & (value <= current_loss + opt.c1 * slope)
            accepted = last if accepted is None else _select(ok, last, accepted)
            searching &= ~ok
            if not searching.any():
                break
            step = np.where(searching, step * opt.shrink, step).astype(np.float32)
        took = active & ~searching
        failed = active & searching
        restart = failed & (counts > 0)  # a stale curvature memory: steepest descent again
        stop = failed & ~restart  # no decrease along the gradient: a (projected) stationary point
        records.add(done_steps + 1, last.loss, last.terms, stop & ~np.isfinite(value))
        active &= ~stop
        if took.any():
            done_steps += took
            records.add(done_steps, accepted.loss, accepted.terms, took)
            current = _select(took, accepted, current)
            monitor.losses_known(np.asarray(current.loss), current.terms)
            if average is not None:
                shown, avg_state = _select(took, average.update(current.image, avg_state),
                                           (shown, avg_state))
            monitor.advanced(int(done_steps.min()), current.image if average is None else shown)
            if monitor.reached():
                active[:] = False
        if restart.any():
            states = restart_runs(states, restart)
        active &= done_steps < steps
        records.tick()
    wall = time.perf_counter() - t0
    iterates = np.array(current.image[:, 0])
    result, average_losses = iterates, None
    if average is not None:
        at_average = trial(shown, zeros, zeros, ts, keys)
        result, average_losses = np.array(shown[:, 0]), _rows(at_average.loss, at_average.terms)
    return LoopResult(result, records.histories, records.times,
                      records.non_finite, records.non_finite_terms, evaluations, compile_time, wall,
                      records.elapsed, iterates, average_losses, None)
