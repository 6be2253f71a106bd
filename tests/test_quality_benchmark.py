"""The quality benchmark (benchmarks/quality.py): its grid composes from the real configs, the
shared-program objective equals each configuration's own objective, the Pareto front is right, and
the one command writes its table, plot and contact sheet on a tiny 2x2 grid."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from benchmarks.quality import (
    compose_all,
    objective_for,
    ofat_grid,
    structure_key,
    summarize,
    tiny_grid,
    union_layers,
)
from benchmarks.quality_figures import nice_ticks
from neuralstyle import StyleObjective

REPO = Path(__file__).resolve().parents[1]


def test_ofat_grid_composes_and_covers_the_factors():
    variants = ofat_grid()
    configs = compose_all(variants, ["size=64", "steps=2", "backbone.weights=null"])
    assert variants[0].factor == "base" and configs[0].optimizer._target_.endswith("lbfgs")
    factors = {v.factor for v in variants}
    assert factors >= {"content_layer", "style_layers", "layer_weights", "style_weight", "gram_norm",
                       "optimizer"}
    ratios = sorted(float(c.style_weight) / float(c.content_weight) for c in configs)
    assert ratios[-1] / ratios[0] >= 1e4  # at least 4 decades of style/content weight ratio
    layer_sets = {tuple(c.style_layers) for c in configs}
    assert {("conv1_1",), ("conv1_1", "conv2_1", "conv3_1")} <= layer_sets
    assert {c.style_loss.normalization for c in configs} == {"hw", "chw"}
    assert len({structure_key(c) for c in configs}) == 2  # gram hw and gram chw
    assert len(tiny_grid()) == 4


def test_shared_objective_equals_each_configurations_objective(random_vgg19_avg):
    """Zero weights switch layers off exactly: same value and gradient as the config's own
    objective, from one compiled program for every configuration (the weights are leaves)."""
    variants = [v for v in ofat_grid() if v.factor in ("base", "content_layer", "style_layers",
                                                         "layer_weights")]
    configs = compose_all(variants, ["size=32", "backbone.weights=null", "style_weight=1"])
    union = lambda key: union_layers(configs, key, "vgg19")  # noqa: E731
    base = StyleObjective.build(random_vgg19_avg, content_layers=union("content_layers"),
                                style_layers=union("style_layers"))
    rng = np.random.default_rng(0)
    content, style, image = (jnp.asarray(rng.uniform(0, 1, (1, 32, 32, 3)), jnp.float32) for _ in range(3))
    value_and_grad = lambda objective: jax.jit(jax.value_and_grad(  # noqa: E731
        lambda p, x, t: objective(p, x, t)[0], argnums=1))  # compiled: eagerly, 600 small programs
    traces = []

    def shared(objective, p, x, t):
        traces.append(1)
        return jax.value_and_grad(lambda y: objective(p, y, t)[0])(x)

    shared_value_and_grad = jax.jit(shared)  # one program for every config
    targets = base.targets(base.params, content, style)
    checked = 0
    for cfg in configs:
        own = StyleObjective.build(
            random_vgg19_avg, content_layers=list(cfg.content_layers), style_layers=list(cfg.style_layers),
            style_layer_weights=list(cfg.style_layer_weights) if not isinstance(
                cfg.style_layer_weights, str) else cfg.style_layer_weights,
            content_weight=float(cfg.content_weight), style_weight=float(cfg.style_weight),
            tv_weight=float(cfg.tv_weight))
        configured = objective_for(cfg, base)
        assert sum(configured.style_layer_weights) == pytest.approx(
            sum(own.style_layer_weights), rel=1e-6)
        own_targets = own.targets(own.params, content, style)
        want_value, want_grad = value_and_grad(own)(own.params, image, own_targets)
        got_value, got_grad = shared_value_and_grad(configured, base.params, image, targets)
        np.testing.assert_allclose(got_value, want_value, rtol=1e-5)
        np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-6 * float(jnp.abs(want_grad).max()))
        checked += 1
    assert checked == 6 and len(traces) == 1
    # unused layers really are off: the conv1-only configuration weights only conv1_1
    conv1 = objective_for(configs[[v.level for v in variants].index("conv1")], base)
    names = union("style_layers")
    assert len(names) == 5 and len(union("content_layers")) == 2
    assert dict(zip(names, conv1.style_layer_weights))["block1_conv1"] == 1.0
    assert sum(conv1.style_layer_weights) == 1.0


def test_pareto_front_and_means():
    rows = []
    points = {0: [(0.1, 0.9), (0.3, 0.7)], 1: [(0.3, 0.5), (0.5, 0.3)], 2: [(0.5, 0.8), (0.5, 0.8)],
              3: [(0.6, 0.2), (0.6, 0.2)], -1: [(0.0, 1.0), (0.0, 1.2)]}
    for config, values in points.items():
        for lp, sw in values:
            rows.append(dict(config=config, factor="f", level=str(config), name=str(config),
                             overrides="", calibrated=False, style_weight=1.0, lpips=lp, swd=sw,
                             gram=2 * sw))
    summary = {e["config"]: e for e in summarize(rows)}
    assert summary[0]["lpips"] == pytest.approx(0.2) and summary[0]["swd"] == pytest.approx(0.8)
    assert summary[0]["lpips_sd"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    # (0.2, 0.8), (0.4, 0.4), (0.5, 0.8), (0.6, 0.2): config 2 is dominated by 1; the reference
    # (the unstylized photo) is not a configuration and never on the front
    assert [summary[c]["pareto"] for c in (0, 1, 2, 3, -1)] == [True, True, False, True, False]


def test_nice_ticks():
    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0.013, 0.047) == pytest.approx([0.02, 0.03, 0.04])


@pytest.mark.slow
def test_quality_benchmark_tiny_end_to_end(tmp_path, image_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.quality", "--tiny", "--image-dir", str(image_dir),
         "--jax-cache", str(tmp_path / "jax-cache"), "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "quality.csv") as f:
        rows = list(csv.DictReader(f))
    # 2x2 grid on 1 photo x 2 paintings, plus the unstylized photo per pair as reference
    assert len(rows) == 4 * 2 + 2
    runs = [r for r in rows if int(r["config"]) >= 0]
    assert {r["painting"] for r in runs} == {"great_wave", "starry_night"}
    assert all(float(r["lpips"]) > 0 and float(r["swd"]) > 0 and int(r["steps"]) == 2 for r in runs)
    assert all(float(r["lpips"]) == 0 for r in rows if int(r["config"]) < 0)
    report = json.loads((tmp_path / "quality.json").read_text())
    assert report["pairs_done"] == 2 and len(report["summary"]) == 5
    assert any(e["pareto"] for e in report["summary"])
    md = (tmp_path / "quality.md").read_text()
    assert "machine:" in md and "command: `python -m benchmarks.quality --tiny" in md
    assert md.count("| tiny=sw") == 4
    for name in ("quality_tradeoff.png", "quality_contact_sheet.png"):
        with Image.open(tmp_path / name) as im:
            assert im.width > 300 and im.height > 200
