"""Training the arbitrary-style network (Ghiasi et al. 2017) with the feed-forward training loop:
tiny folders of 64 px photos and style images, a random-weight VGG16 loss network with shallow
layers, the ported weights as the start (quarter width)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from neuralstyle import VGG, StyleObjective, content_loss, gram_loss
from neuralstyle.arbitrary import ArbitraryStylizer, load_arbitrary
from neuralstyle.errors import ConfigError
from neuralstyle.fast import perceptual_loss, photo_batches, style_statistics, train
from neuralstyle.fast.arbitrary_training import arbitrary_network
from neuralstyle.fast.data import ContentStyleBatches
from neuralstyle.recipe import compose

SIZE = 64
PHOTOS = ("astronaut", "chelsea", "coffee")
STYLES = ("great_wave", "starry_night", "the_scream")


def _square_jpegs(folder, image_dir, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = next(image_dir.glob(f"{name}.*"))
        with Image.open(source) as im:
            im.convert("RGB").resize((SIZE, SIZE)).save(folder / f"{name}.jpg", quality=95)
    return folder


def _image(path):
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


@pytest.fixture(scope="module")
def folders(image_dir, tmp_path_factory):
    """3 photos and 2 style images of 64 x 64 px (the random crop is the whole image), plus a third
    style image kept aside."""
    base = tmp_path_factory.mktemp("arbitrary_data")
    return dict(photos=_square_jpegs(base / "photos", image_dir, PHOTOS),
                styles=_square_jpegs(base / "styles", image_dir, STYLES[:2]),
                extra=_square_jpegs(base / "extra", image_dir, STYLES[2:]), base=base)


@pytest.fixture(scope="module")
def objective():
    """Magenta's loss terms (content "mean", Gram "hw", summed layers) on shallow layers of a
    random-weight VGG16 with average pooling."""
    return StyleObjective.build(VGG("vgg16", weights=None, seed=0, pooling="avg"),
                                content_layers=["conv2_2"], style_layers=["conv1_2", "conv2_2"],
                                content_layer_weights="sum", style_layer_weights="sum",
                                content_weight=1.0, style_weight=1e-3, tv_weight=1e-3,
                                content_loss=content_loss("mean"), style_loss=gram_loss("hw"))


def _batches(folders, styles=None):
    photos, _ = photo_batches(folders["photos"], SIZE, batch_size=2, seed=0, num_threads=2)
    style, _ = photo_batches(styles or folders["styles"], SIZE, batch_size=2, seed=1, num_threads=2,
                             key="style_data.dir")
    return ContentStyleBatches(photos, style)


def _network(folders):
    return arbitrary_network(init="pretrained", validation_styles=[_image(folders["extra"] / "the_scream.jpg")])


def _train(folders, objective, out, steps, callback=None, styles=None, network=None, **kw):
    network = network or _network(folders)
    result = train(network, objective, None, _batches(folders, styles), optax.adam(1e-3), steps, out,
                   checkpoint_every=2, validation_images=[_image(folders["photos"] / "chelsea.jpg")],
                   validation_every=0, log_every=1, progress=False, callback=callback,
                   fingerprint={"test": 1}, **kw)
    return result, network


@pytest.fixture(scope="module")
def reference(folders, objective):
    """An uninterrupted 4-step run from the ported weights."""
    out = folders["base"] / "run"
    network = _network(folders)
    initial = network.initial_params()  # (exports assign the trained weights to the models)
    result, _ = _train(folders, objective, out, steps=4, network=network)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return dict(result=result, network=network, out=out, initial=initial, log=log)


def test_training_lowers_the_loss_writes_checkpoints_validation_and_the_export(reference, folders, objective):
    result, network, out = reference["result"], reference["network"], reference["out"]
    batch = {"content": jnp.asarray(np.stack([_image(folders["photos"] / f"{n}.jpg") for n in PHOTOS[1:]])),
             "style": jnp.asarray(np.stack([_image(folders["styles"] / f"{n}.jpg") for n in STYLES[:2]]))}
    loss = jax.jit(lambda params: network.loss(objective, objective.params, {}, params, batch)[0])
    assert float(loss(result.params)) < float(loss(reference["initial"]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and np.isfinite(metrics["final"]["loss"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2", "4"]
    assert (out / "validation" / "step_000004_0_style0.png").is_file()  # photo 0 in style 0
    assert result.model_path == out / "model"
    assert {p.name for p in result.model_path.iterdir()} == {"style_predictor.keras", "style_transformer.keras"}
    # the predictor's trunk is frozen (Magenta's mobile recipe), its embedding layer trained
    assert all(np.array_equal(a, b) for a, b in zip(result.params.non_trainable["predictor"],
                                                    reference["initial"].non_trainable["predictor"]))
    assert len(result.params.trainable["predictor"]) == 2  # embedding kernel and bias
    assert not np.allclose(result.params.trainable["predictor"][0], reference["initial"].trainable["predictor"][0])


def test_pretrained_start_is_the_ported_model_and_the_first_loss_is_on_its_output(reference, folders, objective):
    """Before any update the network is the ported model (ArbitraryStylizer), and the loss that
    the first training step reported is the paper's loss of that model's stylization of the first
    batch, each photo against its own style image."""
    batch = next(_batches(folders))  # the reference run's first batch (same seeds)
    assert not np.array_equal(batch["style"][0], batch["style"][1])  # two different styles
    ported = ArbitraryStylizer()
    want = ported.stylize(np.asarray(batch["content"]), ported.embed(np.asarray(batch["style"]), resize_style=False))
    got = reference["network"].stylize(reference["initial"], batch["content"], batch["style"])
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    targets = style_statistics(objective, objective.params, batch["style"])
    expected, _ = perceptual_loss(objective, objective.params, jnp.asarray(want), batch["content"], targets)
    assert reference["log"][0]["step"] == 1
    assert reference["log"][0]["loss"] == pytest.approx(float(expected), rel=1e-4)


def test_an_interrupted_run_resumes_at_its_checkpoint_and_ends_where_the_reference_did(reference, folders,
                                                                                       objective, tmp_path):
    out = tmp_path / "run"

    def crash_at_3(step, metrics):
        if step == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(folders, objective, out, steps=4, callback=crash_at_3)
    result, _ = _train(folders, objective, out, steps=4)
    assert result.metrics["resumed_from"] == 2 and result.metrics["steps_this_run"] == 2
    for got, want in zip(jax.tree.leaves(result.params), jax.tree.leaves(reference["result"].params)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_a_changed_style_folder_is_refused_like_a_changed_photo_folder(reference, folders, objective, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference["out"] / "checkpoints", out / "checkpoints")
    styles = tmp_path / "styles"
    shutil.copytree(folders["styles"], styles)
    shutil.copy(folders["extra"] / "the_scream.jpg", styles)
    with pytest.raises(ConfigError, match=r"style_data.dir now has 3 training images.*1 added \(the_scream.jpg\)"):
        _train(folders, objective, out, steps=6, styles=styles)
    assert sorted(os.listdir(out)) == ["checkpoints", "train.lock"]  # nothing else written


def test_the_exported_pair_stylizes_like_the_trained_network(reference, folders, tmp_path, image_dir):
    result, network = reference["result"], reference["network"]
    photo, style = _image(folders["photos"] / "coffee.jpg"), _image(folders["styles"] / "great_wave.jpg")
    want = np.asarray(network.stylize(result.params, jnp.asarray(photo)[None], jnp.asarray(style)[None]))[0]
    loaded = ArbitraryStylizer(*load_arbitrary(result.model_path))
    got = loaded.stylize(photo, loaded.embed(style, resize_style=False))
    np.testing.assert_allclose(got, want, atol=1e-5)

    from neuralstyle.apply import apply_from_config

    cfg = compose("apply", ["model=arbitrary", f"weights={result.model_path}", f"input={folders['photos'] / 'coffee.jpg'}",
                            f"style={folders['styles'] / 'great_wave.jpg'}", f"style_size={SIZE}",
                            f"output={tmp_path / 'out.png'}", "progress=false", f"image_dir={image_dir}"])
    apply_from_config(cfg, tmp_path)
    assert np.abs(_image(tmp_path / "out.png") - want).max() <= 1 / 255 + 1e-6  # 8-bit PNG of the same


def _cfg(overrides):
    return compose("train", ["+experiment=arbitrary_quarter", "progress=false", *overrides])


def test_missing_or_empty_style_folders_and_pretrained_full_width_are_refused_before_anything_is_written(
        folders, tmp_path):
    from neuralstyle.train import train_from_config

    run = tmp_path / "run"
    data = f"data.dir={folders['photos']}"
    with pytest.raises(ConfigError, match="style_data.dir is required"):
        train_from_config(_cfg([data]), run)
    with pytest.raises(ConfigError, match=f"style_data.dir: {tmp_path / 'missing'} is not a folder"):
        train_from_config(_cfg([data, f"style_data.dir={tmp_path / 'missing'}"]), run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=f"style_data.dir: {tmp_path / 'empty'} holds no image files"):
        train_from_config(_cfg([data, f"style_data.dir={tmp_path / 'empty'}"]), run)
    with pytest.raises(ConfigError, match="arbitrary.init=pretrained.*transform.width=8"):
        train_from_config(_cfg([data, f"style_data.dir={folders['styles']}", "transform.width=32"]), run)
    assert not run.exists()


def test_arbitrary_recipes_hold_magentas_values():
    for name, width, init, trunk in (("arbitrary_quarter", 8, "pretrained", False),
                                     ("arbitrary_full", 32, "scratch", True)):
        cfg = compose("train", [f"+experiment={name}"])
        assert (cfg.model, cfg.transform.width, cfg.arbitrary.init, cfg.arbitrary.train_trunk) == (
            "arbitrary", width, init, trunk)
        assert (cfg.size, cfg.style_size, cfg.batch_size, cfg.optimizer.learning_rate) == (256, 256, 8, 1e-5)
        assert (cfg.backbone.arch, cfg.backbone.weights, cfg.backbone.pooling) == ("vgg16", "torchvision", "avg")
        assert list(cfg.content_layers) == ["conv3_3"] and cfg.content_weight == 1.0
        assert list(cfg.style_layers) == ["conv1_2", "conv2_2", "conv3_3", "conv4_3"]
        # Magenta's 0.5e-3 per layer and TV 1e4 on the Caffe VGG16, carried over to torchvision's
        # VGG16 by benchmarks/arbitrary_calibration.py (55.4 and 4.49e-7 measured)
        assert cfg.style_layer_weights == "sum" and cfg.style_weight == pytest.approx(55.4, rel=0.02)
        assert cfg.tv_weight == pytest.approx(4.49e-7, rel=0.02)


def test_full_width_from_scratch_builds_the_papers_transformer():
    network = arbitrary_network(width=32, init="scratch", seed=0)
    params = network.initial_params()
    widths = [k.shape[-1] for k in params.trainable["transformer"] if k.ndim == 4][:3]
    assert widths == [32, 64, 128]
    assert len(params.non_trainable["predictor"]) == 0  # from scratch the trunk trains too
    out = network.stylize(params, jnp.full((1, 32, 40, 3), 0.5), jnp.full((1, 32, 32, 3), 0.25))
    assert out.shape == (1, 32, 40, 3) and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.slow
def test_cli_trains_arbitrary_quarter_and_apply_uses_the_export(folders, image_dir, tmp_path):
    from test_fast_train import cli

    args = ["+experiment=arbitrary_quarter", f"data.dir={folders['photos']}", f"style_data.dir={folders['styles']}",
            "steps=2", f"size={SIZE}", f"style_size={SIZE}", "batch_size=2", "backbone.weights=null",
            "validation.holdout=1", "validation.size=48", "checkpoint_every=1"]
    proc = cli("neuralstyle.train", args, tmp_path, image_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "train" / "arbitrary_quarter"
    assert proc.stdout.strip().splitlines()[-1] == str((run / "model").resolve())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["model"] == "arbitrary"
    assert metrics["validation_images"] == ["astronaut.jpg"] and metrics["validation_styles"] == ["great_wave.jpg"]
    assert (run / "validation" / "step_000002_0_style0.png").is_file()
    proc = cli("neuralstyle.apply", ["model=arbitrary", f"weights={run / 'model'}", "style=the_scream",
                                     f"input={folders['photos'] / 'coffee.jpg'}", "output=styled.png",
                                     "hydra.run.dir=apply"], tmp_path, image_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Image.open(tmp_path / "styled.png").size == (SIZE, SIZE)


@pytest.mark.slow
def test_training_benchmark_runs_and_writes_its_tables(image_dir, tmp_path):
    """benchmarks/arbitrary_train.py on tiny settings (it measures; this only checks that it runs)."""
    from conftest import run_benchmark_quick

    run_benchmark_quick("benchmarks.arbitrary_train", image_dir, tmp_path)
    report = json.loads((tmp_path / "arbitrary_train.json").read_text())
    assert [r["width"] for r in report["rows"]] == [8, 32]
    assert all(r["flops_per_step"] > 0 and r["estimate"]["steps"] == 3_000_000 * 8 / 2 for r in report["rows"])
    assert "Magenta's schedule" in (tmp_path / "arbitrary_train.md").read_text()
