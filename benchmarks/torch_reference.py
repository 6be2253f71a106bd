"""A PyTorch eager reference of the benchmarked Adam step (a yardstick only).

It rebuilds the VGG feature extractor of a :class:`neuralstyle.StyleObjective` in PyTorch
(``torch.nn.Conv2d``/``MaxPool2d``, NCHW, no torchvision) with the *same* weights copied from the
Keras model (kernels HWIO -> OIHW), the same Caffe preprocessing as
:func:`neuralstyle.backbones.caffe_preprocess`, and the losses of the TensorFlow-tutorial recipe
(the :meth:`neuralstyle.StyleObjective.build` defaults):

* content: ``mean((F - P)^2)`` per content layer;
* style: Gram matrices divided by ``H*W`` ("hw"), ``mean((G - A)^2)`` per style layer;
* total variation: anisotropic L1, ``sum|dx| + sum|dy|`` of the RGB image in [0, 1];

weighted by the objective's layer weights and its content/style/TV weights.  The Adam step is
``torch.optim.Adam(lr=0.02, betas=(0.99, 0.999), eps=0.1)`` followed by a clamp to [0, 1], the
same update as ``optax.adam(0.02, b1=0.99, eps=0.1)`` + :func:`neuralstyle.optim.project`.
The L-BFGS reference (:class:`LBFGSRun`) is ``torch.optim.LBFGS`` with the same memory (100
pairs) and a clamp after every iteration; torch offers no backtracking Armijo search like
neuralstyle's, so it uses its strong-Wolfe search (usually 2 objective evaluations per iteration,
against neuralstyle's 1).

This module imports torch at import time; only ``benchmarks.speed`` imports it, and only when
torch is installed.  The ``neuralstyle`` package itself never imports torch.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np
import torch
from torch import nn

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def layer_specs_from_keras(model) -> list[tuple]:
    """``[(name, "conv", kernel_hwio, bias) | (name, "maxpool"|"avgpool", None, None)]`` of a
    Keras VGG feature model (e.g. ``objective.extractor.model``), in forward order."""
    specs = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        if kind == "WinogradConv2D":  # neuralstyle's Winograd wrapper: the wrapped Conv2D's weights
            layer, kind = layer.conv, "Conv2D"
        if kind == "Conv2D":
            if getattr(layer.activation, "__name__", "") != "relu":
                raise ValueError(f"{layer.name}: expected a ReLU activation")
            kernel, bias = (np.asarray(w, np.float32) for w in layer.get_weights())
            specs.append((layer.name, "conv", kernel, bias))
        elif kind in ("MaxPooling2D", "MaxPool2x2"):  # MaxPool2x2: neuralstyle's 2x2 max pool
            specs.append((layer.name, "maxpool", None, None))
        elif kind == "AveragePooling2D":
            specs.append((layer.name, "avgpool", None, None))
        else:
            raise ValueError(f"unsupported layer {layer.name} ({kind})")
    return specs


class VGGFeatures(nn.Module):
    """Conv3x3(+ReLU)/pool stack returning ``{layer name: NCHW features}`` for ``layers``."""

    def __init__(self, specs: Sequence[tuple], layers: Sequence[str]):
        super().__init__()
        self.names, self.wanted = [], set(layers)
        mods = []
        for name, kind, kernel, bias in specs:
            if kind == "conv":
                kh, kw, cin, cout = kernel.shape
                conv = nn.Conv2d(cin, cout, (kh, kw), padding=(kh // 2, kw // 2))
                with torch.no_grad():
                    conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
                    conv.bias.copy_(torch.from_numpy(bias))
                mods.append(nn.Sequential(conv, nn.ReLU(inplace=False)))
            elif kind == "maxpool":
                mods.append(nn.MaxPool2d(2, 2))
            else:
                mods.append(nn.AvgPool2d(2, 2))
            self.names.append(name)
        last = max(self.names.index(n) for n in layers)
        self.names, self.stack = self.names[: last + 1], nn.ModuleList(mods[: last + 1])
        for p in self.parameters():
            p.requires_grad_(False)

    def preprocess(self, rgb01: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> BGR * 255 - mean (Keras "caffe"); subclasses change it."""
        mean = torch.tensor(CAFFE_MEAN_BGR, dtype=rgb01.dtype, device=rgb01.device).view(1, 3, 1, 1)
        return rgb01[:, [2, 1, 0]] * 255.0 - mean

    def forward(self, rgb01: torch.Tensor) -> dict:
        x = self.preprocess(rgb01)
        out = {}
        for name, mod in zip(self.names, self.stack):
            x = mod(x)
            if name in self.wanted:
                out[name] = x
        return out


