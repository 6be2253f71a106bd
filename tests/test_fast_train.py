"""Training a feed-forward network: the loss against NumPy, the loss falls, kill-and-resume gives the
same parameters, two devices give what one gives, every fast_* recipe trains through the entry."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_fast_data import make_photo_folder

from neuralstyle import VGG, StyleObjective, content_loss, gram_loss
from neuralstyle.errors import ConfigError
from neuralstyle.fast import (
    apply_fn,
    get_params,
    init_state,
    make_train_step,
    perceptual_loss,
    photo_batches,
    style_statistics,
    train,
    transform_net,
)
from neuralstyle.recipe import compose, config_dir

REPO = Path(__file__).resolve().parents[1]
FAST_EXPERIMENTS = sorted(p.stem for p in (config_dir("train") / "experiment").glob("fast_*.yaml"))
SIZE = 16


@pytest.fixture(scope="module")
def vgg16():
    return VGG("vgg16", weights=None, seed=0)


def small_objective(vgg16, style_weight=1e-3, **kw):
    """The recipe's loss with shallow layers (fast to compile on random weights)."""
    return StyleObjective.build(vgg16, content_layers=["conv2_2"], style_layers=["conv1_2", "conv2_2"],
                                content_layer_weights="sum", style_layer_weights="sum",
                                content_weight=1.0, style_weight=style_weight, tv_weight=0.0,
                                content_loss=content_loss("mean"), style_loss=gram_loss("hw"), **kw)


def test_perceptual_loss_is_johnsons_loss_averaged_over_the_batch(vgg16):
    """content = ||phi(y^) - phi(y)||^2 / (CHW), style = ||G(y^) - G(y_s)||_F^2 with
    G = phi^T phi / (CHW) (Johnson et al. 2016, eq. 2-4), both averaged over the batch."""
    objective = small_objective(vgg16, style_weight=3.0)
    rng = np.random.default_rng(0)
    photos, stylized = rng.random((2, 2, 12, 10, 3), np.float32)
    style = rng.random((1, 14, 16, 3), np.float32)
    params = objective.params
    total, terms = perceptual_loss(objective, params, stylized, photos,
                                   style_statistics(objective, params, style))
    f = lambda x: {k: np.asarray(v, np.float64) for k, v in objective.extractor.apply(params, x).items()}  # noqa: E731
    fy, fp, fs = f(stylized), f(photos), f(style)
    gram = lambda a: np.einsum("bhwi,bhwj->bij", a, a) / np.prod(a.shape[1:])  # noqa: E731
    content = np.mean([np.mean((fy["block2_conv2"][b] - fp["block2_conv2"][b]) ** 2) for b in range(2)])
    style_term = np.mean([sum(np.sum((gram(fy[n][b:b + 1]) - gram(fs[n])) ** 2)
                              for n in ("block1_conv2", "block2_conv2")) for b in range(2)])
    np.testing.assert_allclose(float(terms["content"]), content, rtol=1e-4)
    np.testing.assert_allclose(float(terms["style"]), 3.0 * style_term, rtol=1e-4)
    np.testing.assert_allclose(float(total), content + 3.0 * style_term, rtol=1e-4)
    # no gradient reaches the content target: d/d(photos) of the loss is zero
    grad = jax.grad(lambda p: perceptual_loss(objective, params, stylized, p,
                                              style_statistics(objective, params, style))[0])(photos)
    assert float(jnp.abs(grad).max()) == 0.0


def test_the_train_step_takes_the_objective_and_does_not_retrace_for_new_weights(vgg16):
    """The loss objective is an argument of the compiled train step (its weights are pytree
    leaves): two style weights run through one trace, and each equals the loss computed eagerly."""
    net = transform_net(width=4, residual_blocks=1, seed=0)
    tx = optax.sgd(1e-3)
    traces = []
    step = make_train_step(net, tx)
    counting = jax.jit(lambda *args: (traces.append(1), step(*args))[1])
    rng = np.random.default_rng(1)
    batch = jnp.asarray(rng.random((2, SIZE, SIZE, 3), np.float32))
    style = jnp.asarray(rng.random((1, SIZE, SIZE, 3), np.float32))
    objective = small_objective(vgg16)
    params = objective.params
    statistics = style_statistics(objective, params, style)
    state = init_state(get_params(net), tx)
    stylized = apply_fn(net)(state.params, batch)
    for weight in (1e-3, 5.0):
        weighted = jax.tree.map(jnp.asarray, objective.with_weights(style_weight=weight))
        _, metrics = counting(weighted, state, params, statistics, batch)
        want, _ = perceptual_loss(objective.with_weights(style_weight=weight), params, stylized, batch,
                                  statistics)
        assert float(metrics["loss"]) == pytest.approx(float(want), rel=1e-5)
    assert len(traces) == 1


