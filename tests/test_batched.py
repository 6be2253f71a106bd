"""Batched sweeps: N settings through one compiled vmapped step equal N sequential stylize runs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from neuralstyle import (
    ConfigError, LBFGS, StyleObjective, sliced_wasserstein_loss, stylize, stylize_batched,
)
from neuralstyle.optim import evaluate

from conftest import SMALL_LAYERS as LAYERS  # noqa: E402


@pytest.fixture(scope="module")
def objective(small_objective):
    return small_objective


@pytest.fixture(scope="module")
def pair(small_pair):
    return small_pair


def _targets(objective, pair):
    c, s = pair
    return objective.targets(objective.params, jnp.asarray(c)[None], jnp.asarray(s)[None])


def test_traced_weights_equal_python_floats(random_vgg19_avg, objective, pair):
    """The objective passed through jit (weights traced leaves) equals one built with them."""
    built = StyleObjective.build(random_vgg19_avg, content_weight=2.0, style_weight=5e-3,
                                 tv_weight=0.5, **LAYERS)
    x = jnp.asarray(pair[0][::-1].copy())[None]
    targets = _targets(objective, pair)
    traced = jax.jit(evaluate)
    total, terms = traced(objective.with_weights(content_weight=2.0, style_weight=5e-3, tv_weight=0.5),
                          objective.params, x, targets)
    ref_total, ref_terms = built(built.params, x, targets)
    assert float(total) == pytest.approx(float(ref_total), rel=1e-6)
    for k in ("content", "style", "tv"):
        assert float(terms[k]) == pytest.approx(float(ref_terms[k]), rel=1e-6)
    # the original is untouched and with_weights gives a plain copy
    assert objective.style_weight == 1e-3
    assert objective.with_weights(style_weight=0.1).style_weight == 0.1
    assert objective.with_weights(tv_weight=2).tv_weight == 2.0 and isinstance(
        objective.with_weights(tv_weight=2).tv_weight, float)


def test_with_weights_rejects_unknown_names(objective):
    with pytest.raises(ConfigError, match="styleweight"):
        objective.with_weights(styleweight=1.0)


WEIGHTS = [
    {"style_weight": 1e-3},
    {"style_weight": 1e-1, "tv_weight": 0.0},
    {"content_weight": 10.0, "style_weight": 1e-2, "tv_weight": 3.0},
]


def _sequential(objective, pair, settings, seeds, init, steps, opt):
    return [stylize(objective.with_weights(**w), pair[0], pair[1], opt, steps=steps, init=init,
                    seed=s, progress=False) for w, s in zip(settings, seeds)]


# Equality between a batched and a sequential run is checked with plain gradient descent: its update
# is proportional to the gradient, so the rounding differences of a batch-N convolution (which
# differ between AVX2 and AVX-512 CPUs) stay rounding-sized.  Adam's first steps divide the gradient
# by its own magnitude and can turn a rounding-level gradient into a full-size pixel change.
PROPORTIONAL = optax.sgd(0.05)


def test_batched_weights_equal_sequential_runs(objective, pair):
    opt = PROPORTIONAL
    batched = stylize_batched(objective, pair[0], pair[1], weights=WEIGHTS, optimizer=opt,
                              steps=4, progress=False)
    sequential = _sequential(objective, pair, WEIGHTS, [0, 0, 0], "content", 4, opt)
    assert batched.images.shape == (3, 32, 40, 3)
    for k, ref in enumerate(sequential):
        np.testing.assert_allclose(batched.images[k], ref.image, atol=2e-5)
        run = batched.runs[k]
        assert run["final"]["total"] == pytest.approx(ref.metrics["final"]["total"], rel=1e-4)
        np.testing.assert_allclose(run["history"], ref.metrics["history"], rtol=1e-4)
        for t in ("content", "style", "tv"):
            assert run["final"][t] == pytest.approx(ref.metrics["final"][t], rel=1e-4, abs=1e-6)
        assert run["non_finite_step"] is None
    assert batched.runs[1]["weights"] == {"content_weight": 1.0, "style_weight": 0.1, "tv_weight": 0.0}
    # the settings really differ: different weights, different results
    assert np.abs(batched.images[0] - batched.images[1]).max() > 1e-3


def test_batched_seeds_equal_sequential_runs_with_noise_and_stochastic_loss(random_vgg19_avg, pair):
    objective = StyleObjective.build(random_vgg19_avg, content_weight=1.0, style_weight=1.0,
                                     tv_weight=0.1, style_loss=sliced_wasserstein_loss(8), **LAYERS)
    opt = PROPORTIONAL
    seeds = [0, 7]
    batched = stylize_batched(objective, pair[0], pair[1], seeds=seeds, optimizer=opt, steps=3,
                              init="noise", progress=False)
    sequential = _sequential(objective, pair, [{}] * 2, seeds, "noise", 3, opt)
    for k, ref in enumerate(sequential):
        np.testing.assert_allclose(batched.images[k], ref.image, atol=2e-5)
        np.testing.assert_allclose(batched.runs[k]["history"], ref.metrics["history"], rtol=1e-4)
        assert batched.runs[k]["seed"] == seeds[k]
    assert np.abs(batched.images[0] - batched.images[1]).max() > 1e-2


@pytest.mark.slow
def test_batched_lbfgs_equals_sequential_runs(objective, pair):
    opt = LBFGS(memory_size=5)
    sequential = _sequential(objective, pair, WEIGHTS, [0, 0, 0], "content", 4, opt)
    # one run: the same arithmetic as stylize, bit for bit
    single = stylize_batched(objective, pair[0], pair[1], weights=WEIGHTS[:1], optimizer=opt,
                             steps=4, progress=False)
    np.testing.assert_array_equal(single.images[0], sequential[0].image)
    batched = stylize_batched(objective, pair[0], pair[1], weights=WEIGHTS, optimizer=opt,
                              steps=4, progress=False)
    assert batched.metrics["optimizer"] == "LBFGS"
    evaluations = []
    for k, ref in enumerate(sequential):
        run = batched.runs[k]
        assert run["steps"] == ref.metrics["steps"] == 4
        assert run["function_evaluations"] == ref.metrics["function_evaluations"]
        evaluations.append(run["function_evaluations"])
        np.testing.assert_allclose(run["history"], ref.metrics["history"], rtol=1e-4)
        # the batch-3 convolutions round differently; L-BFGS steps amplify it to ~1e-3 of the
        # ~0.7 the pixels moved
        np.testing.assert_allclose(batched.images[k], ref.image, atol=2e-3)
    # the per-run line search was exercised: some runs rejected a unit step (an evaluation more
    # than 1 + steps), others did not
    assert max(evaluations) > 5 and min(evaluations) == 5
    assert np.abs(batched.images[0] - batched.images[1]).max() > 1e-2


def test_one_trace_for_all_runs(objective, pair, objective_traces):
    calls = objective_traces
    weights = [{"style_weight": w} for w in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)]
    result = stylize_batched(objective, pair[0], pair[1], weights=weights, steps=3, progress=False)
    # one trace of the vmapped step and one of the final evaluation, for all 5 runs and 3 steps;
    # under vmap each trace sees one run's (1, H, W, 3) image
    assert calls == [(1, 32, 40, 3), (1, 32, 40, 3)]
    assert result.metrics["runs"] == 5 and len(result.runs) == 5


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "weights=.*or seeds="),
    (dict(weights=[]), "non-empty list"),
    (dict(weights={"style_weight": 1.0}), "non-empty list"),
    (dict(weights=[{"style": 1.0}]), r"weights\[0\] has unknown key.*'style'"),
    (dict(weights=[{"style_weight": "big"}]), r"weights\[0\].style_weight must be a number"),
    (dict(weights=[{"tv_weight": float("nan")}]), "finite"),
    (dict(weights=[{"tv_weight": -1.0}]), ">= 0"),
    (dict(weights=[{}, {}], seeds=[1]), "2 settings but seeds has 1"),
    (dict(seeds=[0.5]), "integers"),
    (dict(seeds=[0], steps=-1), "steps must be"),
    (dict(seeds=[0], optimizer="adam"), "optax GradientTransformation"),
    (dict(seeds=[0], init=np.zeros((8, 8, 3), np.float32)), "initial image 0 has shape"),
    (dict(seeds=[0, 1], init=[np.zeros((32, 40, 3), np.float32)]), "init has 1 images for 2 runs"),
])
def test_bad_input(objective, pair, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        stylize_batched(objective, pair[0], pair[1], progress=False, **kwargs)


def test_too_small_image_is_a_config_error(objective, pair):
    with pytest.raises(ConfigError, match="content image"):
        stylize_batched(objective, pair[0][:1, :1], pair[1], seeds=[0], progress=False)


# --------------------------------------------------------------------------- command line


def _compose(overrides):
    from neuralstyle.recipe import compose

    return compose("run_batched", overrides)


TINY_CLI = ["size=32", "steps=2", "backbone.weights=null", "progress=false",
            "content_layers=[conv2_2]", "style_layers=[conv1_1,conv2_1]"]


def test_cli_sweep_writes_one_result_per_setting(image_dir, tmp_path):
    import json

    from neuralstyle.run_batched import run_batched_from_config
    from neuralstyle.images import load_image

    cfg = _compose(["+experiment=vgg19_wave", f"image_dir={image_dir}", *TINY_CLI,
                    "batch.style_weight=[1e-3,1e-1]", "batch.seed=[3,4]", "init=noise"])
    losses = run_batched_from_config(cfg, tmp_path)
    summary = json.loads((tmp_path / "batch.json").read_text())
    assert [r["weights"]["style_weight"] for r in summary["runs"]] == [1e-3, 1e-1]
    assert [r["seed"] for r in summary["runs"]] == [3, 4] and summary["runs"][1]["final_loss"] == losses[1]
    for k in range(2):
        metrics = json.loads((tmp_path / f"run_{k:02d}" / "metrics.json").read_text())
        assert metrics["steps"] == 2 and metrics["final"]["total"] == losses[k]
        assert load_image(tmp_path / f"run_{k:02d}" / "result.png").shape[:2] == (32, 32)
    assert (tmp_path / "config.yaml").is_file()


@pytest.mark.parametrize("batch, match", [
    ([], "at least one list under batch"),
    (["batch.style_weight=1e-3"], "must be a non-empty list"),
    (["batch.style_weight=[1e-3,1e-2]", "batch.seed=[1]"], "same length"),
    (["+batch.stile_weight=[1]"], "unknown key.*stile_weight"),
])
def test_cli_bad_batch(image_dir, tmp_path, batch, match):
    from neuralstyle.run_batched import run_batched_from_config

    cfg = _compose([f"image_dir={image_dir}", *TINY_CLI, *batch])
    with pytest.raises(ConfigError, match=match):
        run_batched_from_config(cfg, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written
