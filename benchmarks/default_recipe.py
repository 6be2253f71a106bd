"""The default recipe against the TensorFlow tutorial's (``vgg19_wave``) at equal wall time.

    python -m benchmarks.default_recipe --size 256            # 3 photo/painting pairs
    python -m benchmarks.default_recipe --size 512 --name default_recipe_512
    python -m benchmarks.default_recipe --size 64 --steps 2 --tutorial-steps 4 --pairs 1 \\
        --weights null --metric-weights random --out /tmp/dr      # a smoke run

Each recipe is composed from ``conf/`` and run through the command-line entry's own function
(:func:`neuralstyle.run.run_from_config`) on every pair of the panel, so what is timed and graded
is what ``python -m neuralstyle.run`` produces:

* **default**: ``python -m neuralstyle.run`` with no ``+experiment`` (``--steps`` overrides its
  per-scale step count), and any ``--candidate NAME=OVERRIDES`` given (the recipes tried before
  one became the default);
* **tutorial (vgg19_wave)**: ``+experiment=vgg19_wave`` run for ``--tutorial-steps`` Adam steps with
  a snapshot every ``--snapshot-every`` steps.  Its *equal-time* point is the first snapshot whose
  time (compile plus steps) is at least the default run's time on the same pair, so the tutorial
  never gets less time than the default; its last step is reported too.

Time is the compile and step time of every scale (weights, targets and writing excluded, the same
for both).  Quality is graded as in :mod:`benchmarks.quality` (torchvision VGG16, a network the
optimization does not use): LPIPS to the photo (content distance) and the relative sliced
Wasserstein and Gram distances to the painting (style distances); lower is better.  A row
*dominates* the tutorial when its mean LPIPS and mean SWD are both lower.  The arbitrary-style
network (:mod:`neuralstyle.arbitrary`, one forward pass) is graded on the same pairs as a point of
reference.

Writes ``<name>.json``, ``<name>.md``, ``<name>_tradeoff.png`` and ``<name>_contact_sheet.png``
into ``--out`` (default ``benchmarks/results``, name ``default_recipe_<size>``).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.quality import PAINTINGS, PHOTOS, Variant, _grade, panel_order, summarize

TUTORIAL = "tutorial (vgg19_wave)"


def compose_run(overrides, pair, args):
    """A run config: ``overrides`` on ``python -m neuralstyle.run``'s primary config for ``pair``."""
    from neuralstyle.recipe import compose

    photo, painting = pair
    return compose("run", [*overrides, f"size={args.size}", f"backbone.weights={args.weights}",
                           f"image_dir={args.image_dir}", f"content={photo}", f"style={painting}",
                           "progress=false"])


def run_recipe(cfg) -> tuple[dict, Path, "tempfile.TemporaryDirectory"]:
    """Run ``cfg`` into a temporary folder; ``(metrics.json, folder, its handle)``."""
    from neuralstyle.run import run_from_config

    handle = tempfile.TemporaryDirectory()
    folder = Path(handle.name)
    run_from_config(cfg, folder)
    return json.loads((folder / "metrics.json").read_text()), folder, handle


def run_seconds(metrics: dict) -> float:
    """Compile and step time of every scale of a finished run."""
    levels = metrics.get("levels") or [metrics]
    return sum(lv["compile_time_s"] + lv["wall_time_s"] for lv in levels)


def equal_time_step(metrics: dict, snapshot_every: int, seconds: float):
    """``(step, its time)``: the first snapshot step of a one-scale run whose compile + step time is
    at least ``seconds`` (the last step if none is)."""
    compile_s, elapsed = metrics["compile_time_s"], metrics["history_elapsed_s"]
    last = len(elapsed) - 1
    for step in range(snapshot_every, last + 1, snapshot_every):
        if compile_s + elapsed[step] >= seconds:
            return step, compile_s + elapsed[step]
    return last, compile_s + elapsed[last]


def grade_row(grader, photo, painting, image, index, name, overrides, extra):
    variant = Variant(name, name, tuple(overrides))
    row = _grade(grader["metrics"], grader["content"], grader["style"], photo, painting, image,
                 config_id=index, variant=variant, cfg=None, extra=extra)
    row["name"] = name
    row["_image"] = image
    return row


def make_grader(args, pairs):
    from neuralstyle import load_content_and_style
    from neuralstyle.metrics import metrics_network

    metrics = metrics_network(args.metric_weights)  # "random": smoke runs only
    inputs, content, style = {}, {}, {}
    for photo, painting in pairs:
        c, s = load_content_and_style(photo, painting, size=args.size, image_dir=args.image_dir)
        inputs[photo, painting] = (c, s)
        content.setdefault(photo, metrics.features(c))
        style.setdefault(painting, metrics.style_statistics(s))
    return {"metrics": metrics, "content": content, "style": style, "inputs": inputs}


