"""benchmarks/arbitrary.py: the ONNX shape edit that lets the release's fixed-size int8 graph run
at other sizes (a tiny hand-made graph; no weights, no network)."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper

from benchmarks.arbitrary import free_spatial_dims


def tiny_model():
    """NHWC image (1, 4, 4, 3) and embedding (1, 1, 1, 2) -> image * 2 + sum(embedding), with a
    fixed-shape intermediate in value_info, like the release's graph."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4, 4, 3])
    embedding = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 1, 1, 2])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 3])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [helper.make_node("Mul", ["image", "two"], ["doubled"]),
             helper.make_node("ReduceSum", ["embedding"], ["total"], keepdims=1),
             helper.make_node("Add", ["doubled", "total"], ["out"])]
    graph = helper.make_graph(nodes, "tiny", [image, embedding], [out], initializer=[two],
                              value_info=[helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [1, 4, 4, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_free_spatial_dims_edits_only_image_height_and_width():
    model, edited = free_spatial_dims(tiny_model())
    graph = model.graph
    assert edited == ["image", "out"]
    assert dims(graph.input[0]) == [1, "height", "width", 3]
    assert dims(graph.output[0]) == [1, "height", "width", 3]
    assert dims(graph.input[1]) == [1, 1, 1, 2]  # the embedding keeps its shape
    (info,) = graph.value_info
    assert not info.type.tensor_type.HasField("shape") and info.type.tensor_type.elem_type == TensorProto.FLOAT
    onnx.checker.check_model(model)


def test_edited_graph_runs_at_other_sizes():
    ort = pytest.importorskip("onnxruntime")
    embedding = np.array([0.25, 0.5], np.float32).reshape(1, 1, 1, 2)
    fixed = ort.InferenceSession(tiny_model().SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 8, 6, 3), np.float32)
    with pytest.raises(Exception, match="dimensions"):
        fixed.run(None, {"image": x, "embedding": embedding})
    free = ort.InferenceSession(free_spatial_dims(tiny_model())[0].SerializeToString(),
                                providers=["CPUExecutionProvider"])
    (out,) = free.run(None, {"image": x, "embedding": embedding})
    np.testing.assert_allclose(out, 2 * x + 0.75, rtol=1e-6)
