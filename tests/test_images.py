"""Tests of neuralstyle.images: reading any image as float RGB, atomic saving, named images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import neuralstyle.images.io as images
from neuralstyle.errors import ImageError
from neuralstyle.images.io import (
    IMAGE_DIR_ENV,
    KNOWN_IMAGES,
    image_cache_dir,
    load_image,
    resolve_image,
    save_image,
    to_uint8,
)

SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "assets" / "images"
EXIF_ORIENTATION = 0x0112
RED, BLUE = (255, 0, 0), (0, 0, 255)


# --------------------------------------------------------------------------- helpers

def write_pil(im: Image.Image, path: Path, **save_kwargs) -> Path:
    im.save(path, **save_kwargs)
    return path


def check_rgb_float(image: np.ndarray, shape: tuple[int, int] | None = None) -> None:
    """The contract of load_image: float32 (H, W, 3) with values in [0, 1]."""
    assert image.dtype == np.float32
    assert image.ndim == 3 and image.shape[2] == 3
    if shape is not None:
        assert image.shape[:2] == shape
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def tiny_image_bytes(fmt: str = "JPEG", size=(8, 6), color=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def partial_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".partial")]


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No image folder, an empty download cache under tmp_path, and cwd in an empty folder."""
    monkeypatch.delenv(IMAGE_DIR_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


@pytest.fixture
def no_network(monkeypatch):
    """Make every download attempt fail with a recognisable reason; count the attempts."""
    calls = []

    def fail(url, target, timeout=20.0):
        calls.append(url)
        raise OSError("network unreachable")

    monkeypatch.setattr(images, "_download", fail)
    return calls


def make_image_dir(folder: Path, name: str = "great_wave") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / KNOWN_IMAGES[name][0]
    path.write_bytes(tiny_image_bytes())
    return path


# --------------------------------------------------------------------------- load_image: modes

def test_exif_orientation_is_applied(tmp_path):
    # Stored 64 wide x 32 high, a red square in the stored top-left corner, blue elsewhere.
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[...] = BLUE
    pixels[:16, :16] = RED
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    rotated = write_pil(Image.fromarray(pixels), tmp_path / "rot.jpg", exif=exif.tobytes(),
                        quality=95)
    plain = write_pil(Image.fromarray(pixels), tmp_path / "plain.jpg", quality=95)

    upright = load_image(plain)
    check_rgb_float(upright, (32, 64))
    image = load_image(rotated)
    check_rgb_float(image, (64, 32))  # height and width swapped
    # Rotating clockwise moves the stored top-left corner to the top-right corner.
    np.testing.assert_allclose(image[4:12, -12:-4], np.broadcast_to([1, 0, 0], (8, 8, 3)),
                               atol=0.1)
    np.testing.assert_allclose(image[4:12, 4:12], np.broadcast_to([0, 0, 1], (8, 8, 3)), atol=0.1)
    np.testing.assert_allclose(image[-12:-4, -12:-4], np.broadcast_to([0, 0, 1], (8, 8, 3)),
                               atol=0.1)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    im = Image.fromarray(gray)
    assert im.mode == "L"
    image = load_image(write_pil(im, tmp_path / "gray.png"))
    check_rgb_float(image, (4, 6))
    for c in range(3):
        np.testing.assert_allclose(image[..., c], gray / 255.0, atol=1e-6)


def test_palette_image_maps_indices_to_palette_colours(tmp_path):
    im = Image.new("P", (3, 2))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0, 0, 0] * 253)
    im.putdata([0, 1, 2, 2, 1, 0])
    image = load_image(write_pil(im, tmp_path / "palette.png"))
    check_rgb_float(image, (2, 3))
    expected = np.array([[RED, (0, 255, 0), BLUE], [BLUE, (0, 255, 0), RED]]) / 255.0
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_palette_transparency_is_composited_onto_white(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    im.putdata([0, 1])
    image = load_image(write_pil(im, tmp_path / "palette_t.png", transparency=0))
    np.testing.assert_allclose(image[0], [[1, 1, 1], [0, 0, 1]], atol=1e-6)


def test_rgba_alpha_is_composited_onto_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 0], [0, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128]]], np.uint8)
    im = Image.fromarray(rgba)
    assert im.mode == "RGBA"
    image = load_image(write_pil(im, tmp_path / "alpha.png"))
    check_rgb_float(image, (1, 4))
    np.testing.assert_allclose(image[0, 0], [1, 1, 1], atol=1e-6)  # transparent red -> white
    np.testing.assert_allclose(image[0, 1], [1, 1, 1], atol=1e-6)  # transparent black -> white
    np.testing.assert_allclose(image[0, 2], [1, 0, 0], atol=1e-6)  # opaque keeps its colour
    np.testing.assert_allclose(image[0, 3], [1 - 128 / 255] * 3, atol=1e-6)  # half: grey


