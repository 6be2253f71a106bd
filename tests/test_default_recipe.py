"""The default recipe of ``python -m neuralstyle.run`` and the benchmark that chose it."""

import json

import pytest

from benchmarks import default_recipe
from neuralstyle.recipe import compose


def test_the_default_is_lbfgs_over_scales_and_vgg19_wave_is_still_the_tutorial():
    default = compose("run", [])
    assert default.optimizer._target_.endswith("lbfgs")
    assert (default.steps, default.pyramid.start_size, default.pyramid.factor) == (100, 128, 2.0)
    assert default.average_decay is None
    wave = compose("run", ["+experiment=vgg19_wave"])
    assert wave.optimizer._target_ == "optax.adam"
    assert (wave.optimizer.learning_rate, wave.optimizer.b1, wave.optimizer.eps) == (0.02, 0.99, 0.1)
    assert (wave.size, wave.steps, wave.average_decay) == (512, 1000, None)
    assert wave.pyramid.levels == 1 and wave.pyramid.start_size is None and not wave.pyramid.warm_start
    # the objective is the same: only the optimization differs
    for key in ("content_layers", "style_layers", "content_weight", "style_weight", "tv_weight", "init"):
        assert default[key] == wave[key], key


@pytest.mark.parametrize("name", ["adain_stats_scream", "bn_stats_shipwreck", "histogram_starry",
                                  "mmd_gaussian_wave", "mrf_starry", "swd_starry", "wasserstein_wave",
                                  "gatys2016", "vgg16_v1", "sweep_optuna"])
def test_experiments_keep_their_own_optimizer_at_one_scale(name):
    cfg = compose("run", [f"+experiment={name}"])
    assert cfg.pyramid.start_size is None and cfg.pyramid.levels == 1, name
    expected = "lbfgs" if name == "gatys2016" else "optax.adam"
    assert cfg.optimizer._target_.endswith(expected), name


def test_equal_time_point_gives_the_tutorial_at_least_the_default_time():
    metrics = {"compile_time_s": 5.0, "history_elapsed_s": [0.0] + [0.5 * k for k in range(1, 41)]}
    # 5 + 0.5 k >= 12 first at k = 14; snapshots every 10 steps: step 20 (15 s)
    assert default_recipe.equal_time_step(metrics, 10, 12.0) == (20, 15.0)
    assert default_recipe.equal_time_step(metrics, 10, 100.0) == (40, 25.0)  # never: the last step


def test_smoke_run_writes_the_report(image_dir, tmp_path):
    rep = default_recipe.main([
        "--size", "48", "--steps", "2", "--tutorial-steps", "4", "--snapshot-every", "2",
        "--pairs", "1", "--weights", "null", "--metric-weights", "random", "--no-arbitrary",
        "--image-dir", str(image_dir), "--out", str(tmp_path)])
    names = [e["name"] for e in rep["summary"]]
    assert names[0].startswith("reference") and "default" in names
    assert any(n.endswith("equal time") for n in names)
    saved = json.loads((tmp_path / "default_recipe_48.json").read_text())
    assert set(saved["dominates"]) >= {"default"}
    for suffix in (".md", "_tradeoff.png", "_contact_sheet.png"):
        assert (tmp_path / f"default_recipe_48{suffix}").stat().st_size > 0
