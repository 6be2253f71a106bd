"""Exact tiled optimization: tiled features, loss and gradient equal the untiled ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neuralstyle import (ConfigError, StyleObjective, bn_statistics_loss, content_loss, gaussian_wasserstein_loss,
                         gram_loss, mean_std_loss, mmd_loss)
from neuralstyle.tiling import TiledObjective, default_halo, receptive_extent, tile_grid

RNG = np.random.default_rng(5)
# shallow layers keep the receptive field (and so the halo) small: 3 poolings, stride 8
LAYERS = dict(content_layers=["conv3_1"], style_layers=["conv1_1", "conv2_1", "conv3_1", "conv4_1"])


def untiled_targets(objective, params, content, style, blend=None):
    """The untiled targets, compiled (eagerly, every primitive compiles a small program of its own)."""
    return jax.jit(objective.targets, static_argnames="blend")(params, content, style, blend=blend)


def untiled_value_and_grad(objective, params, image, targets):
    """The untiled objective's value and gradient, compiled."""
    return jax.jit(jax.value_and_grad(objective, argnums=1, has_aux=True))(params, image, targets)


@pytest.fixture(scope="module")
def objective(random_vgg19_avg):
    return StyleObjective.build(random_vgg19_avg, content_weight=3.0, style_weight=1e-2, tv_weight=0.5,
                                **LAYERS)


@pytest.fixture(scope="module")
def images():
    content = RNG.uniform(size=(1, 120, 88, 3)).astype(np.float32)  # not a multiple of the tile
    style = RNG.uniform(size=(1, 72, 100, 3)).astype(np.float32) ** 2
    image = np.clip(content + 0.1 * RNG.normal(size=content.shape), 0, 1).astype(np.float32)
    return jnp.asarray(content), jnp.asarray(style), jnp.asarray(image)


@pytest.fixture(scope="module")
def exact(objective, images):
    """The untiled objective's value and gradient and the exactly tiled ones (tiles of 32 px, the
    default halo), on the same targets: computed once for the tests that compare them."""
    content, style, image = images
    params = objective.params
    tiled = TiledObjective(objective, tile=32)
    targets = untiled_targets(objective, params, content, style)
    tiled_targets = tiled.targets(objective, params, content, style)
    untiled = untiled_value_and_grad(objective, params, image, targets)
    return dict(tiled=tiled, targets=targets, tiled_targets=tiled_targets, untiled=untiled,
                got=tiled.value_and_grad(objective, params, image, tiled_targets))


def test_receptive_extent_of_vgg19():
    # conv1_1: one 3x3 convolution; pool1 widens the right side by 1 and doubles the stride
    assert receptive_extent("vgg19", ["block1_conv1"]) == (1, 1, 1)
    # conv1_1, conv1_2 (1 + 1), pool1 (right + 1, stride 2), conv2_1 (+ 2 each side)
    assert receptive_extent("vgg19", ["block2_conv1"]) == (4, 5, 2)
    left, right, stride = receptive_extent("vgg19", ["block5_conv2"])
    assert stride == 16 and (left, right) == (86, 101)
    assert default_halo("vgg19", ["block5_conv2", "block1_conv1"]) == 112


def test_tiles_cover_the_image_once_with_aligned_windows():
    shape = (120, 88)
    tiles = tile_grid(shape, 32, 16, 8)
    covered = np.zeros(shape, int)
    for t in tiles:
        covered[t.y0:t.y1, t.x0:t.x1] += 1
        assert t.py0 % 8 == 0 and t.px0 % 8 == 0
        assert t.py0 <= max(0, t.y0 - 16) and (t.py1 >= t.y1 + 16 or t.py1 == shape[0])
        assert t.px0 <= max(0, t.x0 - 16) and (t.px1 >= t.x1 + 16 or t.px1 == shape[1])
    assert (covered == 1).all()
    with pytest.raises(ConfigError, match="multiples of 8"):
        tile_grid(shape, 30, 16, 8)


def test_tiled_features_equal_untiled(objective, images):
    content = images[0]
    tiled = TiledObjective(objective, tile=32)
    got = tiled.features(objective, objective.params, content, objective.style_layers)
    want = jax.jit(objective.extractor.apply)(objective.params, content)
    for layer in objective.style_layers:
        assert got[layer].shape == want[layer].shape
        scale = float(jnp.abs(want[layer]).max())
        np.testing.assert_allclose(got[layer], want[layer], atol=1e-5 * scale, rtol=0)


