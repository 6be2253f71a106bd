"""Size buckets (neuralstyle/fast/buckets.py): a folder of photos of mixed sizes, with and without buckets.

    python -m benchmarks.buckets [--bucket 128] [--models fast,arbitrary] [--profile-size 1024]
                                 [--out benchmarks/results]

A folder of 20 JPEGs, 4 each of 5 sizes with mixed aspects (long edges 320, 480, 640, 800 and
1024 px, cut and resized from the example photos, sizes interleaved in file order), is stylized
through :func:`neuralstyle.fast.stylize_files`, the code path of ``python -m neuralstyle.apply``,
once per setting (``bucket=null``, then ``--bucket``), each in a fresh stylizer (fresh jit caches),
for

* ``fast``: the Johnson transform net of the recipes (width 32, 5 residual blocks; random weights:
  the time does not depend on them), :class:`neuralstyle.fast.Stylizer`;
* ``arbitrary``: the quarter-width conditional transformer of :mod:`neuralstyle.arbitrary` (random
  weights) with one fixed style embedding, as ``apply model=arbitrary`` runs it.

Every call is timed.  Compile time is what JAX reports (``jax.monitoring`` duration events) for
tracing, lowering and XLA compilation during the setting; as a cross-check, each program's first
call minus the median of its later calls (same buffer shape, so the same work) is reported too
where every program is called more than once.  Reported: total time, compile time, compile
share, programs compiled, and the max |difference| between the two settings' saved results.
``--distinct``: 20 photos of 20 different sizes (each near one of the 5), the case buckets are
for.

``--profile-size S`` also times every layer of the fast network alone at ``S x S`` (each layer
jitted on its own input, median of 3) and sums by kind: where the apply time goes.  ``--quick`` is
the smoke setting (tiny widths and sizes).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import Load, log

#: (height, width) of the five photo sizes: long edges 320 ... 1024, landscape and portrait.
SIZES = [(213, 320), (480, 360), (480, 640), (450, 800), (1024, 768)]
QUICK_SIZES = [(24, 40), (48, 36), (40, 64), (36, 72), (72, 56)]


def distinct_sizes(sizes, per_size: int = 4, seed: int = 0) -> list[tuple[int, int]]:
    """``per_size`` different sizes near each of ``sizes`` (each side changed by up to 12%, e.g.
    photos cropped by hand): every photo of the folder has its own size."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for k in range(per_size):
        for h, w in sizes:
            f = 1.0 - 0.12 * rng.random(2) if k else (1.0, 1.0)
            out.append((max(8, int(h * f[0])), max(8, int(w * f[1]))))
    return out
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "great_wave.jpg")


