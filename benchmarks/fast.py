"""Feed-forward networks (Johnson et al. 2016): training images/s and apply seconds per megapixel.

    python -m benchmarks.fast [--size 256] [--batch 4] [--steps 8] [--warmup 2]
                              [--apply-sizes 512x512,1024x768,1920x1080] [--weights torchvision]
                              [--out benchmarks/results]

Measures, in one process, on the recipe of ``conf/train/experiment/fast_wave.yaml`` (transform net width
32 with 5 residual blocks; VGG16 loss network with content conv3_3 and style conv1_2, conv2_2,
conv3_3, conv4_3; Adam; float32):

* the compiled train step (:func:`neuralstyle.fast.make_train_step`) on a batch already on the
  device: compile time apart, ``--warmup`` untimed steps, then ``--steps`` steps each timed with
  ``block_until_ready``; images/s = batch / median step time; FLOPs per step from XLA's cost
  analysis of the compiled step;
* the data pipeline alone (:func:`neuralstyle.fast.photo_batches`, 4 decoding threads) on a folder
  of 640x480 JPEGs made from the example photos (COCO's typical size): crops/s it can deliver;
* stylizing one image with :class:`neuralstyle.fast.Stylizer` at each ``--apply-sizes``: compile
  apart, median of 3 runs, seconds per megapixel;
* an estimate of the full COCO recipe's training time on a GPU: FLOPs per image x 2 epochs of
  COCO train2014 (82,783 images) / an assumed sustained GPU throughput (stated in the output).

Writes ``fast.json`` and ``fast.md``.  ``--quick`` (64 px, batch 2, width 8, 2 steps, random
weights, 64x64 apply) is the smoke test's setting.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import cpu_snapshot, foreign_load, log, wait_until_quiet

COCO_TRAIN2014_IMAGES = 82783  # images in COCO train2014 (Lin et al. 2014)
EPOCHS = 2

# Assumed sustained throughput of the train step on GPUs (dense TF32 tensor-core peaks from the
# vendors' data sheets; the sustained fraction for this small-batch (4 x 256 px) convolutional
# step is an assumption, not a measurement).
GPU_ASSUMPTIONS = [
    {"gpu": "NVIDIA A100 (TF32 peak 156 TFLOP/s)", "peak_tflops": 156.0, "sustained_fraction": (0.2, 0.4)},
    {"gpu": "NVIDIA H100 SXM (TF32 peak 495 TFLOP/s)", "peak_tflops": 495.0, "sustained_fraction": (0.1, 0.3)},
]


def gpu_durations(total_flops: float, unit: str) -> list[dict]:
    """Per GPU of :data:`GPU_ASSUMPTIONS`: the time ``total_flops`` take at the upper and the lower
    assumed sustained fraction of its peak (so fastest first), in ``unit`` (``"minutes"`` or
    ``"hours"``, also the key of the times)."""
    seconds = {"minutes": 60, "hours": 3600}[unit]
    rows = []
    for g in GPU_ASSUMPTIONS:
        lo, hi = g["sustained_fraction"]
        rows.append({"gpu": g["gpu"], "sustained_fraction": [lo, hi],
                     unit: [round(total_flops / (g["peak_tflops"] * 1e12 * f) / seconds, 1) for f in (hi, lo)]})
    return rows


def make_photo_folder(folder: Path, image_dir: Path, count: int, side=(640, 480)) -> Path:
    """``count`` JPEGs of ``side`` px cut from the example photos (different crops each)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photos = [Image.open(image_dir / n).convert("RGB") for n in ("astronaut.png", "coffee.png", "chelsea.png")]
    for i in range(count):
        im = photos[i % len(photos)]
        w, h = im.size
        f = 0.5 + 0.5 * ((i * 7) % 10) / 10
        cw, ch = int(w * f), int(h * f)
        left, top = (i * 37) % (w - cw + 1), (i * 53) % (h - ch + 1)
        im.crop((left, top, left + cw, top + ch)).resize(side).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def main(argv=None):
    p = harness.parser("benchmarks.fast", __doc__.splitlines()[0], "fast")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=8, help="timed train steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--weights", default="torchvision", help="VGG16 weights: torchvision | null")
    p.add_argument("--apply-sizes", default="512x512,1024x768,1920x1080", help="WxH,...")
    p.add_argument("--data-batches", type=int, default=40)
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="wait up to S seconds for other processes to use < 10%% of the CPU before "
                        "each timed loop (this VM is shared)")
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.steps, args.warmup = 64, 2, 2, 1
        args.width, args.blocks, args.weights = 8, 1, "null"
        args.apply_sizes, args.data_batches = "64x64", 4

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from neuralstyle import VGG, StyleObjective, content_loss, gram_loss
    from neuralstyle.fast import (
        Stylizer,
        get_params,
        init_state,
        make_train_step,
        photo_batches,
        style_statistics,
        transform_net,
    )
    from neuralstyle.images import load_image

    report = harness.report("benchmarks.fast", argv, devices=[str(d) for d in jax.devices()],
                            backend=jax.default_backend())
    weights = None if args.weights in ("null", "none", "random") else args.weights
    log(f"loss network: VGG16 weights={weights}")
    vgg = VGG("vgg16", weights=weights)
    objective = StyleObjective.build(
        vgg, content_layers=["conv3_3"], style_layers=["conv1_2", "conv2_2", "conv3_3", "conv4_3"],
        content_layer_weights="sum", style_layer_weights="sum", content_weight=1.0,
        style_weight=100.0, tv_weight=0.0, content_loss=content_loss("mean"), style_loss=gram_loss("hw"))
    style = load_image(Path(args.image_dir) / "great_wave.jpg", args.size)
    net = transform_net(args.width, args.blocks, seed=0)
    tx = optax.adam(1e-3)

    # ---------------------------------------------------------------- train step
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_photo_folder(Path(tmp) / "photos", Path(args.image_dir),
                                   count=max(8, 2 * args.batch), side=(640, 480) if not args.quick else (96, 72))
        batches, _ = photo_batches(folder, args.size, args.batch, seed=0, num_threads=4)
        batch = jnp.asarray(next(batches))
        params = objective.params
        stats = style_statistics(objective, params, style[None])
        state = init_state(get_params(net), tx)
        step = make_train_step(net, tx)
        objective = jax.tree.map(jnp.asarray, objective)
        t0 = time.perf_counter()
        compiled = step.lower(objective, state, params, stats, batch).compile()
        compile_s = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost["flops"]) if cost and "flops" in cost else None
        log(f"train step compiled in {compile_s:.1f} s; {flops / 1e9 if flops else float('nan'):.1f} GFLOP/step")
        for _ in range(args.warmup):
            state, metrics = jax.block_until_ready(compiled(objective, state, params, stats, batch))
        times = []
        if args.wait_quiet:
            wait_until_quiet(args.wait_quiet)
        a = cpu_snapshot()
        for _ in range(args.steps):
            t = time.perf_counter()
            state, metrics = jax.block_until_ready(compiled(objective, state, params, stats, batch))
            times.append(time.perf_counter() - t)
        other = foreign_load(a, cpu_snapshot())
        median = statistics.median(times)
        train = {
            "size": args.size, "batch": args.batch, "transform_width": args.width,
            "residual_blocks": args.blocks, "transform_parameters": int(net.count_params()),
            "loss_network": f"VGG16 ({vgg.weights_source})", "compile_s": round(compile_s, 2),
            "warmup_steps": args.warmup, "timed_steps": args.steps,
            "step_ms": [round(1000 * t, 1) for t in times], "median_step_ms": round(1000 * median, 1),
            "images_per_s": round(args.batch / median, 3),
            "flops_per_step": flops, "flops_per_image": flops / args.batch if flops else None,
            "achieved_gflops": round(flops / median / 1e9, 1) if flops else None,
            "other_load": other, "final_loss": float(metrics["loss"]),
        }
        log(f"train: {train['median_step_ms']} ms/step, {train['images_per_s']} images/s "
             f"(other load {other})")

        # ------------------------------------------------------------ data pipeline
        data_batches, _ = photo_batches(folder, args.size, args.batch, seed=1, num_threads=4)
        next(data_batches)  # threads started
        t = time.perf_counter()
        for _ in range(args.data_batches):
            next(data_batches)
        data_s = time.perf_counter() - t
        data = {"source_images": "640x480 JPEG" if not args.quick else "96x72 JPEG",
                "threads": 4, "batches": args.data_batches,
                "crops_per_s": round(args.data_batches * args.batch / data_s, 1)}
        log(f"data pipeline: {data['crops_per_s']} crops/s")

    # ---------------------------------------------------------------- apply
    stylizer = Stylizer(net)
    apply_rows = []
    for spec in args.apply_sizes.split(","):
        w, h = (int(v) for v in spec.lower().split("x"))
        image = np.random.default_rng(0).random((h, w, 3), np.float32)
        t = time.perf_counter()
        stylizer(image)  # compiles for this shape
        first = time.perf_counter() - t
        runs = []
        if args.wait_quiet:
            wait_until_quiet(args.wait_quiet)
        a = cpu_snapshot()
        for _ in range(3):
            t = time.perf_counter()
            stylizer(image)
            runs.append(time.perf_counter() - t)
        other = foreign_load(a, cpu_snapshot())
        med = statistics.median(runs)
        mp = w * h / 1e6
        apply_rows.append({"width": w, "height": h, "megapixels": round(mp, 3),
                           "first_call_s": round(first, 2), "runs_s": [round(r, 3) for r in runs],
                           "median_s": round(med, 3), "s_per_megapixel": round(med / mp, 3),
                           "other_load": other})
        log(f"apply {w}x{h}: {med:.3f} s ({med / mp:.3f} s/MP, compile+first {first:.1f} s)")

    # ---------------------------------------------------------------- GPU estimate
    estimate = None
    if train["flops_per_image"]:
        images = EPOCHS * COCO_TRAIN2014_IMAGES
        total = train["flops_per_image"] * images
        rows = gpu_durations(total, "minutes")
        estimate = {"images": images, "total_flops": total, "rows": rows,
                    "this_machine_hours": round(images / train["images_per_s"] / 3600, 1),
                    "data_minutes_here": round(images / data["crops_per_s"] / 60, 1)}
    report.update(train=train, data=data, apply=apply_rows, gpu_estimate=estimate)

    harness.write_report(args.out, args.name, report, markdown(report))