def test_tiled_loss_and_gradient_equal_untiled(objective, images, exact):
    """The whole point: the same optimization, not a mosaic.  Tolerance: float32 sums taken in a
    different order (relative 1e-5 of the largest gradient entry)."""
    content = images[0]
    tiled, targets, tiled_targets = exact["tiled"], exact["targets"], exact["tiled_targets"]
    assert len(tiled.tiles(content.shape[1:3])) == 12
    for layer in objective.style_layers:
        np.testing.assert_allclose(tiled_targets.style[0][layer], targets.style[0][layer], rtol=1e-5,
                                   atol=1e-6 * float(jnp.abs(targets.style[0][layer]).max()))
    (want, want_terms), want_grad = exact["untiled"]
    (got, got_terms), got_grad = exact["got"]
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    for k in ("content", "style", "tv"):
        assert float(got_terms[k]) == pytest.approx(float(want_terms[k]), rel=1e-5)
    scale = float(jnp.abs(want_grad).max())
    np.testing.assert_allclose(got_grad, want_grad, atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("family", ["wasserstein2", "mean_std", "bn_statistics"])
def test_moment_families_tile_exactly(family, random_vgg19_avg, images):
    """Families whose statistics follow from position means (a mean and a second moment, the
    covariance or standard deviation computed from them) tile like the Gram loss: the same loss and
    gradient, and the same style targets, up to float32 rounding.  Two style images exercise the
    Wasserstein family's own mixture (means and second moments mixed) on the tiled path too."""
    loss = {"wasserstein2": gaussian_wasserstein_loss(), "mean_std": mean_std_loss(),
            "bn_statistics": bn_statistics_loss()}[family]
    objective = StyleObjective.build(random_vgg19_avg, content_weight=3.0, style_weight=1e-2, tv_weight=0.5,
                                     style_loss=loss, **LAYERS)
    content, style, image = images
    styles = [style, style[:, ::-1, :, ::-1]]
    params = objective.params
    tiled = TiledObjective(objective, tile=32)
    targets = untiled_targets(objective, params, content, styles, blend=(0.7, 0.3))
    tiled_targets = tiled.targets(objective, params, content, styles, blend=(0.7, 0.3))
    assert len(tiled_targets.style) == len(targets.style)
    for want, got in zip(jax.tree.leaves(targets.style), jax.tree.leaves(tiled_targets.style)):
        scale = float(jnp.abs(want).max()) or 1.0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)
    (want, want_terms), want_grad = untiled_value_and_grad(objective, params, image, targets)
    (got, got_terms), got_grad = tiled.value_and_grad(objective, params, image, tiled_targets)
    assert float(want_terms["style"]) > 0
    assert float(got_terms["style"]) == pytest.approx(float(want_terms["style"]), rel=1e-4)
    assert float(got) == pytest.approx(float(want), rel=1e-4)
    scale = float(jnp.abs(want_grad).max())
    np.testing.assert_allclose(got_grad, want_grad, atol=1e-4 * scale, rtol=0)


def test_a_halo_smaller_than_the_receptive_field_is_where_the_error_comes_from(objective, images, exact):
    """Halo 0: features near tile edges see zero padding instead of their neighbours, so the
    gradient differs from the untiled one, by far more than rounding."""
    content, style, image = images
    params = objective.params
    _, want_grad = exact["untiled"]
    _, exact_grad = exact["got"]  # the default halo
    cut = TiledObjective(objective, tile=32, halo=0)
    _, cut_grad = cut.value_and_grad(objective, params, image, cut.targets(objective, params, content, style))
    scale = float(jnp.abs(want_grad).max())
    exact_error = float(jnp.abs(exact_grad - want_grad).max()) / scale
    cut_error = float(jnp.abs(cut_grad - want_grad).max()) / scale
    # measured: 2e-7 with the exact halo, 4e-3 with none (random weights, average pooling, 12
    # tiles of 32 px; the same on an AMD EPYC with AVX2 and an Intel Xeon with AVX-512)
    assert exact_error < 1e-5 and cut_error > 1e-3 and cut_error > 1000 * exact_error


