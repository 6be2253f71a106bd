"""Optimizers over the image pixels, and the one driver that runs them.

- :mod:`.steps`: the compiled optax update step (:func:`make_step`) and the shared pieces
  (:func:`evaluate`, :func:`value_and_grad`, :func:`project` onto the pixel box);
- :mod:`.lbfgs`: L-BFGS with a Python-driven Armijo line search and a curvature history that
  grows one pair per iteration (no preallocated memory);
- :mod:`.driver`: :func:`optimize`, the one loop for every optimizer over N >= 1 runs, and its
  loop owner (progress, snapshots, non-finite check, Ctrl-C);
- :mod:`.memory`: the memory a run needs, checked before it starts.
"""

from .driver import Monitor, optimize, stack_runs
from .lbfgs import LBFGS, make_lbfgs_functions
from .memory import check_memory, estimate_memory_bytes
from .steps import evaluate, make_step, project, value_and_grad

__all__ = [
    "Monitor", "optimize", "stack_runs", "LBFGS", "make_lbfgs_functions",
    "check_memory", "estimate_memory_bytes", "evaluate", "make_step", "project", "value_and_grad",
]
