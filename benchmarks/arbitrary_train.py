"""Training the arbitrary-style network (Ghiasi et al. 2017): seconds per step, and what a full run takes.

    python -m benchmarks.arbitrary_train [--size 256] [--batch 8] [--widths 8,32] [--steps 3]
                                         [--warmup 1] [--weights null] [--out benchmarks/results]

Measures the compiled train step of ``python -m neuralstyle.train +experiment=arbitrary_quarter``
(width 8, the ported weights, the predictor's trunk frozen) and ``arbitrary_full`` (width 32 from
scratch, trunk trained): :func:`neuralstyle.fast.make_train_step` over
:class:`neuralstyle.fast.arbitrary_training.ArbitraryNetwork`, a VGG16 loss network with average
pooling to ``conv4_3`` (content conv3_3, Gram style conv1_2..conv4_3), Adam, float32, batch
``--batch`` of ``--size`` px photos and as many style crops (already on the device).  Compile time
apart, ``--warmup`` untimed steps, then ``--steps`` steps each timed with ``block_until_ready``;
FLOPs per step from XLA's cost analysis.  The loss network's weights do not change the work done
(``--weights null``: random, the default; ``torchvision``: the recipe's).

From the median step time and the FLOPs, the time of Magenta's schedule (about 3M steps of batch 8
for the released model, per Magenta's README: ``MAGENTA_STEPS``) on this machine, and on GPUs by
FLOP scaling with an assumed sustained fraction of their peak (``benchmarks.fast.GPU_ASSUMPTIONS``).
Writes ``arbitrary_train.json`` and ``arbitrary_train.md``.  ``--quick`` (64 px, batch 2, 1 step)
is a smoke setting.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.fast import gpu_durations, make_photo_folder
from benchmarks.harness import Load, cpu_snapshot, log, wait_until_quiet

#: Magenta's released arbitrary-style model: "about 3M steps" of batch 8 (its README).
MAGENTA_STEPS = 3_000_000
MAGENTA_BATCH = 8


def measure(width: int, args, objective, batch) -> dict:
    """Compile and time the train step of the recipe with transformer ``width``."""
    import jax
    import jax.numpy as jnp
    import optax

    from neuralstyle.fast import init_state, make_train_step
    from neuralstyle.fast.arbitrary_training import arbitrary_network

    init = "pretrained" if width == 8 else "scratch"
    network = arbitrary_network(width, init=init, seed=0)  # trunk: frozen for pretrained, else trained
    params = network.initial_params()
    tx = optax.adam(1e-5)
    state = init_state(params, tx)
    objective = jax.tree.map(jnp.asarray, objective)
    t0 = time.perf_counter()
    compiled = make_train_step(network, tx).lower(objective, state, objective.params, {}, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost["flops"]) if cost and "flops" in cost else None
    for _ in range(args.warmup):
        state, metrics = jax.block_until_ready(compiled(objective, state, objective.params, {}, batch))
    times, cpu, loads = [], [], []
    for _ in range(args.steps):  # each step waits for a quiet machine (this VM is shared)
        if args.wait_quiet:
            wait_until_quiet(args.wait_quiet)
        with Load() as load:
            t = time.perf_counter()
            state, metrics = jax.block_until_ready(compiled(objective, state, objective.params, {}, batch))
            times.append(time.perf_counter() - t)
        cpu.append(cpu_snapshot()[1] - load.start[1])  # this process's CPU seconds in the step
        loads.append(load.foreign)
    median = statistics.median(times)
    load = max((x for x in loads if x is not None), default=None)
    count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))  # noqa: E731
    row = {"width": width, "init": init, "trainable_parameters": count(params.trainable),
           "frozen_parameters": count(params.non_trainable), "compile_s": round(compile_s, 1),
           "step_s": [round(t, 2) for t in times], "median_step_s": round(median, 2),
           "cpu_s": [round(c, 2) for c in cpu], "median_cpu_s": round(statistics.median(cpu), 2),
           "flops_per_step": flops, "achieved_gflops": round(flops / median / 1e9, 1) if flops else None,
           "other_load": load, "other_load_per_step": loads, "final_loss": float(metrics["loss"])}
    log(f"width {width}: compile {compile_s:.1f} s, {median:.2f} s/step, "
        f"{statistics.median(cpu):.1f} CPU s/step, {(flops or 0) / 1e9:.0f} GFLOP/step "
        f"(other load per step {loads})")
    return row


def estimate(row: dict, batch: int) -> dict:
    """Magenta's schedule (``MAGENTA_STEPS`` of batch ``MAGENTA_BATCH``) at the measured step."""
    steps = MAGENTA_STEPS * MAGENTA_BATCH / batch
    total = row["flops_per_step"] * steps
    gpus = gpu_durations(total, "hours")
    return {"steps": steps, "total_flops": total, "this_machine_days": round(steps * row["median_step_s"] / 86400),
            "gpus": gpus}