def markdown(r: dict) -> str:
    m, t, d = r["machine"], r["train"], r["data"]
    lines = [
        "# Feed-forward networks: training and apply speed",
        "",
        f"- date: {r['date']}",
        f"- command: `{r['command']}`",
        f"- machine: {m.get('cpu_model', '?')}, {m.get('nproc')} vCPU, {m.get('ram_gib', '?')} GiB, "
        f"backend {r['backend']} ({', '.join(r['devices'])}); load average at start "
        f"{' '.join(m.get('loadavg_at_start', []))}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v),
        "",
        "## Training step",
        "",
        f"Transform net width {t['transform_width']}, {t['residual_blocks']} residual blocks "
        f"({t['transform_parameters']:,} parameters); loss network {t['loss_network']}, content conv3_3, "
        f"style conv1_2/conv2_2/conv3_3/conv4_3; Adam; batch {t['batch']} of {t['size']} px crops "
        "(already on the device); float32.",
        "",
        "| compile | median ms/step | images/s | GFLOP/step | achieved GFLOP/s | other load |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {t['compile_s']} s | {t['median_step_ms']} | {t['images_per_s']} | "
        f"{(t['flops_per_step'] or 0) / 1e9:.1f} | {t['achieved_gflops']} | {t['other_load']} |",
        "",
        f"Data pipeline alone ({d['source_images']}, decode + resize + random crop, {d['threads']} "
        f"threads): {d['crops_per_s']} crops/s.",
        "",
        "## Apply (one image, one forward pass)",
        "",
    ]
    lines += harness.markdown_table(
        ["size", "megapixels", "compile + first call", "median s", "s per megapixel", "other load"],
        ([f"{a['width']}x{a['height']}", a["megapixels"], f"{a['first_call_s']} s", a["median_s"],
          a["s_per_megapixel"], a["other_load"]] for a in r["apply"]))
    e = r.get("gpu_estimate")
    if e:
        lines += [
            "",
            "## Full COCO recipe: estimated training time (an estimate, not a measurement)",
            "",
            f"2 epochs of COCO train2014 = {e['images']:,} images x "
            f"{t['flops_per_image'] / 1e9:.1f} GFLOP per image (XLA cost analysis of the step above) = "
            f"{e['total_flops'] / 1e15:.1f} PFLOP.  On this machine at the measured rate: "
            f"{e['this_machine_hours']} hours.  No GPU was available to measure; assuming a sustained "
            "fraction of the GPU's dense TF32 peak:",
            "",
        ]
        lines += harness.markdown_table(
            ["GPU (assumption)", "sustained fraction of peak (assumed)", "minutes of compute"],
            ([row["gpu"], f"{row['sustained_fraction'][0]:.0%}-{row['sustained_fraction'][1]:.0%}",
              f"{row['minutes'][0]}-{row['minutes'][1]}"] for row in e["rows"]))
        lines += [
            "",
            f"Decoding is then the likelier limit: {e['images']:,} JPEG decodes + crops at the "
            f"{d['crops_per_s']} crops/s measured here take {e['data_minutes_here']} minutes; a GPU "
            "host with more cores decodes proportionally faster (data.threads).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
