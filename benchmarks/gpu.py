"""The GPU report: ``python -m benchmarks.gpu`` on a machine with a CUDA GPU.

    python -m benchmarks.gpu --weights imagenet --out /tmp/gpu         # the whole report
    python -m benchmarks.gpu --only e2e --size 64 --iterations 3 --allow-cpu --weights random \\
        --out /tmp/gpu-smoke                                           # smoke run on a CPU

1. **End to end** (``e2e``), each in a fresh process, the way ``python -m neuralstyle.run`` runs a
   recipe (:func:`neuralstyle.run.run_from_config`: compose the config, load the weights and the
   images, compile, iterate, write ``result.png`` and ``metrics.json``), at ``--size`` px for
   ``--iterations`` iterations, in float32 and bfloat16 (``precision=``):

   * ``adam``: ``+experiment=vgg19_wave`` (the TensorFlow tutorial's Adam recipe);
   * ``lbfgs``: the same objective with ``optimizer=lbfgs``, one scale;
   * ``default``: the default recipe as shipped (L-BFGS over scales, 128 px up to ``--size``,
     100 iterations a scale).

   Reported: the worker process's wall time from its start (Python, imports, the GPU's start, the
   weights, compile, every iteration, the result written), the run's own wall and compile time, the
   time per iteration, the allocator's peak GPU memory (``peak_bytes_in_use``; the process
   reserves more, XLA preallocates 75% of the GPU by default), the final loss, and the result's
   loss re-evaluated under the float32 objective (from the written 8-bit ``result.png``), so the
   two precisions are compared on one objective.  ``--images-out`` keeps each result image.
2. **Step speed** (``speed``): ``benchmarks.speed`` at ``--speed-sizes`` with the PyTorch eager
   reference on the same GPU (``--torch-device cuda``; PyTorch's defaults, so cuDNN convolutions in
   TF32, as JAX's default precision on this GPU), in float32, then (``speed_bf16``) the JAX side
   alone in bfloat16.  Their reports are summarized in this one and kept whole in its JSON
   (``speed``); ``--speed-out`` also writes them there as ``<name>_speed`` and ``<name>_speed_bf16``.

Parts run in that order and the report is rewritten after each, so a run stopped by a time limit
keeps what it measured; ``--budget-s`` skips the parts that would start after that many seconds.

3. **Grading** (``--grade REPORT IMAGES``, on any machine, no GPU needed): the result images kept
   by ``--images-out`` graded with the quality benchmark's distances (LPIPS to the photo, SWD and
   Gram distance to the painting; torchvision VGG16, float32), added to the report, which is
   written again to ``--out/--name``.  This is how a report made on a lent GPU machine (which
   lacks the metric weights) gets its quality columns.

Peak GPU memory is the JAX allocator's ``peak_bytes_in_use``, which includes XLA's convolution
autotuning at compile time (algorithms with large workspaces are tried there; it takes what the
GPU has free).  What a compiled step holds while it runs is its buffer assignment
(``program_buffers_mib`` of the step-speed workers: temporaries, arguments, outputs).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import log

PRECISIONS = ("float32", "bfloat16")
RECIPES = {
    "adam": ["+experiment=vgg19_wave"],
    "lbfgs": ["+experiment=vgg19_wave", "optimizer=lbfgs"],
    "default": [],
}
PARTS = ("e2e", "speed", "speed_bf16", "default")


def parse_args(argv=None):
    p = harness.parser("python -m benchmarks.gpu", "End-to-end runs and step speed on a GPU "
                       "(JAX float32 / bfloat16 against PyTorch eager on the same GPU).", "gpu")
    p.add_argument("--weights", default="imagenet", help="backbone.weights of every run (default imagenet)")
    p.add_argument("--size", type=int, default=512, help="long edge of the end-to-end runs (default 512)")
    p.add_argument("--iterations", type=int, default=500,
                   help="iterations of the end-to-end adam and lbfgs runs (default 500)")
    p.add_argument("--speed-sizes", type=int, nargs="+", default=[256, 512, 1024],
                   help="sizes of the step-speed table (default 256 512 1024)")
    p.add_argument("--speed-steps", type=int, nargs=3, default=[5, 20, 10], metavar=("WARMUP", "ADAM", "LBFGS"),
                   help="warm-up Adam steps, timed Adam steps and timed L-BFGS iterations (default 5 20 10)")
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: all)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no part after this many seconds (default: no limit)")
    p.add_argument("--images-out", type=Path, default=None,
                   help="folder to copy the end-to-end results into as <recipe>_<precision>.png")
    p.add_argument("--speed-out", type=Path, default=None,
                   help="folder for benchmarks.speed's own reports (default: a temporary folder)")
    p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (smoke tests only)")
    p.add_argument("--grade", nargs=2, type=Path, metavar=("REPORT", "IMAGES"),
                   help="grade the result images in IMAGES of the report REPORT (a gpu.json); measure nothing")
    p.add_argument("--weights-note", default=None,
                   help="what --weights is, for the report (for example how a weights file was made)")
    p.add_argument("--metric-weights", choices=("torchvision", "random"), default="torchvision",
                   help="network of the --grade distances (default torchvision; random: a smoke run)")
    return p.parse_args(argv)


def gpu_description() -> str | None:
    """``nvidia-smi``'s name, driver and memory of the first GPU, or ``None`` without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


