"""Winograd F(2x2, 3x3) convolutions: closed forms, ``lax.conv``, the VGG extractor, real weights.

Tolerances: float32 Winograd and direct convolution differ by rounding only; measured on random
data the largest difference is about 2e-7 of the largest output (forward and input gradient), on
the real VGG19 features about 1e-6.  The bounds below (1e-5, real features 1e-4) leave a margin
that no CPU's rounding can cross, and are far below what a wrong transform, tap order or flip
gives (order 1).
"""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from jax import lax

from neuralstyle import VGG
from neuralstyle.backbones.vgg import AUTO_WINOGRAD_MIN_CHANNELS, WinogradConv2D, winograd_layers
from neuralstyle.backbones import winograd
from neuralstyle.backbones.winograd import AT, BT, FLIP, G, tile_bands, winograd_conv2d, winograd_kernel
from neuralstyle.errors import ConfigError

RNG = np.random.default_rng(11)


def direct_conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


def relative(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def test_one_tile_by_the_paper_formula():
    """Y = A^T [(G g G^T) ⊙ (B^T d B)] A (Lavin & Gray 2016, eq. 8) is the 2x2 "valid"
    correlation of a 4x4 tile with a 3x3 kernel, written out in NumPy."""
    d = RNG.standard_normal((4, 4))
    g = RNG.standard_normal((3, 3))
    y = AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(y, direct, rtol=1e-12, atol=1e-12)


def test_flipped_kernel_is_a_permutation_of_the_transform():
    """G R = P G: reversing the three taps permutes the four transformed rows by FLIP, which is
    what lets the input gradient reuse U."""
    reverse = np.eye(3)[::-1]
    permute = np.eye(4)[list(FLIP)]
    np.testing.assert_array_equal(G @ reverse, permute @ G)


def test_identity_kernel_returns_the_input():
    x = jnp.asarray(RNG.standard_normal((1, 5, 7, 3)).astype(np.float32))
    kernel = np.zeros((3, 3, 3, 3), np.float32)
    kernel[1, 1] = np.eye(3)
    np.testing.assert_allclose(winograd_conv2d(x, winograd_kernel(kernel)), x, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 7, 9, 5), (1, 8, 8, 3), (1, 1, 1, 4), (1, 2, 5, 6), (1, 16, 11, 8)])
def test_equals_lax_conv_forward_and_input_gradient(shape):
    x = jnp.asarray(RNG.standard_normal(shape).astype(np.float32))
    kernel = jnp.asarray(RNG.standard_normal((3, 3, shape[-1], 6)).astype(np.float32))
    u = winograd_kernel(kernel)
    assert u.shape == (16, shape[-1], 6)
    expected = direct_conv(x, kernel)
    assert relative(jax.jit(winograd_conv2d)(x, u), expected) < 1e-5
    assert relative(winograd_conv2d(x, u), expected) < 1e-5  # eager too
    cotangent = jnp.asarray(RNG.standard_normal(expected.shape).astype(np.float32))
    want = jax.vjp(lambda v: direct_conv(v, kernel), x)[1](cotangent)[0]
    got, u_cotangent = jax.vjp(winograd_conv2d, x, u)[1](cotangent)
    assert relative(got, want) < 1e-5
    assert not np.any(np.asarray(u_cotangent))  # frozen weights: documented as zero


def forward_and_input_gradient(x, u, cotangent):
    y, vjp = jax.vjp(lambda v: winograd_conv2d(v, u), x)
    return y, vjp(cotangent)[0]


def band_bytes_for_rows(rows: int, n: int, tw: int, c_in: int, c_out: int) -> int:
    """A :data:`winograd.BAND_BYTES` that fits ``rows`` tile rows per band and no more."""
    return 16 * n * rows * tw * (c_in + c_out) * 4


@pytest.fixture
def band_bytes(monkeypatch):
    """``band_bytes(b)`` sets :data:`winograd.BAND_BYTES` (read when a function is traced) and
    drops JAX's caches, so that the next trace uses it; the caches are dropped again after the
    test, so that no banded trace outlives it."""

    def set_to(value):
        monkeypatch.setattr(winograd, "BAND_BYTES", value)
        jax.clear_caches()

    yield set_to
    monkeypatch.undo()
    jax.clear_caches()


