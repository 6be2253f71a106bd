"""benchmarks/fast.py runs end to end on tiny settings (it measures; this only checks that it runs
and writes its tables)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fast_benchmark_quick(tmp_path, image_dir):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fast", "--quick", "--image-dir",
                           str(image_dir), "--out", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "fast.json").read_text())
    assert report["train"]["images_per_s"] > 0 and report["train"]["flops_per_step"] > 0
    assert [a["width"] for a in report["apply"]] == [64]
    assert report["gpu_estimate"]["images"] == 2 * 82783
    assert "s per megapixel" in (tmp_path / "fast.md").read_text()
