"""Output for print: 16-bit PNG and TIFF results, the input's ICC profile carried into the result,
the ``output`` config keys of run / run_batched and ``bit_depth`` / ``format`` of apply.

Pillow reads a 16-bit RGB file only as 8-bit RGB (the high byte of each sample), so the full
16-bit values are read here with two small readers: the TIFF strips at the offsets Pillow's own
tag parser reports, and the PNG rows through a spec reader (chunk CRCs, zlib, all five filters).
Pillow's 8-bit view must agree with their high bytes, and the same encoders at 8 bits must
round-trip through Pillow exactly.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

import neuralstyle.images.io as images
from neuralstyle.errors import ConfigError
from neuralstyle.images.io import (
    SRGB_ASSUMED,
    encode_png,
    encode_tiff,
    icc_description,
    read_icc_profile,
    save_image,
    to_uint8,
    to_uint16,
)
from neuralstyle.recipe import compose

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
SRGB_NAME = "sRGB built-in"  # the description LittleCMS gives its built-in sRGB profile
LAB = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
TINY = ["backbone.weights=null", "size=32", "steps=2", "snapshot_every=0", "progress=false",
        "content_layers=[conv2_2]", "style_layers=[conv1_1,conv2_1]"]


def gradient(height: int = 6, width: int = 1000) -> np.ndarray:
    """A smooth ramp per channel (different per channel) with far more than 256 levels."""
    x = np.linspace(0.0, 1.0, width)[None, :]
    y = np.linspace(0.0, 1.0, height)[:, None]
    return np.stack([x + 0 * y, 1.0 - x + 0 * y, (x * 0.7 + y * 0.3)], axis=-1).astype(np.float32)


def partial_files(folder: Path) -> list[str]:
    return [p.name for p in Path(folder).rglob("*.partial")]


# --------------------------------------------------------------------------- 16-bit readers

def read_png_samples(data: bytes) -> np.ndarray:
    """``(H, W, 3)`` samples of an RGB PNG (8 or 16 bits), per the PNG specification."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert colour == 2 and interlace == 0 and depth in (8, 16)
    bpp, stride = 3 * depth // 8, width * 3 * depth // 8
    raw = zlib.decompress(idat)
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return np.frombuffer(b"".join(rows), f">u{depth // 8}").reshape(height, width, 3)


def read_tiff_samples(path: Path) -> np.ndarray:
    """``(H, W, 3)`` samples of an uncompressed chunky RGB TIFF, located by Pillow's tag parser."""
    with Image.open(path) as im:
        tags = im.tag_v2
        width, height = im.size
        bits = tags[258]
        assert tags[259] == 1 and tags[262] == 2 and tags[277] == 3 and len(set(bits)) == 1
        offsets, counts = tags[273], tags[279]
        order = "<" if im.tag_v2._endian == "<" else ">"
    data = Path(path).read_bytes()
    strips = b"".join(data[o:o + n] for o, n in zip(offsets, counts))
    return np.frombuffer(strips, f"{order}u{bits[0] // 8}").reshape(height, width, 3)


def pillow_rawmode(path: Path) -> str:
    with Image.open(path) as im:
        args = im.tile[0].args
        return args if isinstance(args, str) else args[0]


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("suffix, rawmode", [(".png", "RGB;16B"), (".tiff", "RGB;16L"),
                                             (".tif", "RGB;16L")])
def test_16_bit_round_trip(tmp_path, suffix, rawmode):
    image = gradient()
    path = save_image(image, tmp_path / f"out{suffix}", bit_depth=16)
    assert pillow_rawmode(path) == rawmode  # Pillow sees 16 bits per sample
    samples = read_png_samples(path.read_bytes()) if suffix == ".png" else read_tiff_samples(path)
    np.testing.assert_array_equal(samples, to_uint16(image))  # values round(x * 65535)
    error = np.abs(samples / 65535.0 - image.astype(np.float64)).max()
    assert error <= 0.5 / 65535 + 1e-7  # within 1/65535, as quantization promises
    for c in range(3):
        assert len(np.unique(samples[..., c])) > 256  # really more than 8 bits
    with Image.open(path) as im:  # Pillow's 8-bit view: the high byte of every sample
        assert im.mode == "RGB" and im.size == (1000, 6)
        np.testing.assert_array_equal(np.asarray(im), (samples >> 8).astype(np.uint8))
    assert partial_files(tmp_path) == []


