"""Nothing lost, nothing run that should not run: bad values are refused before any heavy work,
a failing job does not end a sweep, the image is written before the record of success, Ctrl-C
keeps the current image, run directories cannot collide, files get the user's permissions."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from neuralstyle import ConfigError, ImageError, load_image
from neuralstyle.entry import CACHE_MIN_COMPILE_SECONDS, enable_compilation_cache
from neuralstyle.errors import Interrupted
from neuralstyle.images import atomic_write
from neuralstyle.recipe import compose, config_dir
from neuralstyle.run import run_from_config
from neuralstyle.optim import check_memory, estimate_memory_bytes

TINY = ["size=32", "steps=2", "backbone.weights=null", "snapshot_every=0", "progress=false",
        "style_layers=[conv1_1,conv2_1]", "content_layers=[conv2_2]"]
REPO = Path(__file__).resolve().parents[1]


def compose_config(overrides):
    return compose("run", overrides)


def cli(args, cwd, image_dir, timeout=600, module="neuralstyle.run"):
    env = {**os.environ, "NEURALSTYLE_IMAGE_DIR": str(image_dir), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- bad values (item 10)

@pytest.mark.parametrize("override, key", [
    ("size=0", "size"), ("size=-5", "size"), ("size=abc", "size"), ("size=1.5", "size"),
    ("steps=ten", "steps"), ("steps=-1", "steps"), ("style_scale=inf", "style_scale"),
    ("style_scale=0", "style_scale"), ("style_weight=nan", "style_weight"),
    ("snapshot_every=-2", "snapshot_every"), ("seed=x", "seed"), ("pyramid.levels=0", "pyramid.levels"),
])
def test_bad_values_name_their_key_before_any_work(override, key, image_dir, tmp_path):
    cfg = compose_config([f"image_dir={image_dir}", *TINY, override])
    with pytest.raises(ConfigError, match=rf"^{key} must be"):
        run_from_config(cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_size_beyond_the_machine_is_refused_with_the_estimate(image_dir, tmp_path):
    cfg = compose_config([f"image_dir={image_dir}", *TINY, "size=100000"])
    with pytest.raises(ConfigError, match=r"size=100000 .*astronaut.*needs about [\d.e+]+ GB, more than"):
        run_from_config(cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_memory_estimate_grows_with_pixels_and_lbfgs_memory():
    from neuralstyle import LBFGS

    small, large = estimate_memory_bytes((256, 256)), estimate_memory_bytes((1024, 1024))
    assert 1.5e9 < small < large
    # 1024 x 1024 with Adam measured 5.0 GB peak RSS (benchmarks/results/pyramid.md)
    assert 4e9 < large < 8e9
    assert estimate_memory_bytes((1024, 1024), LBFGS(memory_size=100)) > large
    assert estimate_memory_bytes((512, 512), runs=4) > 3 * estimate_memory_bytes((512, 512)) - 3 * 1.5e9
    check_memory((512, 512))  # fits on any machine that runs this suite
    with pytest.raises(ConfigError, match="needs about"):
        check_memory((200_000, 200_000))


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` (the pixel data is a few bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_an_image_error_naming_the_file(tmp_path, image_dir):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 50000, 50000)
    with pytest.raises(ImageError, match=r"bomb\.png claims 2500 Mpx, more than Pillow's"):
        load_image(bomb)
    out = tmp_path / "out"
    cfg = compose_config([f"image_dir={image_dir}", *TINY, f"content={bomb}"])
    with pytest.raises(ImageError, match=r"content: .*bomb\.png claims"):
        run_from_config(cfg, out)
    assert not out.exists()


def test_an_image_too_small_for_the_layers_names_the_file(image_dir, tmp_path):
    cfg = compose_config([f"image_dir={image_dir}", *TINY, "size=8",
                          "style_layers=[conv5_1]"])
    with pytest.raises(ConfigError, match=r"content image .*astronaut\.png is 8x8 px"):
        run_from_config(cfg, tmp_path)


def test_a_style_image_too_small_for_the_layers_names_the_file(image_dir, tmp_path):
    cfg = compose_config([f"image_dir={image_dir}", *TINY, "size=64", "style_scale=0.1",
                          "style_layers=[conv5_1]"])
    with pytest.raises(ConfigError, match=r"style image .*great_wave\.jpg at style_scale=0.1 is 7x4 px"):
        run_from_config(cfg, tmp_path)


@pytest.mark.slow
def test_cli_bad_value_is_one_line_and_leaves_nothing(image_dir, tmp_path):
    proc = cli(["size=abc"], tmp_path, image_dir)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["neuralstyle: error: size must be a whole number of pixels >= 1 "
                     "(the output's long edge), got 'abc'"]
    assert list(tmp_path.iterdir()) == []  # not even Hydra's .hydra/ and run.log


# --------------------------------------------------------------------------- write order (item 3)

def test_metrics_are_written_after_the_image(image_dir, tmp_path, monkeypatch):
    import neuralstyle.run as run

    def disk_full(image, path, **options):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run, "save_image", disk_full)
    cfg = compose_config([f"image_dir={image_dir}", *TINY])
    with pytest.raises(OSError, match="No space"):
        run_from_config(cfg, tmp_path)
    assert not (tmp_path / "metrics.json").exists()  # no record of a success without its image


# --------------------------------------------------------------------------- Ctrl-C and modes (item 8)

def test_ctrl_c_saves_the_current_image(image_dir, tmp_path, monkeypatch):
    import neuralstyle.run as run

    real_stylize = run.stylize

    def interrupted_at_step_3(*args, **kwargs):
        def callback(step, image, loss):
            if step == 3:
                raise KeyboardInterrupt
        return real_stylize(*args, **kwargs, callback=callback)

    monkeypatch.setattr(run, "stylize", interrupted_at_step_3)
    cfg = compose_config([f"image_dir={image_dir}", *TINY, "steps=10"])
    with pytest.raises(Interrupted, match="after step 3 is saved as") as info:
        run_from_config(cfg, tmp_path)
    saved = tmp_path / "snapshots" / "interrupted_step_00003.png"
    assert saved.is_file() and str(saved) in str(info.value)
    assert load_image(saved).shape == info.value.image.shape == (32, 32, 3)
    assert not (tmp_path / "result.png").exists() and not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_cli_ctrl_c_exits_130_with_one_line_and_the_image(image_dir, tmp_path):
    env = {**os.environ, "NEURALSTYLE_IMAGE_DIR": str(image_dir), "PYTHONPATH": str(REPO)}
    # A process started with SIGINT ignored (a suite launched in the background by a shell without
    # job control; xdist workers pass that on) would start the CLI with it ignored too, and Python
    # then installs no KeyboardInterrupt handler.  A handler here is reset to the default on exec.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "neuralstyle.run", *TINY, "steps=100000", "snapshot_every=1"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 600
    while not list(tmp_path.rglob("step_00002.png")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neuralstyle: interrupted; the image after step")
    saved = list(tmp_path.rglob("interrupted_step_*.png"))
    assert len(saved) == 1 and str(saved[0].name) in lines[0]
    assert not list(tmp_path.rglob("result.png"))


def test_ctrl_c_in_a_batched_sweep_saves_every_runs_image(image_dir, tmp_path, monkeypatch):
    from neuralstyle.run_batched import run_batched_from_config
    from neuralstyle.stylize import stylize_batched as real

    def interrupted_at_step_2(*args, **kwargs):
        def callback(step, images, losses):
            if step == 2:
                raise KeyboardInterrupt
        return real(*args, **kwargs, callback=callback)

    import neuralstyle.run_batched as run_batched

    monkeypatch.setattr(run_batched, "stylize_batched", interrupted_at_step_2)
    cfg = compose("run_batched", [f"image_dir={image_dir}", *TINY, "steps=5",
                                  "batch.style_weight=[1e-3,1e-1]"])
    with pytest.raises(Interrupted, match="the 2 images after step 2 are saved"):
        run_batched_from_config(cfg, tmp_path)
    for k in range(2):
        assert load_image(tmp_path / f"run_{k:02d}" / "interrupted_step_00002.png").shape == (32, 32, 3)
    assert not list(tmp_path.rglob("result.png")) and not (tmp_path / "batch.json").exists()


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", b"x")
        os.umask(0o077)
        atomic_write(tmp_path / "b.txt", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------- run directories (item 7)

COMPOSE_RUN_DIR = """
import sys
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
import neuralstyle.entry  # registers ${run_id:}
with initialize_config_dir(sys.argv[1], version_base="1.3"):  # registers Hydra's ${now:}
    # both processes "start in the same second"
    OmegaConf.register_new_resolver("now", lambda pattern: "2026-01-01/00-00-00", replace=True)
    cfg = compose("config", return_hydra_config=True)
