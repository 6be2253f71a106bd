"""The transform network of Johnson et al. 2016: shapes, layers against their formulas, export."""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from neuralstyle.fast import (
    CUSTOM_OBJECTS,
    ReflectionPadding2D,
    Stylizer,
    apply_fn,
    export_model,
    get_params,
    load_transform,
    transform_net,
)
from neuralstyle.errors import ConfigError, ImageError


@pytest.fixture(scope="module")
def net():
    return transform_net(width=4, residual_blocks=1, seed=0)


@pytest.mark.parametrize("shape", [(1, 32, 32), (2, 33, 47), (1, 8, 9), (1, 61, 17)])
def test_output_keeps_the_input_size_for_odd_sizes_too(net, shape):
    images = np.random.default_rng(0).random((*shape, 3), np.float32)
    out = jax.jit(apply_fn(net))(get_params(net), images)
    assert out.shape == images.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0  # tanh scaled to pixels


def test_architecture_follows_the_paper(net):
    big = transform_net(width=6, residual_blocks=3)
    convs = [layer for layer in big.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.kernel_size for c in convs] == [(9, 9)] + [(3, 3)] * 10 + [(9, 9)]
    assert [c.strides for c in convs] == [(1, 1), (2, 2), (2, 2)] + [(1, 1)] * 9
    assert [c.filters for c in convs] == [6, 12, 24] + [24] * 6 + [12, 6, 3]
    assert not any(isinstance(layer, keras.layers.Conv2DTranspose) for layer in big.layers)
    assert sum(isinstance(layer, keras.layers.UpSampling2D) for layer in big.layers) == 2
    assert sum(isinstance(layer, keras.layers.Add) for layer in big.layers) == 3
    # parameters: convolutions (kernel + bias) and instance norms (gamma + beta); at width 32
    # with 5 blocks this formula gives the 1.68 M parameters of the reference implementations
    def expected(w, r):
        conv = lambda k, i, o: k * k * i * o + o  # noqa: E731
        convs = (conv(9, 3, w) + conv(3, w, 2 * w) + conv(3, 2 * w, 4 * w) + 2 * r * conv(3, 4 * w, 4 * w)
                 + conv(3, 4 * w, 2 * w) + conv(3, 2 * w, w) + conv(9, w, 3))
        return convs + 2 * (w + 2 * w + 4 * w + 2 * r * 4 * w + 2 * w + w)
    assert big.count_params() == expected(6, 3)
    assert expected(32, 5) == 1679235
    # every conv is preceded by reflection padding of kernel // 2
    pads = [layer for layer in big.layers if isinstance(layer, ReflectionPadding2D)]
    assert [p.padding for p in pads] == [c.kernel_size[0] // 2 for c in convs]
    with pytest.raises(ConfigError, match="width"):
        transform_net(width=0)


def test_reflection_padding_matches_numpy():
    x = np.random.default_rng(1).random((2, 5, 6, 3), np.float32)
    got = np.asarray(ReflectionPadding2D(2)(x))
    np.testing.assert_array_equal(got, np.pad(x, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect"))


def test_instance_norm_matches_its_formula(net):
    """IN(x) = gamma * (x - mean_hw) / sqrt(var_hw + eps) + beta per image and channel
    (Ulyanov et al. 2016, eq. 3 with the affine parameters of their code)."""
    layer = next(l for l in net.layers if l.name == "down2_in")
    channels = layer.gamma.shape[0]
    rng = np.random.default_rng(2)
    gamma, beta = rng.normal(size=channels).astype(np.float32), rng.normal(size=channels).astype(np.float32)
    layer.set_weights([gamma, beta])
    x = (3.0 * rng.normal(size=(2, 7, 5, channels)) + 1.5).astype(np.float32)
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    expected = gamma * (x - mean) / np.sqrt(var + 1e-5) + beta
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-4, atol=1e-4)
    # the function the compiled programs use in its place (two reductions instead of Keras's three)
    from neuralstyle.fast.transform import instance_norm, is_instance_norm

    assert is_instance_norm(layer)
    np.testing.assert_allclose(np.asarray(instance_norm(layer)(jnp.asarray(x))), expected, rtol=1e-4, atol=1e-4)
    # lower-precision inputs: statistics in float32 (as Keras), the result in the layer's dtype
    got = instance_norm(layer)(jnp.asarray(x, jnp.bfloat16))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0.05, atol=0.05)


def test_only_one_group_per_channel_counts_as_an_instance_norm():
    from neuralstyle.fast.transform import is_instance_norm

    groups = keras.layers.GroupNormalization(groups=2)
    groups.build((None, 4, 4, 8))
    instance = keras.layers.GroupNormalization(groups=-1)
    instance.build((None, 4, 4, 8))
    assert is_instance_norm(instance) and not is_instance_norm(groups)
    assert not is_instance_norm(keras.layers.LayerNormalization())


def test_apply_program_takes_two_reductions_per_instance_norm():
    """The rewritten network's program computes each norm's mean and variance, two reductions
    (Keras's layer computes the mean twice): every instance norm of the net runs as
    ``instance_norm``."""
    model = transform_net(width=4, residual_blocks=1, seed=0)
    norms = sum(isinstance(layer, keras.layers.GroupNormalization) for layer in model.layers)
    images = jax.ShapeDtypeStruct((1, 24, 20, 3), jnp.float32)
    fast = jax.jit(apply_fn(model)).lower(get_params(model), images).as_text()
    assert norms == 7 and fast.count("stablehlo.reduce") == 2 * norms


def test_exported_model_reloads_and_gives_the_same_output(net, tmp_path):
    params = get_params(net)
    params = params._replace(trainable=[p + 0.01 for p in params.trainable])  # "trained"
    path = export_model(net, params, tmp_path / "model.keras")
    image = np.random.default_rng(3).random((21, 30, 3), np.float32)
    expected = np.asarray(jax.jit(apply_fn(net))(params, image[None])[0])
    reloaded = keras.saving.load_model(path)  # plain Keras (the layers are registered)
    np.testing.assert_allclose(np.asarray(reloaded(image[None]))[0], expected, atol=1e-5)
    assert set(CUSTOM_OBJECTS) == {"neuralstyle>ReflectionPadding2D", "neuralstyle>PadToMultiple",
                                   "neuralstyle>CropLike"}  # what a fresh process must pass
    np.testing.assert_allclose(Stylizer(path)(image), expected, atol=1e-5)
    assert not list(tmp_path.glob("*.partial*"))


def test_stylizer_preserve_colors_keeps_the_photos_chrominance(net, tmp_path):
    from neuralstyle.images.color import combine_luminance, rgb_to_yiq

    image = np.random.default_rng(4).uniform(0.3, 0.7, (16, 24, 3)).astype(np.float32)
    stylizer = Stylizer(net)
    plain, kept = stylizer(image), stylizer(image, preserve_colors="luminance")
    # the stylized luminance with the photo's chrominance (neuralstyle.images.color, tested there)
    np.testing.assert_allclose(kept, combine_luminance(plain, image), atol=1e-6)
    inside = ((kept > 0.0) & (kept < 1.0)).all(axis=-1)  # where clipping did not act
    assert inside.any()
    np.testing.assert_allclose(rgb_to_yiq(kept)[inside][:, 1:], rgb_to_yiq(image)[inside][:, 1:], atol=1e-5)
    with pytest.raises(ConfigError, match="preserve_colors"):
        stylizer(image, preserve_colors="histogram")
    with pytest.raises(ImageError, match="at least 8 px"):
        stylizer(image[:4])


def test_stylize_files_names_an_unreadable_input(net, tmp_path):
    from PIL import Image

    from neuralstyle.fast import stylize_files

    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (20, 12), (200, 30, 30)).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="b.jpg"):
        stylize_files(Stylizer(net), folder, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]  # written whole, nothing partial
    with pytest.raises(ImageError, match="does not exist"):
        stylize_files(Stylizer(net), tmp_path / "nope.png")