def _train(objective, style, folder, out, steps, callback=None, **kw):
    net = transform_net(width=4, residual_blocks=1, seed=0)
    batches, _ = photo_batches(folder, SIZE, batch_size=2, seed=0, num_threads=2)
    return train(net, objective, style, batches, optax.adam(2e-2), steps, out, checkpoint_every=2,
                 validation_images=(), log_every=1, progress=False, callback=callback,
                 fingerprint={"test": 1}, **kw), net


@pytest.fixture(scope="module")
def reference(vgg16, image_dir, tmp_path_factory):
    """An uninterrupted 6-step run on a tiny folder with a corrupt file."""
    base = tmp_path_factory.mktemp("fast_reference")
    folder = make_photo_folder(base / "photos", image_dir, per_photo=2, corrupt=1)
    objective = small_objective(vgg16)
    style = np.random.default_rng(1).random((SIZE, SIZE, 3), np.float32)
    result, net = _train(objective, style, folder, base / "run", steps=6)
    return dict(folder=folder, objective=objective, style=style, result=result, net=net, base=base)


def test_training_lowers_the_loss_on_a_fixed_batch(reference):
    objective, net = reference["objective"], reference["net"]
    photos = next(photo_batches(reference["folder"], SIZE, batch_size=4, seed=123)[0])
    stats = style_statistics(objective, objective.params, reference["style"][None])
    loss = jax.jit(lambda params: perceptual_loss(  # noqa: E731
        objective, objective.params, apply_fn(net)(params, photos), photos, stats)[0])
    initial = get_params(transform_net(width=4, residual_blocks=1, seed=0))
    assert float(loss(reference["result"].params)) < 0.8 * float(loss(initial))  # measured: 0.71
    metrics = reference["result"].metrics
    assert metrics["steps"] == 6 and metrics["skipped_files"] >= 1  # the corrupt file was skipped
    run = reference["base"] / "run"
    assert (run / "model.keras").is_file() and json.loads((run / "metrics.json").read_text())["steps"] == 6
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == list(range(1, 7))


class Crash(Exception):
    pass


