"""Averaged iterate, warm-started optimizer state and multiscale schedules (the one driver)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from neuralstyle import LBFGS, ConfigError, stylize, stylize_pyramid
from neuralstyle.optim import evaluate
from neuralstyle.optim.driver import IterateAverage, resize_opt_state
from neuralstyle.recipe import compose
from neuralstyle.run import run_from_config
from neuralstyle.stylize import multiscale_shapes, pyramid_shapes



RNG = np.random.default_rng(11)


def numpy_ema(frames, decay):
    """Bias-corrected EMA with the first frame as the first term: the closed form the driver uses."""
    avg = np.zeros_like(frames[0], np.float64)
    for t, frame in enumerate(frames, start=1):
        avg = decay * avg + (1 - decay) * frame
    return avg / (1 - decay ** len(frames))


def test_iterate_average_is_the_bias_corrected_ema():
    frames = [RNG.normal(size=(2, 1, 3, 4, 3)).astype(np.float32) for _ in range(6)]
    average = IterateAverage(0.9)
    shown, state = average.start(jnp.asarray(frames[0]))
    np.testing.assert_allclose(shown, frames[0], rtol=1e-6)  # debiased: the first term itself
    for k in range(1, len(frames)):
        shown, state = average.update(jnp.asarray(frames[k]), state)
    np.testing.assert_allclose(shown, numpy_ema(frames, 0.9), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_iterate_average_rejects_a_bad_decay(decay):
    with pytest.raises(ConfigError, match="average_decay"):
        IterateAverage(decay)


def test_stylize_returns_and_shows_the_averaged_iterate(small_objective, small_pair):
    """Same run twice (SGD: updates proportional to the gradient), once with the average: the
    result is the EMA of the plain run's iterates, the snapshots/callback show the average, and
    metrics["final"] is the average's loss (the last iterate's is kept as final_iterate)."""
    content, style = small_pair
    sgd = optax.sgd(0.05)
    iterates, shown = [content], []
    plain = stylize(small_objective, content, style, sgd, steps=5, progress=False,
                    callback=lambda step, image, loss: iterates.append(image))
    averaged = stylize(small_objective, content, style, sgd, steps=5, progress=False, average_decay=0.8,
                       callback=lambda step, image, loss: shown.append(image))
    expected = numpy_ema(iterates, 0.8)
    np.testing.assert_allclose(averaged.image, expected, atol=2e-5)
    np.testing.assert_allclose(shown[-1], averaged.image, atol=1e-6)
    np.testing.assert_allclose(shown[0], numpy_ema(iterates[:2], 0.8), atol=2e-5)
    np.testing.assert_allclose(plain.image, iterates[-1], atol=1e-6)
    assert averaged.metrics["final_iterate"]["total"] == pytest.approx(plain.metrics["final"]["total"],
                                                                      rel=1e-4)
    targets = small_objective.targets(small_objective.params, jnp.asarray(content)[None], jnp.asarray(style)[None])
    at_average, _ = evaluate(small_objective, small_objective.params, jnp.asarray(averaged.image)[None], targets)
    assert averaged.metrics["final"]["total"] == pytest.approx(float(at_average), rel=1e-4)
    assert averaged.metrics["average_decay"] == 0.8


def test_lbfgs_with_an_averaged_iterate(small_objective, small_pair):
    content, style = small_pair
    result = stylize(small_objective, content, style, LBFGS(memory_size=5), steps=4, progress=False,
                     average_decay=0.5)
    targets = small_objective.targets(small_objective.params, jnp.asarray(content)[None], jnp.asarray(style)[None])
    at_average, _ = evaluate(small_objective, small_objective.params, jnp.asarray(result.image)[None], targets)
    assert result.metrics["final"]["total"] == pytest.approx(float(at_average), rel=1e-4)
    assert result.metrics["final"]["total"] < result.metrics["initial"]["total"]
    assert result.opt_state is None  # an L-BFGS memory is never carried over


def test_a_carried_optimizer_state_continues_the_run(small_objective, small_pair):
    """4 steps in one call equal 2 + 2 steps with the state carried over (SGD with momentum: the
    momentum is state, and updates stay proportional to the gradient)."""
    content, style = small_pair
    tx = optax.sgd(0.05, momentum=0.9)
    whole = stylize(small_objective, content, style, tx, steps=4, progress=False)
    first = stylize(small_objective, content, style, tx, steps=2, progress=False)
    second = stylize(small_objective, content, style, tx, steps=2, progress=False, init=first.image,
                     opt_state=first.opt_state)
    np.testing.assert_allclose(second.image, whole.image, atol=1e-5)
    fresh = stylize(small_objective, content, style, tx, steps=2, progress=False, init=first.image)
    assert np.abs(fresh.image - whole.image).max() > 100 * np.abs(second.image - whole.image).max()


def test_resize_opt_state_resizes_the_moments_and_keeps_the_count():
    tx = optax.adam(0.1)
    image = jnp.ones((1, 1, 8, 10, 3))
    state = jax.vmap(tx.init)(image)
    grad = jnp.asarray(RNG.normal(size=image.shape), jnp.float32)
    _, state = jax.vmap(tx.update)(grad, state)
    resized = resize_opt_state(state, (16, 20))
    adam = resized[0]
    assert adam.mu.shape == adam.nu.shape == (1, 1, 16, 20, 3)
    assert int(adam.count[0]) == 1
    assert float(adam.nu.min()) >= 0.0
    # a constant field stays constant: bilinear resizing is a convex combination
    constant = jax.tree.map(lambda x: jnp.full_like(x, 2.0) if x.ndim == 5 else x, state)
    flat = resize_opt_state(constant, (5, 7))
    np.testing.assert_allclose(flat[0].nu, 2.0, rtol=1e-6)
    # rescaled to smaller gradients: first moment by the scale, second by its square
    scaled = resize_opt_state(constant, (16, 20), gradient_scale=0.25)
    np.testing.assert_allclose(scaled[0].mu, 0.5, rtol=1e-6)
    np.testing.assert_allclose(scaled[0].nu, 0.125, rtol=1e-6)
    momentum = jax.vmap(optax.sgd(0.1, momentum=0.9).init)(image)
    momentum = jax.tree.map(lambda x: jnp.ones_like(x) if x.ndim == 5 else x, momentum)
    np.testing.assert_allclose(jax.tree.leaves(resize_opt_state(momentum, (4, 5), 0.25))[0], 0.25, rtol=1e-6)


def test_multiscale_shapes():
    assert multiscale_shapes((512, 512), 128, 2.0) == [(128, 128), (256, 256), (512, 512)]
    assert [max(s) for s in multiscale_shapes((384, 512), 128, 2 ** 0.5)] == [128, 181, 256, 362, 512]
    assert multiscale_shapes((384, 512), 128, 2.0) == [(96, 128), (192, 256), (384, 512)]
    assert multiscale_shapes((100, 120), 128, 2.0) == [(100, 120)]  # already small: one scale
    assert pyramid_shapes((64, 80), 3) == [(16, 20), (32, 40), (64, 80)]
    with pytest.raises(ConfigError, match="factor"):
        multiscale_shapes((64, 64), 16, 1.0)


def test_warm_started_multiscale_run(small_objective, small_pair):
    content, style = small_pair
    shapes = multiscale_shapes(content.shape[:2], 20, 2.0)
    assert len(shapes) == 2
    result = stylize_pyramid(small_objective, content, style, optax.adam(0.02), steps=[3, 2],
                             shapes=shapes, warm_start=True, average_decay=0.9, progress=False)
    assert result.image.shape == content.shape
    assert [lvl["image_size"] for lvl in result.metrics["levels"]] == [list(s) for s in shapes]
    assert result.metrics["warm_start"] is True and result.metrics["steps"] == 5
    assert int(result.opt_state[0].count[0]) == 5  # Adam's step count ran on over both scales
    with pytest.raises(ConfigError, match="2 entries for 3 scales"):
        stylize_pyramid(small_objective, content, style, steps=[1, 1], levels=3, progress=False)


def tiny(image_dir, *overrides):
    return compose("run", [f"image_dir={image_dir}", "size=32", "steps=2", "backbone.weights=null",
                           "progress=false", "snapshot_every=0", *overrides])


def test_run_config_keys(image_dir, tmp_path):
    cfg = tiny(image_dir, "size=64", "pyramid.start_size=32", "pyramid.factor=2", "pyramid.steps=[2,1]",
               "pyramid.warm_start=true", "average_decay=0.9")
    run_from_config(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [max(s) for s in metrics["scales"]] == [32, 64]
    assert metrics["warm_start"] is True and metrics["average_decay"] == 0.9
    assert metrics["steps"] == 3 and "final_iterate" in metrics


@pytest.mark.parametrize("override, match", [
    ("average_decay=1.0", "average_decay must be null"),
    ("pyramid.factor=1", "pyramid.factor must be"),
    ("pyramid.start_size=0", "pyramid.start_size must be"),
])
def test_run_config_errors_name_the_key(image_dir, tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        run_from_config(tiny(image_dir, override), tmp_path)
    assert not list(tmp_path.iterdir())


def test_wrong_number_of_scale_steps_names_the_scales(image_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"pyramid.steps has 3 entries for 2 scales \(16x"):
        run_from_config(tiny(image_dir, "pyramid.start_size=16", "pyramid.steps=[1,1,1]"), tmp_path)
