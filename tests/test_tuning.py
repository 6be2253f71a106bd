"""Per-machine tuning (neuralstyle.tuning, python -m neuralstyle.tune): the cached record, what
each choice switches, that every choice computes the same function, and a bad file never stops a
run.  Times are measured but never asserted (which path wins is the machine's business); the
assertions are that the record's choices follow the measured times."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from neuralstyle import tuning
from neuralstyle.backbones.vgg import AUTO_WINOGRAD_MIN_CHANNELS, VGG, winograd_layers
from neuralstyle.errors import ConfigError
from neuralstyle.fast import xla as fast_xla


def record(winograd=((256, 256),), step="xla", fast="xla") -> dict:
    return {"format": tuning.FORMAT, "winograd_channels": [list(p) for p in winograd],
            "step_conv_backend": step, "fast_conv_backend": fast}


@pytest.fixture
def tuning_file(tmp_path, monkeypatch):
    path = tmp_path / "tuning.json"
    monkeypatch.setenv(tuning.TUNING_ENV, str(path))
    return path


def conv_channels(model) -> dict:
    return {layer.name: tuple(layer.kernel.shape[2:]) for layer in model.layers
            if isinstance(layer, keras.layers.Conv2D)}


def test_the_test_session_sees_no_user_tuning():
    # conftest points NEURALSTYLE_TUNING_FILE at a file that does not exist, so every other test
    # runs with the fixed rule whatever the machine running it has cached
    assert not tuning.tuning_file().exists()
    assert tuning.load_tuning() is None


def test_tuning_file_location(monkeypatch, tmp_path):
    monkeypatch.delenv(tuning.TUNING_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tuning.tuning_file() == tmp_path / "neuralstyle" / "tuning.json"
    monkeypatch.setenv(tuning.TUNING_ENV, "~/x.json")
    assert tuning.tuning_file() == tmp_path.home() / "x.json"


def test_machine_key_follows_the_fingerprint():
    fp = tuning.machine_fingerprint()
    assert {"cpu", "isa", "cores", "backend", "jaxlib"} <= set(fp)
    assert set(fp["isa"]) <= set(tuning.ISA_FLAGS)
    assert tuning.machine_key(fp) == tuning.machine_key(dict(fp)) == tuning.machine_key()
    other = dict(fp, isa=[f for f in fp["isa"] if f != "avx512f"] if "avx512f" in fp["isa"] else ["avx512f"])
    assert tuning.machine_key(other) != tuning.machine_key(fp)


def test_save_load_forget_round_trip_keeps_other_machines(tuning_file):
    tuning_file.write_text(json.dumps({"another-machine": record(fast="eigen")}))
    assert tuning.load_tuning() is None
    tuning.save_tuning(record(step="eigen"))
    loaded = tuning.load_tuning()
    assert loaded["step_conv_backend"] == "eigen"
    data = json.loads(tuning_file.read_text())
    assert set(data) == {"another-machine", tuning.machine_key()}
    assert [p.name for p in tuning_file.parent.iterdir()] == ["tuning.json"]  # no temporary file left
    assert tuning.forget_tuning() is True
    assert tuning.load_tuning() is None
    assert tuning.forget_tuning() is False
    assert set(json.loads(tuning_file.read_text())) == {"another-machine"}


def test_a_bad_record_is_refused_when_saved(tuning_file):
    with pytest.raises(ConfigError, match="not a format-1 tuning record"):
        tuning.save_tuning(record(step="fast"))
    assert not tuning_file.exists()


@pytest.mark.parametrize("text, warning", [
    ("{not json", "ignoring the tuning file"),
    ("[1, 2]", "ignoring the tuning file"),
    (None, "not a format-1 record"),
])
def test_an_unusable_file_warns_naming_it_and_falls_back(tuning_file, text, warning, random_vgg19):
    if text is None:
        text = json.dumps({tuning.machine_key(): {"format": 99}})
    tuning_file.write_text(text)
    with pytest.warns(UserWarning, match=warning) as caught:
        assert tuning.load_tuning() is None
    assert str(tuning_file) in str(caught[0].message)
    model = random_vgg19.model  # the warning is given once per file version
    auto = winograd_layers(model, "auto", platform="cpu")  # the fixed rule applies
    assert auto == {n for n, c in conv_channels(model).items() if min(c) >= AUTO_WINOGRAD_MIN_CHANNELS}


def test_auto_uses_the_tuned_channel_pairs(tuning_file, random_vgg19):
    model = random_vgg19.model
    channels = conv_channels(model)
    tuning.save_tuning(record(winograd=[(64, 128), (512, 512)]))
    assert winograd_layers(model, "auto", platform="cpu") == {
        n for n, c in channels.items() if c in {(64, 128), (512, 512)}}
    assert {"block2_conv1", "block5_conv1"} <= winograd_layers(model, "auto", platform="cpu")
    # what the user asks for explicitly, reduced precision, and other platforms are not tuned
    assert winograd_layers(model, "xla") == set()
    assert winograd_layers(model, "winograd") == set(channels)
    assert winograd_layers(model, "auto", precision="bfloat16", platform="cpu") == set()
    assert winograd_layers(model, "auto", platform="gpu") == set()
    tuning.save_tuning(record(winograd=[]))
    assert winograd_layers(model, "auto", platform="cpu") == set()


def test_step_and_feed_forward_options_follow_the_tuning(tuning_file):
    eigen = fast_xla.compiler_options("eigen")
    assert tuning.step_compiler_options() is None  # no tuning: XLA's defaults
    assert fast_xla.resolve_conv_backend("auto") == fast_xla.UNTUNED_CONV_BACKEND == "eigen"
    tuning.save_tuning(record(step="eigen", fast="xla"))
    assert tuning.step_compiler_options() == eigen
    assert fast_xla.resolve_conv_backend("auto") == "xla"
    assert fast_xla.compiler_options("auto") is None
    assert fast_xla.resolve_conv_backend("eigen") == "eigen"  # explicit choices stay
    tuning.save_tuning(record(step="xla", fast="eigen"))
    assert tuning.step_compiler_options() is None
    assert fast_xla.compiler_options("auto") == eigen
    with pytest.raises(ConfigError, match="conv_backend must be one of"):
        fast_xla.resolve_conv_backend("fastest")


def test_driver_compiles_with_the_tuned_options_and_the_same_result(tuning_file, driver_problem, monkeypatch):
    """The optimization programs compiled under a tuning that picks the Eigen convolutions get its
    compiler options and give the same loss and gradient as XLA's defaults (float32 summation
    order only)."""
    from neuralstyle.optim import driver

    eigen = fast_xla.compiler_options("eigen")
    if eigen is None:
        pytest.skip("this XLA has no Eigen-convolution option")
    objective, targets, content = driver_problem
    image = jnp.asarray(content)[None]

    def value_and_grad(x):
        return jax.value_and_grad(lambda y: objective(objective.params, y, targets)[0])(x)

    options, real_jit = [], jax.jit
    monkeypatch.setattr(jax, "jit", lambda fn, **kw: options.append(kw.get("compiler_options")) or real_jit(fn, **kw))
    default = driver.compile_ahead(value_and_grad, image)
    assert options == [None]
    tuning.save_tuning(record(step="eigen"))
    tuned = driver.compile_ahead(value_and_grad, image)
    assert options[-1] == eigen
    (loss_a, grad_a), (loss_b, grad_b) = default(image), tuned(image)
    assert abs(float(loss_b) / float(loss_a) - 1) < 1e-5
    scale = float(jnp.max(jnp.abs(grad_a)))
    assert scale > 0 and float(jnp.max(jnp.abs(grad_b - grad_a))) < 1e-4 * scale


def test_extractor_takes_an_explicit_winograd_set(random_vgg19):
    backbone = random_vgg19
    layers = ["conv1_1", "conv2_1", "conv4_1"]
    chosen = backbone.extractor(layers, winograd=["block2_conv1", "block4_conv1"])
    plain = backbone.extractor(layers, winograd=[])
    assert chosen.winograd == ("block2_conv1", "block4_conv1") and plain.winograd == ()
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 36, 40, 3)).astype(np.float32))
    a, b = chosen.apply(chosen.params, x), plain.apply(plain.params, x)
    for name in a:
        assert float(jnp.max(jnp.abs(a[name] - b[name]))) <= 1e-5 * float(jnp.max(jnp.abs(b[name])))
    with pytest.raises(ConfigError, match="float32 only"):
        VGG("vgg19", weights=None, precision="bfloat16").extractor(layers, winograd=["block2_conv1"])


def test_winograd_pairs_total_each_channel_pair_over_its_layers():
    rows = [{"layers": ["block1_conv2"], "cin": 64, "cout": 64, "xla_ms": 1.0, "winograd_ms": 2.0},
            {"layers": ["block4_conv2", "block4_conv3", "block4_conv4"], "cin": 512, "cout": 512,
             "xla_ms": 4.0, "winograd_ms": 3.0},
            {"layers": ["block5_conv1", "block5_conv2"], "cin": 512, "cout": 512,
             "xla_ms": 1.0, "winograd_ms": 2.0},  # 3 x 4 + 2 x 1 = 14 ms against 3 x 3 + 2 x 2 = 13
            {"layers": ["block3_conv1"], "cin": 128, "cout": 256, "xla_ms": 2.0, "winograd_ms": 1.0}]
    assert tuning.winograd_pairs(rows) == [(128, 256), (512, 512)]
    rows[2]["winograd_ms"] = 3.0  # now 15 ms against 14
    assert tuning.winograd_pairs(rows) == [(128, 256)]


def test_tune_decides_by_the_measured_times(monkeypatch):
    """tune()'s record follows the times it measured (fake timings: which path wins on the machine
    running the tests is not asserted)."""
    layer_times = {(64, 64): (1.0, 2.0), (128, 256): (3.0, 1.0)}
    monkeypatch.setattr(tuning, "time_conv_layer", lambda side, cin, cout, repeats: {
        "xla_ms": layer_times.get((cin, cout), (1.0, 5.0))[0],
        "winograd_ms": layer_times.get((cin, cout), (1.0, 5.0))[1], "relative_error": 0.0})
    seen = {}

    def fake_gradient(size, pairs, repeats):
        seen["pairs"] = list(pairs)
        return {"xla_ms": 10.0, "eigen_ms": 9.0}

    monkeypatch.setattr(tuning, "time_vgg_gradient", fake_gradient)
    monkeypatch.setattr(tuning, "time_fast_apply", lambda size, repeats: {"xla_ms": 1.0, "eigen_ms": 2.0})
    lines = []
    rec = tuning.tune(size=64, fast_size=32, repeats=1, log=lines.append)
    assert tuning._valid(rec) and rec["machine"] == tuning.machine_fingerprint()
    assert rec["winograd_channels"] == [[128, 256]] and seen["pairs"] == [(128, 256)]
    assert rec["step_conv_backend"] == "eigen" and rec["fast_conv_backend"] == "xla"
    assert [r["layers"][0] for r in rec["measured"]["layers"]][:2] == ["block1_conv1", "block1_conv2"]
    assert len(lines) == len(rec["measured"]["layers"]) + 2


@pytest.mark.slow
def test_tune_measures_on_this_machine(tuning_file, random_vgg19):
    """The real measurement on tiny sizes: the two paths of every layer compute the same, the
    record is valid and follows its own measured times, and saving it switches ``auto``."""
    rec = tuning.tune(size=32, fast_size=32, repeats=1, log=lambda m: None)
    layers = rec["measured"]["layers"]
    assert all(r["relative_error"] < 1e-4 for r in layers)
    assert all(r["xla_ms"] > 0 and r["winograd_ms"] > 0 for r in layers)
    assert rec["winograd_channels"] == [list(p) for p in tuning.winograd_pairs(layers)]
    assert rec["step_conv_backend"] == tuning.faster(rec["measured"]["step"], "xla")
    assert rec["fast_conv_backend"] == tuning.faster(rec["measured"]["fast"], "eigen")
    tuning.save_tuning(rec)
    model = random_vgg19.model
    assert winograd_layers(model, "auto", platform="cpu") == {
        n for n, c in conv_channels(model).items() if list(c) in rec["winograd_channels"]}


def test_faster_and_bad_arguments():
    assert tuning.faster({"xla_ms": 2.0, "eigen_ms": 1.0}) == "eigen"
    assert tuning.faster({"xla_ms": 1.0, "eigen_ms": 2.0}) == "xla"
    assert tuning.faster({"xla_ms": 1.0, "eigen_ms": None}) == "xla"
    # a path that could not be measured (failed to compile) is never chosen
    assert tuning.faster({"xla_ms": 1.0, "eigen_ms": None}, "eigen") == "xla"


def test_a_choice_within_the_margin_keeps_the_fixed_rule():
    """Measured differences of a few percent (timing noise on a shared machine) do not move a
    choice away from the fixed rule; larger ones do, in either direction."""
    assert tuning.MARGIN == 0.03
    # the Xeon's VGG19 gradient: 291 ms default, 287 ms Eigen (1.4%): stays with the default
    assert tuning.faster({"xla_ms": 291.0, "eigen_ms": 287.0}, "xla") == "xla"
    assert tuning.faster({"xla_ms": 291.0, "eigen_ms": 280.0}, "xla") == "eigen"
    assert tuning.faster({"xla_ms": 98.0, "eigen_ms": 100.0}, "eigen") == "eigen"
    assert tuning.faster({"xla_ms": 90.0, "eigen_ms": 100.0}, "eigen") == "xla"
    assert tuning.faster({"xla_ms": 291.0, "eigen_ms": 287.0}, "xla", margin=0.0) == "eigen"

    def row(cin, cout, xla, wino):
        return {"layers": ["l"], "cin": cin, "cout": cout, "xla_ms": xla, "winograd_ms": wino}

    # below the rule's 256 channels Winograd must win clearly; from 256 on XLA must
    assert tuning.winograd_pairs([row(128, 128, 10.0, 9.8)]) == []
    assert tuning.winograd_pairs([row(128, 128, 10.0, 9.0)]) == [(128, 128)]
    assert tuning.winograd_pairs([row(256, 256, 9.8, 10.0)]) == [(256, 256)]
    assert tuning.winograd_pairs([row(256, 256, 9.0, 10.0)]) == []
    with pytest.raises(ConfigError, match="size and fast_size must be >= 16"):
        tuning.tune(size=8)


def test_cli_show_and_a_bad_size(tuning_file):
    env = dict(os.environ, **{tuning.TUNING_ENV: str(tuning_file)})

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "neuralstyle.tune", *args], capture_output=True,
                              text=True, env=env, timeout=300)

    shown = cli("--show")
    assert shown.returncode == 0 and "no tuning for this machine" in shown.stdout
    tuning.save_tuning(record(winograd=[(256, 512)], step="eigen"))
    shown = cli("--show")
    assert shown.returncode == 0 and "256->512" in shown.stdout and "optimization programs: eigen" in shown.stdout
    assert str(tuning_file) in shown.stdout
    bad = cli("--size", "8", "--dry-run")
    assert bad.returncode == 2 and "size and fast_size must be >= 16" in bad.stderr
