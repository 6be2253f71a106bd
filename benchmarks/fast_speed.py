"""Feed-forward networks at full speed, against PyTorch eager in the same run (apply s/MP, training
images/s, a folder of photos of mixed sizes).

    python -m benchmarks.fast_speed [--apply-sizes 512,1024] [--runs 3] [--steps 5]
                                    [--wait-quiet 120] [--out benchmarks/results]
                                    [--sections apply,train,folder] [--name fast_speed]

One process measures, on the fast recipe's transform net (``conf/train/experiment/fast_wave.yaml``:
width 32, 5 residual blocks, 1.68 M parameters):

* **apply**: one square photo (the astronaut, resized) at each ``--apply-sizes`` side through
  :class:`neuralstyle.fast.Stylizer` (``bucket=None``; the defaults: XLA's Eigen convolutions,
  ``conv_backend="eigen"``, with the last 9x9 convolution in space-to-depth form and upsampling +
  convolution as sub-pixel convolutions, :func:`neuralstyle.fast.transform.fast_operations`), the
  same without these rewrites, the library *before* (XLA's default YNNPACK convolutions, Keras's layers),
  and :class:`benchmarks.torch_fast_reference.TorchTransformNet` (the same network, the same
  weights copied over) under ``torch.inference_mode`` with as many threads as cores.  They take
  turns (A, B, C, D, A, B, ...) after one untimed call each (compile + first run, with its peak
  memory), so a change of the machine's load hits them alike; median of ``--runs``; seconds per
  megapixel; achieved GFLOP/s from XLA's cost analysis of the network as Keras computes it (the
  same FLOPs for torch).  Outputs are compared: max |difference| to the default on [0, 1] pixels;
* **training**: the train step (:func:`neuralstyle.fast.make_train_step`: forward through the
  transform net and the VGG16 loss network, backward, Adam) on the recipe's batch (4 crops of
  256 px, from the example photos), default and *before*, next to the same step in torch
  (:func:`benchmarks.torch_fast_reference.make_torch_train_step`: ``torchvision``-preprocessed
  VGG16 with our weights copied over, ``torch.optim.Adam``), taking turns step by step after one
  untimed step; images/s from the median step; the first step's losses compared;
* **the arbitrary-style network's apply** (the quarter-width conditional transformer of
  :mod:`neuralstyle.arbitrary`, random weights, one fixed embedding) at the largest apply size, both
  backends (no torch version);
* **a folder** of 20 photos, 4 each of 5 sizes (:data:`benchmarks.buckets.SIZES`), through
  :func:`neuralstyle.fast.stylize_files` without and with size buckets (``--folder-buckets``),
  fast and arbitrary networks, each both *in turn* (``overlap=False``: one image after the other,
  each program compiled on first use) and *overlapped* (``overlap=True``, the default: programs
  compiled ahead in a background thread, decode and write in another).
  :func:`benchmarks.buckets.run_setting` times the first pass (wall and CPU time, compile
  durations from ``jax.monitoring``), then the same stylizer over the folder again, every program
  compiled: the *exposed* compile time is the difference of the two wall times (what compiling
  added to the run; the goal is at most 20% of the total), the compile CPU time the difference of
  the CPU times.  Each setting runs in a fresh process with JAX's persistent compilation cache on,
  as the CLI entries have it (:func:`neuralstyle.entry.enable_compilation_cache`): once *cold* (an
  empty cache, which the run fills) and once *warm* (another fresh process reading that cache:
  compile is then tracing, lowering and loading).

``--sections`` picks the phases (e.g. ``--sections folder --name fast_folder`` for the folder rows
alone, without PyTorch).

``--wait-quiet S`` waits up to S seconds before each timed phase for the other processes to use
less than 10% of the CPU (this machine is shared); each phase reports the other processes' share
during it; a folder run under more than ``--max-load`` (5%) other load is repeated, up to
``--retries`` (2) times.  Writes ``<name>.json`` and ``<name>.md``; ``--quick`` (64 px, width 8, 1 block, random
VGG16, tiny folder, fast network only) is the smoke test's setting.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import Load, PeakMemory, log, wait_until_quiet

COMPILE_SHARE_GOAL = 0.2
NEURALSTYLE = "neuralstyle"  # the defaults: conv_backend="eigen", space-to-depth and sub-pixel rewrites
TORCH = "pytorch eager"
BEFORE = "neuralstyle before (XLA default convolutions, Keras layers)"
#: The apply variants timed next to the default: (label, conv_backend), both with Keras's own layers.
VARIANTS = [("neuralstyle without the rewrites", "eigen"), (BEFORE, "xla")]


def _photo(image_dir: Path, side: int):
    import numpy as np
    from PIL import Image

    im = Image.open(image_dir / "astronaut.png").convert("RGB").resize((side, side), Image.LANCZOS)
    return np.asarray(im, np.float32) / 255.0


def _take_turns(runners: dict, runs: int, wait_quiet: float) -> tuple[dict, float]:
    """``runners``: {label: zero-argument callable that blocks until done}.  Each is called
    ``runs`` times, in turns; returns ({label: [seconds]}, other processes' share meanwhile)."""
    times = {k: [] for k in runners}
    if wait_quiet:
        wait_until_quiet(wait_quiet)
    with Load() as load:
        for _ in range(runs):
            for label, fn in runners.items():
                t = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t)
    return times, load.foreign