def test_load_transform_rejects_missing_and_non_model_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_transform(tmp_path / "nope.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="could not load"):
        load_transform(bad)


# ----------------------------------------------------------------- space-to-depth (a speed rewrite)

@pytest.mark.parametrize("h,w,k,c,o,block", [(45, 58, 9, 32, 3, 4), (20, 21, 9, 8, 3, 2), (16, 17, 7, 4, 2, 3),
                                              (9, 9, 9, 3, 3, 4)])
def test_space_to_depth_conv_equals_the_convolution(h, w, k, c, o, block):
    """Any size (not whole blocks too), any block: the valid convolution to float32 rounding."""
    import jax.numpy as jnp

    from neuralstyle.fast.transform import space_to_depth_conv

    rng = np.random.default_rng(k + block)
    x = jnp.asarray(rng.standard_normal((2, h, w, c), np.float32))
    kernel = jnp.asarray(rng.standard_normal((k, k, c, o), np.float32) * 0.05)
    bias = jnp.asarray(rng.standard_normal((o,), np.float32))
    want = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias[None, None, None]
    got = space_to_depth_conv(x, kernel, bias, block)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("h,w,c,o", [(7, 9, 4, 3), (12, 12, 8, 5), (1, 2, 3, 2)])
def test_subpixel_conv_equals_upsampling_reflection_and_convolution(h, w, c, o):
    import jax.numpy as jnp

    from neuralstyle.fast.transform import subpixel_conv

    rng = np.random.default_rng(h * w)
    x = rng.standard_normal((2, h, w, c)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, c, o)) * 0.2).astype(np.float32)
    up = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    padded = np.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect") if min(h, w) > 1 else \
        np.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="symmetric")  # 2 px: reflect = symmetric
    want = jax.lax.conv_general_dilated(jnp.asarray(padded), jnp.asarray(kernel), (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    edge = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    got = subpixel_conv(jnp.asarray(edge), jnp.asarray(kernel))
    assert got.shape == (2, 2 * h, 2 * w, o)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5 * float(jnp.abs(want).max()))


def test_apply_with_space_to_depth_equals_keras_and_has_the_same_gradient():
    """The recipe's architecture: the last 9x9 convolution (space-to-depth) and both upsampling
    convolutions (sub-pixel) are rewritten; outputs within 1e-4 (measured ~1e-6) on [0, 1] pixels
    and weight gradients within 1e-3 (relative, all weights)."""
    from neuralstyle.fast.transform import runs_space_to_depth, subpixel_chains

    from conftest import randomize_weights

    model = randomize_weights(transform_net(width=32, residual_blocks=5, seed=0))
    rng = np.random.default_rng(1)
    assert [layer.name for layer in model.layers if runs_space_to_depth(layer)] == ["out_conv"]
    assert sorted(n for n, role in subpixel_chains(model).items() if role == "conv") == ["up1_conv", "up2_conv"]
    params = get_params(model)
    images = rng.random((2, 37, 50, 3)).astype(np.float32)
    fast, keras_ = apply_fn(model), apply_fn(model, rewrites=False)

    def outputs_and_grads(fn):
        """The outputs and the weight gradient of their sum of squares, from one compiled program."""
        def loss(trainable):
            out = fn(params._replace(trainable=trainable), images)
            return (out ** 2).sum(), out
        (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params.trainable)
        return np.asarray(out), np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])

    (out_fast, g_fast), (out_keras, g_keras) = outputs_and_grads(fast), outputs_and_grads(keras_)
    assert np.abs(out_fast - out_keras).max() <= 1e-4
    assert np.linalg.norm(g_fast - g_keras) <= 1e-3 * np.linalg.norm(g_keras)