# --------------------------------------------------------------------------- the end-to-end worker


def e2e_worker(spec: dict) -> dict:
    """One recipe run through :func:`neuralstyle.run.run_from_config` (in a worker process),
    then its result re-evaluated under the float32 objective."""
    import jax
    import jax.numpy as jnp

    from benchmarks.speed.jax_worker import device_peak_mib
    from neuralstyle import load_image
    from neuralstyle.recipe import build_run, compose
    from neuralstyle.run import run_from_config

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose("run", spec["overrides"])
        start = time.perf_counter()
        final_loss = run_from_config(cfg, Path(tmp))
        run_wall = time.perf_counter() - start
        peak = device_peak_mib()
        metrics = json.loads((Path(tmp) / "metrics.json").read_text())
        result = load_image(Path(tmp) / "result.png")
        if spec.get("image_out"):
            Path(spec["image_out"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / "result.png", spec["image_out"])
    parts = build_run(compose("run", [*spec["overrides"], "precision=float32"]))  # same images as the run
    reference, params = parts.objective, parts.objective.params
    targets = jax.jit(reference.targets)(params, jnp.asarray(parts.content)[None], jnp.asarray(parts.style)[None])
    value, terms = jax.jit(reference)(params, jnp.asarray(result, jnp.float32)[None], targets)
    levels = metrics.get("levels") or [metrics]
    per_iteration_ms = [1000 * lv["wall_time_s"] / max(lv["steps"], 1) for lv in levels]  # wall: after compiling
    row = {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
           "overrides": spec["overrides"], "final_loss": float(final_loss),
           "float32_loss_of_result": {"total": float(value), **{k: float(v) for k, v in terms.items()}},
           "run_wall_s": round(run_wall, 2), "compile_s": round(metrics["compile_time_s"], 2),
           "steps": metrics["steps"], "scales": metrics.get("scales"),
           "ms_per_iteration": [round(v, 2) for v in per_iteration_ms],
           "function_evaluations": metrics.get("function_evaluations"),
           "gpu_peak_mib": peak, "weights": metrics["backbone"]["weights"] if "backbone" in metrics else None}
    log(f"  [gpu e2e] {' '.join(spec['overrides'])}: run {row['run_wall_s']} s (compile {row['compile_s']} s), "
        f"{row['ms_per_iteration']} ms/iteration, peak GPU {peak} MiB, final loss {final_loss:.4g}, "
        f"float32 loss of the result {float(value):.4g}")
    return row


# --------------------------------------------------------------------------- parts


def e2e_overrides(args, recipe: str, precision: str) -> list[str]:
    steps = [] if recipe == "default" else [f"steps={args.iterations}"]
    return [*RECIPES[recipe], f"size={args.size}", *steps, f"precision={precision}",
            f"backbone.weights={args.weights}", f"image_dir={args.image_dir}", "progress=false"]


def run_e2e(args, report: dict, recipes) -> None:
    from benchmarks.speed.workers import run_worker

    for recipe in recipes:
        for precision in PRECISIONS:
            key = f"{recipe}_{precision}"
            log(f"end to end: {key} ...")
            keep = args.images_out is not None and recipe != "default"
            spec = {"overrides": e2e_overrides(args, recipe, precision),
                    "image_out": str(args.images_out / f"{key}.png") if keep else None}
            res = run_worker("gpu_e2e", spec, None, timeout=900)
            if "error" in res:
                report["warnings"].append(f"end to end {key} failed: {res['error']}")
                log(f"  {res['error']}\n{res.get('output_tail', '')}")
            report["e2e"][key] = res


def run_speed(args, report: dict, precision: str) -> None:
    """``benchmarks.speed`` in ``precision`` (float32 with the PyTorch reference on the GPU); its
    report goes into ``report["speed"]`` (and stays in ``--speed-out`` if given)."""
    from benchmarks.speed import main as speed_main

    name = f"{args.name}_speed" + ("" if precision == "float32" else "_bf16")
    warmup, adam, lbfgs = args.speed_steps
    folder = (contextlib.nullcontext(args.speed_out) if args.speed_out is not None
              else tempfile.TemporaryDirectory(prefix="ns-gpu-speed-"))
    with folder as out:
        argv = ["--sizes", *map(str, args.speed_sizes), "--warmup", str(warmup), "--steps", str(adam),
                "--lbfgs-steps", str(lbfgs), "--ttt-size", "0", "--weights", args.weights,
                "--image-dir", str(args.image_dir), "--out", str(out), "--name", name,
                "--override", f"precision={precision}"]
        argv += ["--torch-device", "cuda"] if precision == "float32" else ["--no-torch"]
        log(f"step speed, {precision}: python -m benchmarks.speed {' '.join(argv)}")
        status = speed_main(argv)
        path = Path(out) / f"{name}.json"
        if status != 0 or not path.exists():
            report["warnings"].append(f"step speed {precision}: benchmarks.speed exited with {status}")
            return
        report["speed"][precision] = json.loads(path.read_text())


def grade(report: dict, images: Path, image_dir, metric_weights: str = "torchvision") -> None:
    """Add ``quality`` (LPIPS to the photo, SWD and Gram distance to the painting) to every
    end-to-end row whose result image ``<images>/<run>.png`` exists."""
    from neuralstyle import load_image
    from neuralstyle.metrics import metrics_network
    from neuralstyle.recipe import build_run, compose

    metrics, references = metrics_network(metric_weights), {}
    for key, row in report["e2e"].items():
        path = images / f"{key}.png"
        if "error" in row or not path.exists():
            continue
        overrides = [o for o in row["overrides"] if not o.startswith(("image_dir=", "backbone.weights="))]
        if tuple(overrides) not in references:  # the run's own content and style images
            parts = build_run(compose("run", [*overrides, f"image_dir={image_dir}", "backbone.weights=null",
                                              "precision=float32"]))
            references[tuple(overrides)] = (metrics.features(parts.content), metrics.style_statistics(parts.style))
        photo, painting = references[tuple(overrides)]
        row["quality"] = {**metrics.distances(load_image(path), photo, painting), "metric_weights": metric_weights}
        log(f"graded {key}: " + ", ".join(f"{k} {v:.4f}" for k, v in row["quality"].items() if k != "metric_weights"))


# --------------------------------------------------------------------------- report


def _mib(v) -> str:
    return "?" if v is None else f"{v:,.0f}"


def e2e_rows(report: dict) -> list[list]:
    rows = []
    for key, r in report["e2e"].items():
        if "error" in r:
            rows.append([key] + ["failed"] * 11)
            continue
        per_it = "/".join(f"{v:.1f}" for v in r["ms_per_iteration"])
        q = r.get("quality") or {}
        quality = [f"{q[k]:.3f}" if k in q else "–" for k in ("lpips", "swd", "gram")]
        rows.append([key, r["steps"], f"{r['process_wall_s']:.1f}", f"{r['run_wall_s']:.1f}", f"{r['compile_s']:.1f}",
                     per_it, _mib(r["gpu_peak_mib"]), f"{r['final_loss']:.4g}",
                     f"{r['float32_loss_of_result']['total']:.4g}", *quality])
    return rows


def speed_rows(report: dict) -> list[list]:
    """Per size: JAX float32 / bfloat16 and PyTorch ms per Adam step and L-BFGS iteration, the
    ratios (PyTorch's time / JAX's: above 1 is JAX faster) and peak GPU memory."""
    f32, bf16 = report["speed"].get("float32"), report["speed"].get("bfloat16")
    rows = []
    for size in (f32 or bf16 or {}).get("config", {}).get("sizes", []):
        s = str(size)

        def get(rep, side, part, key="median_ms"):
            try:
                return (rep[side]["sizes"][s][part] or {}).get(key)
            except (KeyError, TypeError):
                return None

        def ms(v):
            return "?" if v is None else f"{v:.1f}"

        def ratio(a, b):
            return "?" if a is None or b is None else f"{a / b:.2f}x"

        ja, jl = get(f32, "jax", "adam"), get(f32, "jax", "lbfgs")
        ba, bl = get(bf16, "jax", "adam"), get(bf16, "jax", "lbfgs")
        ta, tl = get(f32, "torch", "adam"), get(f32, "torch", "lbfgs")
        jpeak = ((f32 or {}).get("jax") or {}).get("sizes", {}).get(s, {}).get("gpu_peak_mib")
        bpeak = ((bf16 or {}).get("jax") or {}).get("sizes", {}).get(s, {}).get("gpu_peak_mib")
        tpeak = max([v for v in (get(f32, "torch", "adam", "gpu_peak_mib"), get(f32, "torch", "lbfgs", "gpu_peak_mib"))
                     if v is not None], default=None)
        buffers = get(f32, "jax", "adam", "program_buffers_mib")
        rows.append([size, ms(ja), ms(ba), ms(ta), ratio(ta, ja), ratio(ta, ba), ms(jl), ms(bl), ms(tl),
                     ratio(tl, jl), _mib(jpeak), "–" if not buffers else _mib(sum(buffers.values())),
                     _mib(bpeak), _mib(tpeak)])
    return rows


def markdown(report: dict) -> str:
    lines = harness.markdown_header("GPU: end to end and step speed", report)
    lines += [f"- GPU: {report.get('gpu') or 'none found'}",
              f"- weights: {report['config']['weights']}"
              + (f" ({report['config']['weights_note']})" if report["config"].get("weights_note") else ""), ""]
    if report["e2e"]:
        lines += ["## End to end", "",
                  f"Through `neuralstyle.run.run_from_config` (what `python -m neuralstyle.run` runs), "
                  f"{report['config']['size']} px, each in a fresh process.  process: the worker's wall time "
                  "from its start (imports, GPU start, weights, images, compile, iterations, result written); "
                  "run: `run_from_config` alone; ms/iteration: the run's time after compiling per iteration "
                  "(per scale for the default recipe); peak: the JAX allocator's `peak_bytes_in_use`; "
                  "float32 loss: the written result re-evaluated under the float32 objective.", ""]
        lines += harness.markdown_table(
            ["run", "iterations", "process s", "run s", "compile s", "ms/iteration", "peak GPU MiB",
             "final loss", "float32 loss of result", "LPIPS", "SWD", "Gram"], e2e_rows(report))
        lines += ["", "LPIPS (to the photo), SWD and Gram (to the painting): the quality benchmark's "
                  "distances on torchvision VGG16, float32, lower is better (`--grade`; – where not graded)."]
        lines.append("")
    if report["speed"]:
        f32 = report["speed"].get("float32") or {}
        torch_info = (f32.get("torch") or {})
        lines += ["## Step speed", "",
                  "`benchmarks.speed` on this GPU: median ms per Adam step and per L-BFGS iteration "
                  f"(plan: {(f32 or report['speed'].get('bfloat16', {})).get('config', {}).get('steps_desc', '?')}); "
                  "vs PyTorch: PyTorch's time / JAX's (above 1: JAX faster).  PyTorch eager "
                  f"{torch_info.get('torch', '?')} on {torch_info.get('device', '?')} "
                  f"(cuDNN TF32 {torch_info.get('cudnn_allow_tf32', '?')}, matmul TF32 "
                  f"{torch_info.get('matmul_allow_tf32', '?')}); JAX default matmul precision "
                  f"{(f32.get('jax') or {}).get('jax_default_matmul_precision', '?')}.  Peak GPU: JAX "
                  "allocator peak of the size's worker process (Adam and L-BFGS, compile-time "
                  "autotuning included); step buffers: the compiled float32 Adam step's temporaries, "
                  "arguments and outputs (– where the report predates that column); PyTorch "
                  "`max_memory_allocated` over its Adam and L-BFGS phases.", ""]
        lines += harness.markdown_table(
            ["px", "Adam f32 ms", "Adam bf16 ms", "PyTorch Adam ms", "f32 vs PyTorch", "bf16 vs PyTorch",
             "L-BFGS f32 ms", "L-BFGS bf16 ms", "torch LBFGS ms", "f32 vs torch", "peak f32 MiB",
             "step buffers f32 MiB", "peak bf16 MiB", "peak PyTorch MiB"], speed_rows(report))
        checks = f32.get("checks") or {}
        if checks:
            lines += ["", "PyTorch objective against JAX's at the content image (relative difference): "
                      + ", ".join(f"{s} px {c['relative_difference']:.1e}" for s, c in checks.items())]
    skipped = report.get("skipped")
    if skipped:
        lines += ["", f"Not run (time budget): {', '.join(skipped)}."]
    lines += harness.warnings_section(report)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.grade:
        report_path, images = args.grade
        try:
            report = json.loads(report_path.read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"benchmarks.gpu --grade: cannot read the report {report_path}: {err}") from None
        if not images.is_dir():
            raise SystemExit(f"benchmarks.gpu --grade: {images} is not a folder of result images")
        grade(report, images, args.image_dir, args.metric_weights)
        if args.weights_note:
            report["config"]["weights_note"] = args.weights_note
        harness.write_report(Path(args.out), args.name, report, markdown(report))
        return 0
    started = time.perf_counter()
    gpu = gpu_description()
    if gpu is None and not args.allow_cpu:
        raise SystemExit("benchmarks.gpu: no NVIDIA GPU found (nvidia-smi gave none); "
                         "--allow-cpu runs it on the CPU as a smoke test")
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    report = harness.report("benchmarks.gpu", argv, gpu=gpu, e2e={}, speed={}, skipped=[], warnings=[],
                            config={"size": args.size, "iterations": args.iterations,
                                    "speed_sizes": args.speed_sizes, "speed_steps": args.speed_steps,
                                    "weights": args.weights, "weights_note": args.weights_note,
                                    "parts": args.only})
    log(f"benchmarks.gpu on {gpu or 'the CPU (--allow-cpu)'}")
    plan = [("e2e", lambda: run_e2e(args, report, ("adam", "lbfgs"))),
            ("speed", lambda: run_speed(args, report, "float32")),
            ("speed_bf16", lambda: run_speed(args, report, "bfloat16")),
            ("default", lambda: run_e2e(args, report, ("default",)))]
    for part, run in plan:
        if part not in args.only:
            continue
        if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            report["skipped"].append(part)
            continue
        run()
        report["total_wall_s"] = round(time.perf_counter() - started, 1)
        harness.write_report(args.out, args.name, report, markdown(report))
    harness.write_report(args.out, args.name, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