def gram_hw(f: torch.Tensor) -> torch.Tensor:
    b, c, h, w = f.shape
    flat = f.reshape(b, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / float(h * w)


def total_variation_l1(x: torch.Tensor) -> torch.Tensor:
    return (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().sum() + (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().sum()


class TorchObjective:
    """The TF-tutorial objective in torch, configured like a :class:`neuralstyle.StyleObjective`."""

    def __init__(self, features: VGGFeatures, content_layers, content_layer_weights, style_layers,
                 style_layer_weights, content_weight, style_weight, tv_weight):
        self.features = features
        self.content = list(zip(content_layers, content_layer_weights))
        self.style = list(zip(style_layers, style_layer_weights))
        self.cw, self.sw, self.tw = float(content_weight), float(style_weight), float(tv_weight)
        self.content_targets: dict = {}
        self.style_targets: dict = {}

    @classmethod
    def from_jax_objective(cls, objective) -> "TorchObjective":
        specs = layer_specs_from_keras(objective.extractor.model)
        feats = VGGFeatures(specs, list(objective.content_layers) + list(objective.style_layers))
        return cls(feats, objective.content_layers, objective.content_layer_weights,
                   objective.style_layers, objective.style_layer_weights,
                   objective.content_weight, objective.style_weight, objective.tv_weight)

    @torch.no_grad()
    def set_targets(self, content: torch.Tensor, style: torch.Tensor) -> None:
        fc, fs = self.features(content), self.features(style)
        self.content_targets = {n: fc[n].detach() for n, _ in self.content}
        self.style_targets = {n: gram_hw(fs[n]).detach() for n, _ in self.style}

    def terms(self, image: torch.Tensor) -> dict:
        f = self.features(image)
        content = sum(w * torch.mean((f[n] - self.content_targets[n]) ** 2) for n, w in self.content)
        style = sum(w * torch.mean((gram_hw(f[n]) - self.style_targets[n]) ** 2) for n, w in self.style)
        return {"content": self.cw * content, "style": self.sw * style,
                "tv": self.tw * total_variation_l1(image)}

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        t = self.terms(image)
        return t["content"] + t["style"] + t["tv"]


def to_nchw(image_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image_hwc, np.float32).transpose(2, 0, 1)))[None]


def make_adam_step(objective: TorchObjective, image: torch.Tensor, lr=0.02, betas=(0.99, 0.999), eps=0.1):
    """``(x, step)``: the optimized image tensor and a function doing one Adam step + clamp,
    returning the loss of the image *before* the step (as :func:`neuralstyle.optim.make_step`)."""
    x = image.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr, betas=betas, eps=eps)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = objective(x)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
        return loss.detach()

    return x, step


LBFGS_DESC = ("torch.optim.LBFGS(lr=1, max_iter=1, history_size=100, line_search_fn='strong_wolfe'), "
              "clamp to [0, 1] after every iteration")


class LBFGSRun:
    """L-BFGS on the image in torch: :meth:`step` is one iteration (``opt.step`` + clamp).

    Records every objective evaluation (``losses``, and ``times``: ``perf_counter`` just after its
    backward pass) and, per iteration, the evaluation of the current (clamped) iterate that
    ``torch.optim.LBFGS`` makes when the iteration starts (``iterate_losses``, ``iterate_times``).
    """

    def __init__(self, objective: TorchObjective, image: torch.Tensor, history_size: int = 100):
        self.objective = objective
        self.x = image.clone().requires_grad_(True)
        self.opt = torch.optim.LBFGS([self.x], lr=1, max_iter=1, history_size=history_size,
                                     line_search_fn="strong_wolfe")
        self.losses: list[float] = []
        self.times: list[float] = []
        self.iterate_losses: list[float] = []
        self.iterate_times: list[float] = []

    @property
    def evaluations(self) -> int:
        return len(self.losses)

    def _closure(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.objective(self.x)
        loss.backward()
        self.losses.append(float(loss))
        self.times.append(time.perf_counter())
        return loss

    def step(self) -> None:
        first = len(self.losses)
        self.opt.step(self._closure)
        with torch.no_grad():
            self.x.clamp_(0.0, 1.0)
        self.iterate_losses.append(self.losses[first])
        self.iterate_times.append(self.times[first])


def set_threads(n: int | None = None) -> int:
    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return torch.get_num_threads()
