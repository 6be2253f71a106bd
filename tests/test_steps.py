"""The objective and the compiled steps: jit equals eager, no retracing, L-BFGS behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from neuralstyle import (
    LBFGS, NonFiniteLossError, StyleObjective, make_lbfgs_functions, make_step, stylize,
)
from neuralstyle.optim.lbfgs import init_state

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def objective(random_vgg19_avg):
    return StyleObjective.build(random_vgg19_avg, content_layers=["conv2_2"],
                                style_layers=["conv1_1", "conv2_1", "conv3_1"],
                                content_weight=1.0, style_weight=1e-3, tv_weight=1.0)


@pytest.fixture(scope="module")
def pair():
    content = RNG.uniform(size=(24, 32, 3)).astype(np.float32)
    style = RNG.uniform(size=(20, 20, 3)).astype(np.float32) ** 2
    return content, style


def _targets(objective, pair):
    c, s = pair
    return objective.targets(objective.params, jnp.asarray(c)[None], jnp.asarray(s)[None])


def test_terms_add_up_and_content_term_vanishes_at_content(objective, pair):
    targets = _targets(objective, pair)
    x = jnp.asarray(pair[0])[None]
    total, terms = objective(objective.params, x, targets)
    assert float(terms["content"]) == pytest.approx(0.0, abs=1e-6)
    assert float(total) == pytest.approx(float(terms["content"] + terms["style"] + terms["tv"]), rel=1e-6)
    assert float(terms["style"]) > 0 and float(terms["tv"]) > 0


def test_weights_scale_their_terms(random_vgg19_avg, objective, pair):
    doubled = StyleObjective.build(random_vgg19_avg, content_layers=["conv2_2"],
                                   style_layers=["conv1_1", "conv2_1", "conv3_1"],
                                   content_weight=2.0, style_weight=2e-3, tv_weight=0.0)
    x = jnp.asarray(pair[0][::-1].copy())[None]
    _, a = objective(objective.params, x, _targets(objective, pair))
    _, b = doubled(doubled.params, x, _targets(doubled, pair))
    assert float(b["content"]) == pytest.approx(2 * float(a["content"]), rel=1e-5)
    assert float(b["style"]) == pytest.approx(2 * float(a["style"]), rel=1e-5)
    assert float(b["tv"]) == 0.0


def test_explicit_layer_weights(random_vgg19_avg, pair):
    kw = dict(content_layers=["conv2_2"], style_layers=["conv1_1", "conv2_1"], tv_weight=0.0,
              content_weight=0.0, style_weight=1.0)
    first = StyleObjective.build(random_vgg19_avg, style_layer_weights=[1.0, 0.0], **kw)
    only = StyleObjective.build(random_vgg19_avg, **{**kw, "style_layers": ["conv1_1"]},
                                style_layer_weights="sum")
    x = jnp.asarray(pair[0][::-1].copy())[None]
    _, a = first(first.params, x, _targets(first, pair))
    _, b = only(only.params, x, _targets(only, pair))
    assert float(a["style"]) == pytest.approx(float(b["style"]), rel=1e-5)


def test_adam_step_jit_equals_eager_and_does_not_retrace(objective, pair):
    targets = _targets(objective, pair)
    tx = optax.adam(0.02, b1=0.99, eps=0.1)
    traces = []

    def counted(*args):
        traces.append(1)
        return make_step(tx)(*args)

    step = jax.jit(counted)
    eager = make_step(tx)
    x = jnp.asarray(pair[0])[None]
    state = tx.init(x)
    xe, se = x, state
    for _ in range(4):
        x, state, loss, _ = step(objective, x, state, objective.params, targets)
        with jax.disable_jit():
            xe, se, loss_e, _ = eager(objective, xe, se, objective.params, targets)
        assert float(loss) == pytest.approx(float(loss_e), rel=1e-4)
    np.testing.assert_allclose(x, xe, atol=1e-5)
    assert len(traces) == 1  # one trace, however many steps
    assert float(jnp.min(x)) >= 0.0 and float(jnp.max(x)) <= 1.0


def test_stylize_lowers_the_loss_with_adam_and_lbfgs(objective, pair):
    c, s = pair
    adam = stylize(objective, c, s, optax.adam(0.02, b1=0.99, eps=0.1), steps=15, progress=False)
    lbfgs = stylize(objective, c, s, LBFGS(memory_size=10), steps=15, progress=False)
    for result in (adam, lbfgs):
        m = result.metrics
        assert m["final"]["total"] < 0.7 * m["initial"]["total"]
        assert result.image.shape == c.shape
        assert 0.0 <= result.image.min() and result.image.max() <= 1.0
        assert len(m["history"]) == m["steps"] + 1
        assert m["history"][-1] == pytest.approx(m["final"]["total"])
    assert lbfgs.metrics["function_evaluations"] >= lbfgs.metrics["steps"]


def test_lbfgs_skips_pairs_without_positive_curvature(objective, pair):
    """A pair with <dy, ds> <= 0 is stored with weight 0, so it cannot flip the direction."""
    opt = LBFGS(memory_size=3)
    direction, _ = make_lbfgs_functions(opt)
    x0 = jnp.asarray(pair[0])[None, None]  # one run
    g0 = jnp.ones_like(x0)
    state = init_state(x0)
    _, state = direction(g0, state, x0)
    # the gradient grew along the step direction: negative curvature
    d, state = direction(g0 - 0.5, state, x0 + 0.1)
    assert float(jnp.max(jnp.abs(state.rho[-1]))) == 0.0
    assert state.s == (None,)  # the slot is kept, its vectors are not
    assert float(jnp.vdot(d, g0 - 0.5)) > 0  # still a descent direction


def test_non_finite_loss_stops_and_keeps_last_good_image(objective, pair):
    c, s = pair
    nan_steps = optax.chain(optax.scale(float("nan")))
    with pytest.raises(NonFiniteLossError) as info:
        stylize(objective, c, s, nan_steps, steps=5, progress=False)
    err = info.value
    assert err.step == 1 and err.last_good_step == 0
    np.testing.assert_allclose(err.last_good_image, c)  # the content initialization
    assert "step 1" in str(err)


def test_snapshots_and_callback(objective, pair, tmp_path):
    seen = []
    stylize(objective, *pair, steps=4, snapshot_every=2, snapshot_dir=tmp_path, progress=False,
            callback=lambda step, image, loss: seen.append((step, image.shape)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00002.png", "step_00004.png"]
    assert [s for s, _ in seen] == [1, 2, 3, 4] and seen[0][1] == pair[0].shape


def test_noise_init_is_seeded(objective, pair):
    from neuralstyle import initial_image

    a = initial_image("noise", *pair, seed=3)
    b = initial_image("noise", *pair, seed=3)
    c = initial_image("noise", *pair, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == pair[0].shape and 0 <= a.min() and a.max() <= 1
    assert abs(float(a.mean()) - 0.5) < 0.05
