"""What ``python -m neuralstyle.tune`` measures and decides on this machine, as a report.

    python -m benchmarks.tuning                      # 256 px VGG19 layers, 512 px transform net
    python -m benchmarks.tuning --quick --out /tmp/t # smoke run: 32 px, 1 repeat

Runs :func:`neuralstyle.tuning.tune` (the same measurement, saving nothing: the tuning file in
effect is left as it is) and writes its timings and choices next to the fixed rule's, with the
machine and its other load, to ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import harness


def ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(rep: dict) -> str:
    from neuralstyle.backbones.vgg import winograd_by_rule
    from neuralstyle.fast.xla import UNTUNED_CONV_BACKEND
    from neuralstyle.tuning import UNTUNED_STEP_BACKEND

    rec, a = rep["record"], rep["args"]
    chosen = {tuple(p) for p in rec["winograd_channels"]}
    measured = rec["measured"]
    lines = harness.markdown_header("Per-machine tuning (python -m neuralstyle.tune)", rep)
    lines += [
        f"{a['repeats']} alternating calls per choice, median; other processes' share of the CPU "
        f"during the measurement: {rep['other_load']:.2f}.  A choice departs from the fixed rule "
        f"only when the other path was more than {100 * rec['margin']:.0f}% faster "
        "(`neuralstyle.tuning.MARGIN`).", "",
        f"## VGG19 3x3 convolutions at {rec['size']} px (forward + input gradient)", "",
    ]
    lines += harness.markdown_table(
        ["layers", "feature map", "C_in -> C_out", "xla ms", "winograd ms", "winograd / xla", "fixed rule",
         "tuned"],
        ([", ".join(r["layers"]), f"{r['side']}x{r['side']}", f"{r['cin']} -> {r['cout']}", f"{r['xla_ms']:.1f}",
          f"{r['winograd_ms']:.1f}", f"{r['winograd_ms'] / r['xla_ms']:.2f}",
          "winograd" if winograd_by_rule(r["cin"], r["cout"]) else "xla",
          "winograd" if (r["cin"], r["cout"]) in chosen else "xla"] for r in measured["layers"]),
        align="llrrrrll")
    step, fast = measured["step"], measured["fast"]
    lines += ["", "## Whole programs", ""]
    lines += harness.markdown_table(
        ["program", "XLA default ms", "Eigen ms", "Eigen / default", "fixed rule", "tuned"],
        [[f"VGG19 gradient at {rec['size']} px (tuned Winograd layers)", ms(step["xla_ms"]), ms(step["eigen_ms"]),
          f"{step['eigen_ms'] / step['xla_ms']:.2f}" if step["eigen_ms"] else "-", UNTUNED_STEP_BACKEND,
          rec["step_conv_backend"]],
         [f"transform net apply at {rec['fast_size']} px", ms(fast["xla_ms"]), ms(fast["eigen_ms"]),
          f"{fast['eigen_ms'] / fast['xla_ms']:.2f}" if fast["eigen_ms"] else "-", UNTUNED_CONV_BACKEND,
          rec["fast_conv_backend"]]], align="lrrrll")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = harness.parser("benchmarks.tuning", __doc__.splitlines()[0], "tuning")
    p.add_argument("--size", type=int, default=256, help="optimization image side (default 256)")
    p.add_argument("--fast-size", type=int, default=512, help="transform net image side (default 512)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="first wait up to S seconds until other processes use under 10%% of the CPU")
    p.add_argument("--quick", action="store_true", help="smoke run: 32 px, 1 repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.fast_size, args.repeats = 32, 32, 1
    from neuralstyle.tuning import tune

    rep = harness.report("benchmarks.tuning", argv,
                         args={**vars(args), "image_dir": str(args.image_dir), "out": str(args.out)})
    if args.wait_quiet > 0:
        harness.wait_until_quiet(args.wait_quiet)
    with harness.Load() as load:
        rep["record"] = tune(args.size, args.fast_size, args.repeats, log=harness.log)
    rep["other_load"] = load.foreign or 0.0
    harness.write_report(Path(args.out), args.name, rep, markdown(rep))
    return rep


if __name__ == "__main__":
    main()