def _first_call(fn):
    """``(result, seconds, peak memory)`` of an untimed first call (compile + run)."""
    with PeakMemory() as mem:
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
    return out, dt, mem.result()


def _timings(times: dict, first: dict, flops) -> dict:
    """Per implementation: timed runs, median, the first call's time and memory, GFLOP/s."""
    out = {}
    for label, ts in times.items():
        med = statistics.median(ts)
        out[label] = {"runs_s": [round(t, 3) for t in ts], "median_s": round(med, 3),
                      "first_call_s": round(first[label][1], 2), "first_call_memory": first[label][2],
                      "gflops_per_s": round(flops / med / 1e9, 1) if flops else None}
    return out


def _flops(program) -> float | None:
    """FLOPs of a lowered or compiled JAX program (XLA's cost analysis)."""
    cost = program.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def measure_apply(net, image_dir: Path, sides, runs: int, wait_quiet: float) -> list[dict]:
    """Apply rows: per side, seconds per megapixel of each implementation (see the docstring)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from benchmarks.torch_fast_reference import TorchTransformNet
    from neuralstyle.fast import Stylizer, apply_fn
    from neuralstyle.fast.xla import jit

    stylizer = Stylizer(net, bucket=None)  # the defaults: Eigen convolutions, rewrites
    variants = {label: jit(apply_fn(net, rewrites=False), backend) for label, backend in VARIANTS}
    tnet = TorchTransformNet(net).eval()
    rows = []
    for side in sides:
        image = _photo(image_dir, side)
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]

        def torch_apply():
            with torch.inference_mode():
                return tnet(x)[0].numpy().transpose(1, 2, 0)

        batch = jnp.asarray(image)[None]
        runners = {NEURALSTYLE: lambda: stylizer(image)}
        runners.update({label: (lambda f=f: np.asarray(f(stylizer.params, batch)[0])) for label, f in variants.items()})
        runners[TORCH] = torch_apply
        first = {k: _first_call(fn) for k, fn in runners.items()}
        flops = _flops(variants[BEFORE].lower(stylizer.params, batch))  # of the network as Keras computes it
        times, other = _take_turns(runners, runs, wait_quiet)
        mp = side * side / 1e6
        ref = first[NEURALSTYLE][0]
        impls = _timings(times, first, flops)
        for label, v in impls.items():
            v.update(s_per_megapixel=round(v["median_s"] / mp, 3),
                     max_abs_diff_vs_default=float(np.abs(np.asarray(first[label][0]) - ref).max()))
        torch_s = impls[TORCH]["median_s"]
        row = {"side": side, "megapixels": round(mp, 3), "gflop": round(flops / 1e9, 1) if flops else None,
               "other_load": other, "implementations": impls,
               "speed_vs_torch": {k: round(torch_s / v["median_s"], 2) for k, v in impls.items()}}
        rows.append(row)
        log(f"apply {side}x{side}: " + ", ".join(f"{k} {v['s_per_megapixel']} s/MP" for k, v in impls.items())
            + f" (other load {other}); max |neuralstyle - torch| {impls[TORCH]['max_abs_diff_vs_default']:.2e}")
        jax.clear_caches()
    return rows


def measure_arbitrary(side: int, image_dir: Path, runs: int, wait_quiet: float, width: int) -> dict:
    """The arbitrary-style transformer's apply at ``side`` px, both conv backends."""
    import numpy as np

    from neuralstyle.arbitrary import (
        ArbitraryStylizer,
        style_predictor,
        style_transformer,
    )
    from neuralstyle.fast.transform import glorot_uniform

    transformer = style_transformer(weights=None, width=width)
    glorot_uniform(transformer, 0)
    predictor = style_predictor(weights=None)
    embedding = np.random.default_rng(0).normal(size=(100,)).astype(np.float32)
    image = _photo(image_dir, side)
    runners = {f"neuralstyle ({b})": (lambda st=ArbitraryStylizer(predictor, transformer, bucket=None, conv_backend=b):
                                      st.stylize(image, embedding)) for b in ("eigen", "xla")}
    first = {k: _first_call(fn) for k, fn in runners.items()}
    times, other = _take_turns(runners, runs, wait_quiet)
    mp = side * side / 1e6
    ref = first["neuralstyle (eigen)"][0]
    impls = _timings(times, first, None)
    for label, v in impls.items():
        v.update(s_per_megapixel=round(v["median_s"] / mp, 3),
                 max_abs_diff_vs_default=float(np.abs(first[label][0] - ref).max()))
    log("arbitrary apply: " + ", ".join(f"{k} {v['s_per_megapixel']} s/MP" for k, v in impls.items()))
    return {"side": side, "width": width, "other_load": other, "implementations": impls}


