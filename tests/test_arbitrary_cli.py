"""`python -m neuralstyle.apply model=arbitrary style=... input=...`: any style, any photo, the
naming rules of apply, and bad input refused before anything is built or written."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neuralstyle import ConfigError, ImageError, load_image, save_image
from neuralstyle.apply import apply_from_config
from neuralstyle.recipe import compose

REPO = Path(__file__).resolve().parents[1]


def compose_apply(overrides):
    return compose("apply", overrides)


@pytest.fixture
def photos(tmp_path, image_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, size in (("cat.png", (40, 56)), ("cup.jpg", (36, 36))):
        image = load_image(image_dir / ("chelsea.png" if name.startswith("cat") else "coffee.png"))
        save_image(image[: size[0] * 4: 4, : size[1] * 4: 4], folder / name)
    return folder


@pytest.mark.parametrize("overrides, error, match", [
    (["style=null"], ConfigError, "model=arbitrary needs style="),
    (["style=no_such_painting"], ImageError, "style: image 'no_such_painting' not found"),
    (["style=great_wave", "strength=1.5"], ConfigError, "strength must be a number between 0 and 1"),
    (["style=[great_wave,starry_night]", "style_weights=[1,-1]"], ConfigError, "blend: need 2"),
    (["style=great_wave", "input=/no/such/photo.png"], ImageError, "photo.png"),
])
def test_bad_input_is_refused_and_nothing_is_written(overrides, error, match, photos, image_dir,
                                                     tmp_path):
    out = tmp_path / "out"
    cfg = compose_apply(["model=arbitrary", f"input={photos}", f"output={out}",
                         f"image_dir={image_dir}", "progress=false", *overrides])
    with pytest.raises(error, match=match):
        apply_from_config(cfg, tmp_path / "run")
    assert not out.exists()


def test_a_trained_network_takes_no_style(photos, tmp_path):
    cfg = compose_apply(["model=some/model.keras", f"input={photos}", "style=great_wave"])
    with pytest.raises(ConfigError, match="style= applies to model=arbitrary only"):
        apply_from_config(cfg, tmp_path)


@pytest.mark.slow
def test_cli_stylizes_a_folder_with_a_blend_of_two_styles(photos, image_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "NEURALSTYLE_IMAGE_DIR": str(image_dir), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "neuralstyle.apply", "model=arbitrary", f"input={photos}",
         f"output={out}", "style=[great_wave,starry_night]", "style_weights=[3,1]",
         "strength=0.8", "preserve_colors=null", "progress=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(p.name for p in out.iterdir())
    assert written == ["cat.png", "cup.png"]
    assert [Path(line).name for line in proc.stdout.split()] == written
    for name, shape in (("cat.png", (40, 56, 3)), ("cup.png", (36, 36, 3))):
        result = load_image(out / name)
        assert result.shape == shape  # same size out as in
        photo = load_image(photos / name.replace("cup.png", "cup.jpg"))
        assert np.abs(result - photo).mean() > 0.02  # it is stylized, not copied
