"""Size buckets (neuralstyle/fast/buckets.py): a photo run in a bucket-shaped buffer gives the
network's own result for its size, and photos of different sizes in one bucket share one program."""

import jax.numpy as jnp
import keras
import numpy as np
import pytest
from conftest import randomize_weights
from omegaconf import OmegaConf

from neuralstyle.arbitrary import ArbitraryStylizer, style_predictor, style_transformer
from neuralstyle.errors import ConfigError
from neuralstyle.fast import Stylizer, transform_net
from neuralstyle.fast.buckets import (
    DEFAULT_BUCKET,
    bucket_shape,
    check_bucket,
    check_model,
    masked_moments,
    reflect_pad_valid,
)
from neuralstyle.fast.transform import glorot_uniform

TOL = 1e-4  # on [0, 1] outputs; measured about 1e-6 (float32 sums in another order)
SIZES = [(37, 50), (41, 29), (8, 9), (64, 64)]  # non-multiples of 4, the smallest side, a full bucket


_randomize = randomize_weights  # non-trivial biases and norm parameters: the statistics matter


@pytest.fixture(scope="module")
def net():
    return _randomize(transform_net(width=8, residual_blocks=2, seed=0))


@pytest.fixture(scope="module")
def transformer():
    model = style_transformer(weights=None)
    glorot_uniform(model, 0)
    return _randomize(model)


def test_bucket_rule():
    assert check_bucket(None) is None
    assert check_bucket(128) == (128,)
    assert bucket_shape(300, 129, (128,)) == (384, 256)
    assert bucket_shape(128, 4, (128,)) == (128, 128)
    ladder = check_bucket([256, 384, 512])
    assert bucket_shape(100, 400, ladder) == (256, 512)
    assert bucket_shape(513, 1100, ladder) == (1024, 1536)  # beyond the ladder: multiples of the top
    assert DEFAULT_BUCKET % 4 == 0


@pytest.mark.parametrize("bad", [0, -128, 130, True, "128", 12.0, [], [256, 128], [128, 130]])
def test_bucket_validation_errors(bad):
    with pytest.raises(ConfigError, match="bucket"):
        check_bucket(bad)