@pytest.mark.parametrize("encode", [encode_png, encode_tiff])
@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 7, 3), (130, 90, 3)])
def test_encoders_at_8_bits_round_trip_through_pillow_exactly(encode, shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = encode(pixels, SRGB, "neuralstyle test")
    with Image.open(io.BytesIO(data)) as im:
        np.testing.assert_array_equal(np.asarray(im), pixels)
        assert im.info.get("icc_profile") == SRGB
        software = im.info.get("Software") if im.format == "PNG" else im.tag_v2.get(305)
        assert software == "neuralstyle test"


def test_16_bit_encoders_agree_with_pillow_on_random_pixels(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 65536, (33, 17, 3), dtype=np.uint16)
    png, tiff = tmp_path / "a.png", tmp_path / "a.tiff"
    png.write_bytes(encode_png(pixels))
    tiff.write_bytes(encode_tiff(pixels))
    np.testing.assert_array_equal(read_png_samples(png.read_bytes()), pixels)
    np.testing.assert_array_equal(read_tiff_samples(tiff), pixels)
    for path in (png, tiff):
        with Image.open(path) as im:
            np.testing.assert_array_equal(np.asarray(im), (pixels >> 8).astype(np.uint8))


def test_8_bit_default_is_unchanged(tmp_path):
    image = np.random.default_rng(3).random((9, 13, 3)).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="PNG")  # what save_image always wrote
    assert save_image(image, tmp_path / "a.png").read_bytes() == buffer.getvalue()
    assert save_image(image, tmp_path / "b.png", bit_depth=8).read_bytes() == buffer.getvalue()


@pytest.mark.parametrize("suffix", [".png", ".tiff", ".jpg"])
def test_8_bit_outputs_embed_the_profile(tmp_path, suffix):
    path = save_image(gradient(8, 16), tmp_path / f"a{suffix}", icc_profile=SRGB)
    with Image.open(path) as im:
        assert im.info.get("icc_profile") == SRGB
    assert read_icc_profile(path) == SRGB


def test_16_bit_files_get_the_permissions_of_a_new_file(tmp_path):
    for suffix in (".png", ".tiff"):
        path = save_image(gradient(2, 3), tmp_path / f"a{suffix}", bit_depth=16)
        assert path.stat().st_mode & 0o777 == 0o666 & ~images.current_umask()


# --------------------------------------------------------------------------- ICC profiles

def write_photo(path: Path, profile=None, size=(48, 40)) -> Path:
    rng = np.random.default_rng(0)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    options = {"icc_profile": profile} if profile else {}
    Image.fromarray(pixels).save(path, **options)
    return path


@pytest.mark.parametrize("name", ["photo.jpg", "photo.png", "photo.tiff"])
def test_read_icc_profile(tmp_path, name):
    assert read_icc_profile(write_photo(tmp_path / name, SRGB)) == SRGB
    assert read_icc_profile(write_photo(tmp_path / f"plain_{name}")) is None


def test_a_profile_of_another_colour_space_is_not_carried(tmp_path):
    assert LAB[16:20] == b"Lab "
    assert read_icc_profile(write_photo(tmp_path / "lab.png", LAB)) is None


def test_icc_description():
    assert icc_description(SRGB) == SRGB_NAME
    assert icc_description(None) == SRGB_ASSUMED == "sRGB (assumed)"
    assert icc_description(b"\x00" * 200) == "embedded ICC profile (no description)"


def test_16_bit_outputs_carry_the_profile(tmp_path):
    for suffix in (".png", ".tiff"):
        path = save_image(gradient(4, 5), tmp_path / f"a{suffix}", bit_depth=16, icc_profile=SRGB)
        with Image.open(path) as im:
            assert im.info.get("icc_profile") == SRGB
        with Image.open(save_image(gradient(4, 5), tmp_path / f"b{suffix}", bit_depth=16)) as im:
            assert "icc_profile" not in im.info  # no profile: sRGB by assumption, nothing embedded


# --------------------------------------------------------------------------- errors, atomicity

