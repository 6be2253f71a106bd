"""Reading, resizing and atomically writing images, and resolving named example images.

Images are float32 ``(H, W, 3)`` RGB arrays in ``[0, 1]``.  Any file Pillow reads is accepted:
EXIF orientation is applied, grayscale, palette, CMYK and 16-bit images become RGB, transparent
images are composited onto white.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import urllib.request
from pathlib import Path
import math
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ConfigError, ImageError

PathLike = Union[str, os.PathLike]

#: Environment variable naming a local folder of example images (used before any download).
IMAGE_DIR_ENV = "NEURALSTYLE_IMAGE_DIR"

#: Named example images: name -> (file name, URL).  The files are public domain or CC0;
#: ``../shared/assets/images`` of this project holds the same files for offline machines.
KNOWN_IMAGES = {
    "great_wave": (
        "great_wave.jpg",
        "https://storage.googleapis.com/download.tensorflow.org/example_images/"
        "The_Great_Wave_off_Kanagawa.jpg",
    ),
    "starry_night": (
        "starry_night.jpg",
        "https://upload.wikimedia.org/wikipedia/commons/thumb/e/ea/"
        "Van_Gogh_-_Starry_Night_-_Google_Art_Project.jpg/"
        "1024px-Van_Gogh_-_Starry_Night_-_Google_Art_Project.jpg",
    ),
    "the_scream": (
        "the_scream.jpg",
        "https://upload.wikimedia.org/wikipedia/commons/c/c5/"
        "Edvard_Munch%2C_1893%2C_The_Scream%2C_oil%2C_tempera_and_pastel_on_cardboard%2C_91_x_73_cm%2C_National_Gallery_of_Norway.jpg",
    ),
    "shipwreck": (
        "shipwreck.jpg",
        "https://upload.wikimedia.org/wikipedia/commons/2/2e/"
        "Shipwreck_turner.jpg",
    ),
    "astronaut": (
        "astronaut.png",
        "https://raw.githubusercontent.com/scikit-image/scikit-image/v0.22.0/"
        "skimage/data/astronaut.png",
    ),
    "coffee": (
        "coffee.png",
        "https://raw.githubusercontent.com/scikit-image/scikit-image/v0.22.0/"
        "skimage/data/coffee.png",
    ),
    "chelsea": (
        "chelsea.png",
        "https://raw.githubusercontent.com/scikit-image/scikit-image/v0.22.0/"
        "skimage/data/chelsea.png",
    ),
}


def image_cache_dir() -> Path:
    """Where downloaded example images are cached: ``$KERAS_HOME/datasets/neuralstyle``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets" / "neuralstyle"


def resolve_image(name_or_path: PathLike, image_dir: Optional[PathLike] = None,
                  download: bool = True) -> Path:
    """Path of an image given as a file path or as the name of a known example image.

    A name (see :data:`KNOWN_IMAGES`) is looked up in ``image_dir`` (default: the
    ``NEURALSTYLE_IMAGE_DIR`` environment variable), then in the download cache, then downloaded
    into the cache, like the TensorFlow tutorial's ``keras.utils.get_file``.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    if name not in KNOWN_IMAGES:
        raise ImageError(
            f"image {name!r} not found: no such file, and not one of the named example images "
            f"({', '.join(sorted(KNOWN_IMAGES))})"
        )
    filename, url = KNOWN_IMAGES[name]
    tried = []
    folder = image_dir if image_dir is not None else os.environ.get(IMAGE_DIR_ENV)
    if folder:
        candidate = Path(folder).expanduser() / filename
        if candidate.is_file():
            return candidate
        tried.append(f"{candidate} (image folder) does not exist")
    else:
        tried.append(f"no local image folder set ({IMAGE_DIR_ENV} is unset)")
    cached = image_cache_dir() / filename
    if cached.is_file():
        return cached
    tried.append(f"{cached} (download cache) does not exist")
    if download:
        try:
            _download(url, cached)
            return cached
        except OSError as err:
            tried.append(f"download from {url} failed: {err}")
    raise ImageError(
        f"example image {name!r} ({filename}) could not be found:\n  - "
        + "\n  - ".join(tried)
        + f"\nWithout internet, point {IMAGE_DIR_ENV} (or the config key image_dir) at a folder "
        f"holding {filename}, e.g. {IMAGE_DIR_ENV}=../shared/assets/images"
    )


def _download(url: str, target: Path, timeout: float = 20.0) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": "neuralstyle"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = response.read()
    _check_decodable(data, url)
    atomic_write(target, data)


def _check_decodable(data: bytes, origin: str) -> None:
    try:
        Image.open(io.BytesIO(data)).verify()
    except Exception as err:
        raise OSError(f"{origin} did not return an image ({err})") from None


def image_size(path: PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header without decoding the pixels.

    Raises :class:`ImageError` naming the file if it is missing, not an image, or larger than
    Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS`` x 2, about 179 Mpx).
    """
    return _read(path, lambda im: im.size)


