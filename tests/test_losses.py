"""Losses against NumPy and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neuralstyle import ConfigError, content_loss, gram_loss, gram_matrix, total_variation
from neuralstyle.losses import GRAM_NORMALIZATIONS, gram_style_layer_loss

RNG = np.random.default_rng(0)


def numpy_gram(f):
    b, h, w, c = f.shape
    flat = f.reshape(b, h * w, c).astype(np.float64)
    return np.einsum("bki,bkj->bij", flat, flat)


@pytest.mark.parametrize("normalization,divisor", [
    ("raw", lambda h, w, c: 1.0), ("hw", lambda h, w, c: h * w),
    ("chw", lambda h, w, c: c * h * w), ("paper", lambda h, w, c: h * w),
])
def test_gram_matrix_matches_numpy(normalization, divisor):
    f = RNG.normal(size=(2, 5, 7, 4)).astype(np.float32)
    expected = numpy_gram(f) / divisor(5, 7, 4)
    np.testing.assert_allclose(gram_matrix(jnp.asarray(f), normalization), expected, rtol=1e-5)


def test_gram_of_known_tensor():
    # one position with features (1, 2, 3) and one with (0, 1, 0): G = v v^T + u u^T
    f = np.array([[1, 2, 3], [0, 1, 0]], np.float32).reshape(1, 1, 2, 3)
    expected = np.array([[1, 2, 3], [2, 5, 6], [3, 6, 9]], np.float32)
    np.testing.assert_allclose(gram_matrix(jnp.asarray(f))[0], expected)


def test_paper_normalization_is_eq4():
    """E_l = 1/(4 N^2 M^2) sum (G - A)^2 with raw Gram matrices (Gatys et al. 2016, eq. 4)."""
    x = RNG.normal(size=(1, 6, 5, 8)).astype(np.float32)
    s = RNG.normal(size=(1, 6, 5, 8)).astype(np.float32)
    n, m = 8, 6 * 5
    expected = np.sum((numpy_gram(x) - numpy_gram(s)) ** 2) / (4 * n**2 * m**2)
    loss = gram_loss("paper")
    np.testing.assert_allclose(loss.loss(jnp.asarray(x), loss.target(jnp.asarray(s)))[0], expected,
                               rtol=1e-4)


def test_tutorial_normalization_is_mean_of_hw_grams():
    """TensorFlow tutorial: gram = einsum / (H W); loss = reduce_mean((G - A)^2)."""
    x = RNG.normal(size=(1, 3, 4, 5)).astype(np.float32)
    s = RNG.normal(size=(1, 3, 4, 5)).astype(np.float32)
    expected = np.mean((numpy_gram(x) / 12 - numpy_gram(s) / 12) ** 2)
    loss = gram_loss("hw")
    np.testing.assert_allclose(loss.loss(x, loss.target(s))[0], expected, rtol=1e-5)


@pytest.mark.parametrize("normalization", GRAM_NORMALIZATIONS)
def test_gram_loss_zero_at_target_and_positive_elsewhere(normalization):
    x = jnp.asarray(RNG.normal(size=(1, 4, 4, 3)).astype(np.float32))
    loss = gram_loss(normalization)
    assert float(loss.loss(x, loss.target(x))[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(loss.loss(2 * x, loss.target(x))[0]) > 0


def test_style_loss_ignores_spatial_arrangement():
    """Gram statistics are permutation invariant over positions: a shuffled map has zero loss."""
    x = RNG.normal(size=(1, 6, 6, 4)).astype(np.float32)
    shuffled = RNG.permutation(x.reshape(36, 4)).reshape(1, 6, 6, 4)
    loss = gram_loss("hw")
    assert float(loss.loss(shuffled, loss.target(x))[0]) < 1e-9
    assert float(content_loss("mean")(shuffled, x)[0]) > 0.1


def test_content_loss_normalizations():
    f = RNG.normal(size=(2, 3, 3, 4)).astype(np.float32)
    p = RNG.normal(size=(2, 3, 3, 4)).astype(np.float32)
    sq = ((f - p) ** 2).reshape(2, -1)
    np.testing.assert_allclose(content_loss("paper")(f, p), 0.5 * sq.sum(1), rtol=1e-5)
    np.testing.assert_allclose(content_loss("sum")(f, p), sq.sum(1), rtol=1e-5)
    np.testing.assert_allclose(content_loss("mean")(f, p), sq.mean(1), rtol=1e-5)


def checkerboard(n, c=3):
    board = (np.add.outer(np.arange(n), np.arange(n)) % 2).astype(np.float32)
    return np.repeat(board[None, :, :, None], c, axis=-1)


def test_total_variation_of_checkerboard():
    n, c = 6, 3
    x = jnp.asarray(checkerboard(n, c))
    # every horizontal and vertical neighbour pair differs by exactly 1
    pairs = 2 * n * (n - 1) * c
    assert float(total_variation(x, "l1")[0]) == pytest.approx(pairs)
    assert float(total_variation(x, "l2")[0]) == pytest.approx(pairs)
    # beta form: (H-1)(W-1)C positions, each (1 + 1)^(beta/2)
    for beta in (1.0, 2.0, 2.5):
        expected = (n - 1) ** 2 * c * 2 ** (beta / 2)
        assert float(total_variation(x, "beta", beta)[0]) == pytest.approx(expected, rel=1e-5)


def test_total_variation_of_ramp_and_constant():
    ramp = np.tile(np.linspace(0, 1, 5, dtype=np.float32)[None, :, None], (4, 1, 2))[None]
    # only horizontal differences, each 0.25: 4 rows x 4 pairs x 2 channels
    assert float(total_variation(ramp, "l1")[0]) == pytest.approx(4 * 4 * 2 * 0.25)
    assert float(total_variation(ramp, "l2")[0]) == pytest.approx(4 * 4 * 2 * 0.0625)
    flat = np.full((1, 5, 5, 3), 0.3, np.float32)
    assert float(total_variation(flat, "l1")[0]) == 0.0
    g = jax.grad(lambda x: total_variation(x, "beta", 1.0)[0])(jnp.asarray(flat))
    assert np.all(np.isfinite(np.asarray(g)))  # eps keeps beta < 2 differentiable at 0


@pytest.mark.parametrize("fn", [
    lambda x: gram_loss("paper").loss(x, gram_loss("paper").target(0.5 * x + 0.1)),
    lambda x: content_loss("paper")(x, x[:, ::-1]),
    lambda x: total_variation(x, "beta", 2.5),
])
def test_jit_equals_eager(fn):
    x = jnp.asarray(RNG.normal(size=(2, 6, 5, 3)).astype(np.float32))
    np.testing.assert_allclose(jax.jit(fn)(x), fn(x), rtol=1e-5)
    ge, gj = jax.grad(lambda v: fn(v).sum())(x), jax.jit(jax.grad(lambda v: fn(v).sum()))(x)
    np.testing.assert_allclose(gj, ge, rtol=1e-4, atol=1e-6)


def test_unknown_choices_raise_config_errors():
    with pytest.raises(ConfigError, match="Gram normalization 'bogus'"):
        gram_loss("bogus")
    with pytest.raises(ConfigError, match="content normalization"):
        content_loss("median")
    with pytest.raises(ConfigError, match="total-variation kind"):
        total_variation(jnp.zeros((1, 2, 2, 3)), "l3")
    with pytest.raises(ConfigError):
        gram_style_layer_loss(jnp.zeros((1, 2, 2)), jnp.zeros((1, 2, 2)), "bogus")
