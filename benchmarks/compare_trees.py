"""Time per step of ``stylize`` in this checkout against another checkout of neuralstyle, in one run.

    python -m benchmarks.compare_trees --other /path/to/old/checkout [--size 256] [--rounds 3]

Each round runs a fresh process per tree, alternating (A, B, A, B, ...), so both see the same
machine; each process builds VGG19 (ImageNet weights), then runs the TensorFlow-tutorial objective
with Adam (14 steps) and ``lbfgs()`` (10 iterations) on astronaut / great_wave from the content
image.  Reported: median ms per step after 2 warm steps (from ``history_elapsed_s``), compile
seconds, final loss.  Used to check that a refactoring leaves the speed unchanged.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks import harness

CHILD = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
os.environ.setdefault("KERAS_BACKEND", "jax")
import numpy as np, optax
import neuralstyle
from neuralstyle import VGG, StyleObjective, load_content_and_style, stylize, lbfgs
assert neuralstyle.__file__.startswith(sys.argv[1]), neuralstyle.__file__
content, style = load_content_and_style("astronaut", "great_wave", int(sys.argv[2]), image_dir=sys.argv[3])
objective = StyleObjective.build(VGG("vgg19", weights=sys.argv[4]))
out = {}
for name, opt, steps in (("adam", optax.adam(0.02, b1=0.99, eps=0.1), 14), ("lbfgs", lbfgs(), 10)):
    m = stylize(objective, content, style, opt, steps=steps, progress=False).metrics
    per = np.diff(m["history_elapsed_s"])[2:]
    out[name] = {"ms": 1000 * float(np.median(per)), "compile_s": m["compile_time_s"],
                 "final": m["final"]["total"]}
print(json.dumps(out))
"""


def main(argv=None) -> int:
    p = harness.parser("benchmarks.compare_trees", __doc__.splitlines()[0], "compare_trees")
    p.add_argument("--other", required=True, help="another checkout of neuralstyle (the A side)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--weights", default="imagenet")
    args = p.parse_args(argv)
    trees = {"A (other)": str(Path(args.other).resolve()), "B (this)": str(harness.REPO)}
    runs = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, tree in trees.items():
            with harness.Load() as load:
                proc = subprocess.run([sys.executable, "-c", CHILD, tree, str(args.size), args.image_dir,
                                       args.weights], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed: {proc.stderr.strip().splitlines()[-1]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["foreign_cpu_load"] = load.foreign
            runs[name].append(result)
            harness.log(f"round {r + 1} {name}: " + ", ".join(
                f"{k} {v['ms']:.0f} ms/step" for k, v in result.items() if isinstance(v, dict)))
    report = harness.report("benchmarks.compare_trees", argv, trees=trees, size=args.size, runs=runs)
    lines = harness.markdown_header(f"stylize at {args.size} px: this tree (B) against another (A)", report)
    lines += [f"- A: `{trees['A (other)']}`; B: `{trees['B (this)']}`", "",
              "| optimizer | A median ms/step | B median ms/step | B / A | A final loss | B final loss |",
              "|---|---:|---:|---:|---:|---:|"]
    for opt in ("adam", "lbfgs"):
        a = statistics.median(x[opt]["ms"] for x in runs["A (other)"])
        b = statistics.median(x[opt]["ms"] for x in runs["B (this)"])
        lines.append(f"| {opt} | {a:.0f} | {b:.0f} | {b / a:.2f} | {runs['A (other)'][0][opt]['final']:.7g} "
                     f"| {runs['B (this)'][0][opt]['final']:.7g} |")
    lines += ["", "Per round (ms/step): " + "; ".join(
        f"{name}: " + ", ".join(f"{x['adam']['ms']:.0f}/{x['lbfgs']['ms']:.0f}" for x in xs)
        for name, xs in runs.items()) + " (Adam/L-BFGS)"]
    md = "\n".join(lines)
    print(md)
    harness.write_report(args.out, args.name, report, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
