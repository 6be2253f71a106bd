"""``benchmarks.gpu``: its tables from a report, its refusal without a GPU, and one end-to-end
worker run and its grading on the CPU (tiny: 64 px, 2 iterations, random weights).  The figures
themselves come from a lent GPU machine (``benchmarks/results/gpu_h200.md``)."""

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import gpu


def _speed_report(adam, lbfgs, peak, torch=None):
    """A ``benchmarks.speed`` report at 256 px with the given medians (ms) and peaks (MiB)."""
    buffers = {"temp": 300.0, "argument": 70.0, "output": 6.0}
    rep = {"config": {"sizes": [256], "steps_desc": "256 px: plan"},
           "jax": {"jax_default_matmul_precision": "None",
                   "sizes": {"256": {"adam": {"median_ms": adam, "program_buffers_mib": buffers},
                                     "lbfgs": {"median_ms": lbfgs}, "gpu_peak_mib": peak}}}}
    if torch:
        rep["torch"] = {"torch": "2.x", "device": "cuda", "cudnn_allow_tf32": True, "matmul_allow_tf32": False,
                        "sizes": {"256": {"adam": {"median_ms": torch[0], "gpu_peak_mib": 250.0},
                                          "lbfgs": {"median_ms": torch[1], "gpu_peak_mib": 290.0}}}}
        rep["checks"] = {"256": {"relative_difference": 1e-4}}
    return rep


def _report():
    ok = {"overrides": ["+experiment=vgg19_wave"], "steps": 500, "process_wall_s": 31.0, "run_wall_s": 24.0,
          "compile_s": 11.0, "ms_per_iteration": [8.4], "gpu_peak_mib": 1234.0, "final_loss": 6.5e6,
          "float32_loss_of_result": {"total": 6.6e6}, "quality": {"lpips": 0.59, "swd": 0.23, "gram": 0.6}}
    return {"date": "d", "command": "c", "machine": {}, "versions": {}, "gpu": "NVIDIA H200",
            "config": {"size": 512, "weights": "imagenet"}, "skipped": ["default"],
            "warnings": ["end to end adam_bfloat16 failed: worker exited with status 1"],  # as run_e2e adds it
            "e2e": {"adam_float32": ok, "adam_bfloat16": {"error": "worker exited with status 1"}},
            "speed": {"float32": _speed_report(2.0, 10.0, 900.0, torch=(8.0, 15.0)),
                      "bfloat16": _speed_report(1.0, 5.0, 200.0)}}


def test_speed_rows_are_ratios_of_the_medians():
    [row] = gpu.speed_rows(_report())
    assert row[0] == 256
    assert row[1:4] == ["2.0", "1.0", "8.0"]  # JAX float32, bfloat16, PyTorch Adam ms
    assert row[4:6] == ["4.00x", "8.00x"]  # PyTorch's time / JAX's
    assert row[6:10] == ["10.0", "5.0", "15.0", "1.50x"]
    assert row[10:] == ["900", "376", "200", "290"]  # peaks; the step's buffers summed; torch's larger phase


def test_speed_rows_without_torch_say_so():
    report = _report()
    del report["speed"]["float32"]["torch"]
    [row] = gpu.speed_rows(report)
    assert row[3] == row[4] == row[5] == "?" and row[1] == "2.0"


def test_markdown_has_every_part_failures_and_skips():
    md = gpu.markdown(_report())
    assert "## End to end" in md and "## Step speed" in md
    assert "| adam_float32 | 500 | 31.0 | 24.0 | 11.0 | 8.4 | 1,234 | 6.5e+06 | 6.6e+06 | 0.590 | 0.230 | 0.600 |" in md
    assert "| adam_bfloat16 | failed |" in md and "- end to end adam_bfloat16 failed: worker exited" in md
    assert "Not run (time budget): default." in md and "256 px 1.0e-04" in md


def test_refuses_without_a_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu, "gpu_description", lambda: None)
    with pytest.raises(SystemExit, match="no NVIDIA GPU found.*--allow-cpu"):
        gpu.main(["--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # nothing written


def test_grade_refuses_a_missing_report(tmp_path):
    with pytest.raises(SystemExit, match="cannot read the report .*nope.json"):
        gpu.main(["--grade", str(tmp_path / "nope.json"), str(tmp_path), "--out", str(tmp_path)])


@pytest.mark.slow
def test_e2e_worker_and_grading_on_the_cpu(tmp_path, monkeypatch):
    """One end-to-end worker (in this process) at 64 px: it runs the recipe, keeps the result,
    re-evaluates it under the float32 objective (near the run's own final loss: the result was
    written as 8-bit PNG), and ``--grade`` adds the quality distances and writes the report."""
    image_dir = Path(__import__("os").environ.get("NEURALSTYLE_IMAGE_DIR", "../shared/assets/images")).resolve()
    overrides = ["+experiment=vgg19_wave", "size=64", "steps=2", "precision=float32", "backbone.weights=null",
                 f"image_dir={image_dir}", "progress=false"]
    row = gpu.e2e_worker({"overrides": overrides, "image_out": str(tmp_path / "img" / "adam_float32.png")})
    assert row["steps"] == 2 and row["backend"] == "cpu" and row["gpu_peak_mib"] is None
    assert row["run_wall_s"] >= row["compile_s"] > 0 and len(row["ms_per_iteration"]) == 1
    assert row["float32_loss_of_result"]["total"] == pytest.approx(row["final_loss"], rel=0.05)
    assert set(row["float32_loss_of_result"]) == {"total", "content", "style", "tv"}
    assert (tmp_path / "img" / "adam_float32.png").stat().st_size > 1000
    report = _report()
    report["e2e"] = {"adam_float32": dict(row, process_wall_s=1.0)}
    (tmp_path / "r.json").write_text(json.dumps(report))
    assert gpu.main(["--grade", str(tmp_path / "r.json"), str(tmp_path / "img"), "--metric-weights", "random",
                     "--image-dir", str(image_dir), "--out", str(tmp_path), "--name", "graded"]) == 0
    q = json.loads((tmp_path / "graded.json").read_text())["e2e"]["adam_float32"]["quality"]
    assert q["metric_weights"] == "random" and all(np.isfinite(q[k]) and q[k] >= 0 for k in ("lpips", "swd", "gram"))
    assert q["lpips"] > 0  # stylized for 2 steps: not the photo itself
    assert "| adam_float32 | 2 |" in (tmp_path / "graded.md").read_text()
