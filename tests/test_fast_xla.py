"""conv_backend (neuralstyle/fast/xla.py): the feed-forward programs compiled with XLA's Eigen
convolutions compute what XLA's default (YNNPACK) programs compute, for apply (plain and in size
buckets), the arbitrary-style network and the training step.  Speed is measured by
benchmarks/fast_speed.py, never here."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import randomize_weights

from neuralstyle import VGG, StyleObjective, content_loss, gram_loss
from neuralstyle.arbitrary import ArbitraryStylizer, style_predictor, style_transformer
from neuralstyle.errors import ConfigError
from neuralstyle.fast import (
    Stylizer,
    get_params,
    init_state,
    make_train_step,
    style_statistics,
    transform_net,
    xla,
)
from neuralstyle.fast.transform import glorot_uniform
from neuralstyle.fast.xla import (
    YNN_OPTION,
    apply_options,
    check_conv_backend,
    compiler_options,
)

#: On [0, 1] pixels; measured about 1e-6 (float32 convolutions summed in another order).  The bound
#: leaves room for other SIMD widths (AVX2 vs AVX-512 change the summation order again).
TOL = 1e-4


_randomize = randomize_weights  # non-trivial biases and norm parameters, as a trained network has


def test_conv_backend_choices():
    assert check_conv_backend("eigen") == "eigen"
    assert compiler_options("xla") is None
    if jax.default_backend() == "cpu":
        assert compiler_options("eigen") in ({YNN_OPTION: ""}, None)  # None: an XLA without YNNPACK
    with pytest.raises(ConfigError, match="conv_backend must be one of"):
        check_conv_backend("ynn")
    with pytest.raises(ConfigError, match="conv_backend"):
        Stylizer(transform_net(width=4, residual_blocks=1), conv_backend="fast")


@pytest.mark.parametrize("bucket", [None, 64])
def test_stylizer_eigen_equals_xla_default(bucket):
    """The recipe's architecture (width 32, 5 residual blocks) at an odd size, both backends."""
    net = _randomize(transform_net(width=32, residual_blocks=5, seed=0))
    image = np.random.default_rng(2).random((45, 58, 3)).astype(np.float32)
    eigen = Stylizer(net, bucket=bucket, conv_backend="eigen")(image)
    default = Stylizer(net, bucket=bucket, conv_backend="xla")(image)
    assert eigen.shape == image.shape
    assert np.abs(eigen - default).max() <= TOL


@pytest.mark.parametrize("bucket", [None, 64])
def test_apply_options_keep_the_output(bucket, monkeypatch):
    """The apply programs' cheaper-compile options (xla.APPLY_OPTIONS: LLVM level 1) give the
    output of the same program compiled without them."""
    if compiler_options("eigen"):
        assert apply_options("eigen") == xla.APPLY_OPTIONS  # jaxlib 0.10 knows them
    assert apply_options("xla") == {}
    net = _randomize(transform_net(width=32, residual_blocks=5, seed=0))
    image = np.random.default_rng(4).random((45, 58, 3)).astype(np.float32)
    cheap = Stylizer(net, bucket=bucket)(image)
    monkeypatch.setattr(xla, "APPLY_OPTIONS", {})
    full = Stylizer(net, bucket=bucket)(image)
    assert np.abs(cheap - full).max() <= TOL


def test_arbitrary_eigen_equals_xla_default():
    transformer = style_transformer(weights=None)
    glorot_uniform(transformer, 0)
    _randomize(transformer)
    predictor = style_predictor(weights=None)
    glorot_uniform(predictor, 1)
    rng = np.random.default_rng(3)
    photo = rng.random((40, 52, 3)).astype(np.float32)
    style = rng.random((64, 64, 3)).astype(np.float32)
    out = {}
    for backend in ("eigen", "xla"):
        stylizer = ArbitraryStylizer(predictor, transformer, bucket=None, conv_backend=backend)
        out[backend] = (stylizer.embed(style), stylizer.stylize(photo, rng.normal(size=(100,)).astype(np.float32)))
        rng = np.random.default_rng(3)
        rng.random((40, 52, 3)), rng.random((64, 64, 3))  # the same embedding draw for both
    np.testing.assert_allclose(out["eigen"][0], out["xla"][0], rtol=1e-4, atol=1e-4)
    assert np.abs(out["eigen"][1] - out["xla"][1]).max() <= TOL


def test_train_step_eigen_equals_xla_default():
    """One step from the same state: equal loss and equal gradients (plain SGD with rate 1, so the
    update is the gradient; Adam's first step is about lr * sign(gradient) and would amplify
    differences in gradients near zero).  Average pooling: the two backends round differently, and
    with max pooling a near-tie in a 2x2 window sends a pixel's gradient to another input (up to
    0.49% of the gradient's norm with VGG16's seed-0 random weights, 1e-5 with seeds 1 and 2; with
    average pooling 2-5e-6)."""
    vgg = VGG("vgg16", weights=None, seed=0, pooling="avg")
    objective = StyleObjective.build(vgg, content_layers=["conv2_2"], style_layers=["conv1_2", "conv2_2"],
                                     content_layer_weights="sum", style_layer_weights="sum",
                                     content_weight=1.0, style_weight=1e-3, tv_weight=0.0,
                                     content_loss=content_loss("mean"), style_loss=gram_loss("hw"))
    net = _randomize(transform_net(width=8, residual_blocks=2, seed=0))
    tx = optax.sgd(1.0)
    rng = np.random.default_rng(4)
    batch = jnp.asarray(rng.random((2, 32, 32, 3), np.float32))
    style = jnp.asarray(rng.random((1, 32, 32, 3), np.float32))
    params = objective.params
    statistics = style_statistics(objective, params, style)
    state = init_state(get_params(net), tx)
    tree = jax.tree.map(jnp.asarray, objective)
    results = {b: make_train_step(net, tx, conv_backend=b)(tree, state, params, statistics, batch)
               for b in ("eigen", "xla")}
    (s1, m1), (s2, m2) = results["eigen"], results["xla"]
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-4)
    before = np.concatenate([np.ravel(p) for p in jax.tree.leaves(state.params.trainable)])
    g1, g2 = (before - np.concatenate([np.ravel(p) for p in jax.tree.leaves(s.params.trainable)])
              for s in (s1, s2))
    # over all weights at once: the biases before an instance norm have a zero gradient in exact
    # arithmetic, so their float32 values are rounding noise of either backend
    assert np.linalg.norm(g1 - g2) <= 1e-3 * np.linalg.norm(g2)


def test_an_eigen_program_can_be_called_inside_another_jit():
    """JAX refuses compiler options on a nested jit; the nested call runs the plain program."""
    net = transform_net(width=4, residual_blocks=1, seed=0)
    stylizer = Stylizer(net, bucket=None, conv_backend="eigen")
    images = jnp.asarray(np.random.default_rng(5).random((1, 16, 20, 3), np.float32))
    outer = jax.jit(lambda p, x: stylizer._apply(p, x) * 1.0)
    np.testing.assert_allclose(np.asarray(outer(stylizer.params, images)),
                               np.asarray(stylizer._apply(stylizer.params, images)), atol=TOL)
