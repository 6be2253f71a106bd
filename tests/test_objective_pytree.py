"""The objective is a pytree whose weights are leaves: one compiled step serves every weight
setting (no retracing), and a batch of weight settings is the objective vmapped over its leaves."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from neuralstyle import LBFGS, StyleObjective, make_lbfgs_functions, make_step
from neuralstyle.optim.driver import RUN_TARGETS, stack_runs
from neuralstyle.optim import evaluate

RNG = np.random.default_rng(5)
LAYERS = dict(content_layers=["conv2_2"], style_layers=["conv1_1", "conv2_1"])
SETTINGS = [
    dict(content_weight=1.0, style_weight=1e-3, tv_weight=1.0),
    dict(content_weight=3.0, style_weight=1e-3, tv_weight=1.0),
    dict(content_weight=1.0, style_weight=2e-2, tv_weight=1.0),
    dict(content_weight=1.0, style_weight=1e-3, tv_weight=0.0),
    dict(content_weight=0.5, style_weight=1e-1, tv_weight=4.0, style_layer_weights=[0.25, 2.0]),
]


@pytest.fixture(scope="module")
def objective(random_vgg19_avg):
    return StyleObjective.build(random_vgg19_avg, **SETTINGS[0], **LAYERS)


@pytest.fixture(scope="module")
def inputs(objective):
    content = jnp.asarray(RNG.uniform(size=(1, 24, 32, 3)), jnp.float32)
    style = jnp.asarray(RNG.uniform(size=(1, 28, 28, 3)), jnp.float32) ** 2
    image = jnp.asarray(RNG.uniform(size=(1, 24, 32, 3)), jnp.float32)
    return image, objective.targets(objective.params, content, style)


def _variant(objective, setting):
    """``objective`` with ``setting``'s weights: a copy sharing the extractor and loss functions."""
    setting = dict(setting)
    layer_weights = setting.pop("style_layer_weights", None)
    out = objective.with_weights(**setting)
    if layer_weights is not None:
        out = dataclasses.replace(out, style_layer_weights=tuple(layer_weights))
    return out


def _counting_jit(fn):
    """``jax.jit(fn)`` and the list that grows by one each time it traces."""
    traces = []
    return jax.jit(lambda *args: traces.append(1) or fn(*args)), traces


def _built(random_vgg19_avg, setting):
    return StyleObjective.build(random_vgg19_avg, **setting, **LAYERS)


def test_weights_are_leaves_and_the_rest_is_static(objective):
    leaves, treedef = jax.tree_util.tree_flatten(objective)
    # per-layer weights (1 content, 2 style layers), then content, style and tv weights
    assert leaves == [1.0, 0.5, 0.5, 1.0, 1e-3, 1.0]
    for setting in SETTINGS[1:]:
        other = _variant(objective, setting)
        assert jax.tree_util.tree_structure(other) == treedef
    rebuilt = jax.tree_util.tree_unflatten(treedef, [2.0, 1.0, 3.0, 4.0, 5.0, 6.0])
    assert rebuilt.extractor is objective.extractor and rebuilt.style_loss is objective.style_loss
    assert rebuilt.style_layers == objective.style_layers
    assert rebuilt.style_layer_weights == (1.0, 3.0) and rebuilt.tv_weight == 6.0
    # another extractor or loss is another program: it is part of the tree structure
    other_loss = dataclasses.replace(objective, tv_loss=lambda image: jnp.zeros(image.shape[0]))
    assert jax.tree_util.tree_structure(other_loss) != treedef


def test_changing_a_weight_does_not_retrace(random_vgg19_avg, objective, inputs):
    image, targets = inputs
    tx = optax.adam(0.02, b1=0.99, eps=0.1)
    step, traces = _counting_jit(make_step(tx))
    params, state = objective.params, tx.init(image)
    for setting in SETTINGS:
        _, _, loss, terms = step(_variant(objective, setting), image, state, params, targets)
        built = _built(random_vgg19_avg, setting)
        want, want_terms = built(built.params, image, targets)  # eager, Python-float weights
        assert float(loss) == pytest.approx(float(want), rel=1e-6)
        for k in ("content", "style", "tv"):
            assert float(terms[k]) == pytest.approx(float(want_terms[k]), rel=1e-6, abs=1e-12)
    assert len(traces) == 1  # one trace for five weight settings
    # the same holds for device-array leaves of the same dtype (what stylize passes)
    step(jax.tree.map(jnp.asarray, _variant(objective, SETTINGS[2])), image, state, params, targets)
    assert len(traces) == 1


def test_lbfgs_trial_takes_the_objective(random_vgg19_avg, objective, inputs):
    image, targets = inputs
    trial, traces = _counting_jit(make_lbfgs_functions(LBFGS(memory_size=3))[1])
    zeros = jnp.zeros_like(image)
    for setting in SETTINGS:
        got = trial(_variant(objective, setting), image, zeros, zeros, 0.0, objective.params, targets)
        built = _built(random_vgg19_avg, setting)
        want = jax.value_and_grad(lambda x: built(built.params, x, targets)[0])(image)
        assert float(got.loss) == pytest.approx(float(want[0]), rel=1e-6)
        np.testing.assert_allclose(got.grad, want[1], rtol=1e-4,
                                   atol=1e-6 * float(jnp.abs(want[1]).max()))
    assert len(traces) == 1


def test_vmap_over_the_objective_equals_each_setting(objective, inputs):
    image, targets = inputs
    params = objective.params
    variants = [_variant(objective, s) for s in SETTINGS]
    runs = stack_runs(variants)
    assert runs.style_weight.shape == (len(SETTINGS),) and runs.style_layer_weights[1].shape == (5,)
    n = len(SETTINGS)
    images = jnp.stack([image] * n)
    keys = jnp.stack([jax.random.key(k) for k in range(n)])
    batched_targets = targets._replace(key=keys)

    losses, terms = jax.jit(jax.vmap(evaluate, in_axes=(0, None, 0, RUN_TARGETS)))(
        runs, params, images, batched_targets)
    tx = optax.sgd(0.05)  # an update proportional to the gradient (see tests/test_batched.py)
    states = jax.vmap(tx.init)(images)
    new_images, _, step_losses, _ = jax.jit(
        jax.vmap(make_step(tx), in_axes=(0, 0, 0, None, RUN_TARGETS)))(
        runs, images, states, params, batched_targets)
    step = jax.jit(make_step(tx))
    for k, variant in enumerate(variants):
        run_targets = targets._replace(key=keys[k])
        want, want_terms = jax.jit(evaluate)(variant, params, image, run_targets)
        assert float(losses[k]) == pytest.approx(float(want), rel=1e-5)
        assert float(step_losses[k]) == pytest.approx(float(want), rel=1e-5)
        for t in ("content", "style", "tv"):
            assert float(terms[t][k]) == pytest.approx(float(want_terms[t]), rel=1e-5, abs=1e-12)
        want_image, *_ = step(variant, image, tx.init(image), params, run_targets)
        np.testing.assert_allclose(new_images[k], want_image, atol=1e-5)
    # the settings really differ
    assert len({round(float(v), 6) for v in losses}) == n
