"""Per-machine choices of how the convolutions run, measured once and cached.

Which CPU convolution path is fastest depends on the machine (AVX2 or AVX-512, cache sizes, core
count) and on the installed XLA, so the library does not guess where it can measure:

    python -m neuralstyle.tune            # about a minute; writes the tuning file
    python -m neuralstyle.tune --show     # what is cached for this machine

measures on this machine, for this jaxlib, and caches in a JSON file (:func:`tuning_file`:
``$NEURALSTYLE_TUNING_FILE``, else ``$XDG_CACHE_HOME/neuralstyle/tuning.json``, else
``~/.cache/neuralstyle/tuning.json``), one entry per machine (:func:`machine_key`: CPU model, its
SIMD flags, core count, backend and jaxlib version):

1. ``winograd_channels``: for each distinct 3x3 convolution of VGG19 (input and output channels,
   at the spatial size it has for a ``size`` px image), whether Winograd F(2x2, 3x3)
   (:mod:`neuralstyle.backbones.winograd`) or XLA's convolution computes its forward pass plus
   input gradient faster.  ``backbone.conv=auto`` then uses Winograd for exactly the channel
   pairs that won (:func:`tuned_winograd_channels`, read by
   :func:`neuralstyle.backbones.vgg.winograd_layers`).
2. ``step_conv_backend``: whether the whole VGG gradient program (the convolutions of an
   optimization step, with the Winograd choice of 1.) runs faster with XLA's default CPU
   convolutions (YNNPACK fusions in jaxlib 0.10, ``"xla"``) or XLA's Eigen convolutions
   (``"eigen"``); the optimization driver compiles its programs with the winner's options
   (:func:`step_compiler_options`).
3. ``fast_conv_backend``: the same choice for the feed-forward transform network's apply
   (:mod:`neuralstyle.fast.xla`, whose ``conv_backend="auto"`` default reads it).

Without a tuning for this machine (the file is absent, is for other machines, or cannot be read:
a warning names the file) every choice falls back to a fixed rule measured on a 2-core Xeon
(AVX-512): Winograd for layers with at least 256 input and output channels, XLA's default for the
optimization programs, Eigen for the feed-forward networks.  A measurement departs from that rule
only where the other path was faster by more than :data:`MARGIN` (3%), so timing noise does not
flip a choice.  All choices compute the same
functions to float32 rounding (each path is tested for equal features / outputs), so a tuning
changes speed, never results beyond rounding.  A GPU or TPU is not tuned: there the compilers
choose their own algorithms.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Optional

from .errors import ConfigError

TUNING_ENV = "NEURALSTYLE_TUNING_FILE"
#: Version of the tuning record's layout; a record of another version is ignored.
FORMAT = 1
#: The CPU flags that decide which kernels the libraries pick.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
BACKENDS = ("xla", "eigen")
#: A measured alternative replaces the fixed rule's choice only when it is faster by more than this
#: fraction: the two paths compute the same function, and differences of a few percent are within
#: what a repeated timing on a shared machine moves by (the Xeon's VGG19 gradient measured 291 ms
#: with XLA's default and 287 ms with Eigen: not a reason to leave the default).
MARGIN = 0.03
#: The optimization programs' convolutions without a tuning: XLA's default.
UNTUNED_STEP_BACKEND = "xla"


# --------------------------------------------------------------------------- where, which machine


def tuning_file() -> Path:
    """The tuning file: ``$NEURALSTYLE_TUNING_FILE``, else ``$XDG_CACHE_HOME/neuralstyle/tuning.json``,
    else ``~/.cache/neuralstyle/tuning.json``."""
    if os.environ.get(TUNING_ENV):
        return Path(os.environ[TUNING_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "neuralstyle" / "tuning.json"


def machine_fingerprint() -> dict:
    """What a tuning is valid for: CPU model, its SIMD flags (:data:`ISA_FLAGS`), core count, JAX
    backend and jaxlib version."""
    import jax
    import jaxlib

    model, flags = platform.processor() or "?", set()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
        model = found.group(1).strip() if found else model
        found = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
        flags = set(found.group(1).split()) if found else set()
    except OSError:
        pass
    return {"cpu": model, "isa": [f for f in ISA_FLAGS if f in flags], "cores": os.cpu_count(),
            "backend": jax.default_backend(), "jaxlib": jaxlib.__version__}


def machine_key(fingerprint: Optional[dict] = None) -> str:
    """A short stable key of ``fingerprint`` (default: this machine's, :func:`this_machine_key`)."""
    if fingerprint is None:
        return this_machine_key()
    text = json.dumps(fingerprint, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def this_machine_key() -> str:
    """:func:`machine_key` of this machine, computed once per process (the tuning is looked up
    for every extractor and every compile; the machine does not change under a process)."""
    return machine_key(machine_fingerprint())


# --------------------------------------------------------------------------- reading and writing


def _read_file(path: Path) -> dict:
    """The whole tuning file as ``{machine key: record}`` (``{}`` if absent); an unreadable or
    malformed file warns, naming it, and counts as empty (a cache never stops a run)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object of machine keys")
        return data
    except (OSError, ValueError) as err:
        warnings.warn(f"ignoring the tuning file {path}: {err}; run `python -m neuralstyle.tune` "
                      "to rewrite it", stacklevel=3)
        return {}


def _write_file(path: Path, data: dict) -> None:
    """Write the tuning file atomically (:func:`neuralstyle.images.io.atomic_write`: a temporary
    file renamed over the old one, so a reader never sees half a file)."""
    from .images.io import atomic_write

    atomic_write(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def _valid(record) -> bool:
    return (isinstance(record, dict) and record.get("format") == FORMAT
            and isinstance(record.get("winograd_channels"), list)
            and record.get("step_conv_backend") in BACKENDS
            and record.get("fast_conv_backend") in BACKENDS)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, key: str) -> Optional[dict]:
    record = _read_file(Path(path)).get(key)
    if record is None:
        return None
    if not _valid(record):
        warnings.warn(f"ignoring the tuning of this machine in {path}: not a format-{FORMAT} record; "
                      "run `python -m neuralstyle.tune` to measure again", stacklevel=3)
        return None
    return record


def load_tuning(path: Optional[Path] = None) -> Optional[dict]:
    """This machine's tuning record, or ``None`` (no file, no entry for this machine, or an entry
    that cannot be used: then a warning names the file)."""
    path = tuning_file() if path is None else Path(path)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    return _load_cached(str(path), mtime, machine_key())


def save_tuning(record: dict, path: Optional[Path] = None) -> Path:
    """Store ``record`` as this machine's tuning (other machines' entries are kept)."""
    path = tuning_file() if path is None else Path(path)
    if not _valid(record):
        raise ConfigError(f"not a format-{FORMAT} tuning record: {record!r}")
    data = _read_file(path)
    data[machine_key()] = record
    _write_file(path, data)
    return path


def forget_tuning(path: Optional[Path] = None) -> bool:
    """Remove this machine's entry from the tuning file; whether there was one."""
    path = tuning_file() if path is None else Path(path)
    data = _read_file(path)
    if data.pop(machine_key(), None) is None:
        return False
    _write_file(path, data)
    return True