@pytest.mark.parametrize("name, bit_depth, match", [
    ("a.png", 12, "bit_depth must be 8 or 16"),
    ("a.png", True, "bit_depth must be 8 or 16"),
    ("a.jpg", 16, r"bit_depth=16 needs a \.png, \.tif or \.tiff file"),
    ("a.bmp", 16, r"bit_depth=16 needs"),
])
def test_save_image_refuses_bad_bit_depths(tmp_path, name, bit_depth, match):
    with pytest.raises(ConfigError, match=match):
        save_image(gradient(2, 2), tmp_path / name, bit_depth=bit_depth)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_failed_16_bit_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch, suffix):
    target = tmp_path / f"out{suffix}"
    old = save_image(gradient(3, 4), target, bit_depth=16).read_bytes()

    def fail(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(images.os, "replace", fail)
    with pytest.raises(OSError, match="simulated"):
        save_image(np.ones((5, 6, 3), np.float32), target, bit_depth=16)
    with pytest.raises(OSError, match="simulated"):
        save_image(np.ones((5, 6, 3), np.float32), tmp_path / f"new{suffix}", bit_depth=16)
    assert target.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no partial, no new file


def test_failed_encoding_writes_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("encoder failed (simulated)")

    monkeypatch.setattr(images, "encode_tiff", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        save_image(gradient(2, 2), tmp_path / "a.tiff", bit_depth=16)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- run / run_batched

def test_run_writes_a_16_bit_tiff_carrying_the_content_profile(image_dir, tmp_path):
    from neuralstyle.run import run_from_config

    content = write_photo(tmp_path / "photo.jpg", SRGB)
    out = tmp_path / "run"
    cfg = compose("run", [f"image_dir={image_dir}", f"content={content}", "style=great_wave", *TINY,
                          "output.format=tiff", "output.bit_depth=16"])
    run_from_config(cfg, out)
    assert not (out / "result.png").exists()
    with Image.open(out / "result.tiff") as im:
        assert im.info.get("icc_profile") == SRGB and im.tag_v2[258] == (16, 16, 16)
        assert max(im.size) == 32
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["output"] == {"file": "result.tiff", "format": "tiff", "bit_depth": 16,
                                 "icc_profile": SRGB_NAME}
    assert (out / "result.tiff").stat().st_mtime_ns <= (out / "metrics.json").stat().st_mtime_ns


def test_run_default_is_an_8_bit_png_and_assumes_srgb_without_a_profile(image_dir, tmp_path):
    from neuralstyle.run import run_from_config

    content = write_photo(tmp_path / "plain.png")  # no profile
    cfg = compose("run", [f"image_dir={image_dir}", f"content={content}", "style=great_wave", *TINY])
    assert (cfg.output.format, cfg.output.bit_depth) == ("png", 8)
    out = tmp_path / "run"
    run_from_config(cfg, out)
    with Image.open(out / "result.png") as im:
        assert im.mode == "RGB" and "icc_profile" not in im.info
    assert pillow_rawmode(out / "result.png") == "RGB"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["output"] == {"file": "result.png", "format": "png", "bit_depth": 8,
                                 "icc_profile": "sRGB (assumed)"}


def test_run_batched_writes_16_bit_pngs_with_the_profile(image_dir, tmp_path):
    from neuralstyle.run_batched import run_batched_from_config

    content = write_photo(tmp_path / "photo.png", SRGB)
    out = tmp_path / "sweep"
    cfg = compose("run_batched", [f"image_dir={image_dir}", f"content={content}", *TINY,
                                  "batch.seed=[0,1]", "output.bit_depth=16"])
    run_batched_from_config(cfg, out)
    for k in range(2):
        path = out / f"run_{k:02d}" / "result.png"
        assert pillow_rawmode(path) == "RGB;16B"
        with Image.open(path) as im:
            assert im.info.get("icc_profile") == SRGB
        assert json.loads((path.parent / "metrics.json").read_text())["output"]["bit_depth"] == 16


@pytest.mark.parametrize("entry", ["run", "run_batched"])
@pytest.mark.parametrize("override, match", [
    ("output.format=jpg", r"output\.format must be one of png, tiff .*'jpg'"),
    ("output.format=null", r"output\.format must be one of png, tiff"),
    ("output.bit_depth=12", r"output\.bit_depth must be 8 or 16 .*12"),
    ("output.bit_depth=true", r"output\.bit_depth must be 8 or 16"),
    ("output=result.tiff", "output must be a section"),
])
def test_bad_output_keys_fail_early_and_write_nothing(image_dir, tmp_path, monkeypatch, entry,
                                                      override, match):
    import neuralstyle.run as run
    import neuralstyle.run_batched as run_batched

    def must_not_build(cfg):
        raise AssertionError("the output keys must be checked before the run is built")

    monkeypatch.setattr(run, "build_run", must_not_build)
    monkeypatch.setattr(run_batched, "build_run", must_not_build)
    batch = ["batch.seed=[0,1]"] if entry == "run_batched" else []
    cfg = compose(entry, [f"image_dir={image_dir}", *TINY, *batch, override])
    call = run.run_from_config if entry == "run" else run_batched.run_batched_from_config
    with pytest.raises(ConfigError, match=match):
        call(cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- apply

def identity(image, preserve_colors=None):
    return image


def test_apply_writes_16_bit_tiffs_with_each_photos_profile(tmp_path):
    from neuralstyle.fast.stylizer import is_our_result, stylize_files

    photos = tmp_path / "photos"
    photos.mkdir()
    write_photo(photos / "tagged.jpg", SRGB)
    write_photo(photos / "plain.png")
    out = tmp_path / "out"
    written = stylize_files(identity, photos, out, bit_depth=16, ext=".tiff")
    assert sorted(p.name for p in written) == ["plain.tiff", "tagged.tiff"]
    for path in written:
        assert is_our_result(path) and read_tiff_samples(path).dtype.itemsize == 2
    assert read_icc_profile(out / "tagged.tiff") == SRGB
    assert read_icc_profile(out / "plain.tiff") is None
    again = stylize_files(identity, photos, out, bit_depth=16, ext=".tiff")  # replaces its own
    assert sorted(again) == sorted(written)


def test_apply_default_results_are_unchanged_8_bit_pngs(tmp_path):
    from neuralstyle.fast.stylizer import RESULT_MARK, stylize_files

    photo = write_photo(tmp_path / "photo.png")
    [path] = stylize_files(identity, photo, tmp_path / "out")
    assert path.name == "photo_stylized.png"
    with Image.open(path) as im:
        assert im.info.get("Software") == RESULT_MARK and "icc_profile" not in im.info
    assert pillow_rawmode(path) == "RGB"


@pytest.mark.parametrize("overrides, match", [
    (["format=bmp"], r"format must be one of png, tiff .*'bmp'"),
    (["bit_depth=24"], r"bit_depth must be 8 or 16 .*24"),
    (["bit_depth=16", "output={out}/result.jpg"], r"bit_depth=16 needs a \.png, \.tif or \.tiff"),
    (["format=tiff", "output={out}/result.png"], "format=tiff disagrees with output="),
])
def test_apply_refuses_bad_output_keys_before_loading_anything(tmp_path, overrides, match):
    from neuralstyle.apply import apply_from_config

    photo = write_photo(tmp_path / "photo.png")
    out = tmp_path / "out"
    cfg = compose("apply", ["model=/no/such/model.keras", f"input={photo}",
                            *[o.format(out=out) for o in overrides]])
    with pytest.raises(ConfigError, match=match):
        apply_from_config(cfg, out)
    assert not out.exists()


def test_apply_writes_a_named_16_bit_tiff(tmp_path):
    from neuralstyle.apply import output_format
    from neuralstyle.fast.stylizer import stylize_files

    photo = write_photo(tmp_path / "photo.png")
    cfg = compose("apply", ["model=arbitrary", f"input={photo}", "bit_depth=16",
                            f"output={tmp_path / 'print.tif'}"])
    assert output_format(cfg) == (".png", 16)  # the suffix of generated names; print.tif stays
    [path] = stylize_files(identity, photo, cfg.output, bit_depth=16, ext=".png")
    assert path == tmp_path / "print.tif" and pillow_rawmode(path) == "RGB;16L"
    assert os.path.getsize(path) > 48 * 40 * 6