print(cfg.hydra.run.dir, cfg.hydra.sweep.dir)
"""


def test_two_processes_started_in_the_same_second_get_different_run_directories():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", COMPOSE_RUN_DIR, str(config_dir())],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    (run_a, sweep_a), (run_b, sweep_b) = outputs
    assert run_a.startswith("outputs/2026-01-01/00-00-00") and sweep_a.startswith("multirun/")
    assert run_a != run_b and sweep_a != sweep_b


# --------------------------------------------------------------------------- sweeps (item 2)

@pytest.mark.slow
def test_a_failing_job_does_not_end_the_sweep(image_dir, tmp_path):
    proc = cli(["-m", *TINY, "steps=1", "style_weight=1e-2,nan,1e-1",
                f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path, image_dir)
    assert proc.returncode != 0  # the sweep reports that a job failed ...
    jobs = sorted((tmp_path / "sweep").iterdir())
    assert [j.name[0] for j in jobs if j.is_dir()] == ["0", "1", "2"]
    results = {j.name[0]: (j / "result.png").is_file() for j in jobs if j.is_dir()}
    assert results == {"0": True, "1": False, "2": True}  # ... after running every other job
    failed = next(j for j in jobs if j.name.startswith("1_"))
    assert "style_weight must be a finite number >= 0, got nan" in (failed / "error.txt").read_text()
    assert "neuralstyle: error: job 1 (" in proc.stderr
    assert json.loads((jobs[2] / "metrics.json").read_text())["steps"] == 1


@pytest.mark.slow
@pytest.mark.skipif(not __import__("test_sweeps").has_plugin("hydra_plugins.hydra_optuna_sweeper"),
                    reason="hydra-optuna-sweeper not installed (pip install -e '.[test]')")
def test_optuna_sweep_records_a_failed_trial_and_goes_on(image_dir, tmp_path):
    # the sampler is seeded (sweep_optuna.yaml): trials 0 and 1 draw size=0, trials 2 and 3 size=32
    no_size = [o for o in TINY if not o.startswith("size=")]
    proc = cli(["-m", "+experiment=sweep_optuna", *no_size, "steps=1", "hydra.sweeper.n_trials=4",
                "hydra.sweeper.params=null", "size=choice(0,32)", f"hydra.sweep.dir={tmp_path}/sweep"],
               tmp_path, image_dir)
    assert proc.returncode == 0, proc.stderr
    jobs = [j for j in (tmp_path / "sweep").iterdir() if j.is_dir() and j.name[0].isdigit()]
    errors = [j for j in jobs if (j / "error.txt").is_file()]
    results = [j for j in jobs if (j / "result.png").is_file()]
    assert len(jobs) == 4 and errors and results and len(errors) + len(results) == 4
    assert all("size must be" in (j / "error.txt").read_text() for j in errors)
    best = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "size: 32" in best


# --------------------------------------------------------------------------- compilation cache (item 15)

def test_compilation_cache_setting(tmp_path, monkeypatch):
    import jax

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert enable_compilation_cache("default") == tmp_path / "env"  # the environment wins
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    before = jax.config.jax_compilation_cache_dir
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    try:
        assert enable_compilation_cache(None) is None
        assert enable_compilation_cache(str(tmp_path / "cfg")) == tmp_path / "cfg"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cfg")
        # programs of 0.2 s or more are kept: the stylizers' apply programs (0.4-0.5 s) among them
        assert jax.config.jax_persistent_cache_min_compile_time_secs == CACHE_MIN_COMPILE_SECONDS
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert enable_compilation_cache("default") == tmp_path / "xdg" / "neuralstyle" / "jax"
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)


@pytest.mark.slow
def test_a_second_run_reuses_the_compiled_step(image_dir, tmp_path):
    cache = tmp_path / "cache"
    env_args = [*TINY, f"compilation_cache={cache}"]
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    # cache every program: the tiny run's step compiles in about 0.5 s, the default threshold, on
    # a fast CPU (measured 0.74 s including tracing on a 2-core Xeon: nothing cached)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "neuralstyle.run", *env_args], cwd=tmp_path,
                              env={**env, "NEURALSTYLE_IMAGE_DIR": str(image_dir),
                                   "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads((Path(proc.stdout.strip()).parent / "metrics.json").read_text()))
    entries = list(cache.iterdir())
    assert entries, "the first run wrote nothing into the compilation cache"
    assert runs[0]["final"]["total"] == pytest.approx(runs[1]["final"]["total"], rel=1e-6)
    assert np.isfinite(runs[1]["compile_time_s"])