def main(argv=None):
    p = harness.parser("benchmarks.arbitrary_train", __doc__.splitlines()[0], "arbitrary_train")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--widths", default="8,32", help="transformer widths: 8 (quarter), 32 (full)")
    p.add_argument("--steps", type=int, default=3, help="timed train steps")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--weights", default="null", help="VGG16 weights: null (random) | torchvision")
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="before each timed step, wait up to S seconds for other processes to use < 10%% of the CPU")
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.steps, args.warmup = 64, 2, 1, 0

    import jax
    import jax.numpy as jnp

    from neuralstyle.fast import photo_batches
    from neuralstyle.fast.data import ContentStyleBatches
    from neuralstyle.recipe import build_objective, compose

    report = harness.report("benchmarks.arbitrary_train", argv, backend=jax.default_backend(),
                            devices=[str(d) for d in jax.devices()])
    # the recipe's loss network (the same for both widths), with the weights asked for
    objective = build_objective(compose("train", ["+experiment=arbitrary_quarter", f"backbone.weights={args.weights}"]))
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_photo_folder(Path(tmp) / "photos", Path(args.image_dir), count=max(8, args.batch))
        photos, _ = photo_batches(folder, args.size, args.batch, seed=0, num_threads=4)
        styles, _ = photo_batches(folder, args.size, args.batch, seed=1, num_threads=4)
        batch = jax.tree.map(jnp.asarray, next(ContentStyleBatches(photos, styles)))
    rows = [measure(int(w), args, objective, batch) for w in args.widths.split(",")]
    for row in rows:
        row["estimate"] = estimate(row, args.batch) if row["flops_per_step"] else None
    report.update(size=args.size, batch=args.batch,
                  loss_network=f"VGG16 avg pooling ({objective.extractor.weights_source})",
                  rows=rows, magenta_steps=MAGENTA_STEPS, magenta_batch=MAGENTA_BATCH)
    harness.write_report(args.out, args.name, report, markdown(report))


def markdown(r: dict) -> str:
    lines = harness.markdown_header("Arbitrary-style network: training step and full-run estimate", r) + [
        f"Train step of `+experiment=arbitrary_quarter` (width 8, ported weights, trunk frozen) and "
        f"`arbitrary_full` (width 32 from scratch, trunk trained): batch {r['batch']} of {r['size']} px "
        f"photos + {r['batch']} style crops, loss network {r['loss_network']} to conv4_3, Adam, float32.",
        "",
        "| width | trainable / frozen parameters | compile | median s/step | median CPU s/step | GFLOP/step | achieved GFLOP/s | other load (max of the steps) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['width']} | {row['trainable_parameters']:,} / {row['frozen_parameters']:,} | "
                     f"{row['compile_s']} s | {row['median_step_s']} | {row['median_cpu_s']} | "
                     f"{(row['flops_per_step'] or 0) / 1e9:.0f} | "
                     f"{row['achieved_gflops']} | {row['other_load']} |")
    lines += ["", f"## Magenta's schedule: about {r['magenta_steps']:,} steps of batch {r['magenta_batch']} "
              "(an estimate, not a measurement)", "",
              "| width | PFLOP in all | this machine | GPU (assumed sustained fraction of its dense TF32 peak): hours |",
              "|---:|---:|---:|---|"]
    for row in r["rows"]:
        e = row.get("estimate")
        if e:
            gpus = "; ".join(f"{g['gpu']} at {g['sustained_fraction'][0]:.0%}-{g['sustained_fraction'][1]:.0%}: "
                             f"{g['hours'][0]}-{g['hours'][1]}" for g in e["gpus"])
            lines.append(f"| {row['width']} | {e['total_flops'] / 1e15:,.0f} | {e['this_machine_days']:,} days | {gpus} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
