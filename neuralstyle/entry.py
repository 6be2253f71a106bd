"""What every command-line entry shares: backend, logging, compilation cache, run directories,
errors and Ctrl-C.

Each entry (``run``, ``run_batched``, ``train``, ``apply``) is a ``@hydra.main`` function of a
few lines that hands its ``*_from_config`` function to :func:`run_entry`:

* **Errors.** A :class:`~neuralstyle.errors.NeuralStyleError` in a single run prints one
  ``neuralstyle: error: ...`` line and exits with status 2.  In a multirun (``-m``: basic,
  Optuna, Slurm or Ray) the failing job writes ``error.txt`` into its own directory, prints the
  same line and raises :class:`JobFailed`, which Hydra records as that job's failure: the other
  jobs still run, and the Optuna sweeper tells the study the trial failed.
* **Ctrl-C** prints one line and exits with status 130 (the loops save the current image first;
  see :class:`~neuralstyle.errors.Interrupted`).
* **Compilation cache.** JAX's persistent compilation cache is on by default in
  ``~/.cache/neuralstyle/jax`` (``$XDG_CACHE_HOME`` is honoured), so the second run of a recipe
  at a given size skips XLA compilation.  The config key ``compilation_cache`` (a folder, or
  ``null`` to turn it off) and the environment variable ``JAX_COMPILATION_CACHE_DIR`` (which wins)
  choose another place.
* **Run directories that cannot collide.** The resolver ``${run_id:}`` (the process id and a
  random suffix, fixed for the process) is part of every timestamped run and sweep directory, so
  two runs started in the same second get different directories.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("KERAS_BACKEND", "jax")

from omegaconf import OmegaConf  # noqa: E402

from .errors import Interrupted, NeuralStyleError, exit_with_message  # noqa: E402

#: A token unique to this process: ``<pid>-<4 hex digits>``.
RUN_ID = f"{os.getpid()}-{secrets.token_hex(2)}"
OmegaConf.register_new_resolver("run_id", lambda: RUN_ID, replace=True)


class JobFailed(Exception):
    """A job of a Hydra multirun failed with a :class:`NeuralStyleError` (recorded in its
    ``error.txt``).  Not a ``NeuralStyleError`` itself: Hydra must see it as the job's failure."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/neuralstyle/jax`` (``~/.cache/neuralstyle/jax`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "neuralstyle" / "jax"


#: Programs that compile in at least this many seconds go to the persistent compilation cache
#: (JAX's default: 1 s).  The feed-forward stylizers' apply programs compile in 0.42-0.48 s (own
#: size) and 0.7-0.85 s (128 px bucket) on the 2-core Xeon and load from the cache in about a
#: tenth of that; with 0.5 s, their own-size programs fell just under the bar and a second run
#: compiled them all again (``benchmarks/results/fast_folder_gather.md``, warm).  Programs under it (the
#: prepared kernels, the style heads: 0.03-0.06 s) compile about as fast as they would load.
CACHE_MIN_COMPILE_SECONDS = 0.2


def enable_compilation_cache(setting: Any = "default") -> Optional[Path]:
    """Turn on JAX's persistent compilation cache; return its folder (``None``: off).

    ``setting`` is a folder, ``"default"`` (:func:`default_cache_dir`) or ``None``/``False``
    (off).  ``JAX_COMPILATION_CACHE_DIR`` in the environment takes precedence: JAX reads it
    itself.  Programs that compile in under :data:`CACHE_MIN_COMPILE_SECONDS` are not cached, unless
    ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` in the environment says otherwise (JAX reads it).
    """
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    if setting in (None, False, "null", "none", "off"):
        return None
    folder = default_cache_dir() if setting in ("default", True) else Path(str(setting)).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        logging.getLogger(__name__).warning("compilation cache off: cannot create %s (%s)", folder, err)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if not os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
    return folder


#: XLA's memory-minimizing instruction order for CPU programs, which the optimization entries
#: (``run``, ``run_batched``) ask for at large sizes (:func:`choose_cpu_schedule`).  XLA's
#: default, the concurrency-optimized order, lets independent operations overlap at the price of
#: keeping more buffers alive: the buffers of a VGG19 value-and-gradient program (the L-BFGS
#: trial) at 1024 px are 2355 MiB under it and 1466 MiB under this order, and the peak RSS of
#: L-BFGS at 1024 px fell from 1.00x to 0.69x ``torch.optim.LBFGS``'s
#: (``benchmarks/results/lbfgs_memory_avx2_memory_scheduler.md``); the steps are slower with it at
#: 512 px (README, Speed).  It is a process-wide flag, read when JAX starts its CPU backend: a
#: per-program compiler option of the same name is accepted and ignored by jaxlib 0.10.
MEMORY_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
#: jaxlib releases ``[from, to)`` known to have that flag; an XLA that does not know a flag in
#: ``XLA_FLAGS`` aborts the process, so other releases are left alone.
MEMORY_SCHEDULER_JAXLIB = ((0, 10), (0, 12))


def jaxlib_knows_memory_scheduler() -> bool:
    """Whether the installed jaxlib is one of :data:`MEMORY_SCHEDULER_JAXLIB` (it has
    :data:`MEMORY_SCHEDULER_FLAG`)."""
    from importlib import metadata

    try:
        version = tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    low, high = MEMORY_SCHEDULER_JAXLIB
    return low <= version < high


