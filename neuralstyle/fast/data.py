"""Training photos for feed-forward style networks: a folder of images as a Grain pipeline.

COCO train2014 (the paper's training set, 83k photos) is just a folder of JPEG files; any folder
works.  The pipeline (Grain, google/grain, the JAX data-loading library):

1. the sorted list of image files under the folder (recursively) is the source;
2. ``shuffle(seed)`` then ``repeat()``: a different, deterministic permutation every epoch;
3. ``random_map``: decode, resize the shorter side to ``size`` and take a random ``size x size``
   crop, with a per-element generator derived from the seed and the element's index (so the same
   step always sees the same crops, also after a resume);
4. ``to_iter_dataset(ReadOptions(num_threads, prefetch_buffer_size))``: decoding runs in worker
   threads and is prefetched, off the training thread;
5. :class:`Batches` stacks ``batch_size`` decoded crops into one ``(B, size, size, 3)`` float32
   array; a file that cannot be decoded is skipped and counted (:attr:`Batches.skipped`), never
   fatal.

The position in the stream is checkpointable: :meth:`Batches.get_state` /
:meth:`Batches.set_state` wrap Grain's iterator state, so a resumed run sees exactly the batches
the interrupted one would have seen next.

The names of the files (relative to the folder) are :attr:`Batches.files`: training stores them
with each checkpoint and refuses to resume when they changed.  :func:`hold_out` sets the first few
decodable photos of the folder aside as validation images, so that training needs nothing but its
data folder and a style image.

The paper resizes each COCO image to 256 x 256 (Johnson et al. 2016, sec. 4.1); this pipeline
resizes the shorter side and crops instead, which keeps the aspect ratio (as pytorch/examples'
``fast_neural_style`` does with ``Resize`` + ``CenterCrop``, but with a random crop).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import grain
import numpy as np
from PIL import Image, ImageOps

from ..errors import ConfigError
from ..images import load_image, to_rgb_array

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

log = logging.getLogger(__name__)


#: What each folder key holds, for error messages.
_FOLDER_EXAMPLES = {"data.dir": "training images (e.g. data.dir=/path/to/coco/train2014)",
                    "style_data.dir": "style images (e.g. style_data.dir=/path/to/paintings)"}


def list_images(folder: Union[str, Path], key: str = "data.dir") -> list[str]:
    """Sorted paths of the image files (by suffix) under ``folder``, recursively; errors name the
    config ``key`` the folder came from (``data.dir``, ``style_data.dir``)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{key}: {folder} is not a folder of "
                          f"{_FOLDER_EXAMPLES.get(key, 'images')}")
    files = sorted(str(p) for p in folder.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"{key}: {folder} holds no image files "
                          f"(looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")
    return files


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``size x size`` window of an ``(H, W, 3)`` image with ``min(H, W) == size``."""
    h, w = image.shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return image[top:top + size, left:left + size]


def load_crop(path: str, size: int, rng: np.random.Generator) -> Optional[np.ndarray]:
    """Decode ``path``, resize its shorter side to ``size`` (bilinear, antialiased) and crop a
    random square; ``None`` if the file cannot be decoded (corrupt, truncated, not an image)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when possible
                im = ImageOps.exif_transpose(im)
                w, h = im.size
                scale = size / min(w, h)
                new = (max(size, round(w * scale)), max(size, round(h * scale)))
                im = im.convert("RGB").resize(new, Image.Resampling.BILINEAR, reducing_gap=3.0)
                image = to_rgb_array(im)
    except Exception as err:  # noqa: BLE001 - any decoding failure means "skip this file"
        log.debug("skipping %s: %s", path, err)
        return None
    return random_crop(image, size, rng)


class _LoadCrop(grain.transforms.RandomMap):
    def __init__(self, size: int):
        self.size = size

    def random_map(self, path: str, rng: np.random.Generator):
        image = load_crop(path, self.size, rng)
        # Grain does not pass None through a thread pool: mark failures with an empty array.
        return {"image": np.zeros((0,), np.float32) if image is None else image, "path": path}


def photo_dataset(files: Sequence[str], size: int, seed: int = 0) -> grain.MapDataset:
    """An infinite, shuffled, index-addressable dataset of ``{"image", "path"}`` crops.

    Element ``i`` belongs to epoch ``i // len(files)``; each epoch is a fresh permutation.  A file
    that fails to decode yields an empty ``image`` (``size == 0``).
    """
    if not files:
        raise ConfigError("no training images")
    return (grain.MapDataset.source(list(files))
            .shuffle(seed=int(seed) % 2**32)
            .repeat()
            .random_map(_LoadCrop(int(size)), seed=(int(seed) + 1) % 2**32))


