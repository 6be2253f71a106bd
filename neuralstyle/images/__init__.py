"""Images in and out of a run: files and named examples (:mod:`.io`), colour controls
(:mod:`.color`), guidance masks (:mod:`.masks`) and the image a run starts from (:mod:`.initial`).

Images are float32 ``(H, W, 3)`` RGB arrays in ``[0, 1]``.
"""

from .color import PRESERVE_COLORS, apply_color_control, combine_luminance
from .initial import INIT_KINDS, initial_image
from .io import (
    atomic_write,
    image_size,
    load_content_and_style,
    load_image,
    resize,
    resize_long_edge,
    resolve_image,
    save_image,
    to_rgb_array,
    to_uint8,
)
from .masks import NAMED_MASKS, load_mask

__all__ = [
    "PRESERVE_COLORS", "apply_color_control", "combine_luminance", "INIT_KINDS", "initial_image",
    "atomic_write", "image_size", "load_content_and_style", "load_image", "resize",
    "resize_long_edge", "resolve_image", "save_image", "to_rgb_array", "to_uint8", "NAMED_MASKS",
    "load_mask",
]