def load_image(path: PathLike, long_edge: Optional[int] = None) -> np.ndarray:
    """Read ``path`` as float32 ``(H, W, 3)`` RGB in ``[0, 1]``, optionally resized.

    ``long_edge`` resizes so that the longer side has that many pixels, keeping the aspect ratio.
    """
    image = _read(path, lambda im: to_rgb_array(ImageOps.exif_transpose(im)))
    return resize_long_edge(image, long_edge) if long_edge else image


def _read(path: PathLike, read):
    """``read(opened Pillow image)``, with every way a file can fail as one :class:`ImageError`
    naming it: missing, a folder, not an image, a decompression bomb, truncated, too large."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image file {path} does not exist")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file")
    try:
        with Image.open(path) as im:
            return read(im)
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(found.group(1)) / 1e6:.0f} Mpx" if found else "too many pixels"
        raise ImageError(f"{path} claims {pixels}, more than Pillow's decompression-bomb limit of "
                         f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} Mpx; refusing to decode it "
                         "(resize the file first)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"could not read image {path}: {err}") from None
    except MemoryError:
        raise ImageError(f"not enough memory to decode {path}") from None


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any Pillow image -> float32 RGB ``[0, 1]``; alpha is composited onto white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        data = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if im.mode.startswith("I;16") or data.max() > 255 else 255.0
        gray = np.clip(data / scale, 0.0, 1.0).astype(np.float32)
        return np.repeat(gray[..., None], 3, axis=-1)
    if im.mode == "F":
        gray = np.clip(np.asarray(im, np.float32), 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=-1)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), np.float32) / 255.0
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + (1.0 - alpha)
    return np.asarray(im.convert("RGB"), np.float32) / 255.0


def resize_long_edge(image: np.ndarray, long_edge: int) -> np.ndarray:
    """Resize so that ``max(H, W) == long_edge``, keeping the aspect ratio (bicubic, antialiased)."""
    h, w = image.shape[:2]
    scale = long_edge / max(h, w)
    return resize(image, (max(1, round(h * scale)), max(1, round(w * scale))))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float ``(H, W, 3)`` image to ``size = (height, width)`` with Pillow's bicubic filter."""
    if tuple(image.shape[:2]) == tuple(size):
        return image.astype(np.float32)
    channels = [
        np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(
            (size[1], size[0]), Image.Resampling.BICUBIC))
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def to_uint16(image: np.ndarray) -> np.ndarray:
    """Float ``[0, 1]`` -> 16-bit values ``round(x * 65535)`` (values outside [0, 1] are clipped)."""
    return np.round(np.clip(np.asarray(image, np.float64), 0.0, 1.0) * 65535.0).astype(np.uint16)


# --------------------------------------------------------------------------- output for print

#: The file formats of a run's result (config key ``output.format``) and their file suffix.
OUTPUT_FORMATS = {"png": ".png", "tiff": ".tiff", "tif": ".tiff"}
#: Bits per colour channel of a written image (``output.bit_depth``).
BIT_DEPTHS = (8, 16)
#: Suffixes that :func:`save_image` can write at 16 bits per channel.
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")
#: What metrics.json records for an output without an embedded ICC profile.
SRGB_ASSUMED = "sRGB (assumed)"