def test_fast_call_of_the_arbitrary_transformer_equals_keras():
    """The arbitrary-style transformer (two inputs, conditional instance norms) with the rewrites:
    its last 9x9 convolution (8 -> 3) in space-to-depth form, both upsamplings sub-pixel."""
    from conftest import randomize_weights

    from neuralstyle.arbitrary import style_transformer
    from neuralstyle.fast.transform import fast_call, glorot_uniform, runs_space_to_depth, subpixel_chains

    model = style_transformer(weights=None)
    glorot_uniform(model, 0)
    randomize_weights(model)
    assert sum(runs_space_to_depth(layer) for layer in model.layers) == 1
    assert sum(role == "conv" for role in subpixel_chains(model).values()) == 2
    rng = np.random.default_rng(6)
    inputs = [rng.random((2, 37, 50, 3)).astype(np.float32), rng.normal(size=(2, 100)).astype(np.float32)]
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    got = jax.jit(lambda t, n, x: fast_call(model, t, n, x))(trainable, non_trainable, inputs)
    want = jax.jit(lambda t, n, x: model.stateless_call(t, n, x)[0])(trainable, non_trainable, inputs)
    assert np.abs(np.asarray(got) - np.asarray(want)).max() <= 1e-4


def test_prepared_kernels_give_the_same_outputs_and_leave_the_rewriting_out_of_the_program():
    """Frozen weights: the sub-pixel and space-to-depth kernels computed once
    (``prepared_kernels``) and passed in give the outputs of the program that rewrites them itself
    (same arithmetic; bound 1e-6 on [0, 1] pixels), and that program holds no kernel rewriting: no
    ``dot_general`` (the sub-pixel tap sums) and no ``gather`` (the space-to-depth kernel), which
    the self-rewriting program has."""
    from conftest import randomize_weights

    from neuralstyle.fast.transform import prepared_kernels, subpixel_kernel, subpixel_kernels

    model = randomize_weights(transform_net(width=8, residual_blocks=1, seed=0))
    params = get_params(model)
    kernels = prepared_kernels(model, params.trainable)
    assert sorted(kernels) == ["out_conv", "up1_conv", "up2_conv"]
    assert kernels["up1_conv"].shape == (2, 2, 32, 4 * 16)  # the 2x2 kernels of the 4 phases, side by side
    assert kernels["out_conv"].shape == (3, 3, 16 * 8, 16 * 3)  # block 4: 9x9 -> 3x3, 16x channels
    images = np.random.default_rng(2).random((1, 29, 42, 3)).astype(np.float32)
    fn = jax.jit(apply_fn(model))
    inline, prepared = np.asarray(fn(params, images)), np.asarray(fn(params, images, kernels))
    assert np.abs(prepared - inline).max() <= 1e-6
    text_inline = fn.lower(params, images).as_text()
    text_prepared = fn.lower(params, images, kernels).as_text()
    assert "dot_general" in text_inline and "gather" in text_inline
    assert "dot_general" not in text_prepared and "gather" not in text_prepared
    # the phase kernels are the tap sums: phase (0, 0) of a kernel of ones sums 1, 2, 2 and 4 taps
    ones = subpixel_kernels(np.ones((3, 3, 1, 1), np.float32))
    np.testing.assert_array_equal(np.asarray(ones[0, 0, :, :, 0, 0]), [[1, 2], [2, 4]])
    # side by side, output channel (a, b, o): phase (1, 0) is channel 2
    stacked = subpixel_kernel(np.ones((3, 3, 1, 1), np.float32))
    np.testing.assert_array_equal(np.asarray(stacked[:, :, 0, 2]), [[2, 4], [1, 2]])


