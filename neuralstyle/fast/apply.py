"""Stylizing photos with a trained transform network: one forward pass per image, any size.

``Stylizer(model)(image)`` runs the network (compiled once per image shape) on an ``(H, W, 3)``
image in [0, 1] and returns an image of the same size.  ``preserve_colors="luminance"`` keeps the
stylized image's luminance and the photo's chrominance (YIQ), the luminance-only transfer of
Gatys et al. 2017 (sec. 5.1) applied after the fact: the network itself was trained on colour
images, so this is a post-processing step, not a luminance-trained network.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from pathlib import Path  # noqa: E402
from typing import Optional, Union  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from ..color import combine_luminance  # noqa: E402
from ..errors import ConfigError, ImageError  # noqa: E402
from ..images import load_image, resize_long_edge, save_image  # noqa: E402
from .data import IMAGE_SUFFIXES  # noqa: E402
from .transform import CUSTOM_OBJECTS, apply_fn, get_params  # noqa: E402

APPLY_COLORS = (None, "luminance")

#: Smallest image side the network accepts (the 9x9 convolution's reflection padding).
MIN_SIDE = 8


def load_transform(path: Union[str, Path]) -> keras.Model:
    """Load a transform network saved by training (a ``.keras`` file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model: {path} does not exist (expected the model.keras written by "
                          "python -m neuralstyle.train)")
    try:
        return keras.saving.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=False)
    except Exception as err:  # noqa: BLE001 - any failure means "not a model file we can use"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model: could not load {path} as a Keras model ({first})") from None


class Stylizer:
    """A trained transform network as a function of images; see the module docstring."""

    def __init__(self, model: Union[keras.Model, str, Path]):
        self.model = model if isinstance(model, keras.Model) else load_transform(model)
        self.params = get_params(self.model)
        self._apply = jax.jit(apply_fn(self.model))

    def __call__(self, image: np.ndarray, preserve_colors: Optional[str] = None) -> np.ndarray:
        if preserve_colors not in APPLY_COLORS:
            raise ConfigError(f"preserve_colors must be one of {APPLY_COLORS}, got {preserve_colors!r}")
        image = np.asarray(image, np.float32)
        if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < MIN_SIDE:
            raise ImageError(f"expected an (H, W, 3) image with sides of at least {MIN_SIDE} px, "
                             f"got shape {image.shape}")
        out = np.asarray(self._apply(self.params, jnp.asarray(image)[None])[0])
        if preserve_colors == "luminance":
            out = combine_luminance(out, image)
        return out


def input_files(path: Union[str, Path]) -> list[Path]:
    """``[path]`` for a file, the sorted image files directly inside a folder."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ImageError(f"input: folder {path} holds no image files")
        return files
    raise ImageError(f"input: {path} does not exist")


def output_paths(inputs: list[Path], input_arg: Union[str, Path], output: Union[str, Path, None],
                 default_dir: Path) -> list[Path]:
    """Where each input's result goes.

    A single input file goes to ``output`` if that names an image file (``.png``, ``.jpg``...),
    otherwise to ``<output or default_dir>/<stem>_stylized.png``; a folder's images go to
    ``<output or default_dir>/<stem>.png``.
    """
    single = Path(input_arg).expanduser().is_file()
    if single and output is not None and Path(output).suffix:
        return [Path(output)]
    folder = Path(output) if output is not None else default_dir
    suffix = "_stylized" if single else ""
    return [folder / f"{p.stem}{suffix}.png" for p in inputs]


def stylize_files(stylizer: Stylizer, input_path, output=None, default_dir: Path = Path("."),
                  size: Optional[int] = None, preserve_colors: Optional[str] = None,
                  progress: bool = False) -> list[Path]:
    """Stylize a file or every image in a folder; returns the written paths.  An unreadable image
    raises :class:`~neuralstyle.errors.ImageError` naming it (results already written stay; each
    file is written atomically, so none is ever half-written)."""
    inputs = input_files(input_path)
    targets = output_paths(inputs, input_path, output, default_dir)
    written = []
    iterator = zip(inputs, targets)
    if progress and len(inputs) > 1:
        from tqdm.auto import tqdm

        iterator = tqdm(list(iterator), desc="apply", unit="image")
    for source, target in iterator:
        image = load_image(source)
        if size:
            image = resize_long_edge(image, int(size))
        written.append(save_image(stylizer(image, preserve_colors), target))
    return written