# --------------------------------------------------------------------------- what the library asks


def _cpu() -> bool:
    import jax

    return jax.default_backend() == "cpu"


def tuned_winograd_channels() -> Optional[frozenset]:
    """The ``(C_in, C_out)`` pairs of the 3x3 convolutions that run faster as Winograd on this
    machine, from its tuning; ``None`` without one (or off the CPU)."""
    record = load_tuning() if _cpu() else None
    if record is None:
        return None
    return frozenset((int(cin), int(cout)) for cin, cout in record["winograd_channels"])


def step_conv_backend() -> str:
    """``"eigen"`` or ``"xla"``: the convolutions of the optimization programs on this machine
    (tuned; :data:`UNTUNED_STEP_BACKEND`, XLA's default, without a tuning)."""
    record = load_tuning() if _cpu() else None
    return record["step_conv_backend"] if record else UNTUNED_STEP_BACKEND


def step_compiler_options() -> Optional[dict]:
    """The compiler options of the optimization driver's programs: ``None`` (XLA's defaults)
    unless this machine's tuning found XLA's Eigen convolutions faster."""
    if step_conv_backend() != "eigen":
        return None
    from .fast.xla import compiler_options

    return compiler_options("eigen")


def fast_conv_backend() -> Optional[str]:
    """The tuned ``conv_backend`` of the feed-forward networks on this machine, or ``None``."""
    record = load_tuning() if _cpu() else None
    return record["fast_conv_backend"] if record else None


# --------------------------------------------------------------------------- measuring


def vgg_conv_shapes(size: int, arch: str = "vgg19", deepest: str = "block5_conv2") -> list[tuple]:
    """``[(layer names, side, C_in, C_out)]``: the distinct 3x3 convolutions of ``arch`` up to
    ``deepest`` for a ``size`` x ``size`` image (the side halves after each pooling)."""
    from .backbones.layer_names import CONVS_PER_BLOCK

    widths, shapes, cin, side = (64, 128, 256, 512, 512), {}, 3, size
    for block, (n, width) in enumerate(zip(CONVS_PER_BLOCK[arch], widths), start=1):
        for i in range(1, n + 1):
            name = f"block{block}_conv{i}"
            shapes.setdefault((side, cin, width), []).append(name)
            cin = width
            if name == deepest:
                return [(names, *key) for key, names in shapes.items()]
        side //= 2
    return [(names, *key) for key, names in shapes.items()]