def make_folder(folder: Path, image_dir: Path, sizes, per_size: int = 4) -> Path:
    """``per_size`` JPEGs of each size (photo ``i`` has size ``sizes[i % len(sizes)]``; with
    ``per_size=1``, one photo per entry of ``sizes``)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(image_dir / n).convert("RGB") for n in PHOTOS if (image_dir / n).is_file()]
    for i in range(per_size * len(sizes)):
        h, w = sizes[i % len(sizes)]
        im = sources[i % len(sources)]
        W, H = im.size
        scale = min(W / w, H / h)  # the largest crop of the photo's aspect h:w
        cw, ch = int(w * scale), int(h * scale)
        im.crop((0, 0, cw, ch)).resize((w, h), Image.LANCZOS).save(folder / f"{i:02d}.jpg", quality=92)
    return folder


class Timed:
    """Wraps a stylizer callable: the time of every call and whether it was the first of its
    program (``key``: the program's input shape); forwards ``precompile`` (compiling ahead) and
    ``plan_sizes`` (the folder's sizes), as the CLI's stylizers have them."""

    def __init__(self, fn, key, precompile=None, plan_sizes=None):
        self.fn, self.key, self.calls, self.seen = fn, key, [], set()
        if precompile is not None:
            self.precompile = precompile
        if plan_sizes is not None:
            self.plan_sizes = plan_sizes

    def __call__(self, image, preserve_colors=None):
        import jax

        key = tuple(self.key(image.shape[:2]))
        t = time.perf_counter()
        out = jax.block_until_ready(self.fn(image, preserve_colors))
        dt = time.perf_counter() - t
        self.calls.append({"shape": list(image.shape[:2]), "key": list(key), "s": dt,
                           "new_program": key not in self.seen})
        self.seen.add(key)
        return out


#: JAX's compile-phase events (jax/_src/dispatch.py): tracing, lowering, XLA compile.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling while it is ``active`` (from
    ``jax.monitoring``'s duration events)."""

    def __init__(self):
        import jax

        self.active, self.seconds = False, 0.0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **_):
        if self.active and event in COMPILE_EVENTS:
            self.seconds += duration


def summarize(calls: list[dict], wall_s: float) -> dict:
    """Total, compile (first call minus the median later call of its program; ``None`` for a
    program called once) and share."""
    by_key: dict[tuple, list] = {}
    for c in calls:
        by_key.setdefault(tuple(c["key"]), []).append(c)
    compile_s = 0.0
    for group in by_key.values():
        later = [c["s"] for c in group if not c["new_program"]]
        if not later:
            compile_s = None
            break
        steady = statistics.median(later)
        compile_s += sum(max(0.0, c["s"] - steady) for c in group if c["new_program"])
    total = sum(c["s"] for c in calls)
    return {"images": len(calls), "programs": sum(c["new_program"] for c in calls),
            "stylize_s": round(total, 2), "wall_s": round(wall_s, 2),
            "first_minus_steady_s": None if compile_s is None else round(compile_s, 2),
            "calls": [{**c, "s": round(c["s"], 3)} for c in calls]}


def run_setting(model_kind: str, bucket, folder: Path, out: Path, width: int, blocks: int,
                clock: CompileClock, overlap: bool = False, steady: bool = False) -> tuple[dict, dict]:
    """Stylize ``folder`` with a fresh stylizer (``overlap``: compiling ahead and decoding / writing
    in background threads, :func:`neuralstyle.fast.stylize_files`); returns (summary, {file:
    result}).

    The summary's ``wall_s`` and ``cpu_s`` are the wall time and the process's CPU time of that
    first pass (decode, stylize, encode and write included), ``compile_s`` JAX's trace + lower +
    compile durations meanwhile (in any thread; a background compile's duration is its wall time,
    longer when it shares the cores).  ``steady=True`` stylizes the folder twice more with the
    same stylizer, every program compiled by then: once in the same mode (``steady_wall_s``,
    ``steady_cpu_s``) and once one image after the other (``steady_sequential_wall_s``).  Then
    ``exposed_compile_s = wall_s - steady_wall_s`` is the time compiling added to the run (on
    its critical path), ``exposed_share`` its share of ``wall_s``, and ``compile_cpu_s = cpu_s -
    steady_cpu_s`` the CPU time compiling cost, wherever it ran."""
    import numpy as np

    from neuralstyle.fast import Stylizer, stylize_files, transform_net
    from neuralstyle.fast.transform import glorot_uniform
    from neuralstyle.images import load_image

    if model_kind == "fast":
        st = Stylizer(transform_net(width, blocks, seed=0), bucket=bucket)
        fn, precompile, plan_sizes = st, st.precompile, st.plan_sizes
        key = (lambda hw: st.program_shape(*hw))
    else:
        from neuralstyle.arbitrary import ArbitraryStylizer, style_predictor, style_transformer

        transformer = style_transformer(weights=None, width=width // 4 or 1)
        glorot_uniform(transformer, 0)
        net = ArbitraryStylizer(style_predictor(weights=None), transformer, bucket=bucket)
        embedding = np.random.default_rng(0).normal(size=(100,)).astype(np.float32)

        def fn(image, preserve_colors=None):  # what neuralstyle.apply.arbitrary_stylizer returns
            return net.stylize(image, embedding, strength=1.0, preserve_colors=preserve_colors)

        def precompile(shape):  # and its precompile
            net.precompile(shape, strength=1.0)

        plan_sizes = net.plan_sizes
        key = (lambda hw: net.program_shape(*hw))
    timed = Timed(fn, key, precompile, plan_sizes)

    def run(mode: bool) -> tuple[list, float, float]:
        t, c = time.perf_counter(), time.process_time()
        written = stylize_files(timed, folder, out, out, say=lambda m: None, overlap=mode)
        return written, time.perf_counter() - t, time.process_time() - c

    clock.active, clock.seconds = True, 0.0
    with Load() as load:
        written, wall, cpu = run(overlap)
    clock.active = False
    summary = summarize(timed.calls, wall)
    summary.update(overlap=overlap, wall_s=round(wall, 2), cpu_s=round(cpu, 2),
                   compile_s=round(clock.seconds, 2), compile_share=round(clock.seconds / summary["stylize_s"], 3),
                   other_load=load.foreign)
    results = {p.name: load_image(p) for p in written}
    if steady:
        with Load() as later:
            _, steady_wall, steady_cpu = run(overlap)
            _, sequential_wall, _ = run(False) if overlap else (None, steady_wall, None)
        exposed = wall - steady_wall
        summary.update(steady_wall_s=round(steady_wall, 2), steady_cpu_s=round(steady_cpu, 2),
                       steady_sequential_wall_s=round(sequential_wall, 2),
                       exposed_compile_s=round(exposed, 2), exposed_share=round(exposed / wall, 3),
                       compile_cpu_s=round(cpu - steady_cpu, 2), other_load_steady=later.foreign)
    return summary, results


def profile_layers(width: int, blocks: int, size: int) -> dict:
    """Seconds per layer of the fast network at ``size x size`` (each layer jitted alone on its own
    input; median of 3 after a compile run), summed by kind, and the whole network's time."""
    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np

    from neuralstyle.fast import Stylizer, transform_net
    from neuralstyle.fast.transform import CropLike, PadToMultiple, ReflectionPadding2D

    net = transform_net(width, blocks, seed=0)

    def kind(layer):
        if isinstance(layer, (ReflectionPadding2D, PadToMultiple)):
            return "reflection padding"
        if isinstance(layer, keras.layers.GroupNormalization):
            return "instance norm"
        if isinstance(layer, keras.layers.UpSampling2D):
            return "nearest upsampling"
        if isinstance(layer, keras.layers.Conv2D):
            return f"convolution {layer.kernel_size[0]}x{layer.kernel_size[1]}" + (
                " stride 2" if layer.strides[0] == 2 else "")
        if isinstance(layer, CropLike):
            return "crop"
        return "pointwise (ReLU, add, tanh, rescale)"

    rows = []

    def operation(layer):
        def call(*args):
            fn = jax.jit(lambda *a: layer(*a))
            out = jax.block_until_ready(fn(*args))
            runs = []
            for _ in range(3):
                t = time.perf_counter()
                jax.block_until_ready(fn(*args))
                runs.append(time.perf_counter() - t)
            rows.append({"layer": layer.name, "kind": kind(layer), "s": statistics.median(runs)})
            return out
        return call

    image = jnp.asarray(np.random.default_rng(0).random((1, size, size, 3), np.float32))
    net._run_through_graph([image], operation_fn=operation)
    totals: dict[str, float] = {}
    for r in rows:
        totals[r["kind"]] = totals.get(r["kind"], 0.0) + r["s"]
    whole = {}
    for bucket in (None, size):
        st = Stylizer(net, bucket=bucket)
        x = np.asarray(image[0])
        st(x)
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            st(x)
            runs.append(time.perf_counter() - t)
        whole["bucketed (exact fit)" if bucket else "unbucketed"] = round(statistics.median(runs), 3)
    layer_sum = sum(totals.values())
    return {"size": size, "width": width, "residual_blocks": blocks,
            "by_kind_s": {k: round(v, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
            "by_kind_share": {k: round(v / layer_sum, 3) for k, v in totals.items()},
            "layers_sum_s": round(layer_sum, 3), "whole_network_s": whole,
            "layers": [{**r, "s": round(r["s"], 4)} for r in rows]}


def main(argv=None):
    p = harness.parser("benchmarks.buckets", __doc__.splitlines()[0], "buckets")
    p.add_argument("--bucket", type=int, default=128, help="bucket step in px for the bucketed setting")
    p.add_argument("--models", default="fast,arbitrary")
    p.add_argument("--width", type=int, default=32, help="fast network width (arbitrary: width / 4)")
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--profile-size", type=int, default=1024, help="0: no layer profile")
    p.add_argument("--distinct", action="store_true",
                   help="20 photos of 20 different sizes (near the 5 sizes) instead of 4 of each")
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    args = p.parse_args(argv)
    sizes = SIZES
    if args.quick:
        sizes, args.width, args.blocks, args.profile_size, args.bucket = QUICK_SIZES, 4, 1, 32, 32
    per_size = 4
    if args.distinct:
        sizes, per_size = distinct_sizes(sizes), 1

    import jax
    import numpy as np

    report = harness.report("benchmarks.buckets", argv, backend=jax.default_backend(),
                            sizes=[list(s) for s in sizes], photos_per_size=per_size, bucket=args.bucket)
    results, clock = {}, CompileClock()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / "photos", Path(args.image_dir), sizes, per_size)
        for kind in args.models.split(","):
            outputs, rows = {}, {}
            for bucket in (None, args.bucket):
                label = "off" if bucket is None else f"{bucket} px"
                summary, outputs[label] = run_setting(kind, bucket, folder, Path(tmp) / f"{kind}_{label}",
                                                      args.width, args.blocks, clock)
                rows[label] = summary
                log(f"{kind}, bucket {label}: {summary['stylize_s']} s for {summary['images']} photos, "
                    f"{summary['programs']} programs, compile {summary['compile_s']} s "
                    f"({100 * summary['compile_share']:.1f}%), other load {summary['other_load']}")
            a, b = outputs.values()
            diff = max(float(np.abs(a[n] - b[n]).max()) for n in a)  # 8-bit PNGs: 0 or 1/255
            results[kind] = {"settings": rows, "max_abs_diff_saved_png": round(diff, 5)}
    report["results"] = results
    if args.profile_size:
        log(f"profiling the fast network's layers at {args.profile_size} px ...")
        report["profile"] = profile_layers(args.width, args.blocks, args.profile_size)
    harness.write_report(args.out, args.name, report, markdown(report))


def markdown(r: dict) -> str:
    n = len(r["sizes"]) * r["photos_per_size"]
    lines = harness.markdown_header(f"Size buckets: {n} photos of {len(r['sizes'])} sizes, with and "
                                    "without buckets", r)
    lines += [f"Photos (H x W, {r['photos_per_size']} each, interleaved): "
              f"{', '.join(f'{h}x{w}' for h, w in r['sizes'])}; "
              "stylized through `neuralstyle.fast.stylize_files` (the apply code path), a fresh "
              "stylizer per setting.  Compile = JAX's own trace + lower + XLA-compile durations "
              "(jax.monitoring); cross-check: first call of a program minus the median later call of "
              "the same program (- where a program ran once).  Other load: other processes' share "
              "of the CPU meanwhile (this machine is shared).", "",
              "| model | bucket | programs | total stylize s | compile s | compile share | first - steady s | other load |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for kind, res in r["results"].items():
        for label, s in res["settings"].items():
            lines.append(f"| {kind} | {label} | {s['programs']} | {s['stylize_s']} | {s['compile_s']} | "
                         f"{100 * s['compile_share']:.1f}% | {s['first_minus_steady_s'] if s['first_minus_steady_s'] is not None else '-'} | "
                         f"{s['other_load']} |")
    lines.append("")
    for kind, res in r["results"].items():
        lines.append(f"- {kind}: max |difference| between the settings' saved 8-bit results: "
                     f"{res['max_abs_diff_saved_png']} (in float32 before saving: about 1e-6, "
                     "tests/test_size_buckets.py)")
    prof = r.get("profile")
    if prof:
        lines += ["", f"## Where the fast network's time goes at {prof['size']}x{prof['size']}", "",
                  f"Width {prof['width']}, {prof['residual_blocks']} residual blocks; each layer "
                  "jitted alone on its own input (median of 3), summed by kind "
                  f"(sum {prof['layers_sum_s']} s; the whole network in one program: "
                  + ", ".join(f"{k} {v} s" for k, v in prof["whole_network_s"].items()) + ").", "",
                  "| kind | seconds | share |", "|---|---:|---:|"]
        for k, v in prof["by_kind_s"].items():
            lines.append(f"| {k} | {v} | {100 * prof['by_kind_share'][k]:.1f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
