"""What every benchmark shares: paths, common options, the machine and its load, timing, peak
memory, and the report (JSON and Markdown, written atomically).

A benchmark is a ``main(argv)`` that

1. parses its options with :func:`parser` (``--image-dir``, ``--out``, ``--name`` and its own);
2. starts a :func:`report` (date, command, machine, library versions, load at start);
3. measures with :func:`timed` / :class:`PeakMemory` / :class:`Load` (the other processes' share
   of the CPU during a phase, so a figure taken on a busy machine says so);
4. writes ``<out>/<name>.json`` and ``<out>/<name>.md`` with :func:`write_report`.

Speed is judged as a ratio measured in one run, against a reference run on the same machine (see
``../shared/DESIGN.md``): every report carries the CPU model and its SIMD flags, because AVX2-only
and AVX-512 machines differ.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
IMAGES = REPO.parent / "shared" / "assets" / "images"


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- options


def parser(prog: str, description: str, name: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has: ``--image-dir`` (default
    ``$NEURALSTYLE_IMAGE_DIR`` or ``../shared/assets/images``), ``--out`` (default
    ``benchmarks/results``) and ``--name`` (the report's file stem, default ``name``)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--image-dir", default=os.environ.get("NEURALSTYLE_IMAGE_DIR", str(IMAGES)),
                   help="folder of the example images (default: $NEURALSTYLE_IMAGE_DIR or "
                        "../shared/assets/images)")
    p.add_argument("--out", type=Path, default=RESULTS, help="output folder (default: benchmarks/results)")
    p.add_argument("--name", default=name, help=f"file stem of the report (default: {name})")
    return p


# --------------------------------------------------------------------------- machine and load


def machine_info() -> dict:
    """CPU model, SIMD flags (AVX2 / AVX-512 / AMX), cores, RAM, platform, load at start."""
    info = {"nproc": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        get = lambda key: (re.search(rf"^{key}\s*:\s*(.*)$", cpuinfo, re.M) or [None, "?"])[1]  # noqa: E731
        flags = get("flags").split()
        info["cpu_model"] = get("model name")
        info["cpu_family_model"] = f"family {get('cpu family')} model {get('model')}"
        info["simd"] = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                                if f in flags)
        info["hypervisor"] = "hypervisor" in flags
    except OSError:
        info["cpu_model"] = platform.processor() or "?"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        info["ram_gib"] = round(kb / 2**20, 1)
    except (OSError, AttributeError):
        pass
    try:
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    return info


def versions(packages: Sequence[str] = ("jax", "jaxlib", "keras", "optax", "numpy", "torch")) -> dict:
    from importlib import metadata

    out = {}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def cpu_snapshot():
    """(busy jiffies of the whole machine, own CPU seconds, wall time)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        busy = sum(vals[:8]) - vals[3] - vals[4]
    except OSError:
        busy = None
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return busy, ru.ru_utime + ru.ru_stime, time.perf_counter()


def foreign_load(a, b) -> Optional[float]:
    """Fraction of the machine's CPU time that *other* processes used between two snapshots."""
    if a[0] is None or b[0] is None:
        return None
    wall = b[2] - a[2]
    busy = (b[0] - a[0]) / os.sysconf("SC_CLK_TCK")
    foreign = busy - (b[1] - a[1])
    return round(max(0.0, foreign) / (wall * (os.cpu_count() or 1)), 3) if wall > 0 else None


class Load:
    """The other processes' share of the CPU during a phase: ``with Load() as load: ...;
    load.foreign`` (0: the machine was ours alone; 0.5 on 2 cores: one core was busy elsewhere)."""

    foreign: Optional[float] = None

    def __enter__(self):
        self.start = cpu_snapshot()
        return self

    def __exit__(self, *exc):
        self.foreign = foreign_load(self.start, cpu_snapshot())
        return False


def machine_busy(sample_s: float = 2.0) -> Optional[float]:
    """Fraction of the machine's CPU that other processes use, sampled over ``sample_s``."""
    a = cpu_snapshot()
    time.sleep(sample_s)
    return foreign_load(a, cpu_snapshot())


def wait_until_quiet(max_wait_s: float, threshold: float = 0.1) -> Optional[float]:
    """Wait (up to ``max_wait_s``) until other processes use less than ``threshold`` of the CPU."""
    deadline = time.perf_counter() + max_wait_s
    busy = machine_busy(1.0)
    announced = False
    while busy is not None and busy > threshold and time.perf_counter() < deadline:
        if not announced:
            log(f"  (machine busy: other processes use {100 * busy:.0f}% of the CPU; waiting up to "
                f"{max_wait_s:.0f} s)")
            announced = True
        busy = machine_busy(5.0)
    return busy


# --------------------------------------------------------------------------- timing and memory


def timed(fn: Callable, *args, **kwargs):
    """``(result, seconds)`` of ``fn(*args, **kwargs)`` with JAX's asynchronous dispatch waited
    for (``jax.block_until_ready`` on the result)."""
    import jax

    start = time.perf_counter()
    result = jax.block_until_ready(fn(*args, **kwargs))
    return result, time.perf_counter() - start