def check_output_options(fmt, bit_depth, format_key: str = "output.format",
                         bit_depth_key: str = "output.bit_depth") -> tuple[str, int]:
    """``(suffix, bit_depth)`` of a result file from the config values ``fmt`` (``png``,
    ``tiff`` or its alias ``tif``) and ``bit_depth`` (8 or 16); :class:`ConfigError` naming the
    key and the allowed values otherwise.  Meant to run before any heavy work."""
    name = fmt.lower() if isinstance(fmt, str) else fmt
    if name not in OUTPUT_FORMATS:
        raise ConfigError(f"{format_key} must be one of png, tiff (or tif), got {fmt!r}")
    if isinstance(bit_depth, bool) or bit_depth not in BIT_DEPTHS:
        raise ConfigError(f"{bit_depth_key} must be 8 or 16 (bits per colour channel), "
                          f"got {bit_depth!r}")
    return OUTPUT_FORMATS[name], int(bit_depth)


def read_icc_profile(path: PathLike) -> Optional[bytes]:
    """The ICC profile embedded in the image file ``path`` when it describes RGB data, else ``None``.

    :func:`load_image` returns the file's RGB values as they are (no colour management), so the
    profile of an RGB input (JPEG, PNG, TIFF, WebP) is what those values mean, and a result made
    from them means the same when it carries that profile (see :func:`save_image`).  A profile of
    another colour space (CMYK, grey, Lab) does not describe the RGB values ``load_image`` makes of
    such a file, so it is not returned; like a file without a profile, that output is sRGB by
    assumption (:data:`SRGB_ASSUMED`).  Only the header is read, not the pixels.
    """
    profile = _read(path, lambda im: im.info.get("icc_profile"))
    if not profile or len(profile) < 128 or profile[16:20] != b"RGB ":
        return None  # none, truncated, or not an RGB profile (bytes 16-19: data colour space)
    return bytes(profile)


def icc_description(profile: Optional[bytes]) -> str:
    """The profile's description (``"Adobe RGB (1998)"``), or :data:`SRGB_ASSUMED` for ``None``."""
    if profile is None:
        return SRGB_ASSUMED
    try:
        from PIL import ImageCms

        text = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile)))
        return text.strip() or "embedded ICC profile (no description)"
    except Exception:  # noqa: BLE001 - no LittleCMS, or a profile it cannot parse: still carried
        return "embedded ICC profile (no description)"


