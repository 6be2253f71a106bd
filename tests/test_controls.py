"""Perceptual controls (Gatys et al. 2017): colour preservation and style mixing."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from neuralstyle import ConfigError, StyleObjective, stylize
from neuralstyle.images.color import (
    apply_color_control, combine_luminance, luminance_image, match_color_histogram,
    match_luminance, rgb_to_yiq, yiq_to_rgb,
)

RNG = np.random.default_rng(0)


def image(h=12, w=10):
    return RNG.uniform(0.2, 0.8, size=(h, w, 3)).astype(np.float32)


def test_yiq_round_trip_and_luminance():
    x = image()
    np.testing.assert_allclose(yiq_to_rgb(rgb_to_yiq(x)), x, atol=1e-6)
    grey = luminance_image(x)
    np.testing.assert_allclose(grey[..., 0], 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2],
                               rtol=1e-5)
    assert np.all(grey[..., 0] == grey[..., 2])


def test_luminance_only_keeps_the_content_chrominance_exactly():
    content, stylized = image(), image()
    combined = combine_luminance(stylized, content, clip=False)
    np.testing.assert_allclose(rgb_to_yiq(combined)[..., 1:], rgb_to_yiq(content)[..., 1:], atol=1e-6)
    np.testing.assert_allclose(rgb_to_yiq(combined)[..., 0], rgb_to_yiq(stylized)[..., 0], atol=1e-6)


def test_luminance_matching_takes_the_content_statistics():
    content, style = image(), RNG.uniform(0.0, 0.3, size=(9, 7, 3)).astype(np.float32)
    matched = match_luminance(style, content)[..., 0]
    y = rgb_to_yiq(content)[..., 0]
    assert matched.mean() == pytest.approx(y.mean(), abs=1e-5)
    assert matched.std() == pytest.approx(y.std(), rel=1e-4)


def test_colour_histogram_matching_transfers_mean_and_covariance():
    content = image()
    style = (RNG.uniform(size=(15, 9, 3)) @ np.array([[0.3, 0.1, 0], [0, 0.2, 0.1], [0.1, 0, 0.25]])
             + 0.2).astype(np.float32)
    mapped = match_color_histogram(style, content, clip=False).reshape(-1, 3)
    c = content.reshape(-1, 3)
    np.testing.assert_allclose(mapped.mean(0), c.mean(0), atol=1e-5)
    np.testing.assert_allclose(np.cov(mapped, rowvar=False, bias=True), np.cov(c, rowvar=False, bias=True),
                               atol=1e-5)


def test_apply_color_control_modes():
    content, style = image(), image(8, 8)
    same = apply_color_control(content, style, None)
    assert same[0] is content and same[1] is style and same[2](style) is style
    grey_content, grey_style, finish = apply_color_control(content, [style, style], "luminance")
    assert isinstance(grey_style, list) and np.all(grey_content[..., 0] == grey_content[..., 1])
    out = finish(grey_content)  # the content's own luminance gives the content back
    np.testing.assert_allclose(out, content, atol=1e-5)
    with pytest.raises(ConfigError, match="preserve_colors"):
        apply_color_control(content, style, "sepia")


@pytest.fixture(scope="module")
def objective(random_vgg19):
    return StyleObjective.build(random_vgg19, content_layers=["conv2_2"],
                                style_layers=["conv1_1", "conv2_1"], content_weight=1.0,
                                style_weight=1e-3, tv_weight=0.0)


def test_style_blend_is_a_weighted_sum_of_style_terms(objective):
    params = objective.params
    c, a, b = (jnp.asarray(image(16, 16))[None] for _ in range(3))
    x = jnp.asarray(image(16, 16))[None]

    def style_term(styles, blend=None):
        targets = objective.targets(params, c, styles, blend)
        return float(objective(params, x, targets)[1]["style"])

    sa, sb = style_term([a]), style_term([b])
    assert style_term([a, b], [1.0, 0.0]) == pytest.approx(sa, rel=1e-5)
    assert style_term([a, b], [3.0, 1.0]) == pytest.approx(0.75 * sa + 0.25 * sb, rel=1e-5)
    assert style_term([a, b]) == pytest.approx(0.5 * sa + 0.5 * sb, rel=1e-5)
    with pytest.raises(ConfigError, match="one per style image"):
        objective.targets(params, c, [a, b], [1.0])


def test_stylize_with_two_styles(objective):
    c = image(16, 16)
    result = stylize(objective, c, [image(12, 12), image(20, 14)], optax.adam(0.02), steps=3,
                     progress=False, style_blend=[2, 1])
    assert result.metrics["style_blend"] == pytest.approx([2 / 3, 1 / 3])
    assert result.metrics["style_size"] == [[12, 12], [20, 14]]


def _style_term(objective, x, content, styles, masks=None, blend=None):
    params = objective.params
    targets = objective.targets(params, content, styles, blend, masks)
    return float(objective(params, x, targets)[1]["style"])


def test_full_mask_is_the_unguided_loss_and_empty_mask_has_zero_weight(objective):
    c, a, b = (jnp.asarray(image(16, 16))[None] for _ in range(3))
    x = jnp.asarray(image(16, 16))[None]
    ones, zeros = np.ones((16, 16), np.float32), np.zeros((16, 16), np.float32)
    plain = _style_term(objective, x, c, [a])
    assert _style_term(objective, x, c, [a], masks=[ones]) == pytest.approx(plain, rel=1e-5)
    # a region with an empty mask contributes nothing, whatever its style
    assert _style_term(objective, x, c, [a, b], masks=[ones, zeros]) == pytest.approx(plain, rel=1e-5)
    assert _style_term(objective, x, c, [b], masks=[zeros]) == 0.0


def test_guided_gram_sees_only_its_region(random_vgg19):
    """The region's term depends on the pixels inside its mask only (conv1_1: 3x3 receptive field)."""
    shallow = StyleObjective.build(random_vgg19, content_layers=["conv1_1"], style_layers=["conv1_1"])
    c, a = (jnp.asarray(image(16, 16))[None] for _ in range(2))
    left = np.zeros((16, 16), np.float32)
    left[:, :8] = 1.0
    x = np.asarray(image(16, 16))
    y = x.copy()
    y[:, 12:] = 1.0 - y[:, 12:]  # change the right side only
    guided = [_style_term(shallow, jnp.asarray(v)[None], c, [a], masks=[left]) for v in (x, y)]
    unguided = [_style_term(shallow, jnp.asarray(v)[None], c, [a]) for v in (x, y)]
    assert guided[0] == pytest.approx(guided[1], rel=1e-5)
    assert unguided[0] != pytest.approx(unguided[1], rel=1e-3)


