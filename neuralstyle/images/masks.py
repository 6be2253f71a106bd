"""Guidance masks for spatial control (Gatys et al. 2017, sec. 4.1): a grey-level file or a named half."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ImageError
from .io import PathLike, load_image, resize


NAMED_MASKS = ("all", "none", "left", "right", "top", "bottom")


def load_mask(path: PathLike, size: tuple[int, int]) -> np.ndarray:
    """A guidance mask in [0, 1] of ``size = (H, W)``: the grey level of an image file, resized,
    or one of the named masks ``all``, ``none``, ``left``, ``right``, ``top``, ``bottom`` (halves)."""
    h, w = size
    name = str(path)
    if name in NAMED_MASKS and not Path(name).exists():
        mask = np.zeros((h, w), np.float32)
        region = {"all": (slice(None), slice(None)), "none": (slice(0, 0), slice(0, 0)),
                  "left": (slice(None), slice(0, w // 2)), "right": (slice(None), slice(w // 2, None)),
                  "top": (slice(0, h // 2), slice(None)), "bottom": (slice(h // 2, None), slice(None))}
        mask[region[name]] = 1.0
        return mask
    try:
        grey = load_image(path).mean(axis=-1, keepdims=True)
    except ImageError as err:
        raise ImageError(f"style mask: {err} (or use a named mask: {', '.join(NAMED_MASKS)})") from None
    return resize(np.repeat(grey, 3, axis=-1), size)[..., 0]