def test_kill_and_resume_continues_at_the_saved_step_with_identical_parameters(reference, tmp_path):
    objective, style, folder = reference["objective"], reference["style"], reference["folder"]
    out = tmp_path / "run"

    def crash_at_3(step, metrics):
        if step == 3:
            raise Crash  # like a kill: step 3 is lost, the checkpoint of step 2 remains

    with pytest.raises(Crash):
        _train(objective, style, folder, out, steps=6, callback=crash_at_3)
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [2]

    def interrupt_at_5(step, metrics):
        if step == 5:
            raise KeyboardInterrupt  # Ctrl-C saves a checkpoint at the current step

    with pytest.raises(KeyboardInterrupt):
        _train(objective, style, folder, out, steps=6, callback=interrupt_at_5)
    result, _ = _train(objective, style, folder, out, steps=6)
    assert result.metrics["resumed_from"] == 5 and result.metrics["steps_this_run"] == 1
    for got, want in zip(jax.tree.leaves(result.params), jax.tree.leaves(reference["result"].params)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # nothing lost or repeated in the log
    # a different recipe is not resumed silently
    net = transform_net(width=4, residual_blocks=1, seed=0)
    batches, _ = photo_batches(folder, SIZE, batch_size=2)
    with pytest.raises(ConfigError, match="different settings"):
        train(net, objective, style, batches, optax.adam(2e-2), 8, out, fingerprint={"test": 2},
              progress=False)
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        train(net, objective, style, batches, optax.adam(2e-2), 8, out, resume=False, progress=False)


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_its_checkpoint(reference, tmp_path):
    from neuralstyle.fast import TrainingDivergedError

    net = transform_net(width=4, residual_blocks=1, seed=0)
    batches, _ = photo_batches(reference["folder"], SIZE, batch_size=2)
    # the loss of step 1 is taken before its update, so NaN shows at step 2
    with pytest.raises(TrainingDivergedError, match="non-finite by step 2 .*learning_rate.*no checkpoint was written"):
        train(net, reference["objective"], reference["style"], batches, optax.sgd(float("nan")), 3,
              tmp_path, log_every=1, progress=False)
    assert not (tmp_path / "model.keras").exists()
    assert not list((tmp_path / "checkpoints").glob("[0-9]*"))


DATA_PARALLEL = """
import os, sys, json
import numpy as np, jax, optax
from neuralstyle import VGG
sys.path.insert(0, {tests!r})
from test_fast_train import small_objective
from neuralstyle.fast import photo_batches, train, transform_net
assert len(jax.local_devices()) == 2, jax.local_devices()
objective = small_objective(VGG("vgg16", weights=None, seed=0))
style = np.random.default_rng(1).random(({size}, {size}, 3), np.float32)
out = {{}}
for n in (1, 2):
    batches, _ = photo_batches({folder!r}, {size}, batch_size=4, seed=0, num_threads=2)
    # plain SGD with a small step: Adam's first steps are ~lr * sign(gradient), which turns the
    # rounding differences of a split batch (the conv biases before an instance norm have
    # gradients that are pure rounding noise) into visible parameter differences
    result = train(transform_net(4, 1, seed=0), objective, style, batches, optax.sgd(1e-4), 2,
                   os.path.join({tmp!r}, str(n)), devices=jax.local_devices()[:n], log_every=1,
                   validation_images=(), progress=False)
    log = [json.loads(l) for l in open(os.path.join({tmp!r}, str(n), "log.jsonl"))]
    out[n] = ([e["loss"] for e in log], [np.asarray(x) for x in jax.tree.leaves(result.params)])
    print(n, result.metrics["devices"], out[n][0])
np.testing.assert_allclose(out[1][0], out[2][0], rtol=1e-5)
worst = max(float(np.abs(a - b).max()) for a, b in zip(out[1][1], out[2][1]))
moved = max(float(np.abs(a - b).max()) for a, b in zip(out[1][1], jax.tree.leaves(
    transform_net(4, 1, seed=0).get_weights())))
print("worst", worst, "moved", moved)
assert worst < 1e-3 * moved, (worst, moved)
print("MATCH")
"""


@pytest.mark.slow
def test_two_devices_train_like_one(reference, tmp_path):
    code = DATA_PARALLEL.format(tests=str(REPO / "tests"), size=SIZE, folder=str(reference["folder"]),
                                tmp=str(tmp_path))
    flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=2"]))
    env = {**os.environ, "XLA_FLAGS": flags, "KERAS_BACKEND": "jax"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MATCH" in proc.stdout and "cpu:1" in proc.stdout


# ----------------------------------------------------------------------------- the Hydra entry

def compose_train(overrides):
    return compose("train", overrides)


def test_fast_recipes_hold_the_papers_values():
    assert {"fast_wave", "fast_starry"} <= set(FAST_EXPERIMENTS)
    for name in FAST_EXPERIMENTS:
        cfg = compose_train([f"+experiment={name}"])
        assert (cfg.size, cfg.batch_size, cfg.epochs, cfg.steps) == (256, 4, 2, None)
        assert cfg.optimizer._target_ == "optax.adam" and cfg.optimizer.learning_rate == 1e-3
        assert (cfg.backbone.arch, cfg.backbone.weights) == ("vgg16", "torchvision")
        assert list(cfg.content_layers) == ["conv3_3"]
        assert list(cfg.style_layers) == ["conv1_2", "conv2_2", "conv3_3", "conv4_3"]
        assert cfg.content_weight == 1.0 and 50 <= cfg.style_weight <= 220 and cfg.tv_weight == 0.0
        assert (cfg.transform.width, cfg.transform.residual_blocks) == (32, 5)
        assert cfg.name == name
    cfg = compose("train", ["+experiment=fast_wave"], return_hydra_config=True)
    assert cfg.hydra.run.dir == "runs/train/fast_wave"  # no timestamp: the same command resumes


@pytest.mark.slow
@pytest.mark.parametrize("experiment", [e for e in FAST_EXPERIMENTS if e != "fast_wave"])
def test_every_fast_experiment_trains_two_steps(experiment, reference, image_dir, tmp_path):
    """(fast_wave runs through the command line below.)"""
    from neuralstyle.train import train_from_config

    cfg = compose_train([f"+experiment={experiment}", f"data.dir={reference['folder']}",
                         f"image_dir={image_dir}", "size=32", "steps=2", "backbone.weights=null",
                         "transform.width=4", "transform.residual_blocks=1", "style_size=32",
                         "validation.images=[astronaut]", "validation.size=24", "progress=false"])
    loss = train_from_config(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["final"]["loss"] == pytest.approx(loss)
    assert metrics["loss_network"]["layers"][0] == "block3_conv3"
    assert metrics["skipped_files"] >= 1  # the folder holds a corrupt file
    assert (tmp_path / "model.keras").is_file() and (tmp_path / "config.yaml").is_file()
    assert (tmp_path / "validation" / "step_000002_0.png").is_file()


def test_training_and_optimization_recipes_live_in_separate_trees():
    """A fast_* recipe cannot be composed under neuralstyle.run, nor an optimization recipe under
    neuralstyle.train: each entry has its own config tree (conf/run/, conf/train/)."""
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="experiment/fast_wave"):
        compose("run", ["+experiment=fast_wave"])
    with pytest.raises(MissingConfigException, match="experiment/vgg19_wave"):
        compose("train", ["+experiment=vgg19_wave"])
    # both trees share the component groups (conf/components/)
    assert compose("train", ["+experiment=fast_wave"]).backbone.arch == "vgg16"
    assert compose("run", ["+experiment=vgg19_wave"]).backbone.arch == "vgg19"


def test_training_without_a_data_folder_is_refused(tmp_path):
    from neuralstyle.train import train_from_config

    with pytest.raises(ConfigError, match="data.dir is required"):
        train_from_config(compose_train(["+experiment=fast_wave"]), tmp_path)


def cli(module, args, cwd, image_dir):
    env = {**os.environ, "NEURALSTYLE_IMAGE_DIR": str(image_dir), "KERAS_BACKEND": "jax"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_trains_fast_wave_resumes_and_applies(reference, image_dir, tmp_path):
    run_dir = tmp_path / "runs" / "train" / "fast_wave"
    args = ["+experiment=fast_wave", f"data.dir={reference['folder']}", "size=32", "style_size=32",
            "backbone.weights=null", "transform.width=4", "transform.residual_blocks=1",
            "validation.images=[]", "checkpoint_every=1", "batch_size=2", "steps=2"]
    proc = cli("neuralstyle.train", args, tmp_path, image_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str((run_dir / "model.keras").resolve())
    assert "img/s" in proc.stderr and "loss=" in proc.stderr  # the progress bar
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["skipped_files"] >= 1  # trained past a corrupt file
    model = run_dir / "model.keras"
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("coffee_1.jpg", "astronaut_0.jpg"):
        (photos / name).write_bytes((reference["folder"] / name).read_bytes())
    proc = cli("neuralstyle.apply", [f"model={model}", f"input={photos}", "output=styled",
                                     "preserve_colors=luminance", "hydra.run.dir=apply"], tmp_path, image_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from PIL import Image

    for name in ("coffee_1", "astronaut_0"):
        result = tmp_path / "styled" / f"{name}.png"
        assert str(result.resolve()) in proc.stdout
        assert Image.open(result).size == Image.open(photos / f"{name}.jpg").size

    # the same command again resumes in the same directory (here: nothing left to train)
    from neuralstyle.train import train_from_config

    cfg = compose_train([*args, f"image_dir={image_dir}", "progress=false"])
    train_from_config(cfg, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"] == 2 and metrics["steps_this_run"] == 0


def test_apply_entry_reports_bad_input_clearly(tmp_path):
    from neuralstyle.apply import apply_from_config

    missing = compose("apply", [f"model={tmp_path / 'missing.keras'}", "input=x.jpg"])
    no_input = compose("apply", ["model=m.keras"])
    colors = compose("apply", ["model=m.keras", "input=x.jpg", "preserve_colors=sepia"])
    with pytest.raises(ConfigError, match="missing.keras does not exist"):
        apply_from_config(missing, tmp_path)
    with pytest.raises(ConfigError, match="input= is required"):
        apply_from_config(no_input, tmp_path)
    with pytest.raises(ConfigError, match="preserve_colors"):
        apply_from_config(colors, tmp_path)