def stats(seconds: Sequence[float]) -> dict:
    """Milliseconds: every sample, median, mean, min and standard deviation."""
    ms = [1000.0 * s for s in seconds]
    return {
        "ms": [round(v, 2) for v in ms],
        "median_ms": round(statistics.median(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "min_ms": round(min(ms), 2),
        "stdev_ms": round(statistics.stdev(ms), 2) if len(ms) > 1 else 0.0,
    }


MEMORY_METHOD = ("peak resident set size (VmHWM in /proc/self/status) of the measuring process, "
                 "reset through /proc/self/clear_refs before each phase, so a phase's peak "
                 "starts from the memory the process already holds (Python, JAX/Keras or torch, "
                 "VGG19 weights, targets); 'above baseline' subtracts the RSS just before the phase")


def _read_status_kib(key: str) -> Optional[int]:
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_mib() -> Optional[float]:
    """This process's resident set size now, MiB (``None`` where ``/proc`` has no status)."""
    kib = _read_status_kib("VmRSS")
    return None if kib is None else kib / 1024


class PeakMemory:
    """Peak RSS of this process during a phase: ``with PeakMemory() as mem: ...; mem.result()``.

    On Linux the high-water mark is reset on entry (``/proc/self/clear_refs`` = 5), so the peak is
    that of the phase; elsewhere it is ``ru_maxrss``, the peak since the process started.
    """

    def __enter__(self):
        import gc

        gc.collect()
        self.baseline = _read_status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = _read_status_kib("VmHWM") is not None
        except OSError:
            self.reset = False
        return self

    def __exit__(self, *exc):
        hwm = _read_status_kib("VmHWM") if self.reset else None
        if hwm is None:
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        self.peak = hwm
        return False

    def result(self) -> dict:
        def mib(kib):
            return None if kib is None else round(kib / 1024, 1)

        return {"peak_rss_mib": mib(self.peak), "baseline_rss_mib": mib(self.baseline),
                "above_baseline_mib": mib(self.peak - self.baseline) if self.baseline else None,
                "method": "VmHWM (reset per phase)" if self.reset else "ru_maxrss (process peak)"}


# --------------------------------------------------------------------------- report


def tuning_state() -> str:
    """Which per-machine tuning (``python -m neuralstyle.tune``) the library's ``auto`` choices
    follow in this process: its choices, or that none is cached (the fixed rule)."""
    try:
        from neuralstyle.tune import describe
        from neuralstyle.tuning import load_tuning, tuning_file

        record = load_tuning()
        return f"{describe(record)} ({tuning_file()})" if record else "none (the fixed rule of neuralstyle/tuning.py)"
    except Exception as err:  # noqa: BLE001 - a report never fails for its header
        return f"unknown ({type(err).__name__}: {err})"


def report(prog: str, argv: Optional[Sequence[str]] = None, **fields) -> dict:
    """The head of a report: date (UTC), the command that reproduces it, machine, versions, the
    per-machine tuning in effect, and ``XLA_FLAGS`` when the environment sets it."""
    args = list(sys.argv[1:] if argv is None else argv)
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join([f"python -m {prog}", *args]),
            "machine": machine_info(), "versions": versions(), "tuning": tuning_state(),
            "xla_flags": os.environ.get("XLA_FLAGS") or None, **fields}


def markdown_header(title: str, rep: dict) -> list[str]:
    """The Markdown lines every report starts with: title, date, command, machine, versions."""
    m, v = rep.get("machine", {}), rep.get("versions", {})
    simd = m.get("simd") or "?"
    return [
        f"# {title}", "",
        f"- date: {rep.get('date', '?')}",
        f"- command: `{rep.get('command', '?')}`",
        f"- machine: {m.get('cpu_model', '?')} ({simd}), {m.get('nproc', '?')} cores, "
        f"{m.get('ram_gib', '?')} GiB; load average at start {' '.join(m.get('loadavg_at_start', []))}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        *([f"- per-machine tuning: {rep['tuning']}"] if rep.get("tuning") else []),
        *([f"- XLA_FLAGS (the whole run): `{rep['xla_flags']}`"] if rep.get("xla_flags") else []),
        "",
    ]


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence], align: Optional[str] = None) -> list[str]:
    """The lines of a Markdown table: ``columns`` as the header, then one line per row of cells
    (already formatted: every cell is passed through ``str``).  ``align``: one letter per column,
    ``l`` (text) or ``r`` (numbers); default: the first column left, the others right."""
    align = align or "l" + "r" * (len(columns) - 1)
    if len(align) != len(columns) or set(align) - {"l", "r"}:
        raise ValueError(f"align needs one of 'l'/'r' per column ({len(columns)}), got {align!r}")
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    for row in rows:
        cells = [str(c) for c in row]
        if len(cells) != len(columns):
            raise ValueError(f"a row has {len(cells)} cells for {len(columns)} columns: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def warnings_section(rep: dict) -> list[str]:
    """A ``## Warnings`` section listing ``rep["warnings"]``, or no lines when there are none."""
    if not rep.get("warnings"):
        return []
    return ["", "## Warnings", ""] + [f"- {w}" for w in rep["warnings"]]


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` through a temporary file and a rename: no half-written report."""
    from neuralstyle.images import atomic_write

    atomic_write(path, text.encode())
    return path


def write_report(out: Path, name: str, rep: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``<out>/<name>.json`` and ``<out>/<name>.md``; print and return their paths."""
    out = Path(out)
    paths = (atomic_write_text(out / f"{name}.json", json.dumps(rep, indent=1) + "\n"),
             atomic_write_text(out / f"{name}.md", markdown if markdown.endswith("\n") else markdown + "\n"))
    for p in paths:
        log(f"wrote {p}")
    return paths
