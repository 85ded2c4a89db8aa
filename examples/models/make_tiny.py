"""Builds the small example models kiln ships, with seeded weights, and their reference outputs.

Run with a Python that has onnx, numpy and onnxruntime:
    python examples/models/make_tiny.py
Writes, next to this script:
    tiny_mlp.onnx          2-layer MLP with a symbolic batch dim
    tiny_mlp_input.npz     one input batch
    tiny_mlp_expected.npz  onnxruntime's outputs for it
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))


def tiny_mlp():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 32)).astype(np.float32) * 0.3
    b1 = rng.standard_normal(32).astype(np.float32) * 0.1
    w2 = rng.standard_normal((32, 4)).astype(np.float32) * 0.3
    b2 = rng.standard_normal(4).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"], name="fc2"),
        helper.make_node("Add", ["l0", "b2"], ["logits"], name="fc2_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 4]),
        ],
        [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-examples")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = os.path.join(HERE, "tiny_mlp.onnx")
    onnx.save(model, path)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    np.savez(os.path.join(HERE, "tiny_mlp_input.npz"), x=x)
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        logits, probs = sess.run(None, {"x": x})
        np.savez(os.path.join(HERE, "tiny_mlp_expected.npz"), logits=logits, probs=probs)
    except ImportError:
        print("onnxruntime not installed: tiny_mlp_expected.npz not written")


if __name__ == "__main__":
    tiny_mlp()
