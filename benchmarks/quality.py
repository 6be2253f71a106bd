"""Quality benchmark: which layers and weights give the best content/style trade-off?

    python -m benchmarks.quality [--grid ofat|tiny] [--size 256] [--steps 12] [--out DIR] ...

Every configuration is a real Hydra config, composed from ``conf/`` with the same overrides one
would pass to ``python -m neuralstyle.run`` (the table lists them), and is run with
:func:`neuralstyle.stylize` on a fixed panel of content/style pairs (default: 3 photos x 3
paintings from ``../shared/assets/images``).  The results are graded with a network the
optimization does not use (:mod:`neuralstyle.metrics`: torchvision VGG16): content distance =
LPIPS to the photo, style distance = relative sliced Wasserstein (and Gram) distance to the
painting.

Grids (``--grid``):

* ``ofat`` (default): one factor at a time around a base recipe (the defaults of
  ``conf/run/optimization.yaml`` with ``optimizer=lbfgs``): content layer, style layer set, per-layer
  weights, style/content weight ratio (5 values over 4 decades), Gram normalization, optimizer.
  Variants that change the style term's structure (layer set, layer weights, normalization) are
  *calibrated*: their ``style_weight`` is rescaled per pair so that the weighted style term of the
  starting image equals the base recipe's (matched emphasis), otherwise e.g. the ``chw``
  normalization at the base weight would simply switch the style off.  The table gives both the
  nominal and the used weights.
* ``tiny``: a 2x2 factorial (style weight x style layer set) for the smoke test.

Compiled steps are reused: the numeric settings (per-layer weights, content/style/TV weights)
are the leaves of the objective (a pytree, passed to the compiled step as an argument), and the
configurations with the same loss functions share one objective over the union of their layers
(:func:`objective_for`: a layer a configuration does not use has weight 0), so every configuration
with the same loss functions, optimizer and image shape runs the same XLA program, and JAX's
persistent compilation cache (``--jax-cache``) returns it instead of compiling again.

Writes into ``--out``: ``quality.csv`` (one row per run), ``quality.json``, ``quality.md``
(date, machine, command, design, table per configuration with the Pareto front marked),
``quality_tradeoff.png`` (content vs style distance, one point per configuration) and
``quality_contact_sheet.png`` (the results, labelled).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import IMAGES, REPO
from neuralstyle.entry import default_cache_dir

PHOTOS = ("astronaut", "chelsea", "coffee")
PAINTINGS = ("great_wave", "starry_night", "the_scream")

#: Settings every run shares: the base recipe is conf/run/optimization.yaml with L-BFGS (few iterations
#: make a strong optimizer matter), no snapshots, no progress bar.
BASE = ("optimizer=lbfgs", "snapshot_every=0", "progress=false")

CONV1_5 = "[conv1_1,conv2_1,conv3_1,conv4_1,conv5_1]"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One configuration of the grid: Hydra overrides on top of :data:`BASE`."""

    factor: str
    level: str
    overrides: tuple[str, ...] = ()
    calibrate: bool = False  # rescale style_weight to the base recipe's initial style term

    @property
    def name(self) -> str:
        return "base" if self.factor == "base" else f"{self.factor}={self.level}"


def ofat_grid() -> list[Variant]:
    """One factor at a time around the base recipe (its level is marked * in the docs)."""
    return [
        Variant("base", "conv5_2; conv1-5 mean; sw 1e-2; gram hw; lbfgs"),
        Variant("content_layer", "conv4_2", ("content_layers=[conv4_2]",)),
        Variant("style_layers", "conv1", ("style_layers=[conv1_1]",), calibrate=True),
        Variant("style_layers", "conv1-3", ("style_layers=[conv1_1,conv2_1,conv3_1]",), calibrate=True),
        Variant("layer_weights", "shallow", ("style_layer_weights=[16,8,4,2,1]",), calibrate=True),
        Variant("layer_weights", "deep", ("style_layer_weights=[1,2,4,8,16]",), calibrate=True),
        *(Variant("style_weight", w, (f"style_weight={w}",)) for w in ("1e-4", "1e-3", "1e-1", "1")),
        Variant("gram_norm", "chw", ("style_loss.normalization=chw",), calibrate=True),
        Variant("optimizer", "adam", ("optimizer=adam",)),
    ]


