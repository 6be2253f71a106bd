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


def save_image(image: np.ndarray, path: PathLike) -> Path:
    """Write ``image`` (float RGB in [0, 1]) atomically: a crash never leaves a truncated file.

    The image is written to a temporary file in the same folder and renamed over ``path``.
    """
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"cannot save {path}: unknown image extension {path.suffix!r}")
    pil = Image.fromarray(to_uint8(image))
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt)
    atomic_write(path, buffer.getvalue())
    return path


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