def arbitrary_rows(grader, index, args) -> list:
    """The arbitrary-style network on every pair: one forward pass each (ported Magenta weights)."""
    from neuralstyle.arbitrary import ArbitraryStylizer

    try:
        stylizer = ArbitraryStylizer()
    except Exception as err:  # noqa: BLE001 - the weights may be unreachable (offline): say so, go on
        harness.log(f"arbitrary network skipped: {err}")
        return []
    rows = []
    for (photo, painting), (content, style) in grader["inputs"].items():
        stylizer(content, style)  # compile for this shape
        start = time.perf_counter()
        image = stylizer(content, style)
        seconds = time.perf_counter() - start
        rows.append(grade_row(grader, photo, painting, image, index, "arbitrary network (Magenta)",
                              ["model=arbitrary"], {"seconds": round(seconds, 3)}))
    return rows


def run_benchmark(args) -> dict:
    from neuralstyle import load_image

    pairs = panel_order(args.photos.split(","), args.paintings.split(","))[: args.pairs]
    grader = make_grader(args, pairs)
    recipes = [("default", [f"steps={args.steps}"] if args.steps else [])]
    for spec in args.candidate:
        name, _, overrides = spec.partition("=")
        recipes.append((name, overrides.split()))
    rows = []
    for photo, painting in pairs:
        content, _ = grader["inputs"][photo, painting]
        rows.append(grade_row(grader, photo, painting, content, -1, "reference: content photo", [], {}))
        seconds = {}
        for index, (name, overrides) in enumerate(recipes):
            harness.log(f"{name}: {photo} x {painting} ...")
            with harness.Load() as load:
                metrics, folder, handle = run_recipe(compose_run(
                    [*overrides, "snapshot_every=0"], (photo, painting), args))
            seconds[name] = run_seconds(metrics)
            rows.append(grade_row(grader, photo, painting, load_image(folder / "result.png"), index,
                                  name, overrides, {"seconds": round(seconds[name], 2),
                                                    "loss": metrics["final"]["total"],
                                                    "other_load": load.foreign}))
            handle.cleanup()
            harness.log(f"  {seconds[name]:.1f} s, LPIPS {rows[-1]['lpips']:.3f} SWD {rows[-1]['swd']:.3f}")
        harness.log(f"{TUTORIAL}: {photo} x {painting} ...")
        tutorial = ["+experiment=vgg19_wave", f"steps={args.tutorial_steps}",
                    f"snapshot_every={args.snapshot_every}"]
        with harness.Load() as load:
            metrics, folder, handle = run_recipe(compose_run(tutorial, (photo, painting), args))
        step, at = equal_time_step(metrics, args.snapshot_every, seconds["default"])
        image = load_image(folder / "snapshots" / f"step_{step:05d}.png")
        base = len(recipes)
        rows.append(grade_row(grader, photo, painting, image, base, f"{TUTORIAL}, equal time",
                              [*tutorial[:1], f"steps={step}"],
                              {"seconds": round(at, 2), "steps": step,
                               "loss": metrics["history"][step], "other_load": load.foreign}))
        rows.append(grade_row(grader, photo, painting, load_image(folder / "result.png"), base + 1,
                              f"{TUTORIAL}, all {args.tutorial_steps} steps", tutorial[:2],
                              {"seconds": round(run_seconds(metrics), 2),
                               "loss": metrics["final"]["total"], "other_load": load.foreign}))
        handle.cleanup()
        harness.log(f"  equal time: step {step} at {at:.1f} s, LPIPS {rows[-2]['lpips']:.3f} "
                    f"SWD {rows[-2]['swd']:.3f}; all steps: LPIPS {rows[-1]['lpips']:.3f} "
                    f"SWD {rows[-1]['swd']:.3f}")
    if not args.no_arbitrary:
        rows += arbitrary_rows(grader, len(recipes) + 2, args)
    return {"rows": rows, "inputs": grader["inputs"], "recipes": recipes,
            "metric_weights": grader["metrics"].weights_source}


def dominance(summary: list) -> dict:
    """For each row: does it beat the tutorial's equal-time point on both mean LPIPS and mean SWD?"""
    tutorial = next(e for e in summary if e["name"].endswith("equal time"))
    return {e["name"]: (e["lpips"] < tutorial["lpips"] and e["swd"] < tutorial["swd"])
            for e in summary if e["config"] >= 0 and e is not tutorial}


def per_pair_wins(rows: list, name: str) -> str:
    """``k/n``: on how many pairs ``name`` beats the tutorial's equal-time point on LPIPS and SWD."""
    tutorial = {(r["photo"], r["painting"]): r for r in rows if r["name"].endswith("equal time")}
    mine = [r for r in rows if r["name"] == name]
    wins = sum(1 for r in mine if r["lpips"] < tutorial[r["photo"], r["painting"]]["lpips"]
               and r["swd"] < tutorial[r["photo"], r["painting"]]["swd"])
    return f"{wins}/{len(mine)}"


