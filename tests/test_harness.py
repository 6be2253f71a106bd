"""The benchmark harness: report head, machine description, load, timing, memory, report files."""

import json

import jax.numpy as jnp
import numpy as np

from benchmarks import harness


def test_report_head_and_files(tmp_path):
    rep = harness.report("benchmarks.example", ["--size", "64"], figures={"ms": 1.5})
    assert rep["command"] == "python -m benchmarks.example --size 64"
    assert rep["machine"]["nproc"] >= 1 and "cpu_model" in rep["machine"]
    assert rep["versions"]["jax"] and rep["figures"] == {"ms": 1.5}
    lines = harness.markdown_header("Example", rep)
    assert lines[0] == "# Example" and any(rep["machine"]["cpu_model"] in line for line in lines)
    json_path, md_path = harness.write_report(tmp_path / "out", "example", rep, "\n".join(lines))
    assert json.loads(json_path.read_text())["figures"] == {"ms": 1.5}
    assert md_path.read_text().startswith("# Example\n") and md_path.read_text().endswith("\n")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["example.json", "example.md"]


def test_options_every_benchmark_has():
    args = harness.parser("benchmarks.example", "an example", "example").parse_args([])
    assert args.name == "example" and args.out == harness.RESULTS and args.image_dir


def test_load_timing_and_memory():
    with harness.Load() as load, harness.PeakMemory() as mem:
        big = np.ones((4096, 1024), np.float32)  # 16 MiB touched during the phase
        result, seconds = harness.timed(lambda x: jnp.sum(x * 2.0), big)
    assert float(result) == 2.0 * big.size and seconds > 0
    assert load.foreign is None or 0.0 <= load.foreign <= 1.0
    memory = mem.result()
    assert memory["peak_rss_mib"] >= memory["baseline_rss_mib"] > 0
    s = harness.stats([0.001, 0.003, 0.002])
    assert s["median_ms"] == 2.0 and s["min_ms"] == 1.0 and len(s["ms"]) == 3