def test_stylizer_rewrites_its_kernels_again_when_its_params_are_replaced():
    """``Stylizer.kernels`` follows ``Stylizer.params``: a stylizer given other weights runs with
    their kernels, like a stylizer built with them (bucketed and unbucketed alike)."""
    from conftest import randomize_weights

    a = randomize_weights(transform_net(width=4, residual_blocks=1, seed=0))
    b = randomize_weights(transform_net(width=4, residual_blocks=1, seed=5))
    image = np.random.default_rng(3).random((23, 30, 3)).astype(np.float32)
    for bucket in (None, 16):
        stylizer, reference = Stylizer(a, bucket=bucket), Stylizer(b, bucket=bucket)
        first = stylizer(image)
        stylizer.params = get_params(b)
        assert np.abs(stylizer(image) - reference(image)).max() <= 1e-6
        assert np.abs(first - reference(image)).max() > 1e-3  # the two networks differ


@pytest.mark.parametrize("mode", ["reflect", "edge"])
@pytest.mark.parametrize("shape,pads", [((2, 9, 7, 3), (4, 4, 4, 4)), ((1, 5, 6, 2), (1, 1, 1, 1)),
                                        ((1, 6, 5, 1), (0, 2, 0, 3)), ((1, 4, 4, 2), (0, 0, 1, 0))])
def test_gather_pad_equals_numpy_pad(mode, shape, pads):
    from neuralstyle.fast.transform import gather_pad

    x = np.random.default_rng(4).random(shape).astype(np.float32)
    top, bottom, left, right = pads
    want = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), mode=mode)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda v: gather_pad(v, *pads, mode))(x)), want)


def test_gather_pad_refuses_a_reflection_wider_than_the_image():
    from neuralstyle.fast.transform import gather_pad

    with pytest.raises(ValueError, match="reflection padding by 4 needs more than 4 rows"):
        gather_pad(np.zeros((1, 4, 9, 1), np.float32), 4, 4, 0, 0)


def test_apply_with_gathered_paddings_equals_the_concatenated_ones():
    """``gather_pads`` (the stylizers' apply programs): every reflection padding, the sub-pixel
    edge paddings and the pad-to-a-multiple as gathers; same values (bound 1e-6 on [0, 1] pixels,
    measured 0), and the program has gathers and no reversals where the other has reversals."""
    from conftest import randomize_weights

    from neuralstyle.fast.transform import prepared_kernels

    model = randomize_weights(transform_net(width=8, residual_blocks=1, seed=0))
    params = get_params(model)
    kernels = prepared_kernels(model, params.trainable)
    images = np.random.default_rng(5).random((1, 29, 42, 3)).astype(np.float32)  # 29: padded to 32
    plain, gathered = jax.jit(apply_fn(model)), jax.jit(apply_fn(model, gather_pads=True))
    want, got = np.asarray(plain(params, images, kernels)), np.asarray(gathered(params, images, kernels))
    assert got.shape == images.shape and np.abs(got - want).max() <= 1e-6
    text_plain = plain.lower(params, images, kernels).as_text()
    text_gathered = gathered.lower(params, images, kernels).as_text()
    assert "stablehlo.reverse" in text_plain and "stablehlo.gather" not in text_plain
    assert "stablehlo.reverse" not in text_gathered and "stablehlo.gather" in text_gathered