def measure_training(net, image_dir: Path, size: int, batch_size: int, steps: int, weights,
                     wait_quiet: float) -> dict:
    """Train-step rows (see the docstring)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch

    from benchmarks.fast import make_photo_folder
    from benchmarks.torch_fast_reference import (
        TorchTransformNet,
        loss_features,
        make_torch_train_step,
    )
    from benchmarks.torch_reference import gram_hw
    from neuralstyle import VGG, StyleObjective, content_loss, gram_loss
    from neuralstyle.fast import apply_fn, get_params, init_state, make_train_step, photo_batches, style_statistics
    from neuralstyle.fast.training import FastNetwork
    from neuralstyle.images import load_image

    vgg = VGG("vgg16", weights=weights)
    objective = StyleObjective.build(
        vgg, content_layers=["conv3_3"], style_layers=["conv1_2", "conv2_2", "conv3_3", "conv4_3"],
        content_layer_weights="sum", style_layer_weights="sum", content_weight=1.0,
        style_weight=100.0, tv_weight=0.0, content_loss=content_loss("mean"), style_loss=gram_loss("hw"))
    style = load_image(image_dir / "great_wave.jpg", size)[None]
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_photo_folder(Path(tmp) / "photos", image_dir, count=2 * batch_size,
                                   side=(640, 480) if size >= 128 else (96, 72))
        batches, _ = photo_batches(folder, size, batch_size, seed=0, num_threads=2)
        batch_np = np.asarray(next(batches))
    batch = jnp.asarray(batch_np)
    loss_params = objective.params
    stats = style_statistics(objective, loss_params, jnp.asarray(style))
    tree = jax.tree.map(jnp.asarray, objective)
    tx = optax.adam(1e-3)

    before = FastNetwork(net)
    before.apply = apply_fn(net, rewrites=False)
    runners, compile_s, flops = {}, {}, None
    for label, network, backend in [(NEURALSTYLE, net, "eigen"), (BEFORE, before, "xla")]:
        t = time.perf_counter()
        state0 = init_state(get_params(net), tx)
        compiled = make_train_step(network, tx, conv_backend=backend).lower(tree, state0, loss_params, stats, batch).compile()
        compile_s[label] = round(time.perf_counter() - t, 2)
        flops = _flops(compiled) if label == BEFORE else flops  # the FLOPs of the network as Keras computes it
        holder = {"state": state0}

        def jax_step(compiled=compiled, holder=holder):
            holder["state"], metrics = jax.block_until_ready(
                compiled(tree, holder["state"], loss_params, stats, batch))
            return float(metrics["loss"])

        runners[label] = jax_step

    tnet = TorchTransformNet(net)
    features = loss_features(objective)
    with torch.no_grad():
        fs = features(torch.from_numpy(np.ascontiguousarray(style.transpose(0, 3, 1, 2))))
    targets = {n: gram_hw(fs[n]) for n in objective.style_layers}
    torch_step = make_torch_train_step(tnet, features, objective.content_layers, objective.style_layers,
                                       targets, 1.0, 100.0, lr=1e-3)
    tb = torch.from_numpy(np.ascontiguousarray(batch_np.transpose(0, 3, 1, 2)))
    runners[TORCH] = lambda: float(torch_step(tb))

    first = {k: _first_call(fn) for k, fn in runners.items()}  # the first step's loss: same weights
    times, other = _take_turns(runners, steps, wait_quiet)
    ref = first[NEURALSTYLE][0]
    impls = _timings(times, first, flops)  # median_s: seconds per step
    for label, v in impls.items():
        v.update(images_per_s=round(batch_size / v["median_s"], 3), compile_s=compile_s.get(label),
                 first_loss=first[label][0], first_loss_rel_diff_vs_default=abs(first[label][0] - ref) / abs(ref))
    torch_s = impls[TORCH]["median_s"]
    log("train: " + ", ".join(f"{k} {v['images_per_s']} images/s" for k, v in impls.items())
        + f" (other load {other})")
    return {"size": size, "batch": batch_size, "loss_network": f"VGG16 ({vgg.weights_source})",
            "gflop_per_step": round(flops / 1e9, 1) if flops else None, "other_load": other,
            "implementations": impls,
            "speed_vs_torch": {k: round(torch_s / v["median_s"], 2) for k, v in impls.items()}}


#: The folder runs' two states of JAX's persistent compilation cache (what the CLI entries turn on,
#: neuralstyle/entry.py): a first run that fills it, and a later run (a fresh process) that reads it.
CACHES = {"cold": "first run, empty persistent cache", "warm": "second run, a fresh process, cache filled"}


def folder_worker(spec: dict) -> dict:
    """One folder setting in this (fresh) process with the persistent compilation cache in
    ``spec["cache_dir"]`` as the CLI sets it up (:func:`neuralstyle.entry.enable_compilation_cache`:
    programs compiling in over ``CACHE_MIN_COMPILE_SECONDS`` are cached, which the summary records);
    returns run_setting's summary."""
    import jax

    from benchmarks.buckets import CompileClock, run_setting
    from neuralstyle.entry import enable_compilation_cache

    enable_compilation_cache(spec["cache_dir"])
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    summary, _ = run_setting(spec["kind"], spec["bucket"], Path(spec["folder"]), Path(spec["out"]),
                             spec["width"], spec["blocks"], CompileClock(), overlap=spec["overlap"],
                             steady=True)
    summary.pop("calls")
    summary["cache_min_compile_seconds"] = threshold
    return summary


