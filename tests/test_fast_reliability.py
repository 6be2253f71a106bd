"""Reliability of training and applying feed-forward networks: apply never writes over a photo,
the exported model follows the newest checkpoint, a refused resume leaves the run's record alone,
a changed data folder is refused with what changed, one training per run directory at a time, and
training needs nothing from the network beyond its data folder and style file."""

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from PIL import Image
from test_fast_data import make_photo_folder
from test_fast_train import SIZE, cli, compose_train, small_objective

from neuralstyle.errors import ConfigError
from neuralstyle.fast import (
    Stylizer,
    get_params,
    load_transform,
    photo_batches,
    stylize_files,
    train,
    transform_net,
)
from neuralstyle.recipe import compose


@pytest.fixture(scope="module")
def net():
    return transform_net(width=4, residual_blocks=1, seed=0)


@pytest.fixture(scope="module")
def objective():
    from neuralstyle import VGG

    return small_objective(VGG("vgg16", weights=None, seed=0))


@pytest.fixture(scope="module")
def style():
    return np.random.default_rng(1).random((SIZE, SIZE, 3), np.float32)


def _photo(path: Path, colour=(200, 30, 30), size=(20, 12)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


# ----------------------------------------------------------------------------- 1. apply's outputs

def test_apply_into_the_input_folder_never_writes_over_a_photo(net, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, colour in (("cat.png", (200, 30, 30)), ("cat.jpg", (30, 200, 30)), ("dog.png", (9, 9, 9)),
                         ("owl.jpg", (30, 30, 200))):
        _photo(folder / name, colour)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    written = stylize_files(Stylizer(net), folder, folder)
    err = capsys.readouterr().err
    for name, data in before.items():  # every photo is as it was
        assert (folder / name).read_bytes() == data, name
    # cat.jpg and cat.png share a stem: each keeps its extension in its result's name; dog.png's
    # result would be dog.png itself: skipped, and said so; owl.jpg -> owl.png
    assert sorted(p.name for p in written) == ["cat.jpg.png", "cat.png.png", "owl.png"]
    assert "cat.jpg.png" in err and "cat.png.png" in err  # the renaming is said
    assert "skipped" in err and "dog.png" in err
    assert all(Image.open(p).size == (20, 12) for p in written)


def test_apply_leaves_files_it_did_not_write_and_replaces_its_own(net, tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    out.mkdir()
    _photo(photos / "a.jpg")
    _photo(photos / "b.jpg")
    mine = _photo(out / "b.png", (1, 2, 3))  # the user's own picture, not a result of ours
    data = mine.read_bytes()
    first = stylize_files(Stylizer(net), photos, out)
    assert [p.name for p in first] == ["a.png"] and mine.read_bytes() == data
    assert "b.png" in capsys.readouterr().err
    second = stylize_files(Stylizer(net), photos, out)  # a rerun replaces its own results
    assert [p.name for p in second] == ["a.png"]
    # a single input written onto itself is refused
    with pytest.raises(ConfigError, match="input"):
        stylize_files(Stylizer(net), photos / "a.jpg", photos / "a.jpg")
    assert (photos / "a.jpg").read_bytes() == (photos / "b.jpg").read_bytes()  # untouched


# ----------------------------------------------------------------------------- training helpers

def _train(objective, style, folder, out, steps, **kw):
    kw = {"checkpoint_every": 2, "validation_images": (), "log_every": 1, "progress": False,
          "fingerprint": {"test": 1}, **kw}
    batches, _ = photo_batches(folder, SIZE, batch_size=2, seed=0, num_threads=2)
    return train(transform_net(width=4, residual_blocks=1, seed=0), objective, style, batches,
                 optax.adam(2e-2), steps, out, **kw)


class Crash(Exception):
    pass


# ----------------------------------------------------------------------------- 4. model.keras

def test_the_exported_model_follows_the_newest_checkpoint(objective, style, image_dir, tmp_path,
                                                          monkeypatch):
    fast_train = importlib.import_module("neuralstyle.fast.training")

    folder = make_photo_folder(tmp_path / "photos", image_dir, per_photo=1)
    out = tmp_path / "run"
    export = fast_train.export_model

    def export_then_crash_at_step_2(transform, params, path):
        if len(list((out / "checkpoints").glob("2"))):
            raise Crash  # the checkpoint of step 2 is saved, its export never happens
        return export(transform, params, path)

    monkeypatch.setattr(fast_train, "export_model", export_then_crash_at_step_2)
    with pytest.raises(Crash):
        _train(objective, style, folder, out, steps=2, checkpoint_every=1)
    monkeypatch.setattr(fast_train, "export_model", export)
    stale = get_params(load_transform(out / "model.keras"))  # the export of step 1
    result = _train(objective, style, folder, out, steps=2)  # nothing left to train
    assert result.metrics["steps"] == 2 and result.metrics["steps_this_run"] == 0
    exported = get_params(load_transform(out / "model.keras"))
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(stale),
                                                           jax.tree.leaves(result.params)))
    assert moved > 1e-4  # step 2 did change the weights
    for got, want in zip(jax.tree.leaves(exported), jax.tree.leaves(result.params)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- 6. data folder

def test_resume_refuses_a_changed_data_folder_and_says_what_changed(objective, style, image_dir,
                                                                    tmp_path):
    folder = make_photo_folder(tmp_path / "photos", image_dir, per_photo=2)  # 6 photos
    out = tmp_path / "run"
    _train(objective, style, folder, out, steps=2)
    for name in ("x.jpg", "y.jpg"):
        (folder / name).write_bytes((folder / "coffee_0.jpg").read_bytes())
    with pytest.raises(ConfigError, match=r"now has 8 training images, the run was started with 6: "
                                          r"2 added \(x\.jpg, y\.jpg\)"):
        _train(objective, style, folder, out, steps=4)
    for name in ("x.jpg", "y.jpg", "astronaut_0.jpg"):
        (folder / name).unlink()
    with pytest.raises(ConfigError, match=r"1 removed \(astronaut_0\.jpg\)"):
        _train(objective, style, folder, out, steps=4)


# ----------------------------------------------------------------------------- 7. the run lock

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("LOCKED", flush=True)
time.sleep(120)
"""


def test_a_second_training_in_the_same_directory_fails_at_once(objective, style, image_dir, tmp_path):
    folder = make_photo_folder(tmp_path / "photos", image_dir, per_photo=1)
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / "train.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        t0 = time.perf_counter()
        with pytest.raises(ConfigError, match=f"another training .*{out.resolve()}"):
            _train(objective, style, folder, out, steps=2)
        assert time.perf_counter() - t0 < 60  # does not wait for the other one
        assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    finally:
        holder.kill()
        holder.wait()
    result = _train(objective, style, folder, out, steps=1)  # the lock went with its process
    assert result.metrics["steps"] == 1


# ----------------------------------------------------------------------------- 14. offline defaults

def test_validation_photos_default_to_photos_held_out_of_the_data_folder(image_dir, tmp_path,
                                                                         monkeypatch):
    import neuralstyle.images.io as images
    from neuralstyle.train import train_from_config

    def offline(url, target, timeout=20.0):
        raise OSError("no network here")

    monkeypatch.setattr(images, "_download", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # no cached example images either
    folder = make_photo_folder(tmp_path / "photos", image_dir, per_photo=2, corrupt=1)
    style = tmp_path / "style.jpg"
    style.write_bytes((image_dir / "great_wave.jpg").read_bytes())
    empty = tmp_path / "no_images"
    empty.mkdir()
    cfg = compose_train(["+experiment=fast_wave", f"data.dir={folder}", f"image_dir={empty}",
                         f"style={style}", "size=16", "style_size=16", "steps=1",
                         "backbone.weights=null", "transform.width=4", "transform.residual_blocks=1",
                         "batch_size=2", "validation.size=16", "progress=false"])
    out = tmp_path / "run"
    train_from_config(cfg, out)
    metrics = json.loads((out / "metrics.json").read_text())
    # the first 3 decodable photos (sorted) are held out: broken_0.jpg sorts among them but is
    # not a photo, so it stays with the training files (where it is skipped)
    assert metrics["validation_images"] == ["astronaut_0.jpg", "astronaut_1.jpg", "chelsea_0.jpg"]
    assert metrics["training_images"] == 7 - 3
    assert sorted(p.name for p in (out / "validation").iterdir()) == [
        f"step_000001_{k}.png" for k in range(3)]
    assert Image.open(out / "validation" / "step_000001_0.png").size == (16, 12)  # 80x60 at 16 px


# ----------------------------------------------------------------------------- 5. refused resume

def test_a_refused_resume_leaves_the_runs_record_as_it_was(image_dir, tmp_path):
    from neuralstyle.train import train_from_config

    folder = make_photo_folder(tmp_path / "photos", image_dir, per_photo=1)
    args = [f"data.dir={folder}", f"image_dir={image_dir}", "size=16", "style_size=16", "steps=1",
            "backbone.weights=null", "transform.width=4", "transform.residual_blocks=1",
            "batch_size=2", "validation.images=[]", "progress=false"]
    out = tmp_path / "run"
    train_from_config(compose_train(["+experiment=fast_wave", *args]), out)
    record = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="different settings"):
        train_from_config(compose_train(["+experiment=fast_wave", *args, "style_weight=7"]), out)
    assert (out / "config.yaml").read_text() == record
    # Hydra itself writes nothing into the run directory before the check
    cfg = compose("train", ["+experiment=fast_wave"], return_hydra_config=True)
    assert cfg.hydra.output_subdir is None


@pytest.mark.slow
def test_cli_refused_resume_keeps_config_and_hydra_record(image_dir, tmp_path):
    folder = make_photo_folder(tmp_path / "photos", image_dir, per_photo=1)
    args = ["+experiment=fast_wave", f"data.dir={folder}", "size=16", "style_size=16", "steps=1",
            "backbone.weights=null", "transform.width=4", "transform.residual_blocks=1",
            "batch_size=2", "validation.images=[]", "name=rec"]
    proc = cli("neuralstyle.train", args, tmp_path, image_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "train" / "rec"
    files = ["config.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml"]
    record = {f: (run / f).read_bytes() for f in files}
    assert b"style_weight: 100.0" in record["config.yaml"]
    proc = cli("neuralstyle.train", [*args, "style_weight=7"], tmp_path, image_dir)
    assert proc.returncode == 2 and "different settings" in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "neuralstyle: error:" in line]
    assert {f: (run / f).read_bytes() for f in files} == record
