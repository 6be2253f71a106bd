"""The Hydra entry: every experiment composes and runs; the CLI writes its outputs; bad input
gives one clear error line and leaves no result behind."""

import json
import os
import subprocess
import sys

import pytest
from test_sweeps import has_plugin

from neuralstyle import ConfigError, ImageError, LayerError, NonFiniteLossError
from neuralstyle.recipe import compose, config_dir
from neuralstyle.run import run_from_config

EXPERIMENTS = sorted(p.stem for p in (config_dir("run") / "experiment").glob("*.yaml"))
# experiments that select a Hydra plugin compose only where it is installed (the [test] extra has it)
NEEDS_PLUGIN = {"sweep_optuna": "hydra_plugins.hydra_optuna_sweeper"}


def experiment_param(name: str):
    plugin = NEEDS_PLUGIN.get(name)
    if plugin is None or has_plugin(plugin):
        return name
    reason = f"{plugin} not installed (pip install -e '.[test]')"
    return pytest.param(name, marks=pytest.mark.skip(reason=reason))


MIN_SIZE = {"mrf_starry": 64, "style_scale": 64, "pyramid": 128, "print_4096": 128}  # patches; half-size style; 3 levels
EXTRA = {"pyramid": ["pyramid.steps=[1,1,0]"],  # 2 steps in all
         # 64 -> 128 px, the 128 px scale tiled by 64 px tiles
         "print_4096": ["pyramid.start_size=64", "pyramid.steps=[1,1]", "tile.size=64"]}
# XLA's convolution: a 2-step run at 32 px only compiles, and the Winograd layers of conv=auto
# (block3_conv2 on) add about 1.4 s to each step's compile (3.5 s against 2.1 s; they pay back
# from about the 15th step: 34 against 134 ms per step; AMD EPYC, benchmarks.winograd --sizes 32).
# These 18 experiments took 85-92 s instead of 108-131 s (-n 2).  The Winograd path is tested in
# test_winograd.py, and the CLI test below runs the default conv=auto.
TINY = ["size=32", "steps=2", "backbone.weights=null", "snapshot_every=1", "progress=false", "backbone.conv=xla"]


def compose_config(overrides):
    return compose("run", overrides)