class Batches:
    """Iterator of ``(B, size, size, 3)`` float32 batches from a :func:`photo_dataset`.

    Attributes:
      skipped: how many undecodable files were skipped so far (carried over by set_state).
      consumed: how many dataset elements were read so far (decoded or skipped).
      skipped_files: the distinct unreadable files met by this iterator (each is logged once).
      files: the names of the dataset's files relative to their folder, in order, when known
        (set by :func:`photo_batches`; ``None`` otherwise).
    """

    def __init__(self, dataset: grain.MapDataset, batch_size: int, num_threads: int = 4,
                 prefetch: int = 32, max_skipped_in_a_row: int = 1000):
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.max_skipped_in_a_row = max_skipped_in_a_row
        options = grain.ReadOptions(num_threads=max(1, int(num_threads)),
                                    prefetch_buffer_size=max(1, int(prefetch)))
        self._iterator = iter(dataset.to_iter_dataset(options))
        self.skipped = 0
        self.consumed = 0
        self.skipped_files: list[str] = []
        self.files: Optional[list[str]] = None

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        images, in_a_row = [], 0
        while len(images) < self.batch_size:
            element = next(self._iterator)
            self.consumed += 1
            if element["image"].size == 0:
                self.skipped += 1
                in_a_row += 1
                if element["path"] not in self.skipped_files:  # warn once per file
                    self.skipped_files.append(element["path"])
                    log.warning("skipping unreadable training image %s", element["path"])
                if in_a_row >= self.max_skipped_in_a_row:
                    raise ConfigError(f"data.dir: {in_a_row} unreadable image files in a row "
                                      f"(last: {element['path']}); is this a folder of images?")
                continue
            in_a_row = 0
            images.append(element["image"])
        return np.stack(images)

    def get_state(self) -> dict:
        """JSON-serializable position in the stream (between two batches)."""
        return {"grain": self._iterator.get_state(), "skipped": self.skipped,
                "consumed": self.consumed}

    def set_state(self, state: dict) -> None:
        self._iterator.set_state(state["grain"])
        self.skipped = int(state["skipped"])
        self.consumed = int(state["consumed"])


def photo_batches(folder: Union[str, Path], size: int, batch_size: int, seed: int = 0,
                  num_threads: int = 4, prefetch: int = 32,
                  files: Optional[Sequence[str]] = None, key: str = "data.dir") -> tuple[Batches, int]:
    """``(batches, number of files)`` for the images under ``folder`` (or for ``files``, some of
    them, e.g. those :func:`hold_out` left for training); see :class:`Batches`.  ``key`` names the
    folder's config key in errors."""
    folder = Path(folder).expanduser()
    files = list_images(folder, key) if files is None else [str(f) for f in files]
    if not files:
        raise ConfigError(f"{key}: no training images left in {folder}")
    batches = Batches(photo_dataset(files, size, seed), batch_size, num_threads, prefetch)
    batches.files = [_relative(f, folder) for f in files]
    return batches, len(files)


def _relative(path: str, folder: Path) -> str:
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:  # a file outside the folder: its whole path
        return str(path)


class ContentStyleBatches:
    """Pairs of batches ``{"content": (B, size, size, 3), "style": (B, style_size, style_size, 3)}``
    from two :class:`Batches` streams, photos and style images (the arbitrary-style networks of
    Ghiasi et al. 2017 see a new style image with every photo).

    Quacks like :class:`Batches` for the training loop: ``batch_size``, ``get_state`` /
    ``set_state`` (both positions), ``files`` (the photos) and ``style_files``, and ``skipped``,
    ``consumed``, ``skipped_files`` summed over both streams.
    """

    def __init__(self, content: Batches, style: Batches):
        if content.batch_size != style.batch_size:
            raise ConfigError(f"photo and style batches differ in size: {content.batch_size} and "
                              f"{style.batch_size}")
        self.content, self.style = content, style
        self.batch_size = content.batch_size
        self.files = content.files
        self.style_files = style.files

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return {"content": next(self.content), "style": next(self.style)}

    @property
    def skipped(self) -> int:
        return self.content.skipped + self.style.skipped

    @property
    def consumed(self) -> int:
        return self.content.consumed + self.style.consumed

    @property
    def skipped_files(self) -> list[str]:
        return self.content.skipped_files + self.style.skipped_files

    def get_state(self) -> dict:
        return {"content": self.content.get_state(), "style": self.style.get_state()}

    def set_state(self, state: dict) -> None:
        self.content.set_state(state["content"])
        self.style.set_state(state["style"])


def hold_out(files: Sequence[str], count: int, long_edge: Optional[int] = None, key: str = "data.dir"
             ) -> tuple[list[str], list[np.ndarray], list[str]]:
    """Set the first ``count`` decodable files of ``files`` (in their order) aside as validation
    photos: ``(held-out paths, their images at long_edge, the remaining files)``.

    Files that cannot be decoded are passed over and stay with the rest (the training pipeline
    skips them).  Raises :class:`~neuralstyle.errors.ConfigError` when no file would be left for
    training.
    """
    held, images, rest = [], [], []
    for path in files:
        if len(held) < int(count):
            try:
                image = load_image(path, long_edge)
            except Exception:  # noqa: BLE001 - an undecodable photo is simply not held out
                rest.append(path)
                continue
            held.append(path)
            images.append(image)
        else:
            rest.append(path)
    if not rest:
        raise ConfigError(f"{key} holds {len(files)} images: holding {count} out for "
                          "validation leaves none to train on (set validation.holdout lower, or "
                          "list validation.images)")
    return held, images, rest
