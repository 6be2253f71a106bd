"""L-BFGS's curvature history (neuralstyle.optim.lbfgs): it grows one pair per iteration up to
memory_size and reuses the oldest pair's buffers once full, and gives the same directions and
iterates as the preallocated ring of optax.scale_by_lbfgs that it replaced."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from neuralstyle import LBFGS, ConfigError
from neuralstyle.optim import lbfgs as lb
from neuralstyle.optim import memory
from neuralstyle.optim.driver import Monitor, optimize, stack_runs


SHAPE = (2, 1, 6, 7, 3)  # N = 2 runs of (1, H, W, 3) images


def _preallocated(memory_size):
    """The direction the library used before: optax's ring of memory_size preallocated pairs, with
    the same skip of a pair without positive curvature (its vectors zeroed), vmapped over runs."""
    tx = optax.scale_by_lbfgs(memory_size=memory_size)

    def direction(grad, state, image):
        curvature = jnp.vdot(grad - state.updates, image - state.params)
        skip = (state.count > 0) & ~(curvature > 1e-10)
        state = state._replace(params=jnp.where(skip, image, state.params),
                               updates=jnp.where(skip, grad, state.updates))
        return tx.update(grad, state, image)

    return jax.jit(jax.vmap(tx.init)), jax.jit(jax.vmap(direction))


def _trajectory(calls, seed=0):
    """Points and gradients of a quadratic with a diagonal positive Hessian (positive curvature),
    except at call 4, where run 1's gradient falls along its step (a pair to skip)."""
    rng = np.random.default_rng(seed)
    hessian = rng.uniform(0.5, 4.0, SHAPE[1:]).astype(np.float32)
    x = rng.uniform(size=SHAPE).astype(np.float32)
    out = []
    for k in range(calls):
        g = hessian * (x - 0.5)
        if k == 4:
            g[1] = out[-1][1][1] - 0.3 * (x[1] - out[-1][0][1])
        out.append((x.copy(), g))
        x = x - 0.3 * rng.uniform(size=SHAPE).astype(np.float32) * g
    return [(jnp.asarray(a), jnp.asarray(b)) for a, b in out]


def _close(got, want, rel=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= rel * scale, (np.abs(got - want).max(), scale)


@pytest.mark.parametrize("memory_size", [1, 3, 20])
def test_directions_equal_the_preallocated_ring(memory_size):
    """The same directions, call after call, as optax's preallocated memory of memory_size pairs:
    while the history grows (20 > calls), once it wraps (1, 3), across a skipped pair (call 4) and
    after run 0 alone is restarted (call 7)."""
    init_ref, direction_ref = _preallocated(memory_size)
    direction, _ = lb.make_lbfgs_functions(LBFGS(memory_size=memory_size))
    points = _trajectory(11)
    state_ref, state = init_ref(points[0][0]), lb.init_state(points[0][0])
    for k, (x, g) in enumerate(points):
        if k == 7:
            restart = np.array([True, False])
            state_ref = jax.tree.map(
                lambda a, b, m=restart: jnp.where(m.reshape((2,) + (1,) * (a.ndim - 1)), a, b),
                init_ref(x), state_ref)
            state = lb.restart(state, restart)
        d_ref, state_ref = direction_ref(g, state_ref, x)
        d, state = direction(g, state, x)
        _close(d, d_ref)
        assert len(state.rho) == min(k, memory_size)  # grows by one pair per call after the first
    assert float(np.asarray(state.rho[-1 if memory_size == 1 else 0]).min()) >= 0.0


def test_the_history_grows_then_reuses_its_oldest_buffers():
    direction, _ = lb.make_lbfgs_functions(LBFGS(memory_size=3))
    points = _trajectory(8, seed=1)
    points = points[:4] + [(x, g.at[1].set(g[0])) for x, g in points[5:]]  # no skipped pair
    state = lb.init_state(points[0][0])
    assert lb.history_vectors(state) == 0  # nothing image-sized before the first pair
    for k, (x, g) in enumerate(points):
        oldest = state.s[0].unsafe_buffer_pointer() if len(state.s) == 3 else None
        _, state = direction(g, state, x)
        assert lb.history_vectors(state) == 2 * min(k, 3)
        if oldest is not None:  # full: the newest pair was written into the oldest's buffer
            assert state.s[-1].unsafe_buffer_pointer() == oldest


def test_a_pair_skipped_by_every_run_keeps_its_slot_but_no_memory():
    direction, _ = lb.make_lbfgs_functions(LBFGS(memory_size=4))
    x = jnp.full((1, 1, 5, 5, 3), 0.5)
    g = jnp.ones_like(x)
    state = lb.init_state(x)
    _, state = direction(g, state, x)
    _, state = direction(g - 0.5, state, x + 0.1)  # the gradient fell along the step: skipped
    assert state.s == (None,) and state.y == (None,) and float(state.rho[0][0]) == 0.0
    _, state = direction(g, state, x + 0.2)  # positive curvature: stored
    assert state.s[0] is None and state.s[1] is not None and lb.history_vectors(state) == 2
    assert lb.history_vectors(lb.restart(state, [True])) == 0  # a restart frees the history


def test_the_kernels_compile_once_whatever_the_history_length():
    direction, _ = lb.make_lbfgs_functions(LBFGS(memory_size=5))
    points = _trajectory(12, seed=2)
    kernels = [lb._pair_runs, lb._pair_into_runs, lb._first_loop_runs, lb._first_loop_in_place,
               lb._scale_in_place, lb._second_loop_in_place]
    state = lb.init_state(points[0][0])
    for x, g in points[:3]:
        _, state = direction(g, state, x)
    before = [k._cache_size() for k in kernels]
    for x, g in points[3:]:  # the history grows from 2 pairs to 5, then wraps
        _, state = direction(g, state, x)
    assert [k._cache_size() for k in kernels] == before


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "100"])
def test_memory_size_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="memory_size must be an integer >= 1"):
        LBFGS(memory_size=bad)


