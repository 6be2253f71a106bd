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