def test_reflect_pad_valid_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.random((2, 12, 16, 3)).astype(np.float32)
    for vh, vw in [(5, 7), (12, 16), (9, 13)]:
        for p in (1, 4):
            got = np.asarray(reflect_pad_valid(jnp.asarray(x), p, vh, vw))
            want = np.pad(x[:, :vh, :vw], ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
            assert got.shape == (2, 12 + 2 * p, 16 + 2 * p, 3)
            np.testing.assert_array_equal(got[:, :vh + 2 * p, :vw + 2 * p], want)


def test_edge_pad_valid_matches_numpy():
    """The padding of the sub-pixel upsampling convolution in a bucket (neuralstyle/fast/transform.py)."""
    from neuralstyle.fast.buckets import edge_pad_valid

    x = np.random.default_rng(0).random((2, 12, 16, 3)).astype(np.float32)
    for vh, vw in [(5, 7), (12, 16), (1, 2)]:
        got = np.asarray(edge_pad_valid(jnp.asarray(x), vh, vw))
        assert got.shape == (2, 14, 18, 3)
        np.testing.assert_array_equal(got[:, :vh + 2, :vw + 2],
                                      np.pad(x[:, :vh, :vw], ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge"))


def test_masked_moments_match_numpy():
    x = np.random.default_rng(1).normal(size=(2, 10, 12, 4)).astype(np.float32)
    x[:, 6:] = 1e6  # outside the valid region: must not count
    mean, var = masked_moments(jnp.asarray(x), 6, 9)
    window = x[:, :6, :9].astype(np.float64)
    np.testing.assert_allclose(np.asarray(mean)[:, 0, 0], window.mean(axis=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(var)[:, 0, 0], window.var(axis=(1, 2)), rtol=1e-5)


def test_fast_bucketed_equals_unbucketed_and_reuses_one_program(net):
    plain, bucketed = Stylizer(net, bucket=None), Stylizer(net, bucket=64)
    rng = np.random.default_rng(2)
    for h, w in SIZES:
        image = rng.random((h, w, 3)).astype(np.float32)
        want, got = plain(image), bucketed(image)
        assert got.shape == (h, w, 3)
        assert np.abs(got - want).max() <= TOL, (h, w)
    assert bucketed.bucketed.traces == 1  # four sizes, one 64x64 bucket, one program
    bucketed(rng.random((70, 20, 3)).astype(np.float32))  # a 128x64 bucket: a second program
    assert bucketed.bucketed.traces == 2
    bucketed(rng.random((100, 60, 3)).astype(np.float32))  # same 128x64 bucket
    assert bucketed.bucketed.traces == 2


def test_fast_bucketed_luminance(net):
    image = np.random.default_rng(3).random((30, 22, 3)).astype(np.float32)
    want = Stylizer(net, bucket=None)(image, "luminance")
    got = Stylizer(net, bucket=[32, 64])(image, "luminance")
    assert np.abs(got - want).max() <= TOL


def test_arbitrary_bucketed_equals_unbucketed(transformer):
    predictor = style_predictor(weights=None)
    plain = ArbitraryStylizer(predictor, transformer, bucket=None)
    bucketed = ArbitraryStylizer(predictor, transformer, bucket=64)
    rng = np.random.default_rng(4)
    embedding = rng.normal(size=(100,)).astype(np.float32)
    images = [rng.random((h, w, 3)).astype(np.float32) for h, w in SIZES]
    want = plain.stylize(images, embedding)
    got = bucketed.stylize(images, embedding)
    for (h, w), a, b in zip(SIZES, want, got):
        assert b.shape == (h, w, 3)
        assert np.abs(a - b).max() <= TOL, (h, w)
    assert bucketed.bucketed.traces == 1
    batch = np.stack([images[0], images[0][::-1]])  # a batch of one size: one call, same program
    np.testing.assert_allclose(bucketed.stylize(batch, embedding), plain.stylize(batch, embedding), atol=TOL)
    assert bucketed.bucketed.traces == 2  # batch size 2 is a new program


def test_unsupported_layer_is_refused():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(3, 3, padding="same", name="zero_padded")(inputs)
    model = keras.Model(inputs, x)
    with pytest.raises(ConfigError, match="PadToMultiple"):
        check_model(model)
    net = transform_net(width=4, residual_blocks=0)
    assert check_model(net) == 4
    from neuralstyle.fast.transform import CropLike, PadToMultiple

    y = PadToMultiple(4)(inputs)
    y = keras.layers.Conv2D(3, 3, padding="same", name="zero_padded")(y)
    with pytest.raises(ConfigError, match="zero_padded.*bucket=null"):
        Stylizer(keras.Model(inputs, CropLike()([y, inputs])), bucket=64)


def test_apply_bucket_key():
    from neuralstyle.apply import bucket_option
    from neuralstyle.recipe import compose

    assert compose("apply", ["model=x", "input=y"]).bucket == DEFAULT_BUCKET
    assert bucket_option(OmegaConf.create({"bucket": None})) is None
    assert bucket_option(OmegaConf.create({"bucket": [128, 256]})) == [128, 256]
    assert bucket_option(OmegaConf.create({})) == DEFAULT_BUCKET
    with pytest.raises(ConfigError, match="multiple of 4"):
        bucket_option(OmegaConf.create({"bucket": 130}))


def test_a_size_alone_in_its_bucket_runs_at_its_own_size(net, transformer, tmp_path):
    """``plan_sizes``: sizes that share a bucket run in it, a size alone in its bucket runs in the
    program of its own size (the cheaper one), with the same result either way; ``stylize_files``
    plans a folder's sizes, in turn and overlapped alike."""
    from PIL import Image

    from neuralstyle.fast import stylize_files

    sizes = [(37, 50), (41, 29), (70, 20)]  # 64x64, 64x64, 128x64 buckets of 64 px
    stylizer = Stylizer(net, bucket=64)
    stylizer.plan_sizes(sizes + [None])  # None: a header that could not be read
    assert stylizer.bucketed.alone == {(70, 20)}
    assert [stylizer.bucketed.serves(*s) for s in sizes] == [True, True, False]
    assert [stylizer.program_shape(*s) for s in sizes] == [(64, 64), (64, 64), (70, 20)]
    assert stylizer.bucketed.serves(100, 60)  # an unplanned size: its bucket, as without a plan
    assert stylizer.program_shape(100, 60) == (128, 64) and Stylizer(net, bucket=None).program_shape(37, 50) == (37, 50)
    plain, unplanned = Stylizer(net, bucket=None), Stylizer(net, bucket=64)
    rng = np.random.default_rng(7)
    for h, w in sizes:
        image = rng.random((h, w, 3)).astype(np.float32)
        got = stylizer(image)
        assert np.abs(got - plain(image)).max() <= TOL and np.abs(got - unplanned(image)).max() <= TOL
    assert stylizer.bucketed.traces == 1 and stylizer._apply._cache_size() == 1  # 1 bucket + 1 own size
    stylizer.plan_sizes([(70, 20), (100, 60)])  # a new plan replaces the old one
    assert stylizer.bucketed.alone == frozenset()

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(folder / f"{i}.png")
    for overlap in (False, True):
        fresh = Stylizer(net, bucket=64)
        stylize_files(fresh, folder, tmp_path / f"out_{overlap}", say=lambda m: None, overlap=overlap)
        assert fresh.bucketed.alone == {(70, 20)} and fresh.bucketed.traces == 1

    arbitrary = ArbitraryStylizer(style_predictor(weights=None), transformer, style_size=32, bucket=64)
    arbitrary.plan_sizes(sizes)
    assert arbitrary.bucketed.alone == {(70, 20)}
    assert [arbitrary.program_shape(*s) for s in sizes] == [(64, 64), (64, 64), (70, 20)]
    embedding = rng.normal(size=(100,)).astype(np.float32)
    image = rng.random((70, 20, 3)).astype(np.float32)
    want = ArbitraryStylizer(style_predictor(weights=None), transformer, bucket=None).stylize(image, embedding)
    assert np.abs(arbitrary.stylize(image, embedding) - want).max() <= TOL
    assert arbitrary.bucketed.traces == 0  # it ran at its own size
