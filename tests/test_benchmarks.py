"""The benchmark scripts run end to end on tiny settings (they measure; these tests only check
that they run and write their tables)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", *args, "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_speed_quick(tmp_path):
    run(["benchmarks.speed", "--quick", "--no-torch", "--weights", "random"], tmp_path)
    report = json.loads((tmp_path / "speed.json").read_text())
    assert report and (tmp_path / "speed.md").read_text().count("|") > 10


def test_pyramid_tiny(tmp_path, image_dir):
    run(["benchmarks.pyramid", "--size", "64", "--direct-steps", "3", "--levels-steps", "2,2",
         "--big-size", "0", "--weights", "null", "--image-dir", str(image_dir)], tmp_path)
    report = json.loads((tmp_path / "pyramid.json").read_text())
    assert [lv["size"] for lv in report["pyramid"]["levels"]] == [[32, 32], [64, 64]]
    assert report["direct"]["steps"] == 3 and "time to target" in (tmp_path / "pyramid.md").read_text()
