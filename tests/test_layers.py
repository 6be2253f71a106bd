import pytest

from neuralstyle import ConfigError, LayerError, canonical_layer_name, keras_layer_names, layer_weights


@pytest.mark.parametrize("name,expected", [
    ("block4_conv2", "block4_conv2"), ("conv4_2", "block4_conv2"), ("relu4_2", "block4_conv2"),
    ("relu1_1", "block1_conv1"), ("pool3", "block3_pool"), ("conv5_4", "block5_conv4"),
])
def test_paper_and_keras_names(name, expected):
    assert canonical_layer_name(name, "vgg19") == expected


def test_vgg16_has_no_fourth_conv():
    assert "block3_conv4" not in keras_layer_names("vgg16")
    assert len([n for n in keras_layer_names("vgg19") if "conv" in n]) == 16
    assert len([n for n in keras_layer_names("vgg16") if "conv" in n]) == 13
    with pytest.raises(LayerError, match="conv5_4"):
        canonical_layer_name("conv5_4", "vgg16")


@pytest.mark.parametrize("bad", ["conv6_1", "block4_conv9", "fc7", "relu4"])
def test_unknown_layer_lists_valid_names(bad):
    with pytest.raises(LayerError) as info:
        canonical_layer_name(bad, "vgg19")
    message = str(info.value)
    assert repr(bad) in message and "block5_conv4" in message and "block1_pool" in message


def test_layer_weights():
    layers = ["a", "b", "c", "d"]
    assert layer_weights("mean", layers) == (0.25,) * 4
    assert layer_weights("sum", layers) == (1.0,) * 4
    assert layer_weights([1, 2, 3, 4], layers) == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ConfigError, match="3 entries but there are 4 layers"):
        layer_weights([1, 2, 3], layers)
    with pytest.raises(ConfigError, match="'mean', 'sum' or a list"):
        layer_weights("median", layers)