def test_16_bit_png_is_scaled_by_65535(tmp_path):
    values = np.array([[0, 200, 32768, 65535]], np.uint16)
    path = write_pil(Image.fromarray(values), tmp_path / "deep.png")
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really a 16-bit file, not 8-bit
    image = load_image(path)
    check_rgb_float(image, (1, 4))
    np.testing.assert_allclose(image[0, :, 0], values[0] / 65535.0, atol=1e-6)
    assert image[0, 3, 0] == 1.0
    assert abs(image[0, 2, 0] - 0.5) < 1e-4
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_dark_16_bit_png_is_not_mistaken_for_8_bit(tmp_path):
    # Every value <= 255: a 16-bit image that is nearly black must stay nearly black.
    values = np.array([[0, 100, 255]], np.uint16)
    image = load_image(write_pil(Image.fromarray(values), tmp_path / "dark16.png"))
    assert float(image.max()) < 0.01


@pytest.mark.parametrize("size, long_edge, expected_hw", [
    ((300, 200), 150, (100, 150)),  # landscape: PIL sizes are (width, height)
    ((200, 300), 150, (150, 100)),  # portrait
    ((120, 120), 50, (50, 50)),
    ((30, 20), 60, (40, 60)),  # upscaling works too
])
def test_long_edge_keeps_aspect_ratio(tmp_path, size, long_edge, expected_hw):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path = write_pil(Image.fromarray(pixels), tmp_path / "big.png")
    check_rgb_float(load_image(path), (size[1], size[0]))
    check_rgb_float(load_image(path, long_edge=long_edge), expected_hw)


def test_resize_of_constant_image_keeps_the_colour(tmp_path):
    path = write_pil(Image.new("RGB", (300, 200), (51, 102, 204)), tmp_path / "flat.png")
    np.testing.assert_allclose(load_image(path, long_edge=64),
                               np.broadcast_to([0.2, 0.4, 0.8], (43, 64, 3)), atol=1e-5)


# --------------------------------------------------------------------------- load_image: errors

def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "missing.jpg"
    with pytest.raises(ImageError, match="does not exist") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_text_file_with_image_extension(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match="not an image") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- save_image

@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tiff"])
def test_save_then_load_equals_uint8_quantization(tmp_path, suffix):
    image = np.random.default_rng(2).random((9, 13, 3)).astype(np.float32)
    image[0, 0] = [-0.5, 1.5, 0.5]  # out of range values are clipped
    path = save_image(image, tmp_path / "sub" / f"out{suffix}")
    assert path == tmp_path / "sub" / f"out{suffix}"
    loaded = load_image(path)
    check_rgb_float(loaded, (9, 13))
    expected = to_uint8(image) / 255.0
    np.testing.assert_allclose(loaded, expected, atol=1e-6)
    np.testing.assert_allclose(loaded, np.clip(image, 0, 1), atol=0.5 / 255 + 1e-6)
    assert partial_files(path.parent) == []


def test_save_jpeg_round_trip_is_close(tmp_path):
    image = np.broadcast_to(np.linspace(0, 1, 32, dtype=np.float32)[None, :, None], (16, 32, 3))
    loaded = load_image(save_image(image, tmp_path / "out.jpg"))
    assert float(np.abs(loaded - image).mean()) < 0.02


