"""Reduced precision (``precision=float32|bfloat16|mixed``): time per step and what it does to
the result.

    python -m benchmarks.precision                      # 256 px, 60 Adam steps per precision
    python -m benchmarks.precision --size 64 --steps 3 --weights null --metric-weights random \\
        --out /tmp/prec                                 # a smoke run

For each precision, the same objective (``+experiment=vgg19_wave``'s, VGG19) and optimizer (the
tutorial's Adam) run ``--steps`` steps on astronaut / Great Wave through :func:`neuralstyle.stylize`.
Reported: the median time per step (steps after the first, compile excluded), the final loss
*re-evaluated in float32* (so the precisions are compared on one objective), and the result's
LPIPS to the photo and SWD / Gram distances to the painting (torchvision VGG16, float32).  The
precisions run interleaved round by round, so a change in the machine's load hits all of them.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import harness

PRECISIONS = ("float32", "bfloat16", "mixed")


def run(args) -> list:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from hydra.utils import instantiate

    from neuralstyle import VGG, StyleObjective, load_content_and_style, stylize
    from neuralstyle.metrics import metrics_network
    from neuralstyle.recipe import compose

    cfg = compose("run", ["+experiment=vgg19_wave", f"backbone.weights={args.weights}"])
    content, style = load_content_and_style("astronaut", "great_wave", args.size, image_dir=args.image_dir)
    objectives = {}
    for precision in PRECISIONS:
        backbone = VGG("vgg19", weights=None if args.weights == "null" else args.weights,
                       precision=precision)
        objectives[precision] = StyleObjective.build(
            backbone, content_layers=list(cfg.content_layers), style_layers=list(cfg.style_layers),
            content_weight=float(cfg.content_weight), style_weight=float(cfg.style_weight),
            tv_weight=float(cfg.tv_weight), style_loss=instantiate(cfg.style_loss),
            content_loss=instantiate(cfg.content_loss), tv_loss=instantiate(cfg.tv_loss))
    reference = objectives["float32"]
    params = reference.params
    targets = jax.jit(reference.targets)(params, jnp.asarray(content)[None], jnp.asarray(style)[None])
    float32_loss = jax.jit(lambda x: reference(params, x, targets)[0])
    metrics = metrics_network(args.metric_weights)
    photo, painting = metrics.features(content), metrics.style_statistics(style)
    rows = {p: {"precision": p, "step_s": []} for p in PRECISIONS}
    for round_ in range(args.rounds):
        for precision in PRECISIONS:
            with harness.Load() as load:
                result = stylize(objectives[precision], content, style, optimizer=instantiate(cfg.optimizer),
                                 steps=args.steps, init="content", progress=False)
            elapsed = np.diff(result.metrics["history_elapsed_s"][1:])
            row = rows[precision]
            row["step_s"].append(float(np.median(elapsed)) if len(elapsed) else result.metrics["wall_time_s"])
            row["compile_s"] = result.metrics["compile_time_s"]
            row["other_load"] = max(row.get("other_load") or 0.0, load.foreign or 0.0)
            if round_ == 0:
                row.update(
                    loss_float32=float(float32_loss(jnp.asarray(result.image)[None])),
                    loss_own=result.metrics["final"]["total"],
                    **metrics.distances(result.image, photo, painting))
            harness.log(f"round {round_ + 1} {precision}: {row['step_s'][-1] * 1000:.0f} ms/step")
    out = []
    for precision in PRECISIONS:
        row = rows[precision]
        row["median_step_s"] = float(np.median(row["step_s"]))
        row["vs_float32"] = row["median_step_s"] / float(np.median(rows["float32"]["step_s"]))
        out.append(row)
    return out


def markdown(rep: dict) -> str:
    a = rep["args"]
    lines = harness.markdown_header("Reduced precision: time per step and quality", rep)
    lines += [
        f"`+experiment=vgg19_wave` (VGG19, the tutorial's Adam) at {a['size']} px on astronaut / Great "
        f"Wave, {a['steps']} steps per run, {a['rounds']} interleaved rounds; time per step is the "
        "median over the steps after the first (compile excluded) and over the rounds.  The final loss "
        "is re-evaluated with the float32 network; quality on torchvision VGG16 (lower is better).",
        "",
    ]
    lines += harness.markdown_table(
        ["precision", "ms/step", "vs float32", "final loss (float32 objective)", "LPIPS", "SWD", "Gram",
         "max other load"],
        ([r["precision"], f"{r['median_step_s'] * 1000:.0f}", f"{r['vs_float32']:.2f}x", f"{r['loss_float32']:.4g}",
          f"{r['lpips']:.3f}", f"{r['swd']:.3f}", f"{r['gram']:.3f}", f"{r['other_load']:.2f}"] for r in rep["rows"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = harness.parser("benchmarks.precision", __doc__.splitlines()[0], "precision")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--weights", default="imagenet", help="imagenet, or null for a smoke run")
    p.add_argument("--metric-weights", choices=("torchvision", "random"), default="torchvision")
    args = p.parse_args(argv)
    rep = harness.report("benchmarks.precision", argv,
                         args={**vars(args), "image_dir": str(args.image_dir), "out": str(args.out)})
    rep["rows"] = run(args)
    harness.write_report(Path(args.out), args.name, rep, markdown(rep))
    return rep


if __name__ == "__main__":
    main()
