"""Compiling apply programs ahead of use, in a background thread (a speed device of this library,
not of the papers).

``jax.jit`` compiles one XLA program per input shape, on the first call with that shape: on a
folder of photos of several sizes each new size waits for its compile (about 0.5 s and 0.85
CPU-seconds per program for the fast transform net on a 2-core Xeon, about 1.1 CPU-seconds with
tracing and first runs, ``benchmarks/results/fast_folder.md``).  XLA compiles
without holding Python's GIL, so the programs for the sizes still to come can compile in another
thread while the current photo is stylized, decoded or written.

* :class:`Programs` wraps a jitted apply function: ``compile(*args)`` (``args`` may be
  ``jax.ShapeDtypeStruct``) traces, lowers and compiles the program for those argument shapes
  (``jitted.lower(*args).compile()``, through the persistent compilation cache when it is on) and
  keeps the executable; a later call with arguments of those shapes, dtypes and tree structure
  runs that executable, any other call goes to the jitted function.  Keeping the executable is
  what guarantees no second compile: JAX's own jit call after ``lower().compile()`` also found
  the program in its in-memory caches in jax 0.10 (no compile event), but through internal LRU
  caches that promise nothing (``tests/test_compile_ahead.py`` checks both).  Concurrent
  ``compile`` calls for the same shapes compile once (the others wait for it).
* :class:`CompileAhead` (a context manager, used by :func:`neuralstyle.fast.stylize_files`) runs
  ``precompile(shape)`` for each distinct planned shape in order of first use, in one worker
  thread; :meth:`CompileAhead.wait` blocks until a shape's program is ready and re-raises its
  compile error in the calling thread, with a note saying where it came from; :meth:`CompileAhead.ready`
  says whether a shape's program can run now (:func:`neuralstyle.fast.stylize_files` stylizes such a
  photo first while the next one's program compiles).  Leaving the
  context cancels the compiles not started and waits for the running one: no thread outlives it.

Where it does not help (every photo of one size, a warm cache, programs that compile in
milliseconds) it costs a thread and nothing else; the results are the same executables' results
as without it (the same XLA program for the same shapes).  Tracing happens in the worker thread:
thread-local settings of the calling thread (JAX configuration context managers, Keras scopes) do
not apply to programs compiled ahead; set them globally, or pass ``overlap=False``.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Hashable, Iterable, Optional

import jax
import numpy as np


def signature(args) -> tuple:
    """What a compiled program is specific to: the tree structure of ``args`` and each leaf's
    shape, dtype and weak type (arrays, NumPy arrays and ``jax.ShapeDtypeStruct`` alike)."""
    leaves, tree = jax.tree.flatten(args)
    return tree, tuple((tuple(np.shape(x)), np.dtype(x.dtype) if hasattr(x, "dtype") else np.result_type(x),
                        bool(getattr(x, "weak_type", False))) for x in leaves)


class Programs:
    """A jitted function whose programs can be compiled ahead of use (see the module docstring).

    ``Programs(jitted)(*args)`` is ``jitted(*args)``, through the executable compiled by
    ``compile(*specs)`` when ``args`` have the shapes of ``specs``.  Calls with traced arguments
    (inside another ``jax.jit``) always go to ``jitted``.  Other attributes are ``jitted``'s."""

    def __init__(self, jitted: Callable):
        self._jitted = jitted
        self._lock = threading.Lock()
        self._compiled: dict[Hashable, Future] = {}

    def compile(self, *args) -> None:
        """Compile (or find) the program for arguments shaped like ``args``; thread-safe."""
        key = signature(args)
        with self._lock:
            entry = self._compiled.get(key)
            owner = entry is None
            if owner:
                entry = self._compiled[key] = Future()
        if not owner:
            entry.result()  # compiled by another thread (or being compiled: wait for it)
            return
        try:
            entry.set_result(self._jitted.lower(*args).compile())
        except BaseException as err:
            with self._lock:
                del self._compiled[key]  # a later call compiles (and fails) as jit would
            entry.set_exception(err)
            raise

    def compiled(self) -> int:
        """How many programs were compiled ahead."""
        return sum(f.done() and f.exception() is None for f in list(self._compiled.values()))

    def __call__(self, *args):
        if self._compiled and not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args)):
            entry = self._compiled.get(signature(args))
            if entry is not None:
                try:
                    executable = entry.result()
                except Exception:  # noqa: BLE001 - its compile failed: the plain call says why
                    executable = None
                if executable is not None:
                    return executable(*args)
        return self._jitted(*args)

    def __getattr__(self, name):
        return getattr(self._jitted, name)


#: Threads compiling ahead: one.  XLA's CPU compiler is itself parallel (on the 2-core Xeon a
#: compile took 1.5-1.75 CPU-seconds per second, benchmarks/results/fast_folder.md), so a second
#: compile thread would find no idle core there; elsewhere it would only compile further ahead.
WORKERS = 1


class CompileAhead:
    """``with CompileAhead(precompile, shapes) as ahead: ... ahead.wait(shape) ...``: runs
    ``precompile(shape)`` for each distinct entry of ``shapes`` (``None`` entries skipped) in
    order, in one background thread.  ``precompile=None``: nothing runs and ``wait`` returns at
    once.  See the module docstring."""

    def __init__(self, precompile: Optional[Callable[[tuple], None]], shapes: Iterable[Optional[tuple]]):
        self._precompile = precompile
        self._shapes = list(dict.fromkeys(s for s in shapes if s is not None)) if precompile else []
        self._futures: dict[tuple, Future] = {}
        self._pool: Optional[ThreadPoolExecutor] = None

    def __enter__(self) -> "CompileAhead":
        if self._shapes:
            self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="neuralstyle-compile")
            try:
                for shape in self._shapes:
                    self._futures[shape] = self._pool.submit(self._precompile, shape)
            except BaseException:
                self.__exit__(None, None, None)
                raise
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # the running compile finishes
            self._pool = None

    def compiling(self, shape) -> bool:
        """Whether the program for ``shape`` is planned here and not compiled yet."""
        future = self._futures.get(tuple(shape)) if shape is not None else None
        return future is not None and not future.done()

    def ready(self, shape) -> bool:
        """Whether the program for ``shape`` was compiled ahead and is ready to run now (false for
        a shape not planned, one still compiling or waiting, and one whose compile failed)."""
        future = self._futures.get(tuple(shape)) if shape is not None else None
        return future is not None and future.done() and not future.cancelled() and future.exception() is None

    def wait(self, shape: tuple) -> None:
        """Block until the program for ``shape`` is compiled; re-raise its compile error here."""
        future = self._futures.get(tuple(shape))
        if future is None:
            return
        try:
            future.result()
        except Exception as err:
            err.add_note(f"(raised while compiling ahead, in a background thread, the program for "
                         f"{shape[0]}x{shape[1]} images; overlap=False compiles in turn)")
            raise
