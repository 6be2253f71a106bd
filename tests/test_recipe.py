"""The recipe layer: every option of every config group instantiates; one function builds a run."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from neuralstyle import ConfigError, StyleObjective
from neuralstyle.recipe import InitSpec, RunParts, build_run, compose, config_root, instantiate_node

GROUPS = ("backbone", "optimizer", "style_loss", "content_loss", "tv_loss", "init")


def compose_config(entry="run", overrides=()):
    return compose(entry, overrides)


def options(group):
    return sorted(p.stem for p in (config_root() / "components" / group).glob("*.yaml"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_of_every_group_instantiates(group, option):
    overrides = [f"{group}={option}"]
    if group == "backbone":
        overrides.append("backbone.weights=null")
    if group == "init" and option == "file":
        overrides.append("init.path=photo.png")
    node = compose_config(overrides=overrides)[group]
    assert "_target_" in node, f"conf/{group}/{option}.yaml has no _target_"
    assert instantiate_node(node, group) is not None


def test_init_group_decodes_to_one_spec():
    noise = instantiate_node(compose_config(overrides=["init=noise"]).init, "init")
    assert noise == InitSpec("noise", 0.5, 0.25, None)
    content = np.random.default_rng(0).random((16, 16, 3), np.float32)
    a, b = noise.image(content, content, seed=3), noise.image(content, content, seed=3)
    np.testing.assert_array_equal(a, b)
    assert abs(float(a.mean()) - 0.5) < 0.05
    np.testing.assert_array_equal(InitSpec("content").image(content, content, 0), content)
    with pytest.raises(ConfigError, match="unknown init kind 'nois'"):
        InitSpec("nois")
    with pytest.raises(ConfigError, match=r"^init: .*path"):
        instantiate_node(compose_config(overrides=["init=file"]).init, "init")


def test_build_run_gives_every_part(image_dir):
    cfg = compose_config(overrides=[f"image_dir={image_dir}", "size=32", "backbone.weights=null",
                                    "style_layers=[conv1_1]", "content_layers=[conv2_2]",
                                    "preserve_colors=luminance"])
    parts = build_run(cfg)
    assert isinstance(parts, RunParts) and isinstance(parts.objective, StyleObjective)
    assert parts.content.shape == (32, 32, 3) and parts.content_path.name == "astronaut.png"
    assert parts.initial_image(0).shape == parts.content.shape
    assert parts.finish(parts.content).shape == (32, 32, 3)
    assert parts.objective.style_layers == ("block1_conv1",)


def test_batch_lists_belong_to_the_batched_entry_only():
    assert "batch" not in compose_config()
    batched = compose_config("run_batched", ["+experiment=vgg19_wave", "batch.seed=[1,2]"])
    assert OmegaConf.to_container(batched.batch.seed) == [1, 2]
    assert batched.style_weight == compose_config(overrides=["+experiment=vgg19_wave"]).style_weight
