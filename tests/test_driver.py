"""The one driver (neuralstyle.optim.driver.optimize): N >= 1 runs, the loop owner's duties the same
for every N (snapshots, callback, non-finite runs, a target loss)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from neuralstyle import LBFGS
from neuralstyle.optim.driver import Monitor, optimize, stack_runs

@pytest.fixture(scope="module")
def setup(driver_problem):
    return driver_problem


def _run(setup, weights, optimizer, steps, monitor, starts=None):
    objective, targets, content = setup
    runs = stack_runs([objective.with_weights(**w) for w in weights])
    n = len(weights)
    images = jnp.stack([jnp.asarray(content)[None]] * n) if starts is None else starts
    keys = jnp.stack([jax.random.key(k) for k in range(n)])
    return optimize(runs, optimizer, images, keys, objective.params, targets, steps, monitor)


@pytest.mark.parametrize("optimizer", [optax.sgd(0.05), LBFGS(memory_size=5)], ids=["sgd", "lbfgs"])
def test_stops_at_a_target_loss(setup, optimizer):
    full = _run(setup, [{}], optimizer, 6, Monitor(6, show=False))
    losses = [h[0] for h in full.histories[0]]
    target = 0.5 * (losses[2] + losses[3])  # between the 2nd and the 3rd update
    stopped = _run(setup, [{}], optimizer, 6, Monitor(6, show=False, stop_below=target))
    got = [h[0] for h in stopped.histories[0]]
    assert len(got) == 4 and got[-1] < target <= min(got[:-1])
    np.testing.assert_allclose(got, losses[:4], rtol=1e-6)


def test_every_run_gets_snapshots_and_the_callback_sees_all(setup, tmp_path):
    seen = []
    monitor = Monitor(3, runs=3, show=False, snapshot_dir=tmp_path, snapshot_every=2,
                      callback=lambda step, images, losses: seen.append((step, images.shape, losses.shape)))
    result = _run(setup, [{}, {"style_weight": 1e-2}, {"tv_weight": 0.0}], optax.sgd(0.05), 3, monitor)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == [
        f"run_{k:02d}/step_00002.png" for k in range(3)]
    assert [s for s, _, _ in seen] == [1, 2, 3] and seen[0][1:] == ((3, 24, 28, 3), (3,))
    assert result.images.shape == (3, 24, 28, 3) and all(len(h) == 4 for h in result.histories)


def test_a_diverging_run_stops_alone_and_keeps_its_last_finite_image(setup, tmp_path):
    objective, targets, content = setup
    monitor = Monitor(4, runs=2, show=False, snapshot_dir=tmp_path, snapshot_every=1)
    result = _run(setup, [{}, {"style_weight": float("nan")}], optax.sgd(0.05), 4, monitor)
    assert result.non_finite == [None, 0]  # the NaN weight makes the initial loss NaN
    assert len(result.histories[0]) == 5 and result.histories[1] == []
    np.testing.assert_array_equal(result.images[1], content)  # never left the start
    assert np.isfinite(result.images).all()
    assert not list((tmp_path / "run_01").glob("*.png"))  # no snapshot of a NaN image
    assert len(list((tmp_path / "run_00").glob("*.png"))) == 4