#: The folder runs' two ways of running stylize_files (``overlap=False`` / ``True``).
MODES = {"in turn": False, "overlapped": True}


def measure_folder(image_dir: Path, sizes, models, buckets, width: int, blocks: int,
                   wait_quiet: float, max_load: float = 0.05, retries: int = 2) -> dict:
    """The folder case through :func:`benchmarks.buckets.run_setting` (for each of ``buckets``,
    ``None``: off), each setting in turn and overlapped (:data:`MODES`, next to each other), each
    in a fresh process, first with an empty persistent compilation cache (cold), then again in
    another fresh process reading the cache the first one filled (warm).  A run during which other
    processes used more than ``max_load`` of the CPU (first or no-compile pass) is repeated, up
    to ``retries`` times (a cold one with a new empty cache), after waiting for quiet; the row
    keeps the least loaded run and says how many runs it took."""
    import json
    import subprocess
    import sys

    from benchmarks.buckets import make_folder

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / "photos", image_dir, sizes, 4)
        env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}

        def worker(spec: dict) -> dict:
            if wait_quiet:
                wait_until_quiet(wait_quiet)
            done = subprocess.run([sys.executable, "-m", "benchmarks.fast_speed", "--folder-worker",
                                   json.dumps(spec)], env=env, check=True, capture_output=True, text=True)
            return json.loads(done.stdout.strip().splitlines()[-1])

        for kind in models:
            for b in buckets:
                label = "off" if b is None else f"{b} px"
                for mode, overlap in MODES.items():  # before and after next to each other
                    cache_dir = None
                    for cache in CACHES:
                        best, best_dir = None, None
                        for attempt in range(1, retries + 2):
                            run_dir = str(Path(tmp) / f"cache_{kind}_{label}_{mode}_{attempt}")
                            summary = worker({"kind": kind, "bucket": b, "folder": str(folder), "width": width,
                                              "blocks": blocks, "overlap": overlap,
                                              "cache_dir": run_dir if cache == "cold" else cache_dir,
                                              "out": str(Path(tmp) / f"{kind}_{label}_{mode}_{cache}")})
                            summary.update(cache=cache, mode=mode, runs=attempt,
                                           load=max(summary["other_load"] or 0.0, summary["other_load_steady"] or 0.0))
                            log(f"folder {kind}, bucket {label}, {mode}, {cache} cache (run {attempt}): "
                                f"{summary['wall_s']} s, exposed compile {summary['exposed_compile_s']} s "
                                f"({100 * summary['exposed_share']:.1f}%), compile CPU {summary['compile_cpu_s']} s, "
                                f"{summary['programs']} programs, other load {summary['other_load']} / "
                                f"{summary['other_load_steady']}")
                            if best is None or summary["load"] < best["load"]:
                                best, best_dir = summary, run_dir
                            if summary["load"] <= max_load:
                                break
                        best["runs"] = attempt
                        if cache == "cold":  # warm reads the cache of the cold run kept
                            cache_dir = best_dir
                        out[f"{kind}, bucket {label}, {mode}, {cache}"] = best
    return out


