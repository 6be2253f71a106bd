"""Perceptual controls (Gatys et al. 2017): colour preservation and style mixing."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from neuralstyle import ConfigError, StyleObjective, stylize
from neuralstyle.color import (
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
