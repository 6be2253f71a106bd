"""Sweeps beyond one run: Hydra multirun over config keys, the Optuna sweeper minimizing what
``neuralstyle.run.main`` returns, and the Slurm (submitit) and Ray launcher configs.

The plugins are an optional extra (``pip install -e '.[sweep]'``, ``'.[ray]'``); the tests that
need one skip, naming it, where it is not installed."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.errors import HydraException

from neuralstyle.recipe import compose

REPO = Path(__file__).resolve().parents[1]
# small and fast: random weights, 32 px, layers from the first two blocks only
TINY = ["backbone.weights=null", "size=32", "steps=2", "snapshot_every=0", "progress=false",
        "content_layers=[conv2_2]", "style_layers=[conv1_1,conv2_1]"]


def has_plugin(module: str) -> bool:
    """Whether ``hydra_plugins.<name>`` is importable (the namespace itself may be missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def multirun(args, sweep_dir, image_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "neuralstyle.run", "-m", *args, f"hydra.sweep.dir={sweep_dir}",
         "hydra.sweep.subdir=${hydra.job.num}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NEURALSTYLE_IMAGE_DIR": str(image_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def job_metrics(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]


@pytest.mark.slow
def test_multirun_sweeps_group_list_and_number_keys(tmp_path, image_dir):
    """A config group (optimizer), a list (style_layers) and a number (style_weight) sweep alike."""
    multirun([*TINY, "optimizer=adam,sgd", "style_layers=[conv1_1],[conv1_1,conv2_1]",
              "style_weight=1e-3"], tmp_path, image_dir)
    jobs = job_metrics(tmp_path)
    seen = {(m["optimizer_config"]["_target_"], tuple(m["backbone"]["layers"])) for m in jobs}
    assert len(jobs) == 4 and len(seen) == 4
    assert {target for target, _ in seen} == {"optax.adam", "optax.sgd"}
    for job in tmp_path.iterdir():
        if (job / "config.yaml").is_file():
            assert yaml.safe_load((job / "config.yaml").read_text())["style_weight"] == 1e-3


@pytest.mark.slow
@pytest.mark.skipif(not has_plugin("hydra_plugins.hydra_optuna_sweeper"),
                    reason="hydra-optuna-sweeper not installed (pip install -e '.[sweep]')")
def test_optuna_sweep_minimizes_the_returned_loss(tmp_path, image_dir):
    multirun(["+experiment=sweep_optuna", *TINY, "hydra.sweeper.n_trials=3"], tmp_path, image_dir)
    jobs = job_metrics(tmp_path)
    assert len(jobs) == 3
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    losses = [m["final"]["total"] for m in jobs]
    # the sweeper saw what main returned: the best value is the lowest final loss of the trials
    assert results["best_value"] == pytest.approx(min(losses), rel=1e-6)
    best = jobs[losses.index(min(losses))]["optimizer_config"]
    assert best["learning_rate"] == pytest.approx(results["best_params"]["optimizer.learning_rate"])
    assert 0.002 <= best["learning_rate"] <= 0.2 and 0.8 <= best["b1"] <= 0.999
    assert len({m["optimizer_config"]["learning_rate"] for m in jobs}) == 3  # three different trials


def compose_launcher(name: str, *overrides):
    return compose("run", [f"hydra/launcher={name}", *overrides], return_hydra_config=True)


@pytest.mark.parametrize("name, plugin", [("slurm", "hydra_plugins.hydra_submitit_launcher"),
                                          ("ray_cluster", "hydra_plugins.hydra_ray_launcher")])
def test_launcher_config_needs_its_plugin(name, plugin):
    """Without the plugin, composing the launcher fails naming the plugin's missing config."""
    if has_plugin(plugin):
        pytest.skip(f"{plugin} is installed")
    with pytest.raises(HydraException, match="submitit_slurm|ray"):
        compose_launcher(name)


@pytest.mark.skipif(not has_plugin("hydra_plugins.hydra_submitit_launcher"),
                    reason="hydra-submitit-launcher not installed (pip install -e '.[sweep]')")
def test_slurm_launcher_config_composes():
    cfg = compose_launcher("slurm", "hydra.launcher.partition=gpu")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 60)
    assert launcher.array_parallelism == 64 and "signal_delay_s" in launcher  # the plugin's schema
    assert cfg.style_weight == 1e-2  # the job's config is untouched


@pytest.mark.skipif(not has_plugin("hydra_plugins.hydra_ray_launcher"),
                    reason="hydra-ray-launcher not installed (pip install -e '.[ray]')")
def test_ray_launcher_config_composes(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    cfg = compose_launcher("ray_cluster")
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert cfg.hydra.launcher.ray.init.address == "ray://head:10001"
    assert cfg.hydra.launcher.ray.remote.num_cpus == 4