def test_known_experiments_are_present():
    assert {"vgg19_wave", "gatys2016", "vgg16_v1"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", [experiment_param(e) for e in EXPERIMENTS])
def test_every_experiment_composes_and_runs_two_steps(experiment, image_dir, tmp_path):
    size = MIN_SIZE.get(experiment, 32)
    cfg = compose_config([f"+experiment={experiment}", f"image_dir={image_dir}", *TINY, f"size={size}",
                          *EXTRA.get(experiment, [])])
    loss = run_from_config(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["final"]["total"] == pytest.approx(loss)
    assert max(metrics["image_size"]) == size
    assert (tmp_path / f"result.{cfg.output.format}").is_file() and (tmp_path / "config.yaml").is_file()
    assert len(list((tmp_path / "snapshots").rglob("step_*.png"))) == 2
    if cfg.tile.size is not None:
        assert metrics["levels"][-1]["tile"]["tiles"] > 1  # the last scale really was tiled


def test_experiment_recipes_hold_their_papers_values():
    wave = compose_config(["+experiment=vgg19_wave"])
    assert (wave.content_weight, wave.style_weight, wave.tv_weight) == (1e4, 1e-2, 30.0)
    assert (wave.optimizer.learning_rate, wave.optimizer.b1, wave.optimizer.eps) == (0.02, 0.99, 0.1)
    assert wave.content_layers == ["block5_conv2"] and len(wave.style_layers) == 5
    gatys = compose_config(["+experiment=gatys2016"])
    assert gatys.backbone.pooling == "avg" and gatys.optimizer._target_.endswith("lbfgs")
    assert gatys.content_layers == ["conv4_2"] and gatys.style_loss.normalization == "paper"
    v1 = compose_config(["+experiment=vgg16_v1"])
    assert v1.backbone.arch == "vgg16" and v1.size == 224 and v1.init.kind == "noise"
    assert v1.optimizer.learning_rate == pytest.approx(10 / 255)


def test_overrides_reach_the_components(image_dir, tmp_path):
    cfg = compose_config([f"image_dir={image_dir}", *TINY, "optimizer=lbfgs", "init=noise",
                          "style_loss.normalization=paper", "backbone.pooling=avg",
                          "style_layers=[relu1_1,relu2_1]", "style_layer_weights=[0.7,0.3]"])
    run_from_config(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["optimizer"] == "LBFGS"
    assert metrics["backbone"]["pooling"] == "avg"
    assert metrics["backbone"]["layers"] == ["block5_conv2", "block1_conv1", "block2_conv1"]


@pytest.mark.parametrize("overrides,error,pattern", [
    (["content=/no/such/photo.jpg"], ImageError, "content: image '/no/such/photo.jpg' not found"),
    (["style=/etc/hostname"], ImageError, "style: .*not an image"),
    (["style_layers=[conv1_1,conv9_9]"], LayerError, "conv9_9"),
    (["style_loss.normalization=bogus"], ConfigError, "style_loss: .*bogus"),
    (["init=file"], Exception, "path"),
    (["optimizer=adam", "optimizer.learning_rate=nan"], NonFiniteLossError, "non-finite at step 1"),
    (["style_loss=mrf", "style_layers=[relu5_1]"], ConfigError, "3x3 patches need feature maps"),
    (["style=[great_wave,starry_night]", "style_blend_weights=[1]"], ConfigError, "one per style image"),
    (["preserve_colors=sepia"], ConfigError, "preserve_colors"),
    (["style_scale=0.25"], ConfigError, r"style image .*great_wave\.jpg at style_scale=0.25 is 8x4 px, but the layers .* need at least 16 px"),
    (["optimizer=adam", "optimizer.learning_rate=fast"], ConfigError, "could not compile the update step"),
])
def test_bad_input_raises_clearly_and_writes_no_result(overrides, error, pattern, image_dir, tmp_path):
    cfg = compose_config([f"image_dir={image_dir}", *TINY, *overrides])
    with pytest.raises(error, match=pattern):
        run_from_config(cfg, tmp_path)
    assert not (tmp_path / "result.png").exists()
    assert not (tmp_path / "metrics.json").exists()
    assert not list(tmp_path.rglob("*.partial"))


def test_non_finite_keeps_last_finite_image(image_dir, tmp_path):
    cfg = compose_config([f"image_dir={image_dir}", *TINY, "optimizer=adam", "optimizer.learning_rate=nan"])
    with pytest.raises(NonFiniteLossError) as info:
        run_from_config(cfg, tmp_path)
    assert info.value.last_good_step == 0
    assert (tmp_path / "last_finite.png").is_file()
    # the NaN image of step 1 is never written as a snapshot (snapshot_every=1)
    assert not list(tmp_path.rglob("step_*.png"))


# ----------------------------------------------------------------------------- the real CLI

def cli(args, cwd, image_dir):
    env = {**os.environ, "NEURALSTYLE_IMAGE_DIR": str(image_dir)}
    return subprocess.run([sys.executable, "-m", "neuralstyle.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_flagship_writes_outputs_and_prints_result_path(image_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = cli(["+experiment=vgg19_wave", "size=32", "steps=3", "backbone.weights=null",
                "snapshot_every=2", f"hydra.run.dir={run_dir}"], tmp_path, image_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str((run_dir / "result.png").resolve())
    assert "stylize" in proc.stderr and "loss=" in proc.stderr  # the progress bar
    for name in ("result.png", "metrics.json", "config.yaml", "snapshots/step_00002.png",
                 ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("final", "steps", "wall_time_s", "time_per_step_s", "compile_time_s",
                "image_size", "backbone"):
        assert key in metrics
    assert metrics["experiment"] == "vgg19_wave" and metrics["steps"] == 3


def test_cli_multirun_sweeps_one_directory_each(image_dir, tmp_path):
    proc = cli(["-m", "style_weight=1e-3,1e-1", "size=32", "steps=1", "backbone.weights=null",
                "backbone.conv=xla", "progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
               tmp_path, image_dir)
    assert proc.returncode == 0, proc.stderr
    runs = sorted(p.parent for p in (tmp_path / "sweep").rglob("metrics.json"))
    assert len(runs) == 2
    styles = sorted(float(next(line.split(": ")[1] for line in (r / "config.yaml").read_text().splitlines()
                               if line.startswith("style_weight:"))) for r in runs)
    assert styles == [1e-3, 1e-1]


@pytest.mark.parametrize("args,pattern", [
    (["+experiment=no_such_recipe"], "no_such_recipe"),
    (["no_such_key=1"], "no_such_key"),
    (["content=/no/such/photo.jpg"], "neuralstyle: error: content: image '/no/such/photo.jpg' not found"),
])
def test_cli_bad_input_gives_a_clear_error(args, pattern, image_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = cli([*args, "size=32", "steps=1", "backbone.weights=null", f"hydra.run.dir={run_dir}"],
               tmp_path, image_dir)
    assert proc.returncode != 0
    assert pattern in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "result.png").exists()
