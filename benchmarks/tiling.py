"""Exact tiled optimization for print sizes: time per step and peak memory, tiled against untiled.

    python -m benchmarks.tiling                          # 1024 px untiled vs tiled, then 4096 px tiled
    python -m benchmarks.tiling --runs 1024:null:3,1024:512:3    # size:tile:steps, one run each
    python -m benchmarks.tiling --runs 64:32:1 --weights null --out /tmp/t    # a smoke run

Each run is the command a user types, ``python -m neuralstyle.run +experiment=vgg19_wave size=S
tile.size=T steps=N`` (Adam; content ``coffee``, style ``great_wave`` at ``style_scale`` 0.5), in
its own process, so that its peak resident memory (``ru_maxrss`` of that child, from
``os.wait4``) is its own and a user can read off what a size needs before starting it.  Time per
step comes from the run's ``metrics.json``: untiled, the compiled step alone (compile apart); tiled,
the value-and-gradient passes are driven from Python and compile during the first step, so with
one step the figure includes compiling (a few tens of seconds; stated in the table).

Writes ``tiling.json`` and ``tiling.md`` into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness

DEFAULT_RUNS = "1024:null:3,1024:512:3,4096:512:1"


def parse_runs(text: str) -> list[dict]:
    runs = []
    for item in text.split(","):
        size, tile, steps = item.split(":")
        runs.append({"size": int(size), "tile": None if tile == "null" else int(tile), "steps": int(steps)})
    return runs


def run_one(args, spec: dict) -> dict:
    """One run of the command-line entry in a child process: its metrics and peak RSS."""
    with tempfile.TemporaryDirectory() as folder:
        cmd = [sys.executable, "-m", "neuralstyle.run", "+experiment=vgg19_wave",
               f"size={spec['size']}", f"steps={spec['steps']}", f"tile.size={spec['tile'] or 'null'}",
               f"backbone.weights={args.weights}", f"content={args.content}", f"style={args.style}",
               "style_scale=0.5", "snapshot_every=0", "progress=false", "compilation_cache=null",
               f"image_dir={args.image_dir}", f"hydra.run.dir={folder}"]
        harness.log(" ".join(cmd[2:]))
        t0 = time.perf_counter()
        log_path = Path(folder) / "output.log"  # a file, not a pipe: a chatty child never blocks
        with harness.Load() as load, open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=harness.REPO, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if status != 0:
            raise SystemExit(f"run {spec} failed:\n{log_path.read_text()[-3000:]}")
        metrics = json.loads((Path(folder) / "metrics.json").read_text())
    elapsed = metrics["history_elapsed_s"]
    tiled = "tile" in metrics
    if tiled:  # the first step compiles: steps after it, if any, are the step time
        per_step = ((elapsed[-2] - elapsed[0]) / (len(elapsed) - 2) if len(elapsed) > 2 else elapsed[0])
    else:
        per_step = metrics["time_per_step_s"]
    return {**spec, "image_size": metrics["image_size"], "tiled": tiled, "tile_info": metrics.get("tile"),
            "time_per_step_s": per_step, "step_includes_compile": tiled and len(elapsed) <= 2,
            "compile_s": metrics["compile_time_s"], "process_wall_s": wall,
            "peak_rss_mib": usage.ru_maxrss / 1024, "final_loss": metrics["final"]["total"],
            "other_load": _other_load(load.foreign, usage, wall)}


def _other_load(foreign, usage, wall):
    """The CPU share of processes other than this benchmark *and its child run* (``Load`` counts
    the child as another process)."""
    if foreign is None or wall <= 0:
        return None
    child = (usage.ru_utime + usage.ru_stime) / (wall * (os.cpu_count() or 1))
    return round(max(0.0, foreign - child), 3)


def markdown(rep: dict) -> str:
    lines = harness.markdown_header("Exact tiled optimization: time per step and peak memory", rep)
    lines += [
        "`python -m neuralstyle.run +experiment=vgg19_wave` (Adam, VGG19) on the content "
        f"`{rep['args']['content']}` and the style `{rep['args']['style']}` (style_scale 0.5), each "
        "run in its own process; peak memory is that process's peak resident set.",
        "",
    ]

    def cells(r):
        h, w = r["image_size"]
        info = r["tile_info"] or {}
        step = f"{r['time_per_step_s']:.1f}" + (" (incl. compile)" if r["step_includes_compile"] else "")
        window = "x".join(map(str, info["largest_window"])) if info else "whole image"
        load = "n/a" if r["other_load"] is None else f"{r['other_load']:.2f}"
        return [f"{h} x {w}", r["tile"] or "untiled", info.get("tiles", 1), window, step,
                f"{r['peak_rss_mib'] / 1024:.2f}", load]

    lines += harness.markdown_table(["size (H x W)", "tile", "windows", "largest window", "s/step",
                                     "peak RSS GiB", "other load"], map(cells, rep["rows"]), align="lrrlrrr")
    pairs = {}
    for r in rep["rows"]:
        pairs.setdefault(tuple(r["image_size"]), {})[bool(r["tiled"])] = r
    for shape, pair in pairs.items():
        if True in pair and False in pair:
            t, u = pair[True], pair[False]
            lines += ["", f"At {shape[0]} x {shape[1]}: tiled/untiled time per step "
                          f"{t['time_per_step_s'] / u['time_per_step_s']:.2f}x, peak memory "
                          f"{t['peak_rss_mib'] / u['peak_rss_mib']:.2f}x (same run, same machine)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = harness.parser("benchmarks.tiling", __doc__.splitlines()[0], "tiling")
    p.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated size:tile:steps (tile null: untiled)")
    p.add_argument("--content", default="coffee")
    p.add_argument("--style", default="great_wave")
    p.add_argument("--weights", default="imagenet", help="imagenet, or null for a smoke run")
    args = p.parse_args(argv)
    rep = harness.report("benchmarks.tiling", argv, args={**vars(args), "out": str(args.out),
                                                         "image_dir": str(args.image_dir)})
    rep["rows"] = []
    for spec in parse_runs(args.runs):
        rep["rows"].append(run_one(args, spec))
        row = rep["rows"][-1]
        harness.log(f"  {row['image_size']}: {row['time_per_step_s']:.1f} s/step, "
                    f"peak {row['peak_rss_mib'] / 1024:.2f} GiB")
        harness.write_report(Path(args.out), args.name, rep, markdown(rep))  # after each run


if __name__ == "__main__":
    main()
