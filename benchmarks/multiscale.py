"""Averaged iterate and warm-started multiscale against a direct run: time to a target loss and
the result's quality, with Adam and with L-BFGS.

    python -m benchmarks.multiscale                       # 256 px final size, scales from 128
    python -m benchmarks.multiscale --size 512 --steps 60 --scale-steps 60,40,30
    python -m benchmarks.multiscale --size 64 --steps 3 --scale-steps 2,2 --start-size 32 \\
        --weights null --out /tmp/ms                     # a smoke run with random weights

Every variant is a recipe composed from ``conf/`` (``+experiment=vgg19_wave`` plus overrides, see
:data:`VARIANTS`) and run through the command-line entry's own function
(:func:`neuralstyle.run.run_from_config`), so what is timed is what ``python -m neuralstyle.run``
runs, compile included (no persistent compilation cache).

* **Time to target**: the target of each optimizer is the loss its direct run reaches at its last
  step; a variant's time is the compile and step time of every scale until the final scale's
  iterate first reaches it (from ``metrics.json``'s per-step history, so the averaged image's loss,
  evaluated only at the end, does not enter it).
* **Quality**: the final result's LPIPS to the content photo (content distance) and the relative
  Gram and sliced-Wasserstein style distances to the painting, measured with torchvision's VGG16
  (:mod:`neuralstyle.metrics`), a network the optimization does not use; lower is better.

Writes ``multiscale.json`` and ``multiscale.md`` into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from benchmarks import harness

#: name -> (optimizer, overrides beyond the base recipe); "{scales}" become the multiscale keys.
VARIANTS = {
    "adam direct": ("adam", []),
    "adam direct + average": ("adam", ["average_decay=0.99"]),
    "adam multiscale (fresh state)": ("adam", ["{scales}", "pyramid.warm_start=false"]),
    "adam multiscale (warm start)": ("adam", ["{scales}", "pyramid.warm_start=true"]),
    "adam multiscale (warm start) + average": ("adam", ["{scales}", "pyramid.warm_start=true",
                                                        "average_decay=0.99"]),
    "lbfgs direct": ("lbfgs", ["optimizer=lbfgs"]),
    "lbfgs direct + average": ("lbfgs", ["optimizer=lbfgs", "average_decay=0.9"]),
    "lbfgs multiscale": ("lbfgs", ["optimizer=lbfgs", "{scales}"]),
}


def recipe(args, overrides):
    from neuralstyle.recipe import compose

    scales = [f"pyramid.start_size={args.start_size}", f"pyramid.factor={args.factor}",
              f"pyramid.steps=[{args.scale_steps}]"]
    expanded = [o for item in overrides for o in (scales if item == "{scales}" else [item])]
    return compose("run", ["+experiment=vgg19_wave", f"size={args.size}", f"steps={args.steps}",
                           f"backbone.weights={args.weights}", f"image_dir={args.image_dir}",
                           "content=astronaut", "style=great_wave", "progress=false",
                           "snapshot_every=0", *expanded])


def scale_records(metrics: dict) -> list:
    """Per scale: compile time, wall time, loss history and its times (one entry if direct)."""
    levels = metrics.get("levels") or [metrics]
    return [{"size": lv["image_size"], "steps": lv["steps"], "compile_s": lv["compile_time_s"],
             "wall_s": lv["wall_time_s"], "history": lv["history"], "elapsed": lv["history_elapsed_s"]}
            for lv in levels]


def time_to_target(scales: list, target: float):
    """Seconds (compile and steps of every scale) until the final scale's loss <= ``target``."""
    before = sum(s["compile_s"] + s["wall_s"] for s in scales[:-1])
    last = scales[-1]
    for loss, t in zip(last["history"], last["elapsed"]):
        if loss <= target:
            return before + last["compile_s"] + t
    return None


def quality(metrics_net, result_png: Path, content, style) -> dict:
    from neuralstyle import load_image

    return metrics_net.distances(load_image(result_png), metrics_net.features(content),
                                 metrics_net.style_statistics(style))