def save_image(image: np.ndarray, path: PathLike, bit_depth: int = 8,
               icc_profile: Optional[bytes] = None, software: Optional[str] = None) -> Path:
    """Write ``image`` (float RGB in [0, 1]) atomically: a crash never leaves a truncated file.

    The file is encoded in memory, written to a temporary file in the same folder and renamed over
    ``path`` (:func:`atomic_write`), so it gets the permissions of any new file (0666 less the
    umask).  The format follows the suffix:

    * ``bit_depth=8`` (default): any format Pillow writes (PNG, TIFF, JPEG, ...), values
      ``round(x * 255)``; unchanged from earlier versions when no profile is given;
    * ``bit_depth=16``: ``.png`` (RGB, 16 bits per channel, big-endian as PNG requires) or
      ``.tif``/``.tiff`` (baseline RGB, uncompressed), values ``round(x * 65535)``: the
      quantization error is at most 1/131070.  Pillow cannot hold 16-bit RGB, so these two are
      encoded here (:func:`encode_png`, :func:`encode_tiff`).

    ``icc_profile`` (bytes, e.g. from :func:`read_icc_profile` of the content image) is embedded
    (PNG ``iCCP`` chunk, TIFF tag 34675, JPEG/WebP as Pillow does).  Without one nothing is
    embedded: the file holds sRGB values by assumption, the convention of viewers, browsers and
    print software for untagged files; an explicit sRGB profile would only add bytes and change the
    default 8-bit PNG.  ``software`` goes into the PNG ``Software`` text chunk or TIFF tag 305.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if isinstance(bit_depth, bool) or bit_depth not in BIT_DEPTHS:
        raise ConfigError(f"bit_depth must be 8 or 16 (bits per colour channel), got {bit_depth!r}")
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise ImageError(f"cannot save {path}: unknown image extension {path.suffix!r}")
    if bit_depth == 16:
        if suffix not in SIXTEEN_BIT_SUFFIXES:
            raise ConfigError(f"bit_depth=16 needs a .png, .tif or .tiff file, not {path.name} "
                              "(bit_depth=8 writes any format)")
        encode = encode_png if suffix == ".png" else encode_tiff
        atomic_write(path, encode(to_uint16(image), icc_profile, software))
        return path
    pil = Image.fromarray(to_uint8(image))
    options = {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if software and fmt == "PNG":
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("Software", software)
        options["pnginfo"] = info
    elif software and fmt == "TIFF":
        options["tiffinfo"] = {305: software}
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **options)
    atomic_write(path, buffer.getvalue())
    return path


def _rgb_samples(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or pixels.dtype not in (np.uint8, np.uint16) \
            or min(pixels.shape[:2]) < 1:
        raise ImageError(f"expected (H, W, 3) uint8 or uint16 pixels, got {pixels.dtype} "
                         f"{pixels.shape}")
    return pixels


def encode_png(pixels: np.ndarray, icc_profile: Optional[bytes] = None,
               software: Optional[str] = None) -> bytes:
    """A PNG file (RGB, 8 or 16 bits per channel after the dtype of ``pixels``) as bytes.

    Chunks: ``IHDR``, ``iCCP`` (the profile, zlib-compressed) when given, ``tEXt Software`` when
    given, ``IDAT`` chunks of 1 MiB (every row with filter 1, "Sub", which suits smooth images),
    ``IEND``.
    16-bit samples are big-endian, as the PNG specification requires.
    """
    import zlib

    pixels = _rgb_samples(pixels)
    height, width = pixels.shape[:2]
    depth = pixels.dtype.itemsize * 8
    raw = pixels.astype(f">u{pixels.dtype.itemsize}").reshape(height, -1).view(np.uint8)
    pixel_bytes = 3 * pixels.dtype.itemsize
    filtered = raw.copy()  # Sub: each byte minus the same byte of the pixel to its left, mod 256
    filtered[:, pixel_bytes:] -= raw[:, :-pixel_bytes]
    rows = np.concatenate([np.ones((height, 1), np.uint8), filtered], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    parts = [b"\x89PNG\r\n\x1a\n",
             chunk(b"IHDR", width.to_bytes(4, "big") + height.to_bytes(4, "big")
                   + bytes([depth, 2, 0, 0, 0]))]  # colour type 2 (RGB), deflate, no interlace
    if icc_profile:
        parts.append(chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
    if software:
        parts.append(chunk(b"tEXt", b"Software\x00" + software.encode("latin-1", "replace")))
    compressed = zlib.compress(rows.tobytes(), 6)
    parts += [chunk(b"IDAT", compressed[i:i + 2**20]) for i in range(0, len(compressed), 2**20)]
    parts.append(chunk(b"IEND", b""))
    return b"".join(parts)


def encode_tiff(pixels: np.ndarray, icc_profile: Optional[bytes] = None,
                software: Optional[str] = None) -> bytes:
    """A baseline TIFF file (little-endian, RGB, 8 or 16 bits per channel after the dtype of
    ``pixels``, uncompressed, chunky, strips of about 64 KiB) as bytes; the ICC profile goes into
    tag 34675 (InterColorProfile), ``software`` into tag 305.  Uncompressed, because every TIFF
    reader (print RIPs included) reads it."""
    import struct

    pixels = _rgb_samples(pixels)
    height, width = pixels.shape[:2]
    sample_bytes = pixels.dtype.itemsize
    data = pixels.astype(f"<u{sample_bytes}").tobytes()
    if len(data) + len(icc_profile or b"") > 2**32 - 2**20:
        raise ImageError(f"a {width}x{height} image at {8 * sample_bytes} bits is too large for "
                         "a classic TIFF file (4 GiB)")
    row_bytes = width * 3 * sample_bytes
    rows_per_strip = max(1, min(height, 65536 // row_bytes))
    strips = range(0, height, rows_per_strip)
    counts = [min(rows_per_strip, height - r) * row_bytes for r in strips]
    SHORT, LONG, ASCII, RATIONAL, UNDEFINED = 3, 4, 2, 5, 7
    size_of = {SHORT: 2, LONG: 4, ASCII: 1, RATIONAL: 8, UNDEFINED: 1}
    text = (software.encode("latin-1", "replace") + b"\x00") if software else None
    # (tag, type, values or bytes); StripOffsets are filled in once the layout is known
    entries = [(256, LONG, [width]), (257, LONG, [height]), (258, SHORT, [8 * sample_bytes] * 3),
               (259, SHORT, [1]), (262, SHORT, [2]), (273, LONG, [0] * len(counts)),
               (277, SHORT, [3]), (278, LONG, [rows_per_strip]), (279, LONG, counts),
               (282, RATIONAL, [72, 1]), (283, RATIONAL, [72, 1]), (284, SHORT, [1]),
               (296, SHORT, [2])]  # 72 pixels per inch: the baseline's required resolution tags
    if text:
        entries.append((305, ASCII, text))
    if icc_profile:
        entries.append((34675, UNDEFINED, bytes(icc_profile)))
    entries.sort()
    ifd_size = 2 + 12 * len(entries) + 4
    extra_at = 8 + ifd_size  # out-of-line values follow the IFD, then the pixels

    def payload(kind, values) -> bytes:
        if isinstance(values, bytes):
            return values
        return struct.pack(f"<{len(values)}{'H' if kind == SHORT else 'I'}", *values)  # LONG, RATIONAL

    lengths = [len(payload(kind, values)) for _, kind, values in entries]
    pixels_at = extra_at + sum(n + n % 2 for n in lengths if n > 4)
    offsets, at = [], pixels_at
    for count in counts:
        offsets.append(at)
        at += count
    entries = [(tag, kind, offsets if tag == 273 else values) for tag, kind, values in entries]
    ifd, extra = [struct.pack("<H", len(entries))], []
    for tag, kind, values in entries:
        blob = payload(kind, values)
        count = len(blob) // size_of[kind]
        if len(blob) <= 4:
            ifd.append(struct.pack("<HHI", tag, kind, count) + blob.ljust(4, b"\x00"))
        else:
            ifd.append(struct.pack("<HHII", tag, kind, count, extra_at + len(b"".join(extra))))
            extra.append(blob + b"\x00" * (len(blob) % 2))  # values start on a word boundary
    ifd.append(struct.pack("<I", 0))  # no next IFD
    header = b"II*\x00" + struct.pack("<I", 8)
    return header + b"".join(ifd) + b"".join(extra) + data


def atomic_write(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the permissions of any file the user creates (``0o666`` less the umask), not
    the ``0o600`` of the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def load_content_and_style(content, style, size: Optional[int] = None, style_scale: float = 1.0,
                           image_dir=None):
    """Load the content image at long edge ``size`` and the style image at ``style_scale`` times it.

    ``content`` and ``style`` are file paths or names of example images (see
    :func:`neuralstyle.images.resolve_image`); ``style`` may be a list of them (style mixing),
    and then a list of images is returned.  As in jcjohnson/neural-style, the style image's
    long edge is ``ceil(style_scale * content long edge)``.
    """
    if not style_scale > 0:
        raise ConfigError(f"style_scale must be positive, got {style_scale}")
    content_image = _load_named("content", content, image_dir, size)
    style_long = math.ceil(style_scale * max(content_image.shape[:2]))
    if isinstance(style, (list, tuple)):
        if not style:
            raise ConfigError("style is an empty list; give at least one style image")
        return content_image, [_load_named(f"style[{i}]", s, image_dir, style_long)
                               for i, s in enumerate(style)]
    return content_image, _load_named("style", style, image_dir, style_long)


def _load_named(role: str, name, image_dir, long_edge) -> np.ndarray:
    try:
        return load_image(resolve_image(name, image_dir), long_edge)
    except ImageError as err:
        raise ImageError(f"{role}: {err}") from None