def seconds(fn: Callable, *args) -> float:
    """Wall time of one call of ``fn(*args)``, its results blocked on."""
    import jax

    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def alternating_medians(calls: dict, repeats: int = 5) -> dict:
    """``{name: median ms}`` of the argument-free ``calls``, each called once to compile and warm
    up, then ``repeats`` rounds calling each in turn (a change of load hits all alike)."""
    import numpy as np

    for call in calls.values():
        seconds(call)
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(seconds(call))
    return {name: round(1000 * float(np.median(ts)), 3) for name, ts in times.items()}


def time_conv_layer(side: int, cin: int, cout: int, repeats: int = 5) -> dict:
    """One 3x3 convolution's forward pass plus input gradient (what a style-transfer step does
    with a frozen layer) as XLA's ``lax.conv`` and as Winograd F(2x2, 3x3), alternating calls;
    ``{"xla_ms", "winograd_ms", "relative_error"}`` (largest difference of output and gradient
    relative to their largest magnitude)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from .backbones.winograd import winograd_conv2d, winograd_kernel

    def direct(x, kernel):
        return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def forward_and_input_gradient(conv):
        def f(x, w, g):
            y, vjp = jax.vjp(lambda v: conv(v, w), x)
            return y, vjp(g)[0]
        return f

    rng = np.random.default_rng(side + cin + cout)
    x = jnp.asarray(rng.standard_normal((1, side, side, cin), np.float32))
    kernel = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) / np.sqrt(9 * cin))
    g = jnp.asarray(rng.standard_normal((1, side, side, cout), np.float32))
    runs = {"xla": (jax.jit(forward_and_input_gradient(direct)), kernel),
            "winograd": (jax.jit(forward_and_input_gradient(winograd_conv2d)), winograd_kernel(kernel))}
    calls = {name: functools.partial(f, x, w, g) for name, (f, w) in runs.items()}
    outputs = {name: jax.block_until_ready(call()) for name, call in calls.items()}
    err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
              for a, b in zip(outputs["winograd"], outputs["xla"]))
    ms = alternating_medians(calls, repeats=repeats)
    return {"xla_ms": ms["xla"], "winograd_ms": ms["winograd"], "relative_error": err}


def time_vgg_gradient(size: int, winograd: Iterable[tuple], repeats: int = 5) -> dict:
    """The gradient of a VGG19 feature loss (conv1_1 .. conv5_1, random weights: the speed of a
    convolution does not depend on the values) with respect to a ``size`` px image, with Winograd
    for the ``winograd`` channel pairs, compiled with XLA's default convolutions and with its
    Eigen convolutions; ``{"xla_ms", "eigen_ms"}`` (``eigen_ms`` is ``None`` where this XLA has
    no such option)."""
    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np

    from .backbones.vgg import VGG
    from .fast.xla import compiler_options

    pairs = {tuple(p) for p in winograd}
    backbone = VGG("vgg19", weights=None, conv="xla")
    convs = [layer for layer in backbone.model.layers if isinstance(layer, keras.layers.Conv2D)]
    extractor = backbone.extractor(["block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1",
                                    "block5_conv1"],
                                   winograd=[c.name for c in convs if tuple(c.kernel.shape[2:]) in pairs])
    params = extractor.params
    image = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (1, size, size, 3)).astype(np.float32))

    def loss(x):
        return sum(jnp.mean(f * f) for f in extractor.apply(params, x).values())

    grad = jax.grad(loss)
    programs = {"xla": jax.jit(grad)}
    options = compiler_options("eigen")
    if options:
        programs["eigen"] = jax.jit(grad, compiler_options=options)
    ms = alternating_medians({k: functools.partial(f, image) for k, f in programs.items()}, repeats=repeats)
    return {"xla_ms": ms["xla"], "eigen_ms": ms.get("eigen"), "winograd_layers": len(extractor.winograd)}


def time_fast_apply(size: int, repeats: int = 5) -> dict:
    """The feed-forward transform network's apply (Johnson et al. 2016, width 32, 5 residual
    blocks, random weights) on one ``size`` px image, compiled as :mod:`neuralstyle.fast.xla`
    compiles it with ``conv_backend="eigen"`` and ``"xla"``; ``{"xla_ms", "eigen_ms"}``."""
    import jax.numpy as jnp
    import numpy as np

    from .fast.transform import apply_fn, get_params, transform_net
    from .fast.xla import apply_jit, compiler_options

    model = transform_net(32, 5, seed=0)
    params, fn = get_params(model), apply_fn(model)
    image = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (1, size, size, 3)).astype(np.float32))
    backends = ["xla"] + (["eigen"] if compiler_options("eigen") else [])
    ms = alternating_medians({b: functools.partial(apply_jit(fn, b), params, image) for b in backends},
                             repeats=repeats)
    return {"xla_ms": ms["xla"], "eigen_ms": ms.get("eigen")}


def clearly_faster(candidate_ms: float, incumbent_ms: float, margin: float = MARGIN) -> bool:
    """Whether ``candidate_ms`` beats ``incumbent_ms`` by more than ``margin`` (a fraction)."""
    return candidate_ms < (1.0 - margin) * incumbent_ms


def winograd_pairs(layers: list[dict], margin: float = MARGIN) -> list[tuple[int, int]]:
    """The ``(C_in, C_out)`` pairs that run as Winograd, from per-shape timings
    (``{"layers", "cin", "cout", "xla_ms", "winograd_ms"}``): a pair that occurs at several
    spatial sizes (VGG19's 512 -> 512 in blocks 4 and 5) is decided by its total time over all the
    layers that have it, each shape counted once per layer.  The fixed rule's choice for a pair
    (:func:`~neuralstyle.backbones.vgg.winograd_by_rule`) stands unless the other path was
    faster by more than ``margin``."""
    from .backbones.vgg import winograd_by_rule

    totals = {}
    for r in layers:
        xla, wino = totals.get((r["cin"], r["cout"]), (0.0, 0.0))
        totals[(r["cin"], r["cout"])] = (xla + len(r["layers"]) * r["xla_ms"],
                                         wino + len(r["layers"]) * r["winograd_ms"])
    chosen = []
    for pair, (xla, wino) in totals.items():
        by_rule = winograd_by_rule(*pair)
        if clearly_faster(wino, xla, margin) if not by_rule else not clearly_faster(xla, wino, margin):
            chosen.append(pair)
    return sorted(chosen)


def faster(times: dict, default: str = "xla", margin: float = MARGIN) -> str:
    """``"xla"`` or ``"eigen"``: ``default`` unless the other was measured faster by more than
    ``margin``."""
    other = "eigen" if default == "xla" else "xla"
    mine, theirs = times.get(f"{default}_ms"), times.get(f"{other}_ms")
    if theirs is None:
        return default
    if mine is None or clearly_faster(theirs, mine, margin):
        return other
    return default


def tune(size: int = 256, fast_size: int = 512, repeats: int = 5,
         log: Callable[[str], None] = print) -> dict:
    """Measure this machine (see the module docstring) and return its tuning record (not saved;
    :func:`save_tuning` stores it).  ``size``: the optimization image side the VGG layers are
    timed at; ``fast_size``: the feed-forward apply's side."""
    from .fast.xla import UNTUNED_CONV_BACKEND

    if not _cpu():
        raise ConfigError("tuning measures CPU convolution paths; this JAX runs on "
                          f"{__import__('jax').default_backend()}, where the compiler chooses")
    if size < 16 or fast_size < 16 or repeats < 1:
        raise ConfigError(f"tune: size and fast_size must be >= 16 and repeats >= 1, got "
                          f"size={size}, fast_size={fast_size}, repeats={repeats}")
    layers = []
    for names, side, cin, cout in vgg_conv_shapes(size):
        row = {"layers": names, "side": side, "cin": cin, "cout": cout,
               **time_conv_layer(side, cin, cout, repeats)}
        layers.append(row)
        log(f"tune: {names[0]:>13} {side}x{side} {cin}->{cout}: xla {row['xla_ms']:.1f} ms, "
            f"winograd {row['winograd_ms']:.1f} ms")
    winograd = winograd_pairs(layers)
    step = time_vgg_gradient(size, winograd, repeats)
    log(f"tune: VGG19 gradient at {size} px: XLA's default convolutions {step['xla_ms']} ms, "
        f"Eigen {step['eigen_ms']} ms")
    fast = time_fast_apply(fast_size, repeats)
    log(f"tune: transform net apply at {fast_size} px: XLA's default {fast['xla_ms']} ms, "
        f"Eigen {fast['eigen_ms']} ms")
    return {"format": FORMAT, "machine": machine_fingerprint(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "size": size, "fast_size": fast_size, "repeats": repeats,
            "winograd_channels": [list(p) for p in winograd],
            "step_conv_backend": faster(step, UNTUNED_STEP_BACKEND),
            "fast_conv_backend": faster(fast, UNTUNED_CONV_BACKEND), "margin": MARGIN,
            "measured": {"layers": layers, "step": step, "fast": fast}}
