"""The image an optimization run starts from: the content, the style, seeded noise, or a file."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError
from .io import load_image, resize

INIT_KINDS = ("content", "style", "noise", "file")


def initial_image(kind: str, content: np.ndarray, style: np.ndarray, seed: int = 0,
                  noise_mean: float = 0.5, noise_std: float = 0.25,
                  path: Union[str, Path, None] = None) -> np.ndarray:
    """The starting point: the content image, the style image resized to it, seeded noise, or a file.

    Noise is ``clip(N(noise_mean, noise_std^2))`` per pixel from ``jax.random.key(seed)``.
    """
    shape = content.shape
    if kind == "content":
        return content
    if kind == "style":
        return resize(style[0] if isinstance(style, (list, tuple)) else style, shape[:2])
    if kind == "noise":
        noise = noise_mean + noise_std * jax.random.normal(jax.random.key(seed), shape, jnp.float32)
        return np.clip(np.asarray(noise), 0.0, 1.0)
    if kind == "file":
        if path is None:
            raise ConfigError("init kind 'file' needs a path (init.path=...)")
        return resize(load_image(path), shape[:2])
    raise ConfigError(f"unknown init {kind!r}; expected one of {INIT_KINDS}")