@pytest.fixture
def failing_replace(monkeypatch):
    def fail(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(images.os, "replace", fail)


def test_failed_save_leaves_no_file(tmp_path, failing_replace):
    target = tmp_path / "out.png"
    with pytest.raises(OSError, match="simulated"):
        save_image(np.zeros((4, 4, 3), np.float32), target)
    assert not target.exists()
    assert partial_files(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_existing_file(tmp_path, monkeypatch):
    target = save_image(np.full((4, 4, 3), 0.25, np.float32), tmp_path / "out.png")
    before = target.read_bytes()
    monkeypatch.setattr(images.os, "replace",
                        lambda src, dst: (_ for _ in ()).throw(OSError("simulated")))
    with pytest.raises(OSError, match="simulated"):
        save_image(np.ones((8, 8, 3), np.float32), target)
    assert target.read_bytes() == before
    np.testing.assert_allclose(load_image(target), np.full((4, 4, 3), 64 / 255), atol=1e-6)
    assert partial_files(tmp_path) == []


def test_save_unknown_extension(tmp_path):
    target = tmp_path / "out.notanimage"
    with pytest.raises(ImageError, match="notanimage"):
        save_image(np.zeros((4, 4, 3), np.float32), target)
    assert not target.exists()
    assert partial_files(tmp_path) == []


# --------------------------------------------------------------------------- resolve_image

def test_existing_path_is_returned_as_is(tmp_path, isolated_env, no_network):
    path = tmp_path / "photo.jpg"
    path.write_bytes(tiny_image_bytes())
    assert resolve_image(path) == path
    assert resolve_image(str(path)) == path
    assert no_network == []


def test_named_image_from_image_dir_argument(tmp_path, isolated_env, no_network):
    expected = make_image_dir(tmp_path / "pictures")
    assert resolve_image("great_wave", image_dir=tmp_path / "pictures") == expected
    assert resolve_image("great_wave", image_dir=str(tmp_path / "pictures")) == expected
    assert no_network == []


def test_named_image_from_environment(tmp_path, isolated_env, no_network, monkeypatch):
    expected = make_image_dir(tmp_path / "pictures")
    monkeypatch.setenv(IMAGE_DIR_ENV, str(tmp_path / "pictures"))
    assert resolve_image("great_wave") == expected
    # An explicit argument wins over the environment variable.
    other = make_image_dir(tmp_path / "other")
    assert resolve_image("great_wave", image_dir=tmp_path / "other") == other
    assert no_network == []


def _assert_helpful_missing_message(message: str) -> None:
    assert IMAGE_DIR_ENV in message
    assert "great_wave.jpg" in message
    assert str(image_cache_dir() / "great_wave.jpg") in message  # the cache that was tried


def test_missing_named_image_without_download(isolated_env, no_network):
    with pytest.raises(ImageError) as info:
        resolve_image("great_wave", download=False)
    message = str(info.value)
    _assert_helpful_missing_message(message)
    assert "unset" in message and "does not exist" in message
    assert no_network == []  # download=False really means no download


def test_missing_named_image_when_download_fails(isolated_env, no_network):
    with pytest.raises(ImageError) as info:
        resolve_image("great_wave")
    message = str(info.value)
    _assert_helpful_missing_message(message)
    assert "network unreachable" in message
    assert no_network == [KNOWN_IMAGES["great_wave"][1]]


def test_missing_named_image_names_the_empty_image_dir(tmp_path, isolated_env, no_network):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError) as info:
        resolve_image("great_wave", image_dir=tmp_path / "empty", download=False)
    assert str(tmp_path / "empty" / "great_wave.jpg") in str(info.value)


def test_unknown_name_lists_known_names(isolated_env, no_network):
    with pytest.raises(ImageError, match="no_such_picture") as info:
        resolve_image("no_such_picture")
    for name in KNOWN_IMAGES:
        assert name in str(info.value)
    assert no_network == []


def test_download_is_cached_and_reused(tmp_path, isolated_env, monkeypatch):
    calls = []

    def fake_download(url, target, timeout=20.0):
        calls.append((url, Path(target)))
        images.atomic_write(target, tiny_image_bytes())

    monkeypatch.setattr(images, "_download", fake_download)
    expected = tmp_path / "keras_home" / "datasets" / "neuralstyle" / "great_wave.jpg"
    assert resolve_image("great_wave") == expected
    assert calls == [(KNOWN_IMAGES["great_wave"][1], expected)]
    check_rgb_float(load_image(expected), (6, 8))

    def must_not_download(url, target, timeout=20.0):
        raise AssertionError("downloaded although the file is cached")

    monkeypatch.setattr(images, "_download", must_not_download)
    assert resolve_image("great_wave") == expected
    assert resolve_image("great_wave", download=False) == expected


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve(monkeypatch, payload: bytes) -> list:
    requests = []

    def urlopen(request, timeout=None):
        requests.append(request.full_url)
        return _FakeResponse(payload)

    monkeypatch.setattr(images.urllib.request, "urlopen", urlopen)
    return requests


def test_real_download_function_writes_the_cache(isolated_env, monkeypatch):
    requests = _serve(monkeypatch, tiny_image_bytes("PNG"))
    path = resolve_image("coffee")
    assert path == image_cache_dir() / "coffee.png"
    assert requests == [KNOWN_IMAGES["coffee"][1]]
    check_rgb_float(load_image(path), (6, 8))
    assert partial_files(path.parent) == []


def test_download_of_a_non_image_is_rejected_and_not_cached(isolated_env, monkeypatch):
    _serve(monkeypatch, b"<html>rate limited</html>")
    with pytest.raises(ImageError, match="did not return an image"):
        resolve_image("coffee")
    cache = image_cache_dir()
    assert not (cache / "coffee.png").exists()
    assert not cache.exists() or partial_files(cache) == []


# --------------------------------------------------------------------------- the shared images

SHARED_FILES = sorted(filename for filename, _ in KNOWN_IMAGES.values())


def test_known_images_are_the_seven_shared_files():
    assert SHARED_FILES == sorted([
        "great_wave.jpg", "starry_night.jpg", "the_scream.jpg", "shipwreck.jpg",
        "astronaut.png", "coffee.png", "chelsea.png",
    ])


@pytest.mark.skipif(not SHARED_IMAGES.is_dir(),
                    reason=f"shared example images folder {SHARED_IMAGES} is missing")
@pytest.mark.parametrize("name", sorted(KNOWN_IMAGES))
def test_shared_images_load(name, isolated_env, no_network):
    path = resolve_image(name, image_dir=SHARED_IMAGES)
    assert path == SHARED_IMAGES / KNOWN_IMAGES[name][0]
    full = load_image(path)
    image = load_image(path, long_edge=64)
    check_rgb_float(image)
    assert max(image.shape[:2]) == 64
    # The aspect ratio survives the resize (to within the rounding of the short side).
    h, w = full.shape[:2]
    assert image.shape[:2] == (max(1, round(h * 64 / max(h, w))), max(1, round(w * 64 / max(h, w))))
    assert float(image.std()) > 0.02  # a real picture, not a blank
    assert no_network == []
