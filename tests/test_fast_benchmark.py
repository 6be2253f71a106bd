"""benchmarks/fast.py runs end to end on tiny settings (it measures; this only checks that it runs
and writes its tables)."""

import json

import pytest
from conftest import run_benchmark_quick


@pytest.mark.slow
def test_fast_benchmark_quick(tmp_path, image_dir):
    run_benchmark_quick("benchmarks.fast", image_dir, tmp_path)
    report = json.loads((tmp_path / "fast.json").read_text())
    assert report["train"]["images_per_s"] > 0 and report["train"]["flops_per_step"] > 0
    assert [a["width"] for a in report["apply"]] == [64]
    assert report["gpu_estimate"]["images"] == 2 * 82783
    assert "s per megapixel" in (tmp_path / "fast.md").read_text()


@pytest.mark.slow
def test_fast_speed_benchmark_quick(tmp_path, image_dir):
    """benchmarks/fast_speed.py: neuralstyle (both conv backends) next to PyTorch eager, apply,
    training and the folder case, on tiny settings; the same network gives the same outputs."""
    pytest.importorskip("torch")
    run_benchmark_quick("benchmarks.fast_speed", image_dir, tmp_path)
    report = json.loads((tmp_path / "fast_speed.json").read_text())
    (apply,) = report["apply"]
    assert {"neuralstyle", "pytorch eager"} <= set(apply["implementations"])
    assert all(v["max_abs_diff_vs_default"] <= 1e-4 for v in apply["implementations"].values())
    train = report["train"]["implementations"]
    assert all(v["images_per_s"] > 0 and v["first_loss_rel_diff_vs_default"] <= 1e-3 for v in train.values())
    assert set(report["folder"]) == {f"fast, bucket {b}, {m}, {c}" for b in ("off", "32 px")
                                     for m in ("in turn", "overlapped") for c in ("cold", "warm")}
    assert all(s["compile_s"] >= 0 and s["compile_cpu_s"] is not None and s["exposed_compile_s"] is not None
               for s in report["folder"].values())
    assert "s per megapixel" in (tmp_path / "fast_speed.md").read_text()
