"""The benchmark scripts run end to end on tiny settings (they measure; these tests only check
that they run and write their tables)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", *args, "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_speed_quick(tmp_path):
    """The smallest size for 2 steps, with the PyTorch reference when torch is installed: every
    reported field exists and the derived ones agree with the measured ones (no timing checks);
    the time to quality grades a snapshot of every update and finds the first one on target."""
    has_torch = importlib.util.find_spec("torch") is not None
    run(["benchmarks.speed", "--quick", "--weights", "random"] + ([] if has_torch else ["--no-torch"]),
        tmp_path)
    report = json.loads((tmp_path / "speed.json").read_text())
    md = (tmp_path / "speed.md").read_text()
    assert md.count("|") > 10 and "## Time to target" in md and "## Time to quality" in md
    blas = report["yardsticks"]["numpy_blas"]["best_gflops"]
    rows = {(r["implementation"].split(" ")[0], r["optimizer"]): r for r in report["rows"]}
    expected = {("JAX/XLA", "Adam"), ("JAX/XLA", "L-BFGS")}
    if has_torch:
        expected |= {("PyTorch", "Adam"), ("PyTorch", "L-BFGS")}
    assert set(rows) == expected
    for (impl, opt), r in rows.items():
        assert r["size"] == 64 and r["pixels"] == 64 * 64
        assert r["steps_per_s"] == pytest.approx(1000.0 / r["median_ms"], rel=1e-3)
        assert r["gflops"] == pytest.approx(r["gflop_per_step"] / (r["median_ms"] / 1000), rel=0.02)
        assert r["pct_blas"] == pytest.approx(100 * r["gflops"] / blas, rel=0.02)
        assert r["peak_rss_mib"] > 100 and 0 <= r["above_baseline_mib"] <= r["peak_rss_mib"]
        if has_torch:
            ref = rows[("PyTorch", opt)]["median_ms"]
            assert r["time_vs_torch"] == pytest.approx(r["median_ms"] / ref, rel=1e-3, abs=6e-4)
    sizes = report["jax"]["sizes"]["64"]
    assert len(sizes["adam"]["ms"]) == 2 and sizes["adam"]["memory"]["method"]
    buffers = sizes["adam"]["program_buffers_mib"]  # XLA's buffer assignment of the compiled step
    assert buffers["temp"] > 0 and buffers["argument"] > 0 and buffers["output"] > 0
    assert sizes["gpu_peak_mib"] is None  # no accelerator here: no device allocator to read
    ttt = report["time_to_target"]
    assert ttt["size"] == 64 and ttt["target"] == report["config"]["time_to_target"]["target"]
    for impl in ["jax"] + (["torch"] if has_torch else []):
        for opt in ("adam", "lbfgs"):
            r = ttt[impl][opt]
            assert r["reached"] == (r["steps"] is not None) == (r["seconds"] is not None)
            assert r["reached"] == (min(r["losses"]) < ttt["target"])
            assert r["iterates_evaluated"] == len(r["losses"]) <= ttt["max_steps"][opt] + 1
            if r["reached"]:
                assert r["losses"][r["steps"]] < ttt["target"] <= min(r["losses"][: r["steps"]], default=np.inf)
                extra = (r["compile_s"] if impl == "jax" else 0.0) + r["setup_s"]
                assert r["setup_s"] > 0 and (impl == "torch" or r["compile_s"] > 0)
                assert r["seconds_with_setup"] == pytest.approx(r["seconds"] + extra, abs=2e-3)
            q, target = r["quality"], ttt["quality_target"]
            assert q["snapshot_steps"] == list(range(len(r["losses"])))  # quick: every update
            assert len(q["snapshot_seconds"]) == len(q["swd"]) == len(q["lpips"]) == len(q["gram"]) == len(r["losses"])
            assert q["snapshot_seconds"] == sorted(q["snapshot_seconds"])
            assert q["lpips"][0] == pytest.approx(0.0, abs=1e-6)  # the start is the content photo
            hits = [k for k, (sw, lp) in enumerate(zip(q["swd"], q["lpips"]))
                    if sw <= target["swd"] and lp <= target["lpips"]]
            assert q["reached"] == bool(hits)
            if hits:
                assert (q["steps"], q["seconds"]) == (q["snapshot_steps"][hits[0]], q["snapshot_seconds"][hits[0]])
    if has_torch:
        for opt in ("adam", "lbfgs"):
            j, t = ttt["jax"][opt], ttt["torch"][opt]
            if j["reached"] and t["reached"]:
                assert ttt["ratios"][opt]["seconds"] == pytest.approx(j["seconds"] / t["seconds"], rel=2e-2)
        assert report["checks"]["64"]["ok"]


def test_scaling_fit_recovers_a_linear_law():
    from benchmarks.speed import scaling

    rows = [{"implementation": "JAX/XLA (make_step + jit)", "optimizer": "Adam", "size": s,
             "pixels": s * s, "median_ms": 50.0 + 3e-3 * s * s, "peak_rss_mib": 900 + 1e-4 * s * s,
             "above_baseline_mib": 2e-4 * s * s} for s in (256, 512, 1024)]
    (entry,) = scaling(rows)
    fit = entry["time_fit"]
    assert fit["a"] == pytest.approx(50.0) and fit["b"] == pytest.approx(3e-3)
    assert max(abs(v) for v in fit["relative_residuals"]) < 1e-6 and entry["time_linear"]
    assert entry["memory_fit"]["b"] == pytest.approx(2e-4)
    assert fit["power_law_exponent"] == pytest.approx(
        np.polyfit(np.log([256**2, 512**2, 1024**2]), np.log([r["median_ms"] for r in rows]), 1)[0], abs=1e-3)
    # a quadratic law is flagged as not linear
    quad = [dict(r, median_ms=1e-9 * r["pixels"] ** 2) for r in rows]
    assert not scaling(quad)[0]["time_linear"]


def test_batched_tiny(tmp_path, image_dir):
    run(["benchmarks.batched", "--sizes", "32", "--ns", "2", "--warmup", "1", "--steps", "1",
         "--weights", "random", "--image-dir", str(image_dir)], tmp_path)
    report = json.loads((tmp_path / "batched.json").read_text())
    rows = report["sizes"]["32"]["rows"]
    assert [r["n"] for r in rows] == [2] and len(report["sizes"]["32"]["sequential_runs"]) == 2
    for r in rows:
        b, s = r["batched"], r["sequential"]
        assert b["image_steps_per_s"] == pytest.approx(1000.0 * r["n"] / b["ms_per_step"], rel=1e-2)
        assert s["image_steps_per_s"] == pytest.approx(1000.0 / s["ms_per_step"], rel=1e-2)
        assert r["ratio_steady"] == pytest.approx(b["image_steps_per_s"] / s["image_steps_per_s"], rel=1e-2)
        # the same computation, batched or not: the same loss at the start image for each run's
        # weights (pixels after Adam's steps are not compared: rounding can move one by a step)
        assert r["max_relative_initial_loss_difference"] < 1e-4
        assert np.isfinite(r["max_abs_pixel_difference"])
    assert "| 32 | 2 |" in (tmp_path / "batched.md").read_text()


def test_multiscale_tiny(tmp_path, image_dir):
    """Recipes composed from conf/ and run through run_from_config; times to target are ratios of
    the report's own figures.  Three of the eight variants (a direct run, its average, a
    multiscale run): the warm-started variants only add overrides, which ``test_multiscale.py``
    checks through the same entry."""
    run(["benchmarks.multiscale", "--size", "64", "--steps", "3", "--start-size", "32",
         "--scale-steps", "2,2", "--weights", "null", "--image-dir", str(image_dir),
         "--only", "adam direct,lbfgs multiscale"], tmp_path)
    report = json.loads((tmp_path / "multiscale.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"adam direct", "adam direct + average", "lbfgs multiscale"}
    assert [s["size"] for s in rows["lbfgs multiscale"]["scales"]] == [[32, 32], [64, 64]]
    direct = rows["adam direct"]
    assert direct["target"] == direct["scales"][-1]["history"][-1]
    assert direct["time_to_target_s"] == pytest.approx(direct["total_s"], rel=0.05)
    assert rows["lbfgs multiscale"]["target"] is None  # no L-BFGS direct run: no target
    assert rows["adam direct + average"]["final_iterate_loss"] == pytest.approx(direct["final_loss"], rel=1e-4)
    assert "| adam direct | " in (tmp_path / "multiscale.md").read_text()


def test_lbfgs_tiny(tmp_path, image_dir):
    run(["benchmarks.lbfgs", "--size", "48", "--iterations", "2", "--weights", "null",
         "--no-optax-lbfgs", "--image-dir", str(image_dir)], tmp_path)
    report = json.loads((tmp_path / "lbfgs.json").read_text())
    assert report["command"].startswith("python -m benchmarks.lbfgs --size 48")
    assert report["machine"]["cpu_model"] and report["versions"]["jax"]
    names = [r["optimizer"] for r in report["rows"]]
    assert names[:2] == ["neuralstyle lbfgs()", "optax.adam(0.02, b1=0.99, eps=0.1)"]
    assert all(r["iterations"] <= 2 for r in report["rows"])
    md = (tmp_path / "lbfgs.md").read_text()
    assert md.startswith("# L-BFGS vs Adam, 2 iterations") and "| neuralstyle lbfgs() |" in md


def test_tuning_report_shows_the_rule_and_the_tuned_choice():
    """benchmarks.tuning's table (a fabricated record: the measurement itself is tested in
    test_tuning.py): each layer shows the fixed rule's pick and the tuned one from the record."""
    from benchmarks import tuning as tuning_bench

    layer = {"layers": ["block3_conv1"], "side": 64, "cin": 128, "cout": 256, "xla_ms": 20.0, "winograd_ms": 10.0}
    deep = {"layers": ["block5_conv1", "block5_conv2"], "side": 16, "cin": 512, "cout": 512,
            "xla_ms": 10.0, "winograd_ms": 20.0}
    record = {"size": 256, "fast_size": 512, "margin": 0.03, "winograd_channels": [[128, 256]],
              "step_conv_backend": "xla", "fast_conv_backend": "eigen",
              "measured": {"layers": [layer, deep], "step": {"xla_ms": 291.0, "eigen_ms": 287.0},
                           "fast": {"xla_ms": 1123.0, "eigen_ms": 353.0}}}
    md = tuning_bench.markdown({"args": {"repeats": 5}, "record": record, "other_load": 0.01})
    assert "| block3_conv1 | 64x64 | 128 -> 256 | 20.0 | 10.0 | 0.50 | xla | winograd |" in md
    assert "| block5_conv1, block5_conv2 | 16x16 | 512 -> 512 | 10.0 | 20.0 | 2.00 | winograd | xla |" in md
    assert "| 291.0 | 287.0 | 0.99 | xla | xla |" in md and "| 1123.0 | 353.0 | 0.31 | eigen | eigen |" in md
    assert "more than 3% faster" in md