def test_masks_need_the_gram_family_and_matching_shapes(objective, random_vgg19):
    from neuralstyle import mean_std_loss

    c, a = (jnp.asarray(image(16, 16))[None] for _ in range(2))
    with pytest.raises(ConfigError, match="one 16x16"):
        objective.targets(objective.params, c, [a], None, np.ones((1, 8, 8), np.float32))
    stats = StyleObjective.build(random_vgg19, content_layers=["conv1_1"], style_layers=["conv1_1"],
                                 style_loss=mean_std_loss())
    with pytest.raises(ConfigError, match="Gram loss only"):
        stats.targets(stats.params, c, [a], None, np.ones((1, 16, 16), np.float32))


def test_named_and_file_masks(tmp_path):
    from PIL import Image

    from neuralstyle.images import load_mask

    left = load_mask("left", (4, 6))
    np.testing.assert_array_equal(left, np.repeat([[1, 1, 1, 0, 0, 0]], 4, axis=0))
    assert load_mask("none", (3, 3)).sum() == 0 and load_mask("bottom", (4, 2))[2:].all()
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "white.png")
    np.testing.assert_allclose(load_mask(tmp_path / "white.png", (4, 5)), 1.0, atol=1e-6)
    from neuralstyle import ImageError

    with pytest.raises(ImageError, match="style mask.*named mask"):
        load_mask(tmp_path / "missing.png", (4, 4))


def test_pyramid_shapes():
    from neuralstyle import pyramid_shapes

    assert pyramid_shapes((64, 48), 3) == [(16, 12), (32, 24), (64, 48)]
    assert pyramid_shapes((10, 10), 1) == [(10, 10)]
    with pytest.raises(ConfigError):
        pyramid_shapes((10, 10), 0)


def test_pyramid_produces_the_final_size_one_compile_per_level(objective, tmp_path):
    from neuralstyle import stylize_pyramid

    c = image(48, 40)
    result = stylize_pyramid(objective, c, image(30, 30), optax.adam(0.02), steps=[3, 2], levels=2,
                             progress=False, snapshot_every=2, snapshot_dir=tmp_path)
    assert result.image.shape == c.shape
    levels = result.metrics["levels"]
    assert [lv["image_size"] for lv in levels] == [[24, 20], [48, 40]]
    assert [lv["steps"] for lv in levels] == [3, 2] and result.metrics["steps"] == 5
    assert all(lv["compile_time_s"] > 0 for lv in levels)
    assert result.metrics["levels"][0]["style_size"] == [15, 15]  # the style keeps its relative scale
    assert (tmp_path / "level0" / "step_00002.png").is_file() and (tmp_path / "level1" / "step_00002.png").is_file()
    with pytest.raises(ConfigError, match="2 entries for 3 scales"):
        stylize_pyramid(objective, c, image(30, 30), steps=[1, 1], levels=3, progress=False)


def test_style_scale_sets_the_style_long_edge(image_dir):
    from neuralstyle import load_content_and_style

    content, style = load_content_and_style("astronaut", "starry_night", size=64, style_scale=0.5,
                                            image_dir=image_dir)
    assert max(content.shape[:2]) == 64 and max(style.shape[:2]) == 32
    _, big = load_content_and_style("astronaut", "starry_night", size=64, style_scale=2.0,
                                    image_dir=image_dir)
    assert max(big.shape[:2]) == 128
    assert big.shape[0] / big.shape[1] == pytest.approx(640 / 1024, abs=0.01)  # aspect kept
    with pytest.raises(ConfigError, match="style_scale must be positive"):
        load_content_and_style("astronaut", "starry_night", size=64, style_scale=0, image_dir=image_dir)
