"""A PyTorch eager reference of the feed-forward transform network and its training step (a
yardstick for ``benchmarks.fast_speed`` only).

:class:`TorchTransformNet` is :func:`neuralstyle.fast.transform_net` in PyTorch (NCHW,
``nn.ReflectionPad2d``, ``nn.Conv2d``, ``nn.InstanceNorm2d(affine=True)``, nearest
``F.interpolate``), the layer for layer the architecture of pytorch/examples
``fast_neural_style`` with neuralstyle's [0, 1] input/output scaling and pad-to-a-multiple-of-4,
built from a Keras transform net with its weights copied (kernels HWIO -> OIHW, instance-norm
gamma/beta -> weight/bias), so both compute the same function.

:func:`make_torch_train_step` is the training step of :func:`neuralstyle.fast.make_train_step`
on the fast recipe's loss (:func:`neuralstyle.fast.perceptual_loss`: content ``mean((F - P)^2)``
at the content layers, style ``mean((G - A)^2)`` of Gram matrices divided by ``H*W``, each
averaged over the batch; ``sum`` layer weights), through
:class:`benchmarks.torch_reference.VGGFeatures` (the same VGG weights, copied from the Keras
loss network) with torchvision preprocessing, then ``torch.optim.Adam``.

Imports torch at import time; the ``neuralstyle`` package itself never imports torch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_reference import VGGFeatures, gram_hw, layer_specs_from_keras

STRIDE = 4  # as neuralstyle.fast.transform.STRIDE


def _conv_from_keras(layer) -> nn.Conv2d:
    kernel, bias = (np.asarray(w, np.float32) for w in layer.get_weights())
    kh, kw, cin, cout = kernel.shape
    conv = nn.Conv2d(cin, cout, (kh, kw), stride=layer.strides)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
        conv.bias.copy_(torch.from_numpy(bias))
    return conv


def _norm_from_keras(layer) -> nn.InstanceNorm2d:
    gamma, beta = (np.asarray(w, np.float32) for w in layer.get_weights())
    norm = nn.InstanceNorm2d(gamma.shape[0], eps=layer.epsilon, affine=True)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(gamma))
        norm.bias.copy_(torch.from_numpy(beta))
    return norm


class ConvLayer(nn.Module):
    """Reflection pad ``kernel // 2``, convolution, optional instance norm and ReLU (one ``_conv``
    of :mod:`neuralstyle.fast.transform`), optionally after a nearest 2x upsampling."""

    def __init__(self, model, name: str, upsample: bool = False, relu: bool = True):
        super().__init__()
        names = {layer.name for layer in model.layers}
        conv = model.get_layer(f"{name}_conv")
        self.pad = nn.ReflectionPad2d(conv.kernel_size[0] // 2)
        self.conv = _conv_from_keras(conv)
        self.norm = _norm_from_keras(model.get_layer(f"{name}_in")) if f"{name}_in" in names else None
        self.upsample, self.relu = upsample, relu

    def forward(self, x):
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv(self.pad(x))
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


class TorchTransformNet(nn.Module):
    """:func:`neuralstyle.fast.transform_net` in PyTorch with the weights of the Keras ``model``
    (NCHW images in [0, 1] -> NCHW images in [0, 1] of the same size)."""

    def __init__(self, model):
        super().__init__()
        blocks = sorted({layer.name.split("_")[0] for layer in model.layers if layer.name.startswith("res")},
                        key=lambda n: int(n[3:]))
        self.down = nn.ModuleList([ConvLayer(model, n) for n in ("down1", "down2", "down3")])
        self.res = nn.ModuleList([nn.ModuleList([ConvLayer(model, f"{b}_a"), ConvLayer(model, f"{b}_b", relu=False)])
                                  for b in blocks])
        self.up = nn.ModuleList([ConvLayer(model, n, upsample=True) for n in ("up1", "up2")])
        self.out = ConvLayer(model, "out", relu=False)

    def forward(self, images):
        h, w = images.shape[2:]
        ph, pw = -h % STRIDE, -w % STRIDE
        x = F.pad(images, (0, pw, 0, ph), mode="reflect") if ph or pw else images
        x = x * 2.0 - 1.0
        for layer in self.down:
            x = layer(x)
        for a, b in self.res:
            x = x + b(a(x))
        for layer in self.up:
            x = layer(x)
        x = torch.tanh(self.out(x)) * 0.5 + 0.5
        return x[:, :, :h, :w]


class TorchVGGFeatures(VGGFeatures):
    """:class:`benchmarks.torch_reference.VGGFeatures` with torchvision preprocessing (RGB in
    [0, 1], ImageNet mean/std), as the fast recipe's ``weights: torchvision`` loss network."""

    def preprocess(self, rgb01: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor((0.485, 0.456, 0.406), dtype=rgb01.dtype).view(1, 3, 1, 1)
        std = torch.tensor((0.229, 0.224, 0.225), dtype=rgb01.dtype).view(1, 3, 1, 1)
        return (rgb01 - mean) / std


def loss_features(objective) -> nn.Module:
    """The loss network of a :class:`neuralstyle.StyleObjective` in torch (caffe or torchvision
    preprocessing as the objective's backbone uses), cut after its deepest requested layer."""
    layers = list(objective.content_layers) + list(objective.style_layers)
    specs = layer_specs_from_keras(objective.extractor.model)
    cls = TorchVGGFeatures if objective.extractor.preprocessing == "torch" else VGGFeatures
    return cls(specs, layers)


def make_torch_train_step(net: TorchTransformNet, features: nn.Module, content_layers, style_layers,
                          style_targets: dict, content_weight: float, style_weight: float, lr: float = 1e-3):
    """``step(batch) -> loss``: one training step of the transform net (forward through the net
    and the loss network, backward, ``torch.optim.Adam(lr)``), the loss as
    :func:`neuralstyle.fast.perceptual_loss` with ``sum`` layer weights and TV weight 0."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def loss_of(batch):
        with torch.no_grad():
            target = features(batch)
        f = features(net(batch))
        content = sum(torch.mean((f[n] - target[n]) ** 2) for n in content_layers)
        style = sum(torch.mean((gram_hw(f[n]) - style_targets[n]) ** 2) for n in style_layers)
        return content_weight * content + style_weight * style

    def step(batch):
        opt.zero_grad(set_to_none=True)
        loss = loss_of(batch)
        loss.backward()
        opt.step()
        return loss.detach()

    step.loss_of = loss_of
    return step