def prefer_memory_minimizing_schedule() -> bool:
    """Add :data:`MEMORY_SCHEDULER_FLAG` to ``XLA_FLAGS`` for this process; ``True`` if it did.

    Nothing is changed when ``XLA_FLAGS`` already chooses a scheduler (the user's choice stands),
    when JAX's backends have started (too late: the flags are read once), or when the installed
    jaxlib is outside :data:`MEMORY_SCHEDULER_JAXLIB`."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" in flags or not jaxlib_knows_memory_scheduler():
        return False
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        started = getattr(xla_bridge, "backends_are_initialized", lambda: bool(getattr(xla_bridge, "_backends", {})))
        if started():
            return False
    os.environ["XLA_FLAGS"] = f"{flags} {MEMORY_SCHEDULER_FLAG}".strip()
    return True


#: ``cpu_schedule: auto`` picks the memory-minimizing order from this output size (long edge, px)
#: up: there the memory matters most (L-BFGS at 1024 px: 0.69x PyTorch's peak instead of 1.00x),
#: while at 512 px it made the steps 4-14% slower on a 2-core EPYC (README, Speed).
MEMORY_ORDER_FROM_PX = 1024
CPU_SCHEDULES = ("auto", "memory", "speed")


def choose_cpu_schedule(cfg) -> bool:
    """Apply the config key ``cpu_schedule`` (``auto``, ``memory`` or ``speed``, default
    ``auto``) before JAX starts: ``memory`` asks for the memory-minimizing order
    (:func:`prefer_memory_minimizing_schedule`), ``speed`` keeps XLA's default, ``auto`` is
    ``memory`` when ``cfg.size`` is at least :data:`MEMORY_ORDER_FROM_PX`.  Returns whether the flag
    was added.  A GPU or TPU is not affected (the flag is XLA's CPU compiler's)."""
    from .errors import ConfigError

    setting = str(cfg.get("cpu_schedule", "auto"))
    if setting not in CPU_SCHEDULES:
        raise ConfigError(f"cpu_schedule must be one of {list(CPU_SCHEDULES)}, got {setting!r}")
    if setting == "speed":
        return False
    if setting == "auto":
        try:
            size = int(cfg.get("size"))
        except (TypeError, ValueError):  # a bad size: the config check reports it next
            return False
        if size < MEMORY_ORDER_FROM_PX:
            return False
    return prefer_memory_minimizing_schedule()


def with_cpu_schedule(task: Callable[[Any, Path], Any]) -> Callable[[Any, Path], Any]:
    """``task`` preceded by :func:`choose_cpu_schedule` (inside :func:`run_entry`, so that a bad
    value is reported like any config error, and before the task starts JAX)."""

    def scheduled(cfg, output_dir: Path):
        choose_cpu_schedule(cfg)
        return task(cfg, output_dir)

    return scheduled


def quiet_logs() -> None:
    """JAX's "Unable to initialize backend 'tpu'" and orbax's per-checkpoint lines are noise."""
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not under Hydra
        return False


#: When this process started: folders older than that are never removed.
_STARTED = time.time()


def remove_hydra_leftovers(output_dir: Path) -> None:
    """After a single run that failed on bad input, remove what Hydra wrote for it, so that bad
    input leaves nothing behind.

    Only a run directory that holds nothing but Hydra's own files (``.hydra/config.yaml``,
    ``hydra.yaml``, ``overrides.yaml`` and the job's log) is cleared, and then removed with the
    empty folders above it that this process created (``outputs/DATE``, ``outputs``).  A directory
    with anything else in it (a training run's checkpoints, a user's files) is left untouched.
    """
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    subdir = str(hydra_cfg.output_subdir) if hydra_cfg.output_subdir else None
    ours = {Path(f"{hydra_cfg.job.name}.log")}
    if subdir:
        ours |= {Path(subdir) / n for n in ("config.yaml", "hydra.yaml", "overrides.yaml")}
    try:
        found = {p.relative_to(output_dir) for p in output_dir.rglob("*") if not p.is_dir()}
        if not found <= ours:
            return
        for relative in found:
            (output_dir / relative).unlink()
    except OSError:
        return
    if subdir:
        _remove_empty(output_dir / subdir)
    folder, stop = output_dir.resolve(), Path.cwd().resolve()
    while folder != stop and stop in folder.parents and _remove_empty(folder):
        folder = folder.parent  # outputs/DATE/TIME_ID, then outputs/DATE, then outputs


def _remove_empty(folder: Path) -> bool:
    """Remove ``folder`` if it is empty and was changed since this process started."""
    try:
        if folder.stat().st_mtime >= _STARTED - 1:
            folder.rmdir()
            return True
    except OSError:
        pass
    return False


def run_entry(task: Callable[[Any, Path], Any], cfg) -> Any:
    """Run ``task(cfg, output_dir)`` as a command-line job: the shared prologue and error policy
    described in the module docstring.  Returns what ``task`` returns."""
    from hydra.core.hydra_config import HydraConfig

    quiet_logs()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    enable_compilation_cache(cfg.get("compilation_cache", "default"))
    try:
        return task(cfg, output_dir)
    except KeyboardInterrupt as err:
        saved = f"; {err}" if isinstance(err, Interrupted) and str(err) else ""
        print(f"neuralstyle: interrupted{saved}", file=sys.stderr)
        sys.exit(130)
    except NeuralStyleError as err:
        if not is_multirun():
            remove_hydra_leftovers(output_dir)
            exit_with_message(err)
        message = f"{err}" + (f"; {err.__cause__}" if err.__cause__ is not None else "")
        (output_dir / "error.txt").write_text(message + "\n")
        job = HydraConfig.get().job
        print(f"neuralstyle: error: job {job.num} ({job.override_dirname or 'no overrides'}): "
              f"{message}", file=sys.stderr)
        raise JobFailed(f"job {job.num} failed: {message} (see {output_dir / 'error.txt'})") from None