def tiny_grid() -> list[Variant]:
    """2 x 2 factorial: style weight x style layer set (for the smoke test)."""
    return [
        Variant("tiny", f"sw {w}, {label}", (f"style_weight={w}", f"style_layers={layers}"))
        for w in ("1e-3", "1e-1")
        for label, layers in (("conv1", "[conv1_1]"), ("conv1-2", "[conv1_1,conv2_1]"))
    ]


GRIDS = {"ofat": ofat_grid, "tiny": tiny_grid}


# --------------------------------------------------------------------------- compiled-step reuse


def union_layers(configs, key: str, arch: str) -> list[str]:
    """The Keras names of the layers any of ``configs`` lists under ``key``, each once."""
    from neuralstyle.backbones.layer_names import canonical_layer_name

    return list(dict.fromkeys(canonical_layer_name(n, arch) for c in configs for n in c[key]))


def objective_for(cfg, base):
    """``base`` (a StyleObjective over a union of layers) with ``cfg``'s weights: the layers
    ``cfg`` lists get its per-layer weights, the others 0, so the value and gradient equal those of
    ``cfg``'s own objective while the tree structure (and so the compiled program) is ``base``'s."""
    from omegaconf import OmegaConf

    from neuralstyle.backbones.layer_names import canonical_layer_name, layer_weights

    arch = base.extractor.arch
    for union in (base.content_layers, base.style_layers):
        if len(set(union)) != len(union):
            raise ValueError(f"the union of layers lists a layer twice: {union}")

    def spread(names, spec, union, what):
        names = [canonical_layer_name(n, arch) for n in names]
        spec = OmegaConf.to_container(spec) if not isinstance(spec, str) else spec
        weights = dict(zip(names, layer_weights(spec, names, what)))
        return tuple(float(weights.get(n, 0.0)) for n in union)

    return dataclasses.replace(
        base,
        content_layer_weights=spread(cfg.content_layers, cfg.content_layer_weights,
                                     base.content_layers, "content layer"),
        style_layer_weights=spread(cfg.style_layers, cfg.style_layer_weights, base.style_layers,
                                   "style layer"),
        content_weight=float(cfg.content_weight), style_weight=float(cfg.style_weight),
        tv_weight=float(cfg.tv_weight),
    )


def panel_order(photos, paintings) -> list[tuple[str, str]]:
    """All photo/painting pairs, Latin squares first: the first ``min(n, m)`` pairs use every
    photo and every painting once, so a run stopped early by its time budget is still balanced."""
    pairs = [(p, s) for p in photos for s in paintings]
    return sorted(pairs, key=lambda ps: ((photos.index(ps[0]) - paintings.index(ps[1])) % len(paintings),
                                         photos.index(ps[0])))


