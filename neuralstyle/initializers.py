"""First values for Keras variables without Keras's random initializers.

Keras gives every new variable a value from its initializer as soon as the variable exists; its
Glorot-uniform initializer draws from JAX's threefry generator in one compiled program per
shape.  For VGG19 that is 20 M numbers in 8 programs, all thrown away when the ImageNet weights
are loaded: the first ``VGG("vgg19", weights="imagenet")`` of a process took 4.0-4.2 s with them
and 0.48-0.55 s without (quiet 2-core AMD EPYC, AVX2; 11-13 s against 0.8-1.2 s while a test
suite ran beside it).  Here models are built with their variables still empty
(:func:`built_without_values`), given NumPy values (:func:`set_first_values`), and random weights
are drawn with NumPy (:func:`glorot_uniform`).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from typing import Callable  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402


def built_without_values(build: Callable[[], keras.Model]) -> keras.Model:
    """``build()`` inside ``keras.StatelessScope(initialize_variables=False)``: the model's
    variables exist (shapes, dtypes, names) but hold no value until :func:`set_first_values`,
    which must follow before the model is used."""
    with keras.StatelessScope(initialize_variables=False):
        return build()


def set_first_values(model: keras.Model, first_value: Callable[[keras.Variable], np.ndarray]) -> None:
    """Initialize the variables of a model from :func:`built_without_values` with
    ``first_value(variable)``, an array of the variable's shape (Keras casts it to the variable's
    dtype), through Keras's own deferred initialization: it runs when the outermost stateless
    scope closes, and leaves no variable waiting."""
    for variable in model.weights:
        value = np.asarray(first_value(variable))
        if value.shape != tuple(variable.shape):
            raise ValueError(f"first value of {variable.path} has shape {value.shape}, "
                             f"expected {tuple(variable.shape)}")
        # the initializer Keras calls once, at the deferred initialization (a private attribute:
        # keras.Variable takes an initializer only when it is created)
        variable._initializer = lambda shape, dtype=None, value=value: value
    with keras.StatelessScope():
        pass


def zeros(variable: keras.Variable) -> np.ndarray:
    """Zeros of ``variable``'s shape: the first value of weights that are set right after."""
    return np.zeros(tuple(variable.shape), np.float32)


def glorot_uniform(model: keras.Model, seed: int) -> None:
    """Glorot-uniform kernels (Keras's default initializer; Glorot and Bengio 2010: U(-l, l) with
    l = sqrt(6 / (fan_in + fan_out)), fans counted over the receptive field) drawn with NumPy from
    ``seed``, for every ``Conv2D`` and ``DepthwiseConv2D`` of ``model`` (a depthwise kernel
    ``(kh, kw, C, m)`` has fan-in ``kh kw``, since each output sees one channel, and fan-out
    ``kh kw m``).  Biases are left as they are (Keras's default: zeros).

    The same distribution as Keras's initializer, not its numbers: drawn at once, reproducibly,
    without the compiled programs and without touching the global Keras seed."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            kh, kw, cin, cout = layer.kernel.shape
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                cin = 1
            limit = np.sqrt(6.0 / (kh * kw * cin + kh * kw * cout))
            layer.kernel.assign(rng.uniform(-limit, limit, tuple(layer.kernel.shape)).astype(np.float32))