def test_tile_bands_cover_the_rows_within_the_budget(monkeypatch):
    assert tile_bands(1, 32, 32, 256, 256) == [(0, 32)]  # a 256 px block3 layer: one piece
    monkeypatch.setattr(winograd, "BAND_BYTES", band_bytes_for_rows(3, 2, 5, 8, 4))
    for th in (1, 2, 3, 4, 7, 10, 31):
        bands = tile_bands(2, th, 5, 8, 4)
        assert bands[0][0] == 0 and bands[-1][1] == th
        assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
        assert all(1 <= stop - start <= 3 for start, stop in bands)
        assert len(bands) == -(-th // 3)
    monkeypatch.setattr(winograd, "BAND_BYTES", 1)  # smaller than one tile row: one row per band
    assert tile_bands(1, 4, 5, 8, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_vgg19_layers_at_256_px_are_one_band():
    """backbone.conv=auto's Winograd layers at 256 px are computed in one piece: their programs
    are those of the convolution without bands."""
    for side, c_in, c_out in ((64, 256, 256), (32, 256, 512), (32, 512, 512), (16, 512, 512)):
        assert len(tile_bands(1, side // 2, side // 2, c_in, c_out)) == 1


@pytest.mark.parametrize("shape", [(1, 17, 23, 8), (2, 12, 9, 5), (1, 32, 30, 16)])
def test_bands_give_the_same_values(shape, band_bytes):
    """Every tile is computed as without bands: forward and input gradient equal to float32
    rounding, also under vmap (the driver's run axis).  Not bit for bit: a band's matrix product
    has fewer rows, and the CPU's matrix kernels may sum it in another order (equal on an AVX-512
    Xeon, last bits differ on an AVX2-only EPYC: at most 5e-7 of the largest value); a band with a
    wrong halo or a misplaced row would be off by the values themselves."""
    x = jnp.asarray(RNG.standard_normal(shape).astype(np.float32))
    kernel = RNG.standard_normal((3, 3, shape[-1], 6)).astype(np.float32) / 3
    u = winograd_kernel(kernel)
    cotangent = jnp.asarray(RNG.standard_normal(shape[:-1] + (6,)).astype(np.float32))
    whole = jax.jit(forward_and_input_gradient)(x, u, cotangent)
    batched_whole = jax.jit(jax.vmap(forward_and_input_gradient, in_axes=(0, None, 0)))(
        x[None], u, cotangent[None])
    tw = (shape[2] + 1) // 2
    band_bytes(band_bytes_for_rows(2, shape[0], tw, shape[-1], 6))
    assert len(tile_bands(shape[0], (shape[1] + 1) // 2, tw, shape[-1], 6)) > 2
    banded = jax.jit(forward_and_input_gradient)(x, u, cotangent)
    batched = jax.jit(jax.vmap(forward_and_input_gradient, in_axes=(0, None, 0)))(x[None], u, cotangent[None])
    for got, want in zip(banded + batched, whole + batched_whole):
        want = np.asarray(want)
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert relative(banded[0], direct_conv(x, kernel)) < 1e-5


def test_bands_are_computed_one_after_the_other(band_bytes):
    """Only one band's transformed tiles and products are live at a time: the compiled program's
    temporary memory falls by most of what V and M take in one piece (if the compiler ran the
    bands side by side, it would not fall)."""
    n, side, c = 1, 96, 32
    x = jnp.zeros((n, side, side, c), jnp.float32)
    u = jnp.zeros((16, c, c), jnp.float32)

    def temp_bytes():
        compiled = jax.jit(forward_and_input_gradient).lower(x, u, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    whole = temp_bytes()
    tiles_and_products = 16 * n * (side // 2) ** 2 * 2 * c * 4  # V and M in one piece
    band_bytes(tiles_and_products // 8)
    assert len(tile_bands(n, side // 2, side // 2, c, c)) == 8
    assert temp_bytes() < whole - 3 * tiles_and_products / 4


def test_kernel_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(3, 3, C_in, C_out\) kernel, got shape \(5, 5, 3, 8\)"):
        winograd_kernel(np.zeros((5, 5, 3, 8), np.float32))


def test_a_strided_convolution_cannot_be_wrapped():
    conv = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="strided")
    conv.build((None, 8, 8, 3))
    with pytest.raises(ConfigError, match="layer strided has .*strides"):
        WinogradConv2D(conv)


def test_auto_chooses_the_wide_layers_on_cpu(random_vgg19):
    model = random_vgg19.model
    auto = winograd_layers(model, "auto", platform="cpu")
    convs = {l.name: l.kernel.shape for l in model.layers if isinstance(l, keras.layers.Conv2D)}
    assert auto == {n for n, s in convs.items() if min(s[2], s[3]) >= AUTO_WINOGRAD_MIN_CHANNELS}
    assert "block3_conv1" not in auto and {"block3_conv2", "block5_conv4"} <= auto
    assert winograd_layers(model, "auto", platform="gpu") == set()
    assert winograd_layers(model, "auto", precision="bfloat16", platform="cpu") == set()
    assert winograd_layers(model, "xla") == set()
    assert winograd_layers(model, "winograd") == set(convs)


def test_bad_conv_choices_are_refused():
    with pytest.raises(ConfigError, match="backbone conv must be one of auto, xla, winograd, got 'fft'"):
        VGG("vgg19", weights=None, conv="fft")
    with pytest.raises(ConfigError, match="conv='winograd' runs in float32 only"):
        VGG("vgg19", weights=None, conv="winograd", precision="bfloat16")


@pytest.fixture(scope="module")
def extractors():
    """Random VGG19 extractors with average pooling, as conftest's ``random_vgg19_avg`` (which
    says why: with max pooling, rounding can route a near-tied window's gradient to another input;
    one CPU failed this test so, with 5.8e-4).  Pooling is not what is compared here; the
    max-pooling gradient has its own test in ``test_backbones.py``."""
    layers = ["conv1_1", "conv3_1", "conv4_1", "conv5_2"]
    return {conv: VGG("vgg19", weights=None, seed=0, conv=conv, pooling="avg").extractor(layers)
            for conv in ("xla", "winograd", "auto")}


def test_extractor_features_and_gradients_equal_xla(extractors):
    x = jnp.asarray(RNG.uniform(size=(2, 37, 42, 3)).astype(np.float32))

    def features_and_gradient(extractor):
        def energy(params, image):  # the weights an argument: as constants they slow compiling 3x
            return sum(jnp.mean(f ** 2) for f in extractor.apply(params, image).values())

        return (jax.jit(extractor.apply)(extractor.params, x),
                jax.jit(jax.grad(energy, argnums=1))(extractor.params, x))

    reference, reference_grad = features_and_gradient(extractors["xla"])
    assert extractors["xla"].winograd == ()
    assert extractors["winograd"].winograd[0] == "block1_conv1"
    for conv in ("winograd", "auto"):
        features, grad = features_and_gradient(extractors[conv])
        for name, ref in reference.items():
            assert float(jnp.max(jnp.abs(ref))) > 0
            assert relative(features[name], ref) < 1e-5, (conv, name)
        assert relative(grad, reference_grad) < 1e-5, conv


def test_direct_forward_pass_uses_xla_convolutions_and_equals_winograd(extractors):
    """``apply(..., winograd=False)`` (the targets' one-off forward pass) runs every layer as
    XLA's convolution with the original kernel: the same features as the XLA extractor bit for
    bit, as the Winograd ones to float32 rounding, and no Winograd product in its program; the
    flag holds for that call only."""
    extractor = extractors["winograd"]
    x = jnp.asarray(RNG.uniform(size=(1, 40, 36, 3)).astype(np.float32))
    direct = jax.jit(lambda p, im: extractor.apply(p, im, winograd=False))(extractor.params, x)
    xla = jax.jit(extractors["xla"].apply)(extractors["xla"].params, x)
    winograd = jax.jit(extractor.apply)(extractor.params, x)
    for name, ref in xla.items():
        np.testing.assert_array_equal(np.asarray(direct[name]), np.asarray(ref))
        assert relative(winograd[name], ref) < 1e-5, name

    hlo_direct = jax.jit(lambda p, im: extractor.apply(p, im, winograd=False)).lower(extractor.params, x).as_text()
    hlo_winograd = jax.jit(extractor.apply).lower(extractor.params, x).as_text()
    convs = len(extractor.winograd)
    assert hlo_direct.count("stablehlo.convolution") == convs and "stablehlo.dot_general" not in hlo_direct
    assert hlo_winograd.count("stablehlo.convolution") == 0 and "stablehlo.dot_general" in hlo_winograd
    with pytest.raises(TypeError):  # 4 channels: the call fails, and the flag is reset all the same
        extractor.apply(extractor.params, jnp.zeros((1, 8, 8, 4)), winograd=False)
    again = jax.jit(extractor.apply).lower(extractor.params, x).as_text()  # a fresh trace: Winograd
    assert again.count("stablehlo.convolution") == 0


def test_targets_are_computed_without_winograd(extractors):
    """The objective's targets (content features, Gram matrices) come from the direct forward
    pass: equal to those of the XLA backbone, and the loss at the content image is that of the
    XLA objective to float32 rounding."""
    from neuralstyle import StyleObjective

    content = jnp.asarray(RNG.uniform(size=(1, 32, 32, 3)).astype(np.float32))
    style = jnp.asarray(RNG.uniform(size=(1, 32, 40, 3)).astype(np.float32))
    objectives = {conv: StyleObjective.build(VGG("vgg19", weights=None, seed=0, conv=conv), ["conv4_2"],
                                             ["conv1_1", "conv3_1", "conv4_1"]) for conv in ("xla", "winograd")}
    targets = {conv: jax.jit(o.targets)(o.params, content, style) for conv, o in objectives.items()}
    for name, ref in targets["xla"].content.items():
        np.testing.assert_array_equal(np.asarray(targets["winograd"].content[name]), np.asarray(ref))
    for name, ref in targets["xla"].style[0].items():
        np.testing.assert_array_equal(np.asarray(targets["winograd"].style[0][name]), np.asarray(ref))
    losses = {conv: float(jax.jit(lambda p, x, t, o=o: o(p, x, t)[0])(o.params, content, targets[conv]))
              for conv, o in objectives.items()}
    assert losses["xla"] > 0 and abs(losses["winograd"] - losses["xla"]) <= 1e-4 * losses["xla"]


def test_winograd_layers_share_the_backbone_weights(extractors):
    extractor = extractors["auto"]
    wrapped = [l for l in extractor.model.layers if isinstance(l, WinogradConv2D)]
    assert [l.name for l in wrapped] == list(extractor.winograd)
    for layer in wrapped:
        assert isinstance(layer.conv, keras.layers.Conv2D) and layer.conv.name == layer.name
        np.testing.assert_allclose(layer.winograd_kernel.value, winograd_kernel(layer.conv.kernel.value))
    # U is a frozen weight: the trainable list holds the convolution kernels and biases only
    assert all(v.path.endswith(("kernel", "bias")) and "winograd" not in v.path
               for v in extractor.model.trainable_variables)


@pytest.mark.slow
def test_real_vgg19_features_with_winograd_equal_xla(image_dir):
    """Real weights on a real photo: every layer from conv1_1 to conv5_2, Winograd everywhere
    against XLA's convolution (a wrong transform would change the real features by order 1)."""
    from neuralstyle import load_image

    photo = jnp.asarray(load_image(image_dir / "chelsea.png", 96)[None])
    layers = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1", "conv5_2"]
    winograd = VGG("vgg19", weights="imagenet", conv="winograd").extractor(layers)
    ours = jax.jit(winograd.apply)(winograd.params, photo)
    xla = VGG("vgg19", weights="imagenet", conv="xla").extractor(layers)
    theirs = jax.jit(xla.apply)(xla.params, photo)
    for name, ref in theirs.items():
        assert float(jnp.max(ref)) > 1.0  # real activations
        assert relative(ours[name], ref) < 1e-4, name


@pytest.mark.slow
def test_winograd_benchmark_runs_and_agrees(image_dir, tmp_path):
    """benchmarks/winograd.py at 64 px (it measures; this checks that it runs and that the three
    settings evaluate the same objective)."""
    import json

    from conftest import run_benchmark_quick

    run_benchmark_quick("benchmarks.winograd", image_dir, tmp_path)
    rep = json.loads((tmp_path / "winograd.json").read_text())
    assert [r["conv"] for r in rep["step_rows"]] == ["xla", "auto", "winograd"]
    assert all(r["loss_relative_difference"] < 1e-4 for r in rep["step_rows"])
    assert all(r["relative_error"] < 1e-5 for r in rep["layer_rows"])
    assert "Whole step" in (tmp_path / "winograd.md").read_text()