def _summary_with_seconds(rows):
    import numpy as np

    summary = summarize(rows)
    for e in summary:
        times = [r["seconds"] for r in rows if r["config"] == e["config"] and "seconds" in r]
        e["seconds"] = float(np.mean(times)) if times else None
        loads = [r["other_load"] for r in rows if r["config"] == e["config"] and r.get("other_load") is not None]
        e["other_load"] = float(np.max(loads)) if loads else None
    return summary


def markdown(rep: dict) -> str:
    a = rep["args"]
    lines = harness.markdown_header(f"Default recipe vs the tutorial's at equal wall time, {a['size']} px", rep)
    pairs = ", ".join(f"{p} x {s}" for p, s in rep["pairs"])
    lines += [
        f"Panel: {pairs}.  `default` is `python -m neuralstyle.run` with no `+experiment` "
        f"(size {a['size']}{', steps ' + str(a['steps']) if a['steps'] else ''}); the tutorial "
        f"recipe (`+experiment=vgg19_wave`, Adam) ran {a['tutorial_steps']} steps with a snapshot "
        f"every {a['snapshot_every']}, and its equal-time point is the first snapshot at least as "
        "late as the default run on the same pair.  Seconds: compile and steps of every scale.  "
        "Metrics: torchvision VGG16 (" + rep["metric_weights"] + "); lower is better.  "
        "**D**: beats the tutorial's equal-time point on mean LPIPS and mean SWD; `pairs` says on "
        "how many pairs it beats it on both.",
        "",
        "| | recipe | overrides | s/run | LPIPS ↓ | SWD ↓ | Gram ↓ | pairs | max other load |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in rep["summary"]:
        mark = "**D**" if rep["dominates"].get(e["name"]) else ""
        wins = per_pair_wins(rep["rows"], e["name"]) if e["config"] >= 0 and e["name"] in rep["dominates"] else ""
        seconds = "–" if e.get("seconds") is None else f"{e['seconds']:.{3 if e['seconds'] < 1 else 1}f}"
        load = "–" if e.get("other_load") is None else f"{e['other_load']:.2f}"
        lines.append(
            f"| {mark} | {e['name']} | {('`' + e['overrides'] + '`') if e['overrides'] else ''} | {seconds} "
            f"| {e['lpips']:.3f} ± {e['lpips_sd']:.3f} | {e['swd']:.3f} ± {e['swd_sd']:.3f} "
            f"| {e['gram']:.3f} ± {e['gram_sd']:.3f} | {wins} | {load} |")
    lines += ["", f"Files: {rep['name']}.json, {rep['name']}_tradeoff.png, {rep['name']}_contact_sheet.png.", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = harness.parser("benchmarks.default_recipe", __doc__.splitlines()[0], "default_recipe_{size}")
    p.add_argument("--size", type=int, default=256, help="long edge of the result in pixels")
    p.add_argument("--steps", type=int, default=0, help="the default recipe's steps (0: its own)")
    p.add_argument("--tutorial-steps", type=int, default=300, help="Adam steps of the tutorial recipe")
    p.add_argument("--snapshot-every", type=int, default=10)
    p.add_argument("--candidate", action="append", default=[],
                   help="NAME=OVERRIDES (space-separated Hydra overrides), a recipe to compare too")
    p.add_argument("--pairs", type=int, default=3, help="photo/painting pairs (Latin square first)")
    p.add_argument("--photos", default=",".join(PHOTOS))
    p.add_argument("--paintings", default=",".join(PAINTINGS))
    p.add_argument("--weights", default="imagenet", help="optimization backbone weights (null: random)")
    p.add_argument("--metric-weights", choices=("torchvision", "random"), default="torchvision")
    p.add_argument("--no-arbitrary", action="store_true", help="skip the arbitrary-style network")
    p.add_argument("--thumb", type=int, default=128, help="contact-sheet thumbnail size in pixels")
    args = p.parse_args(argv)
    args.name = args.name.format(size=args.size)
    from benchmarks.quality_figures import contact_sheet, tradeoff_plot

    rep = harness.report("benchmarks.default_recipe", argv,
                         args={**vars(args), "image_dir": str(args.image_dir), "out": str(args.out)})
    result = run_benchmark(args)
    summary = _summary_with_seconds(result["rows"])
    rep.update(name=args.name, pairs=[list(k) for k in result["inputs"]], summary=summary,
               dominates=dominance(summary), metric_weights=result["metric_weights"],
               rows=[{k: v for k, v in r.items() if not k.startswith("_")} for r in result["rows"]])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{args.size} px, means over {len(result['inputs'])} pairs, equal wall time"
    tradeoff_plot(summary, out / f"{args.name}_tradeoff.png", title=title)
    contact_sheet(result, summary, out / f"{args.name}_contact_sheet.png", thumb=args.thumb)
    harness.write_report(out, args.name, rep, markdown(rep))
    return rep


if __name__ == "__main__":
    main()