@pytest.mark.parametrize("field, bad", [("c1", 0.0), ("shrink", 1.0), ("max_linesearch", 0)])
def test_other_bad_settings_are_config_errors(field, bad):
    with pytest.raises(ConfigError, match=field):
        LBFGS(**{field: bad})


@pytest.fixture(scope="module")
def setup(driver_problem):
    return driver_problem


def _optimize(setup, weights, memory_size, steps):
    objective, targets, content = setup
    runs = stack_runs([objective.with_weights(**w) for w in weights])
    images = jnp.stack([jnp.asarray(content)[None]] * len(weights))
    keys = jnp.stack([jax.random.key(k) for k in range(len(weights))])
    return optimize(runs, LBFGS(memory_size=memory_size), images, keys, objective.params, targets,
                    steps, Monitor(steps, show=False))


def test_the_objective_is_traced_once_while_the_history_grows_and_wraps(setup, objective_traces):
    calls = objective_traces
    result = _optimize(setup, [{}], memory_size=2, steps=6)  # 2 pairs, then 4 wraps
    assert result.histories[0][-1][0] < 0.7 * result.histories[0][0][0]
    assert len(calls) == 1  # the line-search trial, compiled once for every history length


def test_batched_runs_with_a_history_smaller_than_the_run_equal_single_runs(setup):
    weights = [{}, {"style_weight": 1e-1}]
    batched = _optimize(setup, weights, memory_size=2, steps=5)
    for k, w in enumerate(weights):
        single = _optimize(setup, [w], memory_size=2, steps=5)
        np.testing.assert_allclose([h[0] for h in batched.histories[k]],
                                   [h[0] for h in single.histories[0]], rtol=1e-4)
        assert batched.evaluations[k] == single.evaluations[0]


@pytest.mark.slow
def test_the_memory_benchmark_runs(tmp_path, image_dir):
    """benchmarks/lbfgs_memory.py end to end at 64 px (it measures; this checks that it runs)."""
    import json

    from conftest import run_benchmark_quick

    run_benchmark_quick("benchmarks.lbfgs_memory", image_dir, tmp_path)
    report = json.loads((tmp_path / "lbfgs_memory.json").read_text())
    assert report["rows"] and all("error" not in r for r in report["rows"])
    for r in report["rows"]:
        assert r["memory"]["peak_rss_mib"] > 100 and r["pairs_held"] <= r["history"]
        if r["case"] == "full history":
            assert r["pairs_held"] == r["history"]  # the full case fills both histories
    assert "vs PyTorch" in (tmp_path / "lbfgs_memory.md").read_text()
    from neuralstyle.entry import MEMORY_SCHEDULER_FLAG, jaxlib_knows_memory_scheduler

    if "xla_cpu_enable_concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
        # the workers ran with the order the CLI asks for, and the report says so (where this
        # jaxlib is one the flag is known for)
        assert (MEMORY_SCHEDULER_FLAG in (report["xla_flags"] or "")) == jaxlib_knows_memory_scheduler()


@pytest.mark.skipif(memory._malloc_trim() is None,
                    reason="the C library has no malloc_trim (not glibc)")
def test_release_freed_memory_returns_the_heaps_free_pages():
    """128 MiB of 64 KiB blocks freed but for the last one (which pins the heap's top, as a live
    buffer does after a program ran) stay resident until release_freed_memory hands them back."""
    import ctypes

    from benchmarks.harness import rss_mib

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = []
    for _ in range(2048):
        block = libc.malloc(64 * 1024)
        ctypes.memset(block, 1, 64 * 1024)
        blocks.append(block)
    try:
        for block in blocks[:-1]:
            libc.free(block)
        held = rss_mib()
        assert memory.release_freed_memory() is True
        assert rss_mib() < held - 100
    finally:
        libc.free(blocks[-1])


def test_compiling_a_step_releases_the_freed_memory(monkeypatch):
    """compile_ahead (every driver step and trial) hands freed heap back once it has compiled."""
    from neuralstyle.optim import driver

    calls = []
    monkeypatch.setattr(driver, "release_freed_memory", lambda: calls.append(1) or True)
    compiled = driver.compile_ahead(lambda x: 2 * x, jnp.ones(3))
    assert len(calls) == 1
    np.testing.assert_array_equal(np.asarray(compiled(jnp.ones(3))), 2.0)