def run_variants(args) -> list:
    from neuralstyle.metrics import PerceptualMetrics
    from neuralstyle.run import run_from_config

    metrics_net = PerceptualMetrics() if args.weights != "null" else None
    rows = []
    for name, (optimizer, overrides) in VARIANTS.items():
        if args.only and not any(part in name for part in args.only.split(",")):
            continue
        cfg = recipe(args, overrides)
        harness.log(f"{name} ...")
        with tempfile.TemporaryDirectory() as folder, harness.Load() as load:
            run_from_config(cfg, folder)
            metrics = json.loads((Path(folder) / "metrics.json").read_text())
            row = {"variant": name, "optimizer": optimizer, "overrides": overrides,
                   "scales": scale_records(metrics), "final_loss": metrics["final"]["total"],
                   "final_iterate_loss": metrics.get("final_iterate", metrics["final"])["total"],
                   "total_s": sum(s["compile_s"] + s["wall_s"] for s in scale_records(metrics))}
            if metrics_net is not None:
                from neuralstyle import load_content_and_style

                content, style = load_content_and_style("astronaut", "great_wave", args.size,
                                                        image_dir=args.image_dir)
                row["quality"] = quality(metrics_net, Path(folder) / "result.png", content, style)
        row["other_load"] = load.foreign
        rows.append(row)
        harness.log(f"  final loss {row['final_loss']:.4g} in {row['total_s']:.1f} s")
    targets = {r["optimizer"]: r["scales"][-1]["history"][-1] for r in rows
               if r["variant"] in ("adam direct", "lbfgs direct")}
    for row in rows:
        target = targets.get(row["optimizer"])
        row["target"] = target
        row["time_to_target_s"] = None if target is None else time_to_target(row["scales"], target)
    return rows


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(rep: dict) -> str:
    lines = harness.markdown_header("Averaged iterate and warm-started multiscale vs a direct run", rep)
    a = rep["args"]
    lines += [
        f"Final size {a['size']} px (astronaut, Great Wave; `+experiment=vgg19_wave`), direct runs "
        f"{a['steps']} steps; multiscale from {a['start_size']} px by a factor {a['factor']:g}, steps "
        f"per scale {a['scale_steps']}.  Target: the loss of the same optimizer's direct run at its "
        "last step.  Time includes compiling every scale.  Quality: LPIPS to the content, relative "
        "Gram and SWD distances to the style (torchvision VGG16; lower is better).",
        "",
        "| variant | total s | time to target s | speed-up | final loss | last-iterate loss | LPIPS | Gram | SWD | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    direct = {r["optimizer"]: r["time_to_target_s"] for r in rep["rows"]
              if r["variant"] in ("adam direct", "lbfgs direct")}
    for r in rep["rows"]:
        t, ref = r["time_to_target_s"], direct.get(r["optimizer"])
        speedup = f"{ref / t:.2f}x" if t and ref else "n/a"
        q = r.get("quality", {})
        reached = "not reached" if t is None else f"{t:.1f}"
        lines.append(
            f"| {r['variant']} | {r['total_s']:.1f} | {reached} | {speedup} | {r['final_loss']:.4g} | "
            f"{r['final_iterate_loss']:.4g} | {_fmt(q.get('lpips'))} | {_fmt(q.get('gram'))} | "
            f"{_fmt(q.get('swd'))} | {_fmt(r['other_load'], 2)} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = harness.parser("benchmarks.multiscale", __doc__.splitlines()[0], "multiscale")
    p.add_argument("--size", type=int, default=256, help="final long edge in pixels")
    p.add_argument("--steps", type=int, default=80, help="steps of the direct runs")
    p.add_argument("--start-size", type=int, default=128)
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--scale-steps", default="60,40", help="steps per scale, smallest first")
    p.add_argument("--weights", default="imagenet", help="imagenet, or null for a smoke run")
    p.add_argument("--only", default=None, help="comma-separated parts of variant names to run")
    args = p.parse_args(argv)
    rep = harness.report("benchmarks.multiscale", argv,
                         args={**vars(args), "image_dir": str(args.image_dir), "out": str(args.out)})
    rep["rows"] = run_variants(args)
    harness.write_report(Path(args.out), args.name, rep, markdown(rep))


if __name__ == "__main__":
    main()
