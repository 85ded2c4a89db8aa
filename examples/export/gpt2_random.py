#!/usr/bin/env python3
"""Write a GPT-2-architecture ONNX export folder with seeded random weights, without torch.

Why this exists: bench/compare.sh compares kiln with onnxruntime on GPT-2 124M
as well as SmolLM2, but neither a model hub nor torch is at hand. Speed does
not depend on the weights' values, so this script draws them, biases included,
from a seeded N(0, 0.02) (LayerNorms: gamma 1, beta 0, as transformers
initialises them) and builds the graph with `onnx.helper`, reusing
gguf_llama.py's Graph, attention mask, I/O conventions and onnxruntime check
(so it runs in the venv of scripts/py-gen.sh: gguf_llama imports `gguf`).
The folder looks like a transformers/optimum causal-LM export with a KV cache:

    model.onnx, model.onnx.data   opset 17, plain ai.onnx ops, float32 weights
    config.json                   HF GPT2Config-style
    generation_config.json

No tokenizer: kiln compiles without one (`kiln bench` feeds token ids).

Graph interface: as gguf_llama.py's (input_ids, attention_mask, position_ids,
past_key_values.{i}.key/.value in; logits, present.{i}.key/.value out), with
kv_heads = heads. The layers follow what torch.onnx writes for transformers'
GPT2LMHeadModel (see tests/fixtures/gpt2-ts-kv): LayerNormalization nodes,
the fused c_attn product split into q, k, v, gelu_new as elementwise ops,
learned positions gathered by position_ids, and the lm_head tied to wte
through a Transpose node. Linears are written as both torch exporters write
GPT-2's Conv1D: Reshape to 2-D, Gemm with the [in, out] weight under its HF
name, Reshape back; --matmul writes MatMul + Add instead.

Usage:
    python gpt2_random.py --out DIR [--check]                              # GPT-2 124M, ~500 MB
    python gpt2_random.py --out DIR --layers 2 --hidden 64 --heads 4 --vocab 512 --check
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from gguf_llama import (
    CHECK_TOLERANCE,
    IR_VERSION,
    OPSET,
    Graph,
    OrtLlama,
    attention_bias,
    check_left_padding,
    greedy,
    io_specs,
    log,
    save_model,
    split_heads,
    write_json,
)

INIT_STD = 0.02  # transformers' GPT2Config.initializer_range
CHECK_PROMPT_LEN = 7
CHECK_MAX_NEW_TOKENS = 4


@dataclass(frozen=True)
class Gpt2Params:
    layers: int = 12
    hidden: int = 768
    heads: int = 12
    vocab: int = 50257
    positions: int = 1024
    eps: float = 1e-5
    gemm: bool = True  # linears as torch.onnx writes Conv1D, see linear()

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_heads(self) -> int:  # gguf_llama's io_specs and OrtLlama read this
        return self.heads

    @property
    def eos_id(self) -> int:  # GPT-2's <|endoftext|> is the last token (50256)
        return self.vocab - 1


class RandomWeights:
    """Registers each weight in the graph as it is drawn, in graph order, from one seeded generator."""

    def __init__(self, g: Graph, seed: int) -> None:
        self.g = g
        self.rng = np.random.default_rng(seed)

    def normal(self, name: str, *shape: int) -> str:
        array = self.rng.standard_normal(shape, dtype=np.float32)
        array *= np.float32(INIT_STD)
        return self.g.weight(name, array)

    def filled(self, name: str, value: float, *shape: int) -> str:
        return self.g.weight(name, np.full(shape, value, np.float32))


def layer_norm(g: Graph, w: RandomWeights, x: str, module: str, p: Gpt2Params) -> str:
    with g.scope(module.rsplit(".", 1)[-1]):
        gamma = w.filled(f"{module}.weight", 1.0, p.hidden)
        beta = w.filled(f"{module}.bias", 0.0, p.hidden)
        return g.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=p.eps)


def linear(g: Graph, w: RandomWeights, x: str, module: str, n_in: int, n_out: int, p: Gpt2Params) -> str:
    # Biases random too, not transformers' zeros: no runtime gets to skip an Add of zeros.
    with g.scope(module.rsplit(".", 1)[-1]):
        weight, bias = w.normal(f"{module}.weight", n_in, n_out), w.normal(f"{module}.bias", n_out)
        if not p.gemm:
            return g.op("Add", g.op("MatMul", x, weight), bias)
        # torch.onnx's rendering of Conv1D's addmm: flatten to 2-D, Gemm, restore the leading dims.
        flat = g.op("Gemm", g.op("Reshape", x, g.const([-1, n_in])), weight, bias)
        return g.op("Reshape", flat, g.op("Concat", g.op("Shape", x, end=-1), g.const([n_out]), axis=0))


def gelu_new(g: Graph, x: str) -> str:
    # 0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x^3))), node for node as torch.onnx writes NewGELUActivation.
    with g.scope("act"):
        half = g.op("Mul", x, g.const(0.5, np.float32))
        cube = g.op("Pow", x, g.const(3.0, np.float32))
        inner = g.op("Add", x, g.op("Mul", cube, g.const(0.044715, np.float32)))
        t = g.op("Tanh", g.op("Mul", inner, g.const(np.sqrt(2.0 / np.pi), np.float32)))
        return g.op("Mul", half, g.op("Add", t, g.const(1.0, np.float32)))


def split(g: Graph, x: str, sizes: list[int], axis: int) -> list[str]:
    # Graph.op names one output; Split has one per part, named as torch names them.
    first = g.op("Split", x, g.const(sizes), axis=axis)
    rest = [first.replace("_output_0", f"_output_{j}") for j in range(1, len(sizes))]
    g.nodes[-1].output.extend(rest)
    return [first, *rest]


def attention(g: Graph, w: RandomWeights, i: int, x: str, p: Gpt2Params, bias: str) -> str:
    pre = f"transformer.h.{i}.attn"
    with g.scope("attn"):
        qkv = linear(g, w, x, f"{pre}.c_attn", p.hidden, 3 * p.hidden, p)
        q, k, v = (split_heads(g, part, p.heads, p.head_dim) for part in split(g, qkv, [p.hidden] * 3, axis=2))
        # The cache grows by Concat(past, new) on the sequence axis; kiln's runtime looks for this pattern.
        k_all = g.op("Concat", f"past_key_values.{i}.key", k, axis=2, out=f"present.{i}.key")
        v_all = g.op("Concat", f"past_key_values.{i}.value", v, axis=2, out=f"present.{i}.value")
        scores = g.op("MatMul", q, g.op("Transpose", k_all, perm=[0, 1, 3, 2]))
        scores = g.op("Mul", scores, g.const(p.head_dim**-0.5, np.float32))
        probs = g.op("Softmax", g.op("Add", scores, bias), axis=-1)
        # Eager attention casts the probabilities to v's dtype; torch.onnx keeps the (no-op) Cast.
        probs = g.op("Cast", probs, to=onnx.TensorProto.FLOAT)
        ctx = g.op("Transpose", g.op("MatMul", probs, v_all), perm=[0, 2, 1, 3])
        merged = g.op("Reshape", ctx, g.const([0, 0, p.hidden]))
        return linear(g, w, merged, f"{pre}.c_proj", p.hidden, p.hidden, p)


def mlp(g: Graph, w: RandomWeights, i: int, x: str, p: Gpt2Params) -> str:
    pre = f"transformer.h.{i}.mlp"
    with g.scope("mlp"):
        h = gelu_new(g, linear(g, w, x, f"{pre}.c_fc", p.hidden, 4 * p.hidden, p))
        return linear(g, w, h, f"{pre}.c_proj", 4 * p.hidden, p.hidden, p)


def build_model(p: Gpt2Params, seed: int) -> onnx.ModelProto:
    g = Graph()
    w = RandomWeights(g, seed)
    wte = w.normal("transformer.wte.weight", p.vocab, p.hidden)
    wpe = w.normal("transformer.wpe.weight", p.positions, p.hidden)
    bias = attention_bias(g, "input_ids", "attention_mask")
    with g.scope("transformer"):
        with g.scope("wte"):
            tokens = g.op("Gather", wte, "input_ids", axis=0)
        with g.scope("wpe"):
            positions = g.op("Gather", wpe, "position_ids", axis=0)
        x = g.op("Add", tokens, positions)
        for i in range(p.layers):
            with g.scope(f"h.{i}"):
                x = g.op("Add", x, attention(g, w, i, layer_norm(g, w, x, f"transformer.h.{i}.ln_1", p), p, bias))
                x = g.op("Add", x, mlp(g, w, i, layer_norm(g, w, x, f"transformer.h.{i}.ln_2", p), p))
        x = layer_norm(g, w, x, "transformer.ln_f", p)
    with g.scope("lm_head"):
        g.op("MatMul", x, g.op("Transpose", wte, perm=[1, 0]), out="logits")

    inputs, outputs = io_specs(p)
    graph = helper.make_graph(g.nodes, "gpt2", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kiln gpt2_random.py"
    )
    model.ir_version = IR_VERSION
    return model


def hf_config(p: Gpt2Params) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_embd": p.hidden,
        "n_layer": p.layers,
        "n_head": p.heads,
        "n_inner": None,
        "n_positions": p.positions,
        "vocab_size": p.vocab,
        "layer_norm_epsilon": p.eps,
        "activation_function": "gelu_new",
        "initializer_range": INIT_STD,
        "scale_attn_weights": True,
        "bos_token_id": p.eos_id,
        "eos_token_id": p.eos_id,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def generation_config(p: Gpt2Params) -> dict:
    return {"bos_token_id": p.eos_id, "eos_token_id": p.eos_id, "max_length": p.positions}


def export(p: Gpt2Params, seed: int, out: Path) -> None:
    start = time.perf_counter()
    save_model(build_model(p, seed), out)
    write_json(out / "config.json", hf_config(p))
    write_json(out / "generation_config.json", generation_config(p))
    log(f"export: wrote {out} in {time.perf_counter() - start:.1f}s ({p})")


def check(out: Path, p: Gpt2Params, seed: int) -> None:
    """The cached decode steps must agree with a full recompute, and left padding must not leak."""
    model = OrtLlama(out, p)
    prompt = [int(t) for t in np.random.default_rng(seed).integers(0, p.vocab, CHECK_PROMPT_LEN)]
    generated, last_logits = greedy(model, prompt, eos_id=-1, max_new=CHECK_MAX_NEW_TOKENS)
    cache_diff = float(np.abs(model.full(prompt + generated[:-1]) - last_logits).max())
    pad_diff = check_left_padding(model, prompt, p.eos_id)
    log(f"check: max |logits| diff cached vs recomputed {cache_diff:.2e}, left-padded vs alone {pad_diff:.2e}")
    failures = [
        f"{what} differ by {diff:.2e} > {CHECK_TOLERANCE:g}"
        for what, diff in (("cached and recomputed logits", cache_diff), ("left-padded logits", pad_diff))
        if not diff <= CHECK_TOLERANCE
    ]
    if failures:
        raise SystemExit("check failed: " + "; ".join(failures))


def main() -> None:
    defaults = Gpt2Params()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created if missing)")
    parser.add_argument("--layers", type=int, default=defaults.layers)
    parser.add_argument("--hidden", type=int, default=defaults.hidden, help="n_embd; the MLP is 4x wider")
    parser.add_argument("--heads", type=int, default=defaults.heads)
    parser.add_argument("--vocab", type=int, default=defaults.vocab, help="the last id is bos/eos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--matmul", action="store_true", help="linears as MatMul + Add, not torch.onnx's Gemm")
    parser.add_argument("--check", action="store_true", help="cached decoding vs recomputing, in onnxruntime")
    args = parser.parse_args()
    if args.hidden % args.heads:
        parser.error(f"--hidden {args.hidden} is not a multiple of --heads {args.heads}")

    p = Gpt2Params(layers=args.layers, hidden=args.hidden, heads=args.heads, vocab=args.vocab, gemm=not args.matmul)
    export(p, args.seed, args.out)
    if args.check:
        start = time.perf_counter()
        check(args.out, p, args.seed)
        log(f"check: passed in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
