"""Style-loss families against closed forms and NumPy, under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neuralstyle import ConfigError, gram_loss
from neuralstyle.losses import (
    bn_statistics_loss, channel_statistics, extract_patches, histogram_loss, match_histograms,
    mean_std_loss, mmd_loss, mmd_squared, mrf_loss, resample_sorted, sliced_wasserstein_loss,
)

RNG = np.random.default_rng(0)
KEY = jax.random.key(0)


def features(shape=(1, 6, 5, 4), scale=1.0, shift=0.0):
    return jnp.asarray(RNG.normal(size=shape).astype(np.float32) * scale + shift)


def evaluate(family, x, s, key=KEY):
    return family.loss(x, family.target(s), key)


FAMILIES = {
    "mean_std": mean_std_loss(), "bn_statistics": bn_statistics_loss(),
    "mmd_linear": mmd_loss("linear"), "mmd_polynomial": mmd_loss("polynomial"),
    "mmd_gaussian": mmd_loss("gaussian"), "swd": sliced_wasserstein_loss(),
    "histogram": histogram_loss(), "mrf": mrf_loss(),
}


@pytest.mark.parametrize("name", FAMILIES)
def test_zero_against_itself_positive_against_other(name):
    family = FAMILIES[name]
    x = features()
    assert float(evaluate(family, x, x)[0]) == pytest.approx(0.0, abs=1e-5)
    assert float(evaluate(family, x, features(scale=2.0, shift=1.0))[0]) > 1e-2


@pytest.mark.parametrize("name", FAMILIES)
def test_jit_equals_eager_and_gradient_is_finite(name):
    family = FAMILIES[name]
    x, s = features(), features(scale=1.5, shift=0.3)
    target = family.target(s)
    eager = family.loss(x, target, KEY)
    np.testing.assert_allclose(jax.jit(family.loss)(x, target, KEY), eager, rtol=1e-4, atol=1e-7)
    grad = jax.grad(lambda v: family.loss(v, target, KEY).sum())(x)
    assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).sum()) > 0


def test_mean_std_is_zero_for_affine_copy_with_matching_statistics():
    """A per-channel affine map onto the style's mean and std has zero AdaIN loss, whatever its
    spatial arrangement, while the Gram loss of the same pair is not zero."""
    s = features((1, 8, 8, 3), scale=2.0, shift=1.0)
    x = features((1, 5, 7, 3))
    (mx, sx), (ms, ss) = channel_statistics(x, 0.0), channel_statistics(s, 0.0)
    y = (x - mx[:, None, None, :]) / sx[:, None, None, :] * ss[:, None, None, :] + ms[:, None, None, :]
    assert float(evaluate(mean_std_loss(eps=0.0), y, s)[0]) < 1e-4
    assert float(evaluate(bn_statistics_loss(eps=0.0), y, s)[0]) < 1e-9
    assert float(evaluate(gram_loss("hw"), y, s)[0]) > 1e-3


def test_statistics_against_numpy():
    x = features((2, 4, 3, 5))
    flat = np.asarray(x).reshape(2, 12, 5)
    mean, std = channel_statistics(x, eps=0.0)
    np.testing.assert_allclose(mean, flat.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, flat.std(1), rtol=1e-5)
    s = features((2, 6, 2, 5))
    sflat = np.asarray(s).reshape(2, 12, 5)
    expected = np.mean((flat.mean(1) - sflat.mean(1)) ** 2 + (flat.std(1) - sflat.std(1)) ** 2, -1)
    np.testing.assert_allclose(evaluate(bn_statistics_loss(eps=0.0), x, s), expected, rtol=1e-4)


def numpy_mmd2(x, y, k):
    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


def test_mmd_estimator_against_numpy():
    x, y = np.asarray(features((1, 3, 4, 3)))[0].reshape(12, 3), np.asarray(features((1, 2, 5, 3)))[0].reshape(10, 3)
    kernels = {
        "linear": (dict(), lambda a, b: a @ b.T),
        "polynomial": (dict(degree=3, offset=1.0), lambda a, b: (a @ b.T + 1.0) ** 3),
        "gaussian": (dict(bandwidth=0.7),
                     lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * 0.7))),
    }
    for kernel, (args, k) in kernels.items():
        got = mmd_squared(jnp.asarray(x)[None], jnp.asarray(y)[None], kernel, **args)[0]
        np.testing.assert_allclose(got, numpy_mmd2(x, y, k), rtol=1e-4, atol=1e-6)


def test_polynomial_mmd_equals_gram_loss():
    """Li et al. 2017, eq. 7: with k(x, y) = (x^T y)^2 and Z = 4 N^2, MMD^2 / Z is the Gram loss
    of Gatys et al. (eq. 4) -- checked through both the closed form and the kernel matrices."""
    x, s = features((1, 6, 5, 8)), features((1, 6, 5, 8), scale=1.3, shift=0.2)
    gram = evaluate(gram_loss("paper"), x, s)
    closed_form = evaluate(mmd_loss("polynomial"), x, s)
    n = 8
    explicit = mmd_squared(x.reshape(1, 30, 8), s.reshape(1, 30, 8), "polynomial", degree=2) / (4 * n**2)
    np.testing.assert_allclose(closed_form, gram, rtol=1e-4)
    np.testing.assert_allclose(explicit, gram, rtol=1e-3)


def test_linear_mmd_is_mean_difference():
    x, s = features((1, 4, 4, 3)), features((1, 5, 3, 3), shift=0.5)
    mx, ms = np.asarray(x).reshape(16, 3).mean(0), np.asarray(s).reshape(15, 3).mean(0)
    np.testing.assert_allclose(evaluate(mmd_loss("linear"), x, s)[0], ((mx - ms) ** 2).sum() / 3, rtol=1e-4)


def test_sliced_wasserstein_is_zero_for_itself_and_grows_with_shift():
    s = features((1, 8, 8, 4))
    swd = sliced_wasserstein_loss()
    values = [float(evaluate(swd, s + shift, s)[0]) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values[0] == pytest.approx(0.0, abs=1e-10)
    assert values[1] < values[2] < values[3]
    # a shift t along every channel projects to t * sum(v) on a unit direction v: the loss is
    # t^2 times the mean of (sum v)^2, which is 1 in expectation over random directions
    assert values[3] / values[2] == pytest.approx(4.0, rel=1e-3)


def test_sliced_wasserstein_uses_fresh_projections_per_key():
    x, s = features((1, 6, 6, 4)), features((1, 6, 6, 4), scale=2.0)
    swd = sliced_wasserstein_loss(projections=2)
    a, b = evaluate(swd, x, s, jax.random.key(1)), evaluate(swd, x, s, jax.random.key(2))
    assert float(a[0]) != pytest.approx(float(b[0]), rel=1e-3)
    np.testing.assert_allclose(evaluate(swd, x, s, jax.random.key(1)), a)  # same key, same value
    assert swd.stochastic and not gram_loss().stochastic


def test_sliced_wasserstein_is_permutation_invariant():
    s = features((1, 6, 6, 3))
    shuffled = jnp.asarray(RNG.permutation(np.asarray(s).reshape(36, 3)).reshape(1, 6, 6, 3))
    assert float(evaluate(sliced_wasserstein_loss(), shuffled, s)[0]) < 1e-10


def test_histogram_matching_by_ranks():
    values = jnp.asarray([[[3.0], [1.0], [2.0]]])
    target = jnp.asarray([[[10.0], [20.0], [30.0]]])
    np.testing.assert_allclose(match_histograms(values, target)[0, :, 0], [30.0, 10.0, 20.0])
    # different sizes: the target's quantile function is resampled
    np.testing.assert_allclose(resample_sorted(jnp.asarray([[[0.0], [1.0]]]), 4)[0, :, 0],
                               [0.0, 0.25, 0.75, 1.0])


def test_histogram_loss_gradient_moves_towards_the_remapped_values():
    x, s = features((1, 4, 4, 2)), features((1, 4, 4, 2), shift=3.0)
    family = histogram_loss()
    grad = jax.grad(lambda v: family.loss(v, family.target(s)).sum())(x)
    assert float(jnp.mean(grad)) < 0  # the style is brighter: descending raises the activations


def test_patches_against_numpy():
    x = features((1, 4, 5, 2))
    patches = extract_patches(x, 3)
    assert patches.shape == (1, 2 * 3, 9 * 2)
    window = np.asarray(x)[0, 1:4, 2:5, :]  # the patch at output position (1, 2)
    got = np.sort(np.asarray(patches)[0, 1 * 3 + 2])
    np.testing.assert_allclose(got, np.sort(window.reshape(-1)), rtol=1e-6)


def test_mrf_matches_nearest_patch_by_cosine():
    """Generated patches equal to scaled copies of style patches have their originals as nearest
    neighbours (cosine ignores the scale) and the loss is the scale difference."""
    s = features((1, 5, 5, 3))
    family = mrf_loss()
    assert float(evaluate(family, s, s)[0]) == pytest.approx(0.0, abs=1e-8)
    doubled = float(evaluate(family, 2.0 * s, s)[0])
    expected = float(jnp.mean(jnp.square(extract_patches(s, 3))))
    assert doubled == pytest.approx(expected, rel=1e-4)


def test_unknown_kernel():
    with pytest.raises(ConfigError, match="MMD kernel 'cosine'"):
        mmd_loss("cosine")