def main(argv=None):
    p = harness.parser("benchmarks.fast_speed", __doc__.splitlines()[0], "fast_speed")
    p.add_argument("--apply-sizes", default="512,1024", help="sides of the square apply images")
    p.add_argument("--runs", type=int, default=3, help="timed apply runs per implementation")
    p.add_argument("--steps", type=int, default=5, help="timed train steps per implementation")
    p.add_argument("--size", type=int, default=256, help="training crop side")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--weights", default="torchvision", help="VGG16 weights of the loss network: torchvision | null")
    p.add_argument("--bucket", type=int, default=128)
    p.add_argument("--folder-models", default="fast,arbitrary")
    p.add_argument("--folder-buckets", default=None,
                   help="comma-separated bucket settings of the folder rows, off or a step in px "
                        "(default: off,<--bucket>)")
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="wait up to S seconds for other processes to use < 10%% of the CPU before each phase")
    p.add_argument("--sections", default="apply,train,folder",
                   help="comma-separated: apply (with the arbitrary network's), train, folder")
    p.add_argument("--max-load", type=float, default=0.05,
                   help="folder rows: repeat a run during which other processes used more of the CPU")
    p.add_argument("--retries", type=int, default=2, help="folder rows: repeats of a loaded run at most")
    p.add_argument("--folder-worker", metavar="JSON", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    args = p.parse_args(argv)
    if args.folder_worker:
        import json

        print(json.dumps(folder_worker(json.loads(args.folder_worker))))
        return
    sections = set(args.sections.split(","))
    from benchmarks.buckets import QUICK_SIZES, SIZES

    folder_sizes = SIZES
    if args.quick:
        args.apply_sizes, args.runs, args.steps, args.size, args.batch = "64", 1, 1, 64, 2
        args.width, args.blocks, args.weights, args.bucket = 8, 1, "null", 32
        args.folder_models, folder_sizes, args.retries = "fast", QUICK_SIZES, 0
    if args.folder_buckets is None:
        args.folder_buckets = f"off,{args.bucket}"

    import jax

    try:
        import torch
    except ImportError:
        if sections <= {"folder"}:
            torch = None
        else:
            raise SystemExit("benchmarks.fast_speed compares against PyTorch eager, which is not installed "
                         "(pip install torch; it is never a dependency of neuralstyle)") from None
    from neuralstyle.fast import transform_net

    threads = None
    if torch is not None:
        from benchmarks.torch_reference import set_threads

        threads = set_threads(os.cpu_count())
    report = harness.report("benchmarks.fast_speed", argv, backend=jax.default_backend(),
                            torch_threads=threads, width=args.width, residual_blocks=args.blocks)
    net = transform_net(args.width, args.blocks, seed=0)
    report["transform_parameters"] = int(net.count_params())
    image_dir = Path(args.image_dir)
    sides = [int(s) for s in args.apply_sizes.split(",")]
    report["sections"] = sorted(sections)
    if "apply" in sections:
        report["apply"] = measure_apply(net, image_dir, sides, args.runs, args.wait_quiet)
        report["arbitrary_apply"] = measure_arbitrary(max(sides), image_dir, args.runs, args.wait_quiet,
                                                      max(1, args.width // 4))
    weights = None if args.weights in ("null", "none", "random") else args.weights
    if "train" in sections:
        report["train"] = measure_training(net, image_dir, args.size, args.batch, args.steps, weights,
                                           args.wait_quiet)
    if "folder" in sections:
        buckets = [None if b in ("off", "null", "none") else int(b) for b in args.folder_buckets.split(",")]
        report["folder"] = measure_folder(image_dir, folder_sizes, args.folder_models.split(","), buckets,
                                          args.width, args.blocks, args.wait_quiet, args.max_load,
                                          args.retries)
        report["folder_sizes"] = [list(s) for s in folder_sizes]
    report["torch_version"] = torch.__version__ if torch is not None else None
    harness.write_report(args.out, args.name, report, markdown(report))


def markdown(r: dict) -> str:
    if "apply" not in r and "train" not in r:  # --sections folder
        lines = harness.markdown_header("Feed-forward networks: a folder of photos of mixed sizes", r)
        lines += [f"Transform net width {r['width']}, {r['residual_blocks']} residual blocks "
                  f"({r['transform_parameters']:,} parameters), float32, the library's defaults (XLA's Eigen "
                  "convolutions, apply programs at LLVM level 1: neuralstyle/fast/xla.py); arbitrary-style "
                  f"transformer width {max(1, r['width'] // 4)}, random weights."]
        return "\n".join(lines + _folder_markdown(r)) + "\n"
    lines = harness.markdown_header("Feed-forward networks against PyTorch eager, in one run", r)
    lines += [f"Transform net width {r['width']}, {r['residual_blocks']} residual blocks "
              f"({r['transform_parameters']:,} parameters), float32; PyTorch {r['torch_version']} eager "
              f"with {r['torch_threads']} threads and the same weights.  'neuralstyle' is the library's default "
              "(`Stylizer`, `make_train_step`: XLA's Eigen convolutions, `conv_backend=\"eigen\"` in "
              "neuralstyle/fast/xla.py, the last 9x9 convolution in space-to-depth form and the "
              "upsampling convolutions in sub-pixel form, neuralstyle/fast/transform.py); 'before' is XLA's default CPU convolutions (YNNPACK "
              "fusions) with Keras's own layers, what the library ran until now.  Implementations take "
              "turns run by run; 'other load' is the other processes' share of the CPU meanwhile."]
    if "apply" in r:
        lines += _apply_markdown(r)
    if "train" in r:
        lines += _train_markdown(r)
    if "folder" in r:
        lines += _folder_markdown(r)
    return "\n".join(lines) + "\n"


def _apply_markdown(r: dict) -> list[str]:
    lines = ["", "## Apply (one square photo, warm)", "",
              "| side | implementation | s per megapixel | median s | x PyTorch speed | GFLOP/s | "
              "compile + first s | peak RSS above baseline MiB | max diff vs default | other load |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["apply"]:
        for k, v in row["implementations"].items():
            lines.append(f"| {row['side']} | {k} | {v['s_per_megapixel']} | {v['median_s']} | "
                         f"{row['speed_vs_torch'][k]} | {v['gflops_per_s']} | {v['first_call_s']} | "
                         f"{v['first_call_memory']['above_baseline_mib']} | {v['max_abs_diff_vs_default']:.1e} | "
                         f"{row['other_load']} |")
    lines += ["", "FLOPs per image (XLA cost analysis): "
              + ", ".join(f"{row['gflop']} GFLOP at {row['side']} px" for row in r["apply"]) + "."]
    a = r.get("arbitrary_apply")
    if a:
        lines += ["", f"Arbitrary-style transformer (width {a['width']}, random weights) at "
                  f"{a['side']}x{a['side']}, other load {a['other_load']}: "
                  + "; ".join(f"{k} {v['s_per_megapixel']} s/MP (compile + first {v['first_call_s']} s, "
                              f"max diff vs default {v['max_abs_diff_vs_default']:.1e})"
                              for k, v in a["implementations"].items()) + "."]
    return lines


def _train_markdown(r: dict) -> list[str]:
    t = r["train"]
    lines = ["", "## Training step", "",
              f"Batch {t['batch']} of {t['size']} px crops, loss network {t['loss_network']} "
              f"(content conv3_3, style conv1_2/2_2/3_3/4_3), Adam; {t['gflop_per_step']} GFLOP per step "
              f"(XLA cost analysis); other load {t['other_load']}.", "",
              "| implementation | images/s | median s/step | x PyTorch speed | GFLOP/s | compile s | "
              "peak RSS above baseline MiB (first step) | first loss | rel. diff vs default |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, v in t["implementations"].items():
        lines.append(f"| {k} | {v['images_per_s']} | {v['median_s']} | {t['speed_vs_torch'][k]} | "
                     f"{v['gflops_per_s']} | {v['compile_s'] if v['compile_s'] is not None else '-'} | "
                     f"{v['first_call_memory']['above_baseline_mib']} | {v['first_loss']:.6g} | "
                     f"{v['first_loss_rel_diff_vs_default']:.1e} |")
    return lines


def _cache_threshold(r: dict) -> str:
    """The persistent cache's compile-time threshold the folder runs had (0.5 s before it was recorded)."""
    found = {s.get("cache_min_compile_seconds", 0.5) for s in r.get("folder", {}).values() if isinstance(s, dict)}
    return " / ".join(f"{t:g}" for t in sorted(found)) or "?"


def _folder_markdown(r: dict) -> list[str]:
    sizes = r.get("folder_sizes", [])
    lines = ["", f"## A folder of {4 * len(sizes)} photos of {len(sizes)} sizes", "",
             f"Sizes (H x W, 4 each, interleaved in file order): {', '.join(f'{h}x{w}' for h, w in sizes)}; "
             "`neuralstyle.fast.stylize_files` with a fresh stylizer, each setting in a fresh process with "
             "JAX's persistent compilation cache on as the CLI sets it up (neuralstyle/entry.py; programs "
             f"compiling in over {_cache_threshold(r)} s are cached): **cold** = "
             f"{CACHES['cold']}; **warm** = {CACHES['warm']} (benchmarks/buckets.py's run_setting).  "
             "Mode **in turn** = `overlap=False` (one image after the other, each program compiled on "
             "first use: the library before); **overlapped** = `overlap=True` (the default: programs "
             "for the planned sizes compiled ahead in a background thread, decode and write in "
             "another; neuralstyle/fast/ahead.py).  Before and after ran next to each other in this run.", "",
             "Columns: **total s** = wall time of the first `stylize_files` pass (decode, stylize, encode "
             "and write included); **no-compile s** = the same stylizer over the folder again in the same "
             "mode, every program compiled by then; **exposed compile s** = total - no-compile: what "
             "compiling (with the other first-time costs: first executions, Python warm-up) added to "
             "the run's wall time (its share of total is the figure the <= "
             f"{COMPILE_SHARE_GOAL:.0%} goal is about); **compile CPU-s** = process CPU time of the first "
             "pass minus the no-compile pass: the work compiling cost, wherever it ran (2 cores: "
             "compiling ahead can hide about half of it at best while the network keeps both cores "
             "busy); **JAX compile s** = JAX's trace + lower + compile (or cache load) durations "
             "(jax.monitoring; a background compile's duration is its wall time while it shares the "
             "cores); **in turn, no compile s** = the folder once more with `overlap=False`, every "
             "program compiled (what decode/write overlap saves apart from compiling: compare with "
             "no-compile s); **other load** = other processes' share of the CPU during the first / the "
             "no-compile passes (this machine is shared); **runs** = how many runs the row took (a run under "
             "more than 5% other load is repeated after waiting for quiet, the least loaded one kept).", ""]
    rows = {(k.removesuffix(f", {s['cache']}").removesuffix(f", {s['mode']}"), s["cache"], s["mode"]): s
            for k, s in r["folder"].items() if "mode" in s}
    pairs = [(name, cache) for name, cache, mode in rows if mode == "in turn" and (name, cache, "overlapped") in rows]
    if pairs:
        def before_after(name, cache):
            a, b = rows[(name, cache, "in turn")], rows[(name, cache, "overlapped")]
            return [name, cache, f"{a['wall_s']} -> {b['wall_s']}", f"{a['exposed_compile_s']} -> {b['exposed_compile_s']}",
                    f"{100 * a['exposed_share']:.1f}% -> {100 * b['exposed_share']:.1f}%",
                    f"{a['compile_cpu_s']} -> {b['compile_cpu_s']}"]

        lines += ["Before (in turn) -> after (overlapped), from the rows below:", ""]
        lines += harness.markdown_table(["network, bucket", "cache", "total s", "exposed compile s", "exposed share",
                                         "compile CPU-s"], (before_after(*pair) for pair in pairs), align="llrrrr")
        lines += ["", "All rows:", ""]
    def row(k, s):
        cache, mode = s.get("cache", "cold"), s.get("mode", "in turn")
        name = k.removesuffix(f", {cache}").removesuffix(f", {mode}")
        return [name, cache, mode, s["programs"], s["wall_s"], s["steady_wall_s"], s["exposed_compile_s"],
                f"{100 * s['exposed_share']:.1f}%", s["compile_cpu_s"], s["compile_s"], s["steady_sequential_wall_s"],
                f"{s['other_load']:.2f} / {s['other_load_steady']:.2f}", s.get("runs", 1)]

    lines += harness.markdown_table(
        ["network, bucket", "cache", "mode", "programs", "total s", "no-compile s", "exposed compile s",
         "exposed share", "compile CPU-s", "JAX compile s", "in turn, no compile s", "other load", "runs"],
        (row(k, s) for k, s in r["folder"].items()), align="lll" + "r" * 10)
    return lines


if __name__ == "__main__":
    main()
