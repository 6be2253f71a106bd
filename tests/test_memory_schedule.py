"""The optimization entries ask XLA for its memory-minimizing instruction order
(:func:`neuralstyle.entry.prefer_memory_minimizing_schedule`): the flag is added only where it is
safe, and it does lower the buffers of a VGG19 value-and-gradient program."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neuralstyle import entry

REPO = Path(__file__).resolve().parents[1]

PROGRAM_BUFFERS = """
import json, os, sys
from neuralstyle import entry
added = entry.prefer_memory_minimizing_schedule() if sys.argv[1] == "prefer" else False
import jax, jax.numpy as jnp
from neuralstyle import VGG, StyleObjective
objective = StyleObjective.build(VGG("vgg19", weights=None), content_layers=["block5_conv2"],
                                 style_layers=["block1_conv1", "block3_conv1", "block5_conv1"])
x = jnp.full((1, 96, 96, 3), 0.5)
targets = objective.targets(objective.params, x, x)
grad = jax.jit(jax.value_and_grad(lambda y: objective(objective.params, y, targets)[0]))
compiled = grad.lower(x).compile()
print(json.dumps({"added": added, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                  "temp": compiled.memory_analysis().temp_size_in_bytes}))
"""


def _buffers(mode: str, extra_flags: str = "") -> dict:
    """The buffers of a small VGG19 value-and-gradient program compiled in a fresh process
    (``mode="prefer"``: after :func:`~neuralstyle.entry.prefer_memory_minimizing_schedule`), with
    this process's ``XLA_FLAGS`` (the test suite's) plus ``extra_flags``."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {extra_flags}".strip()
    proc = subprocess.run([sys.executable, "-c", PROGRAM_BUFFERS, mode], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_flag_lowers_a_vgg_gradient_programs_buffers():
    default, preferred = _buffers("default"), _buffers("prefer")
    assert not default["added"] and entry.MEMORY_SCHEDULER_FLAG not in default["xla_flags"]
    assert preferred["added"] and preferred["xla_flags"].endswith(entry.MEMORY_SCHEDULER_FLAG)
    assert preferred["temp"] < 0.85 * default["temp"]  # measured: 0.62x at 1024 px, about the same here


def test_a_users_own_choice_stands():
    mine = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    result = _buffers("prefer", mine)
    assert not result["added"] and result["xla_flags"].endswith(mine)
    assert entry.MEMORY_SCHEDULER_FLAG not in result["xla_flags"]


def test_not_after_jax_started_nor_on_unknown_jaxlib(monkeypatch):
    import jax

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    jax.devices()  # this test process's backend has started: the flag would come too late
    assert entry.prefer_memory_minimizing_schedule() is False
    assert "XLA_FLAGS" not in os.environ
    from jax._src import xla_bridge

    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setattr("importlib.metadata.version", lambda name: "0.13.0")  # not known to have it
    assert entry.prefer_memory_minimizing_schedule() is False and "XLA_FLAGS" not in os.environ
    monkeypatch.setattr("importlib.metadata.version", lambda name: "0.10.2")
    assert entry.prefer_memory_minimizing_schedule() is True
    assert os.environ["XLA_FLAGS"] == entry.MEMORY_SCHEDULER_FLAG


@pytest.mark.parametrize("setting, size, expected", [
    ("auto", 512, False), ("auto", 1024, True), ("auto", 2048, True), ("memory", 256, True),
    ("speed", 4096, False), (None, 512, False), (None, 1024, True), ("auto", "abc", False),
])
def test_cpu_schedule_picks_the_order_by_setting_and_size(setting, size, expected, monkeypatch):
    asked = []
    monkeypatch.setattr(entry, "prefer_memory_minimizing_schedule", lambda: asked.append(True) or True)
    cfg = {"size": size} if setting is None else {"size": size, "cpu_schedule": setting}
    assert entry.choose_cpu_schedule(cfg) is expected and bool(asked) is expected


def test_a_bad_cpu_schedule_is_a_config_error_on_the_command_line(tmp_path):
    from conftest import SHARED_IMAGES

    env = {**os.environ, "NEURALSTYLE_IMAGE_DIR": str(SHARED_IMAGES), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "neuralstyle.run", "cpu_schedule=fastest", "size=64", "steps=1",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cpu_schedule must be one of ['auto', 'memory', 'speed'], got 'fastest'" in proc.stderr
    assert not (tmp_path / "run" / "result.png").exists()
