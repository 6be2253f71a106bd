"""One vocabulary for VGG layers, and per-layer weights.

Keras names (``block4_conv2``) and the names used in the papers and in Caffe/Torch code
(``conv4_2``, ``relu4_2``, ``pool4``) are both accepted.  A Keras ``Conv2D`` layer of
``keras.applications.VGG19`` already applies its ReLU, so ``conv4_2`` and ``relu4_2`` name the
same (post-activation) tensor.  This matches the reference implementations: Caffe's ReLU runs
in place, so Gatys et al.'s "conv4_2" features are rectified too.
"""

from __future__ import annotations

import re
from typing import Sequence, Union

import numpy as np

from ..errors import ConfigError, LayerError

# Convolutions per block for each architecture (Simonyan & Zisserman 2015, Table 1, D and E).
CONVS_PER_BLOCK = {
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}

_PAPER_NAME = re.compile(r"^(conv|relu)(\d)_(\d)$")
_PAPER_POOL = re.compile(r"^pool(\d)$")


def keras_layer_names(arch: str) -> list[str]:
    """All feature layers of a VGG network in forward order, by their Keras names."""
    try:
        convs = CONVS_PER_BLOCK[arch]
    except KeyError:
        raise ConfigError(
            f"unknown backbone architecture {arch!r}; expected one of {sorted(CONVS_PER_BLOCK)}"
        ) from None
    names = []
    for block, n in enumerate(convs, start=1):
        names += [f"block{block}_conv{i}" for i in range(1, n + 1)]
        names.append(f"block{block}_pool")
    return names


def canonical_layer_name(name: str, arch: str) -> str:
    """Map a Keras or paper layer name to the Keras name, or raise :class:`LayerError`.

    >>> canonical_layer_name("relu4_2", "vgg19")
    'block4_conv2'
    """
    valid = keras_layer_names(arch)
    candidate = name
    if m := _PAPER_NAME.match(name):
        candidate = f"block{m.group(2)}_conv{m.group(3)}"
    elif m := _PAPER_POOL.match(name):
        candidate = f"block{m.group(1)}_pool"
    if candidate not in valid:
        paper = [n.replace("block", "conv").replace("_conv", "_") for n in valid if "conv" in n]
        raise LayerError(
            f"unknown layer {name!r} for {arch}; valid Keras names: {', '.join(valid)}; "
            f"paper names conv<b>_<i> / relu<b>_<i> / pool<b> also work, e.g. "
            f"{', '.join(paper[:3])}"
        )
    return candidate


def layer_weights(
    spec: Union[str, Sequence[float]], layers: Sequence[str], what: str = "layer"
) -> tuple[float, ...]:
    """Per-layer weights, as in pystiche: ``"mean"`` (1/n each), ``"sum"`` (1 each) or a list."""
    n = len(layers)
    if isinstance(spec, str):
        if spec == "mean":
            return (1.0 / n,) * n
        if spec == "sum":
            return (1.0,) * n
        raise ConfigError(
            f"{what} weights must be 'mean', 'sum' or a list of {n} numbers, got {spec!r}"
        )
    weights = tuple(float(w) for w in spec)
    if len(weights) != n:
        raise ConfigError(
            f"{what} weights list has {len(weights)} entries but there are {n} layers "
            f"({', '.join(layers)})"
        )
    if not np.all(np.isfinite(weights)):
        raise ConfigError(f"{what} weights must be finite, got {list(weights)}")
    return weights
