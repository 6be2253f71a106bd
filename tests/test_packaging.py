"""`python -m neuralstyle.run` works from an installed wheel, not only from a checkout."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_config_tree_and_runs_from_it(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         str(REPO), "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("neuralstyle-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(site)
    for shipped in ("conf/run/config.yaml", "conf/run/experiment/vgg19_wave.yaml",
                    "conf/train/experiment/fast_wave.yaml", "conf/apply/config.yaml",
                    "conf/components/__init__.py", "conf/components/backbone/vgg19.yaml",
                    "losses/gram.py", "optim/driver.py", "images/io.py", "backbones/vgg.py"):
        assert f"neuralstyle/{shipped}" in names
    # run from an unrelated folder with only the unpacked wheel on the path
    proc = subprocess.run(
        [sys.executable, "-c", "import neuralstyle.run as r, sys; print(r.__file__); print(r.config_dir()); "
         "sys.argv = ['run', '+experiment=vgg19_wave', '--cfg', 'job']; r.main()"],
        cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    module_file, conf, *config = proc.stdout.splitlines()
    assert module_file.startswith(str(site)) and conf == str(site / "neuralstyle" / "conf" / "run")
    assert "content_weight: 10000.0" in config and "style: great_wave" in config
