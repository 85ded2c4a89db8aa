"""Writes a synthetic decoder with Gemma-3-12B-like dimensions, for planning at scale.

The graph is a real decoder (embedding, RMSNorm, grouped-query attention with rotary embeddings
and a KV cache, gated-GELU MLP, output head over the last position) built with the onnx helper
API. Its weights live in a *sparse* external-data file: the file has the full size (tens of GB)
but occupies no disk, because `kiln compile --plan-only` must plan the model without reading a
single weight.

    python examples/synthetic/gemma_like.py --out /tmp/gemma12b [--layers 48]

Dimensions: hidden 3840, 48 layers, 16 query heads, 8 KV heads, head_dim 256 on sliding-window
layers and 512 on every sixth (full-attention) layer, MLP 15360, vocab 262144, bf16 weights.
Inputs: input_ids [batch, sequence], position_ids [batch, sequence], and per layer
past_key_values.{i}.key/value [batch, 8, past_sequence, head_dim]. Outputs: logits of the last
position [batch, 1, vocab] and present.{i}.key/value.
"""

import argparse
import os

import onnx
from onnx import TensorProto, helper

HIDDEN, HEADS, KV_HEADS, MLP, VOCAB = 3840, 16, 8, 15360, 262144
BF16 = TensorProto.BFLOAT16


class Weights:
    """Lays out external-data tensors one after another, 4096-aligned, without writing them."""

    def __init__(self, location):
        self.location, self.offset, self.inits = location, 0, []

    def add(self, name, dims):
        n = 2
        for d in dims:
            n *= d
        tensor = onnx.TensorProto()
        tensor.name, tensor.data_type = name, BF16
        tensor.dims.extend(dims)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", self.location), ("offset", str(self.offset)), ("length", str(n))):
            e = tensor.external_data.add()
            e.key, e.value = k, v
        self.inits.append(tensor)
        self.offset = (self.offset + n + 4095) // 4096 * 4096
        return name