def test_max_pooling_near_ties_are_the_only_difference(random_vgg19, images):
    """With max pooling the tiled loss is still the untiled loss, and the gradient differs only in
    small patches below a pooling window whose two largest inputs are equal up to rounding (the
    window's features are computed in a different order than the whole image's).  Measured on the
    same data: 2e-7 of the largest gradient entry on an AMD EPYC (AVX2), 7e-5 on an Intel Xeon
    (AVX-512) in 223 of 10560 pixels, against 8e-3 for a tiling without halo."""
    content, style, image = images
    objective = StyleObjective.build(random_vgg19, content_weight=3.0, style_weight=1e-2, tv_weight=0.5,
                                     **LAYERS)
    params = objective.params
    (want, _), want_grad = untiled_value_and_grad(objective, params, image,
                                                  untiled_targets(objective, params, content, style))
    tiled = TiledObjective(objective, tile=32)
    (got, _), got_grad = tiled.value_and_grad(objective, params, image, tiled.targets(objective, params, content, style))
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    error = np.abs(np.asarray(got_grad - want_grad)) / float(jnp.abs(want_grad).max())
    assert error.max() < 1e-3
    assert (error.max(axis=-1) > 1e-5).mean() < 0.05  # patches, not the image


def test_the_weights_are_arguments(objective, images, exact):
    image = images[2]
    tiled, targets = exact["tiled"], exact["tiled_targets"]
    heavier = objective.with_weights(style_weight=1.0)
    (got, terms), _ = tiled.value_and_grad(heavier, objective.params, image, targets)
    (want, want_terms), _ = exact["got"]  # the same tiled objective at style weight 1e-2
    assert float(terms["style"]) == pytest.approx(100 * float(want_terms["style"]), rel=1e-5)


def test_families_that_cannot_be_tiled_are_refused(random_vgg19):
    mmd = StyleObjective.build(random_vgg19, style_loss=mmd_loss("gaussian"), **LAYERS)
    with pytest.raises(ConfigError, match="style_loss=gram"):
        TiledObjective(mmd, tile=32)
    def not_separable(features, target):
        return jnp.max(jnp.abs(features - target), axis=(1, 2, 3))
    odd = StyleObjective.build(random_vgg19, content_loss=not_separable, style_loss=gram_loss(), **LAYERS)
    with pytest.raises(ConfigError, match="content_loss"):
        TiledObjective(odd, tile=32)
    assert getattr(content_loss("paper"), "reduction") == "sum"


def test_a_tiled_run_is_the_untiled_run(objective, images):
    """stylize with tile_size runs the same optimization (SGD: updates proportional to the
    gradient, so rounding cannot flip a step); the large scales of a multiscale run are tiled and
    the small ones are not."""
    import optax

    from neuralstyle import LBFGS, stylize, stylize_pyramid

    content, style = np.asarray(images[0][0]), np.asarray(images[1][0])
    sgd = optax.sgd(0.02)
    plain = stylize(objective, content, style, sgd, steps=3, progress=False)
    tiled = stylize(objective, content, style, sgd, steps=3, progress=False, tile_size=32)
    halo = default_halo("vgg19", objective.content_layers + objective.style_layers)
    assert halo == 40  # conv4_1: 3 poolings (stride 8), receptive extent 37 px to the right
    assert tiled.metrics["tile"] == {"size": 32, "halo": 40, "tiles": 12, "largest_window": [112, 88]}
    np.testing.assert_allclose(tiled.metrics["history"], plain.metrics["history"], rtol=1e-5)
    np.testing.assert_allclose(tiled.image, plain.image, atol=1e-5)
    plain = stylize(objective, content, style, LBFGS(memory_size=4), steps=2, progress=False)
    tiled = stylize(objective, content, style, LBFGS(memory_size=4), steps=2, progress=False,
                    tile_size=64)
    np.testing.assert_allclose(tiled.metrics["history"], plain.metrics["history"], rtol=1e-4)
    result = stylize_pyramid(objective, content, style, sgd, steps=[1, 1],
                             shapes=[(60, 44), (120, 88)], tile_size=64, progress=False)
    assert "tile" not in result.metrics["levels"][0] and result.metrics["levels"][1]["tile"]["tiles"] == 4


def test_the_run_entry_tiles_from_the_config(image_dir, tmp_path):
    import json

    from neuralstyle.recipe import compose
    from neuralstyle.run import run_from_config

    base = [f"image_dir={image_dir}", "size=48", "steps=1", "backbone.weights=null", "progress=false",
            "snapshot_every=0"]
    run_from_config(compose("run", [*base, "tile.size=32"]), tmp_path / "ok")
    metrics = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert metrics["tile"]["tiles"] == 4 and metrics["tile"]["halo"] == 112
    with pytest.raises(ConfigError, match="multiples of 16"):
        run_from_config(compose("run", [*base, "tile.size=20"]), tmp_path / "bad")
    with pytest.raises(ConfigError, match="tile.halo must be"):
        run_from_config(compose("run", [*base, "tile.size=32", "tile.halo=-1"]), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before anything is written