def structure_key(cfg) -> str:
    """Configurations with the same key share an objective's structure (and compiled programs)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml({k: cfg[k] for k in ("backbone", "content_loss", "style_loss", "tv_loss")})


# --------------------------------------------------------------------------- the benchmark


def compose_all(variants, extra_overrides) -> list:
    from neuralstyle.recipe import compose

    return [compose("run", [*BASE, *extra_overrides, *v.overrides]) for v in variants]


def machine() -> str:
    """One line: cores, CPU model and SIMD flags, RAM, from :func:`benchmarks.harness.machine_info`."""
    m = harness.machine_info()
    return (f"{m.get('nproc')} vCPU {m.get('cpu_model', '?')} ({m.get('simd') or '?'}), "
            f"{m.get('ram_gib', '?')} GiB, {m.get('platform', '?')}")


def run_grid(args, on_pair_done=None) -> dict:
    import jax
    from hydra.utils import instantiate

    from neuralstyle import StyleObjective, load_content_and_style, stylize
    from neuralstyle.metrics import metrics_network

    if args.jax_cache:
        jax.config.update("jax_compilation_cache_dir", args.jax_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

    variants = GRIDS[args.grid]()
    if args.variants:
        variants = [variants[int(i)] for i in args.variants.split(",")]
    extra = [f"size={args.size}", f"steps={args.steps}", f"backbone.weights={args.weights}"]
    configs = compose_all(variants, extra)
    photos, paintings = args.photos.split(","), args.paintings.split(",")

    metrics = metrics_network(args.metric_weights)  # "random": tests only

    # one objective per loss structure, over the union of the layers its configs use
    backbones, objectives = {}, {}
    for cfg in configs:
        key = structure_key(cfg)
        if key in objectives:
            continue
        same = [c for c in configs if structure_key(c) == key]
        bkey = str(cfg.backbone)
        if bkey not in backbones:
            backbones[bkey] = instantiate(cfg.backbone)
        base = StyleObjective.build(
            backbones[bkey], content_layers=union_layers(same, "content_layers", cfg.backbone.arch),
            style_layers=union_layers(same, "style_layers", cfg.backbone.arch),
            content_loss=instantiate(cfg.content_loss), style_loss=instantiate(cfg.style_loss),
            tv_loss=instantiate(cfg.tv_loss),
        )
        objectives[key] = base
    initial_style = {key: _initial_style_fn(base) for key, base in objectives.items()}

    image_dir = args.image_dir
    inputs, content_features, style_statistics = {}, {}, {}
    for photo, painting in panel_order(photos, paintings):
        content, style = load_content_and_style(photo, painting, size=args.size, image_dir=image_dir)
        inputs[photo, painting] = (content, style)
        if photo not in content_features:
            content_features[photo] = metrics.features(content)
        if painting not in style_statistics:
            style_statistics[painting] = metrics.style_statistics(style)

    rows = []
    # reference points: the photo itself (no stylization)
    for (photo, painting), (content, style) in inputs.items():
        rows.append(_grade(metrics, content_features, style_statistics, photo, painting, content,
                           config_id=-1, variant=Variant("reference", "content photo"), cfg=None,
                           extra={}))

    reference_style_term = {}  # (photo, painting) -> base recipe's weighted initial style term
    configured = [objective_for(cfg, objectives[structure_key(cfg)]) for cfg in configs]
    optimizers = [instantiate(cfg.optimizer) for cfg in configs]
    state = {"rows": rows, "variants": variants, "configs": configs, "inputs": {}, "pairs_done": 0,
             "pairs_planned": len(inputs), "metric_weights": metrics.weights_source,
             "backbone_weights": next(iter(objectives.values())).extractor.weights_source}
    started = time.perf_counter()
    # pair-major: after each pair the grid is complete on the pairs done so far
    for (photo, painting), (content, style) in inputs.items():
        if args.time_budget and time.perf_counter() - started > args.time_budget:
            print(f"time budget of {args.time_budget} s used up: stopping before {photo}/{painting}")
            break
        for index, (variant, cfg) in enumerate(zip(variants, configs)):
            key = structure_key(cfg)
            used = configured[index]
            if index == 0:
                reference_style_term[photo, painting] = float(used.style_weight) * initial_style[key](
                    used, content, style)
            elif variant.calibrate:
                term = initial_style[key](used, content, style)
                used = used.with_weights(style_weight=reference_style_term[photo, painting] / term)
            result = stylize(used, content, style,
                             optimizer=optimizers[index], steps=int(cfg.steps),
                             init=str(cfg.init.kind), seed=int(cfg.seed), progress=False)
            m = result.metrics
            row = _grade(metrics, content_features, style_statistics, photo, painting, result.image,
                         config_id=index, variant=variant, cfg=cfg, extra={
                             "style_weight_used": float(used.style_weight),
                             "loss": m["final"]["total"], "loss_initial": m["initial"]["total"],
                             "steps": m["steps"], "evaluations": m["function_evaluations"],
                             "wall_s": round(m["wall_time_s"], 3),
                             "compile_s": round(m["compile_time_s"], 3)})
            row["_image"] = result.image
            rows.append(row)
            print(f"[{time.perf_counter() - started:7.1f}s] {variant.name:32s} {photo}/{painting}: "
                  f"LPIPS {row['lpips']:.3f} SWD {row['swd']:.3f} Gram {row['gram']:.3f} "
                  f"({m['wall_time_s']:.1f}+{m['compile_time_s']:.1f}s)", flush=True)
        state["inputs"][photo, painting] = (content, style)
        state["pairs_done"] += 1
        state["seconds"] = time.perf_counter() - started
        if on_pair_done is not None:
            on_pair_done(state)
    # the unstylized photo of the pairs done, as a reference point
    state["rows"] = [r for r in rows if (r["photo"], r["painting"]) in state["inputs"]]
    state["seconds"] = time.perf_counter() - started
    return state


def _initial_style_fn(base):
    """``f(objective, content, style)``: the unweighted style term of the starting image (the
    content photo) under ``objective`` (``base`` with a configuration's weights), for calibrating
    ``style_weight``; compiled once per image shape for all weights."""
    import jax
    import jax.numpy as jnp

    targets = jax.jit(base.targets)
    terms = jax.jit(lambda objective, p, x, t: objective.terms(p, x, t)["style"])

    def initial_style(objective, content, style) -> float:
        params = base.params
        x = jnp.asarray(content)[None]
        t = targets(params, x, jnp.asarray(style)[None])
        return float(terms(objective.with_weights(style_weight=1.0), params, x, t))

    return initial_style


def _grade(metrics, content_features, style_statistics, photo, painting, image, config_id,
           variant, cfg, extra) -> dict:
    row = {
        "config": config_id, "factor": variant.factor, "level": variant.level, "name": variant.name,
        "overrides": " ".join(variant.overrides), "calibrated": variant.calibrate,
        "photo": photo, "painting": painting,
        "style_weight": None if cfg is None else float(cfg.style_weight),
        **metrics.distances(image, content_features[photo], style_statistics[painting]),
    }
    row.update(extra)
    return row


# --------------------------------------------------------------------------- summaries


def summarize(rows: list[dict]) -> list[dict]:
    """Mean metrics per configuration (and for the reference), with the Pareto front marked."""
    import numpy as np

    groups: dict = {}
    for r in rows:
        groups.setdefault(r["config"], []).append(r)
    out = []
    for config, rs in sorted(groups.items()):
        first = rs[0]
        entry = {k: first[k] for k in ("config", "factor", "level", "name", "overrides", "calibrated",
                                       "style_weight")}
        entry["pairs"] = len(rs)
        for k in ("lpips", "swd", "gram"):
            values = np.array([r[k] for r in rs])
            entry[k] = float(values.mean())
            entry[k + "_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        for k in ("style_weight_used", "loss", "wall_s", "compile_s"):
            if k in first:
                values = [r[k] for r in rs]
                entry[k] = float(np.exp(np.mean(np.log(values)))) if k == "style_weight_used" else float(np.mean(values))
        out.append(entry)
    configs = [e for e in out if e["config"] >= 0]
    for e in out:
        e["pareto"] = e["config"] >= 0 and not any(
            o is not e and o["lpips"] <= e["lpips"] and o["swd"] <= e["swd"]
            and (o["lpips"] < e["lpips"] or o["swd"] < e["swd"]) for o in configs)
    return out


def write_outputs(result: dict, args, command: str) -> dict:
    from benchmarks.quality_figures import contact_sheet, tradeoff_plot

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in result["rows"] if (r["photo"], r["painting"]) in result["inputs"]]
    summary = summarize(rows)
    date = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info = {
        "date": date, "machine": machine(), "command": command,
        "load_average_at_end": os.getloadavg(),
        "grid": args.grid, "size": args.size, "steps": args.steps,
        "photos": args.photos.split(","), "paintings": args.paintings.split(","),
        "backbone_weights": result["backbone_weights"], "metric_weights": result["metric_weights"],
        "seconds": round(result["seconds"], 1),
        "pairs_done": result["pairs_done"], "pairs_planned": result["pairs_planned"],
    }
    fields = ["config", "factor", "level", "name", "overrides", "calibrated", "photo", "painting",
              "style_weight", "style_weight_used", "lpips", "swd", "gram", "loss", "loss_initial",
              "steps", "evaluations", "wall_s", "compile_s"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in fields})
    from neuralstyle.images import atomic_write

    atomic_write(out / "quality.csv", buffer.getvalue().encode())
    clean_rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    atomic_write(out / "quality.json", json.dumps(
        {**info, "summary": summary, "runs": clean_rows}, indent=1).encode())
    result = {**result, "rows": rows}
    tradeoff_plot(summary, out / "quality_tradeoff.png", title=plot_title(info))
    contact_sheet(result, summary, out / "quality_contact_sheet.png", thumb=args.thumb)
    atomic_write(out / "quality.md", markdown(info, summary).encode())
    return {"summary": summary, **info}


def plot_title(info: dict) -> str:
    return (f"{info['grid']} grid, {info['size']} px, {info['steps']} iterations per run, means over "
            f"{info['pairs_done']} photo/painting pairs")


def replot(out: Path) -> None:
    """Redraw ``quality_tradeoff.png`` from ``quality.json`` (the contact sheet needs the images)."""
    from benchmarks.quality_figures import tradeoff_plot

    report = json.loads((out / "quality.json").read_text())
    tradeoff_plot(report["summary"], out / "quality_tradeoff.png", title=plot_title(report))


def _fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}g}" if abs(x) < 1e-2 or abs(x) >= 1e3 else f"{x:.{digits}f}"


def markdown(info: dict, summary: list[dict]) -> str:
    lines = [
        f"# Quality benchmark: {info['grid']} grid, {info['size']} px, {info['steps']} steps per run",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['machine']}; load average at the end {tuple(round(x, 2) for x in info['load_average_at_end'])}",
        f"- command: `{info['command']}`",
        f"- panel: photos {', '.join(info['photos'])} x paintings {', '.join(info['paintings'])}"
        + ("" if info["pairs_done"] == info["pairs_planned"] else
           f" — **only {info['pairs_done']} of {info['pairs_planned']} pairs done** (time budget)"),
        f"- optimization backbone: VGG19 ({info['backbone_weights']}); metric network: VGG16 "
        f"({info['metric_weights']}) — LPIPS (content distance, to the photo) and relative sliced "
        "Wasserstein / Gram distances (style distance, to the painting) on its conv1_2..conv5_3",
        f"- total time {info['seconds']:.0f} s",
        "",
        "Means over the panel (± standard deviation over pairs); lower is better on every metric. "
        "**P** marks the Pareto front of (LPIPS, SWD) over the configurations. `sw used` is the "
        "geometric mean of the style weight used (calibrated variants rescale it per pair to the "
        "base recipe's initial style term).",
        "",
        "| | configuration | overrides | sw used | LPIPS ↓ | SWD ↓ | Gram ↓ | s/run |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for e in summary:
        lines.append(
            f"| {'**P**' if e['pareto'] else ''} | {e['name'] if e['config'] >= 0 else 'reference: ' + e['level']} "
            f"| {('`' + e['overrides'] + '`') if e['overrides'] else ''} "
            f"| {_fmt(e.get('style_weight_used'))} "
            f"| {e['lpips']:.3f} ± {e['lpips_sd']:.3f} | {e['swd']:.3f} ± {e['swd_sd']:.3f} "
            f"| {e['gram']:.3f} ± {e['gram_sd']:.3f} | {_fmt(e.get('wall_s'))} |")
    lines += ["", "Files: quality.csv (one row per run), quality.json, quality_tradeoff.png, "
              "quality_contact_sheet.png.", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", choices=sorted(GRIDS), default="ofat")
    p.add_argument("--tiny", action="store_true",
                   help="smoke-test settings: --grid tiny --size 64 --steps 2, 1 photo x 2 paintings, "
                        "random weights for both networks")
    p.add_argument("--size", type=int, default=256, help="long edge of the images in pixels")
    p.add_argument("--steps", type=int, default=12, help="optimizer iterations per run")
    p.add_argument("--variants", default="",
                   help="comma-separated indexes into the grid (default: all; the first is the "
                        "reference for calibration)")
    p.add_argument("--photos", default=",".join(PHOTOS))
    p.add_argument("--paintings", default=",".join(PAINTINGS))
    p.add_argument("--weights", default="imagenet", help="optimization backbone weights (null: random)")
    p.add_argument("--metric-weights", choices=("torchvision", "random"), default="torchvision")
    p.add_argument("--image-dir", default=os.environ.get("NEURALSTYLE_IMAGE_DIR", str(IMAGES)))
    p.add_argument("--time-budget", type=float, default=0,
                   help="seconds; start no new pair after this (0: no limit). The outputs are "
                        "rewritten after every pair, so a stopped run leaves a complete grid on "
                        "the pairs done")
    p.add_argument("--thumb", type=int, default=96, help="contact-sheet thumbnail size in pixels")
    p.add_argument("--jax-cache", default=str(default_cache_dir()),
                   help="JAX persistent compilation cache ('' to disable)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--replot", action="store_true",
                   help="only redraw quality_tradeoff.png from --out/quality.json")
    args = p.parse_args(argv)
    if args.replot:
        replot(Path(args.out))
        return {}
    if args.tiny:
        args.grid, args.size, args.steps = "tiny", 64, 2
        args.photos, args.paintings = "astronaut", "great_wave,starry_night"
        args.weights, args.metric_weights = "null", "random"
    command = "python -m benchmarks.quality " + " ".join(sys.argv[1:] if argv is None else argv)
    result = run_grid(args, on_pair_done=lambda state: write_outputs(state, args, command.strip()))
    report = write_outputs(result, args, command.strip())
    print(Path(args.out, "quality.md").read_text())
    return report


if __name__ == "__main__":
    main()