def const_i64(nodes, name, values):
    nodes.append(helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", TensorProto.INT64, [len(values)], values)))
    return name


def rms_norm(nodes, w, x, name):
    """Decomposed RMSNorm as exporters write it (x * rsqrt(mean(x^2) + eps) * w), computed in f32."""
    xf = f"{name}_xf"
    nodes.append(helper.make_node("Cast", [x], [xf], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("Mul", [xf, xf], [f"{name}_sq"]))
    nodes.append(helper.make_node("ReduceMean", [f"{name}_sq", "axes_last"], [f"{name}_ms"], keepdims=1))
    nodes.append(helper.make_node("Add", [f"{name}_ms", "eps"], [f"{name}_mse"]))
    nodes.append(helper.make_node("Sqrt", [f"{name}_mse"], [f"{name}_rms"]))
    nodes.append(helper.make_node("Div", [xf, f"{name}_rms"], [f"{name}_n"]))
    nodes.append(helper.make_node("Cast", [f"{name}_n"], [f"{name}_nb"], to=BF16))
    nodes.append(helper.make_node("Mul", [f"{name}_nb", w], [f"{name}_out"]))
    return f"{name}_out"


def build(layers, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    data_name = "model.onnx.data"
    W = Weights(data_name)
    nodes, inputs, outputs = [], [], []
    inputs.append(helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]))
    inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]))
    inits = [
        helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-6]),
        helper.make_tensor("axes_last", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("half", BF16, [], [0.5]),
    ]
    emb = W.add("embed_tokens", [VOCAB, HIDDEN])
    nodes.append(helper.make_node("Gather", [emb, "input_ids"], ["h0"], axis=0))
    h = "h0"
    for i in range(layers):
        hd = 512 if (i + 1) % 6 == 0 else 256
        p = f"l{i}"
        x = rms_norm(nodes, W.add(f"{p}.in_norm", [HIDDEN]), h, f"{p}_ln1")
        q = f"{p}_q"
        nodes.append(helper.make_node("MatMul", [x, W.add(f"{p}.q_proj", [HIDDEN, HEADS * hd])], [q]))
        nodes.append(helper.make_node("MatMul", [x, W.add(f"{p}.k_proj", [HIDDEN, KV_HEADS * hd])], [f"{p}_k"]))
        nodes.append(helper.make_node("MatMul", [x, W.add(f"{p}.v_proj", [HIDDEN, KV_HEADS * hd])], [f"{p}_v"]))
        shape_q = const_i64(nodes, f"{p}_shape_q", [0, 0, HEADS, hd])
        shape_kv = const_i64(nodes, f"{p}_shape_kv", [0, 0, KV_HEADS, hd])
        for t, s in ((q, shape_q), (f"{p}_k", shape_kv), (f"{p}_v", shape_kv)):
            nodes.append(helper.make_node("Reshape", [t, s], [f"{t}_r"]))
            nodes.append(helper.make_node("Transpose", [f"{t}_r"], [f"{t}_r_t"], perm=[0, 2, 1, 3]))
        # Rotary embedding from position ids: cos/sin of positions × inverse frequencies.
        inv = f"{p}_inv_freq"
        inits.append(helper.make_tensor(inv, TensorProto.FLOAT, [hd // 2], [10000.0 ** (-2 * j / hd) for j in range(hd // 2)]))
        nodes.append(helper.make_node("Cast", ["position_ids"], [f"{p}_pos"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Unsqueeze", [f"{p}_pos", "axes_last"], [f"{p}_pos3"]))
        nodes.append(helper.make_node("Mul", [f"{p}_pos3", inv], [f"{p}_freqs"]))
        nodes.append(helper.make_node("Concat", [f"{p}_freqs", f"{p}_freqs"], [f"{p}_emb"], axis=-1))
        nodes.append(helper.make_node("Cos", [f"{p}_emb"], [f"{p}_cos_f"]))
        nodes.append(helper.make_node("Sin", [f"{p}_emb"], [f"{p}_sin_f"]))
        axes1 = const_i64(nodes, f"{p}_axes1", [1])
        for n in ("cos", "sin"):
            nodes.append(helper.make_node("Cast", [f"{p}_{n}_f"], [f"{p}_{n}_b"], to=BF16))
            nodes.append(helper.make_node("Unsqueeze", [f"{p}_{n}_b", axes1], [f"{p}_{n}"]))
        split = const_i64(nodes, f"{p}_split", [hd // 2, hd // 2])
        for t in (f"{q}_r_t", f"{p}_k_r_t"):
            nodes.append(helper.make_node("Split", [t, split], [f"{t}_a", f"{t}_b"], axis=-1))
            nodes.append(helper.make_node("Neg", [f"{t}_b"], [f"{t}_nb"]))
            nodes.append(helper.make_node("Concat", [f"{t}_nb", f"{t}_a"], [f"{t}_rot"], axis=-1))
            nodes.append(helper.make_node("Mul", [t, f"{p}_cos"], [f"{t}_c"]))
            nodes.append(helper.make_node("Mul", [f"{t}_rot", f"{p}_sin"], [f"{t}_s"]))
            nodes.append(helper.make_node("Add", [f"{t}_c", f"{t}_s"], [f"{t}_pe"]))
        for kv, src in (("key", f"{p}_k_r_t_pe"), ("value", f"{p}_v_r_t")):
            past = f"past_key_values.{i}.{kv}"
            inputs.append(helper.make_tensor_value_info(past, BF16, ["batch", KV_HEADS, "past_sequence", hd]))
            nodes.append(helper.make_node("Concat", [past, src], [f"present.{i}.{kv}"], axis=2))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kv}", BF16, ["batch", KV_HEADS, "total_sequence", hd]))
        # Grouped-query attention: repeat each KV head for HEADS / KV_HEADS query heads.
        rep = const_i64(nodes, f"{p}_rep", [1, HEADS // KV_HEADS, 1, 1, 1])
        ax2 = const_i64(nodes, f"{p}_ax2", [2])
        flat = const_i64(nodes, f"{p}_flat", [0, HEADS, -1, hd])
        for kv in ("key", "value"):
            nodes.append(helper.make_node("Unsqueeze", [f"present.{i}.{kv}", ax2], [f"{p}_{kv}5"]))
            nodes.append(helper.make_node("Tile", [f"{p}_{kv}5", rep], [f"{p}_{kv}5t"]))
            nodes.append(helper.make_node("Reshape", [f"{p}_{kv}5t", flat], [f"{p}_{kv}_all"]))
        nodes.append(helper.make_node("Transpose", [f"{p}_key_all"], [f"{p}_kT"], perm=[0, 1, 3, 2]))
        nodes.append(helper.make_node("MatMul", [f"{q}_r_t_pe", f"{p}_kT"], [f"{p}_scores"]))
        inits.append(helper.make_tensor(f"{p}_scale", BF16, [], [hd ** -0.5]))
        nodes.append(helper.make_node("Mul", [f"{p}_scores", f"{p}_scale"], [f"{p}_scaled"]))
        nodes.append(helper.make_node("Softmax", [f"{p}_scaled"], [f"{p}_probs"], axis=-1))
        nodes.append(helper.make_node("MatMul", [f"{p}_probs", f"{p}_value_all"], [f"{p}_ctx"]))
        nodes.append(helper.make_node("Transpose", [f"{p}_ctx"], [f"{p}_ctx_t"], perm=[0, 2, 1, 3]))
        merged = const_i64(nodes, f"{p}_merged", [0, 0, HEADS * hd])
        nodes.append(helper.make_node("Reshape", [f"{p}_ctx_t", merged], [f"{p}_ctx_m"]))
        nodes.append(helper.make_node("MatMul", [f"{p}_ctx_m", W.add(f"{p}.o_proj", [HEADS * hd, HIDDEN])], [f"{p}_attn"]))
        nodes.append(helper.make_node("Add", [h, f"{p}_attn"], [f"{p}_h1"]))
        x2 = rms_norm(nodes, W.add(f"{p}.post_norm", [HIDDEN]), f"{p}_h1", f"{p}_ln2")
        nodes.append(helper.make_node("MatMul", [x2, W.add(f"{p}.gate_proj", [HIDDEN, MLP])], [f"{p}_gate"]))
        nodes.append(helper.make_node("MatMul", [x2, W.add(f"{p}.up_proj", [HIDDEN, MLP])], [f"{p}_up"]))
        nodes.append(helper.make_node("Tanh", [f"{p}_gate"], [f"{p}_gate_act"]))  # gelu-tanh stand-in
        nodes.append(helper.make_node("Mul", [f"{p}_gate_act", f"{p}_up"], [f"{p}_mlp_in"]))
        nodes.append(helper.make_node("MatMul", [f"{p}_mlp_in", W.add(f"{p}.down_proj", [MLP, HIDDEN])], [f"{p}_mlp"]))
        nodes.append(helper.make_node("Add", [f"{p}_h1", f"{p}_mlp"], [f"{p}_out"]))
        h = f"{p}_out"
    xf = rms_norm(nodes, W.add("final_norm", [HIDDEN]), h, "final")
    starts, ends, axes = (const_i64(nodes, n, v) for n, v in (("last_s", [-1]), ("last_e", [2**62]), ("last_a", [1])))
    nodes.append(helper.make_node("Slice", [xf, starts, ends, axes], ["last_hidden"]))
    nodes.append(helper.make_node("MatMul", ["last_hidden", W.add("lm_head", [HIDDEN, VOCAB])], ["logits"]))
    outputs.insert(0, helper.make_tensor_value_info("logits", BF16, ["batch", 1, VOCAB]))
    graph = helper.make_graph(nodes, "gemma_like", inputs, outputs, inits + W.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="kiln-synthetic")
    model.ir_version = 9
    onnx.save(model, os.path.join(out_dir, "model.onnx"))
    with open(os.path.join(out_dir, data_name), "wb") as f:
        f.truncate(W.offset)  # sparse: full size, no blocks written
    print(f"wrote {out_dir}/model.onnx with {len(nodes)} nodes; weights {W.offset / 2**30:.1f} GiB (sparse)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=48)
    a = ap.parse_args()
    build(a.layers, a.out)
