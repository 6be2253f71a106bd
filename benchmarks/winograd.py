"""Winograd F(2x2, 3x3) against XLA's convolution: per VGG19 layer, and the whole Adam step.

    python -m benchmarks.winograd                        # 256 and 512 px (about 10 minutes here)
    python -m benchmarks.winograd --quick --out /tmp/w   # smoke run: 64 px, random weights

1. Per layer: every distinct 3x3 convolution of VGG19 up to block5_conv2 (the tutorial recipe's
   deepest layer) at the spatial size it has for a ``--sizes`` image: the time of its forward
   pass plus the gradient with respect to its input (what a style-transfer step needs; the
   weights are frozen), ``lax.conv`` against :func:`neuralstyle.backbones.winograd.winograd_conv2d`,
   interleaved, median of ``--repeats``.  The last column says what ``backbone.conv=auto`` picks.
2. Whole step: the tutorial recipe's compiled Adam step (``+experiment=vgg19_wave``, astronaut /
   Great Wave, as ``benchmarks.speed`` times it) with ``backbone.conv=xla``, ``auto`` and
   ``winograd``, interleaved round by round so a change of the machine's load hits all three;
   the objective at the content image is compared between them.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import harness

CONVS = ("xla", "auto", "winograd")


def time_layers(size: int, repeats: int) -> list[dict]:
    """Per distinct VGG19 convolution: :func:`neuralstyle.tuning.time_conv_layer` (the measurement
    ``python -m neuralstyle.tune`` makes), with what the untuned ``auto`` rule picks."""
    from neuralstyle.backbones.vgg import winograd_by_rule
    from neuralstyle.tuning import time_conv_layer, vgg_conv_shapes

    rows = []
    for names, side, cin, cout in vgg_conv_shapes(size):
        with harness.Load() as load:
            measured = time_conv_layer(side, cin, cout, repeats)
        xla_ms, wino_ms = measured["xla_ms"], measured["winograd_ms"]
        rows.append({"size": size, "layers": names, "side": side, "cin": cin, "cout": cout,
                     "xla_ms": round(xla_ms, 2), "winograd_ms": round(wino_ms, 2),
                     "ratio": round(wino_ms / xla_ms, 3), "relative_error": measured["relative_error"],
                     "auto": "winograd" if winograd_by_rule(cin, cout) else "xla",
                     "other_load": load.foreign})
        harness.log(f"  {size} px {names[0]:>13} ({side}x{side}, {cin}->{cout}): xla {xla_ms:.1f} ms, "
                    f"winograd {wino_ms:.1f} ms ({wino_ms / xla_ms:.2f}x)")
    return rows


def time_steps(size: int, args) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.speed.common import build_objective, load_images
    from benchmarks.speed.jax_worker import compile_adam

    spec = {"weights": args.weights, "images": "photo", "image_dir": args.image_dir}
    runs = {}
    for conv in CONVS:
        objective, source, _ = build_objective(dict(spec, overrides=[f"backbone.conv={conv}"]))
        objective = jax.tree.map(jnp.asarray, objective)
        params = objective.params
        content, style, _ = load_images(spec, size)
        targets = jax.jit(objective.targets)(params, jnp.asarray(content)[None], jnp.asarray(style)[None])
        image = jnp.asarray(content, jnp.float32)[None]
        compiled, state, compile_s = compile_adam(objective, params, targets, image)
        loss = float(jax.jit(objective)(params, image, targets)[0])
        runs[conv] = {"args": (objective, image, state, params, targets), "compiled": compiled,
                      "row": {"size": size, "conv": conv, "winograd_layers": list(objective.extractor.winograd),
                              "compile_s": round(compile_s, 2), "loss_at_content": loss,
                              "weights": source, "step_s": [], "other_load": 0.0}}
    for _ in range(args.rounds):
        for conv, run in runs.items():
            objective, image, state, params, targets = run["args"]
            with harness.Load() as load:
                for i in range(args.steps + 1):
                    (image, state, _, _), seconds = harness.timed(run["compiled"], objective, image, state,
                                                                  params, targets)
                    if i:  # the first call of a round is a warm-up
                        run["row"]["step_s"].append(seconds)
            run["row"]["other_load"] = max(run["row"]["other_load"], load.foreign or 0.0)
    reference = runs["xla"]["row"]
    rows = []
    for conv, run in runs.items():
        row = run["row"]
        row["median_ms"] = round(1000 * float(np.median(row["step_s"])), 1)
        row["vs_xla"] = round(row["median_ms"] / (1000 * float(np.median(reference["step_s"]))), 3)
        row["loss_relative_difference"] = abs(row["loss_at_content"] / reference["loss_at_content"] - 1)
        harness.log(f"  {size} px Adam step, conv={conv}: {row['median_ms']:.0f} ms ({row['vs_xla']:.2f}x xla)")
        rows.append(row)
    return rows


def markdown(rep: dict) -> str:
    a = rep["args"]
    lines = harness.markdown_header("Winograd F(2x2, 3x3) against XLA's convolution", rep)
    lines += [
        "## Whole step", "",
        f"The tutorial recipe's compiled Adam step (`+experiment=vgg19_wave`, VGG19 weights "
        f"{rep['step_rows'][0]['weights'] if rep['step_rows'] else '?'}, astronaut / Great Wave), "
        f"{a['rounds']} interleaved rounds of 1 warm-up + {a['steps']} timed steps per setting; "
        "median ms per step. `auto` is the default (`backbone.conv=auto`).", "",
    ]
    lines += harness.markdown_table(
        ["size", "backbone.conv", "Winograd layers", "compile s", "ms/step", "vs xla",
         "objective at the content image (relative difference to xla)", "max other load"],
        ([r["size"], r["conv"], len(r["winograd_layers"]), r["compile_s"], f"{r['median_ms']:.0f}",
          f"{r['vs_xla']:.2f}x", f"{r['loss_relative_difference']:.1e}", f"{r['other_load']:.2f}"]
         for r in rep["step_rows"]), align="rlrrrrrr")
    lines += [
        "", "## Per layer", "",
        f"Forward + gradient with respect to the input of one convolution (random data), median of "
        f"{a['repeats']} interleaved calls; relative error = largest difference / largest XLA value "
        "over the output and the input gradient.", "",
    ]
    lines += harness.markdown_table(
        ["image px", "layers", "feature map", "C_in -> C_out", "xla ms", "winograd ms", "winograd / xla",
         "relative error", "auto picks", "other load"],
        ([r["size"], ", ".join(r["layers"]), f"{r['side']}x{r['side']}", f"{r['cin']} -> {r['cout']}",
          f"{r['xla_ms']:.1f}", f"{r['winograd_ms']:.1f}", f"{r['ratio']:.2f}", f"{r['relative_error']:.1e}",
          r["auto"], f"{(r['other_load'] or 0):.2f}"] for r in rep["layer_rows"]), align="rlrlrrrrlr")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = harness.parser("benchmarks.winograd", __doc__.splitlines()[0], "winograd")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--repeats", type=int, default=5, help="timed calls per layer and method")
    p.add_argument("--steps", type=int, default=3, help="timed Adam steps per round and setting")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--weights", default="imagenet", help="imagenet, or null for a smoke run")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="first wait up to S seconds until other processes use under 10%% of the CPU")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, random weights, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.steps, args.rounds, args.weights = [64], 1, 1, 1, "null"
    rep = harness.report("benchmarks.winograd", argv,
                         args={**vars(args), "image_dir": str(args.image_dir), "out": str(args.out)})
    if args.wait_quiet > 0:
        harness.wait_until_quiet(args.wait_quiet)
    rep["step_rows"] = [row for size in args.sizes for row in time_steps(size, args)]
    rep["layer_rows"] = [row for size in args.sizes for row in time_layers(size, args.repeats)]
    harness.write_report(Path(args.out), args.name, rep, markdown(rep))
    return rep


if __name__ == "__main__":
    main()
