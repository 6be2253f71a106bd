"""The subprocess protocol: every measurement runs in a fresh interpreter, so that XLA_FLAGS
(read once, at start-up), thread pools, memory high-water marks and the two frameworks never
share a process.

Parent: :func:`run_worker` starts ``python -m benchmarks.speed --worker KIND --spec JSON
--result FILE``, echoes the child's progress lines (``  [...]`` and ``WARNING``) and returns the
JSON the child wrote, or ``{"error": ..., "output_tail": ...}``.  With ``--wait-quiet`` and
``--retries`` (:data:`QUIET`) it waits for a quiet machine first and re-runs a measurement that
other processes disturbed, keeping the least disturbed attempt.

Child: :func:`serve` calls the ``worker(spec)`` function named in :data:`WORKERS`.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import REPO, log, wait_until_quiet

WORKERS = {"jax": "benchmarks.speed.jax_worker:worker", "torch": "benchmarks.speed.torch_worker:worker",
           "ttt_jax": "benchmarks.speed.ttt:jax_run", "ttt_torch": "benchmarks.speed.ttt:torch_run",
           "ttt_quality": "benchmarks.speed.ttt:quality_run", "gpu_e2e": "benchmarks.gpu:e2e_worker"}

QUIET = {"wait_s": 0.0, "retries": 0, "threshold": 0.15}


def serve(kind: str, spec_json: str, result_path: str) -> int:
    module, name = WORKERS[kind].split(":")
    result = getattr(importlib.import_module(module), name)(json.loads(spec_json))
    Path(result_path).write_text(json.dumps(result))
    return 0


def max_load(result: dict) -> float:
    """The largest share of the CPU other processes used during any timed loop of ``result``."""
    loads = [0.0]
    for r in list((result.get("sizes") or {}).values()) + [result]:
        for part in ("adam", "lbfgs"):
            if isinstance(r.get(part), dict) and r[part].get("foreign_cpu_load") is not None:
                loads.append(r[part]["foreign_cpu_load"])
    return max(loads)


def run_worker(kind: str, spec: dict, xla_flags: str | None, timeout: float = 1800) -> dict:
    """:func:`run_once`, waiting for a quiet machine first and re-running a measurement
    disturbed by other processes (:data:`QUIET`)."""
    best: dict = {}
    for attempt in range(QUIET["retries"] + 1):
        if QUIET["wait_s"] > 0:
            wait_until_quiet(QUIET["wait_s"])
        result = run_once(kind, spec, xla_flags, timeout)
        load = max_load(result)
        result["attempts"] = attempt + 1
        if "error" in result:
            return result
        if not best or load < max_load(best):  # keep the least disturbed attempt
            best = result
        if load <= QUIET["threshold"]:
            break
        if attempt < QUIET["retries"]:
            log(f"  (other processes used {100 * load:.0f}% of the CPU during the timing: re-running)")
    best["attempts"] = attempt + 1
    return best


def run_once(kind: str, spec: dict, xla_flags: str | None, timeout: float = 1800) -> dict:
    """Run worker ``kind`` on ``spec`` in a fresh interpreter with the given XLA_FLAGS (``None``:
    none at all)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("KERAS_BACKEND", "jax")
    if xla_flags is None:
        env.pop("XLA_FLAGS", None)
    else:
        env["XLA_FLAGS"] = xla_flags
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.speed", "--worker", kind,
               "--spec", json.dumps(spec), "--result", str(result_path)]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        wall = time.perf_counter() - t
        for line in proc.stdout.splitlines():
            if line.startswith(("  [", "WARNING")):
                log(line)
        if proc.returncode != 0 or not result_path.exists():
            tail = "\n".join(proc.stdout.strip().splitlines()[-8:])
            return {"error": f"worker exited with status {proc.returncode}", "output_tail": tail}
        result = json.loads(result_path.read_text())
        result["process_wall_s"] = round(wall, 1)
        return result
