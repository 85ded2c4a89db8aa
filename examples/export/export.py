#!/usr/bin/env python3
"""Export small randomly-initialised transformer models to ONNX for kiln tests.

Nothing is downloaded: every model is built from a transformers config object
with seeded random weights, so the output is reproducible offline.

For each model and export variant this writes DIR/<model>-<variant>/ with:

    model.onnx        the exported graph (dynamo variants: + model.onnx.data)
    config.json       model.config.to_json_file(...)
    inputs.npz        fixed seeded inputs, keyed by ONNX input name
    expected.npz      onnxruntime's outputs for inputs.npz, keyed by output name
    greedy.json       (causal LMs only) prompt ids + 32 greedy tokens (torch,
                      full recompute; checked against onnxruntime)

Variants:
    ts         TorchScript exporter (dynamo=False), opset 17, single file
    dynamo     torch.export-based exporter (dynamo=True), opset 18, external data
    ts-kv      like ts, with a flat past/present KV cache (causal LMs only)
    dynamo-kv  like dynamo, with a flat past/present KV cache (causal LMs only)

Usage:
    python export.py --out tests/fixtures --models gpt2,llama,bert --size tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import (
    BertConfig,
    BertModel,
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

SEED = 0
TOL = 1e-4
REF_SEQ = 7  # reference prompt length (batch 1)
GREEDY_TOKENS = 32
STRIP_STACK_TRACES = True  # --keep-stack-traces turns this off

SIZES = {
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vocab=512, positions=128),
    "small": dict(hidden=256, layers=4, heads=8, kv_heads=4, inter=688, vocab=4096, positions=512),
}


# --------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------


def build_model(name: str, size: str, attn: str) -> torch.nn.Module:
    s = SIZES[size]
    torch.manual_seed(SEED)
    if name == "gpt2":
        cfg = GPT2Config(
            n_embd=s["hidden"],
            n_layer=s["layers"],
            n_head=s["heads"],
            n_inner=None,  # 4 * n_embd
            vocab_size=s["vocab"],
            n_positions=s["positions"],
            bos_token_id=0,
            eos_token_id=0,
            # With the default 0.02 init and tied embeddings the random model
            # just repeats the last prompt token forever, which makes a useless
            # greedy reference; a wider init gives varied continuations.
            initializer_range=0.2,
            attn_implementation=attn,
        )
        model = GPT2LMHeadModel(cfg)
    elif name == "llama":
        cfg = LlamaConfig(
            hidden_size=s["hidden"],
            intermediate_size=s["inter"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=s["kv_heads"],
            vocab_size=s["vocab"],
            max_position_embeddings=s["positions"],
            hidden_act="silu",
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            attn_implementation=attn,
        )
        model = LlamaForCausalLM(cfg)
    elif name == "bert":
        cfg = BertConfig(
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            intermediate_size=s["inter"],
            vocab_size=s["vocab"],
            max_position_embeddings=s["positions"],
            attn_implementation=attn,
        )
        model = BertModel(cfg, add_pooling_layer=False)
    else:
        raise ValueError(f"unknown model {name!r}")
    model.eval()
    return model


def is_causal(name: str) -> bool:
    return name in ("gpt2", "llama")


def kv_geometry(model) -> tuple[int, int, int]:
    """(num_layers, kv_heads, head_dim) for a causal LM."""
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    n_heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return n_layers, kv_heads, head_dim


# --------------------------------------------------------------------------
# Wrappers that expose plain tensors to the exporters
# --------------------------------------------------------------------------


class PlainWrapper(torch.nn.Module):
    """(input_ids, attention_mask) -> logits / last_hidden_state, no cache."""

    def __init__(self, model, causal: bool):
        super().__init__()
        self.model = model
        self.causal = causal

    def forward(self, input_ids, attention_mask):
        if self.causal:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return out.logits
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state


class KVWrapper(torch.nn.Module):
    """(input_ids, attention_mask, position_ids, k0, v0, k1, v1, ...) ->
    (logits, present k0, present v0, ...).

    Builds a transformers DynamicCache from the flat past tensors and flattens
    the updated cache back into tensors, so exporters only see plain tensors.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.n_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        assert len(past) == 2 * self.n_layers
        cache = DynamicCache(config=self.model.config)
        for i in range(self.n_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        presents = []
        for layer in out.past_key_values.layers:
            presents.append(layer.keys)
            presents.append(layer.values)
        return (out.logits, *presents)


def kv_names(n_layers: int) -> tuple[list[str], list[str]]:
    past, present = [], []
    for i in range(n_layers):
        past += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        present += [f"present.{i}.key", f"present.{i}.value"]
    return past, present


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


def make_plain_inputs(vocab: int, batch: int, seq: int, seed: int, pad_left: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g, dtype=torch.int64)
    mask = torch.ones((batch, seq), dtype=torch.int64)
    if pad_left and batch > 1:
        mask[1, :pad_left] = 0  # left-pad the second row
    return ids, mask


def make_kv_inputs(model, batch: int, past_len: int, seq: int, seed: int):
    """Random ids; past K/V computed by the model itself from past_len random tokens."""
    vocab = model.config.vocab_size
    n_layers, kv_heads, head_dim = kv_geometry(model)
    g = torch.Generator().manual_seed(seed)
    all_ids = torch.randint(0, vocab, (batch, past_len + seq), generator=g, dtype=torch.int64)
    if past_len > 0:
        with torch.no_grad():
            out = model(
                input_ids=all_ids[:, :past_len],
                attention_mask=torch.ones((batch, past_len), dtype=torch.int64),
                use_cache=True,
            )
        past = []
        for layer in out.past_key_values.layers:
            past += [layer.keys.detach().clone(), layer.values.detach().clone()]
    else:
        past = [torch.zeros((batch, kv_heads, 0, head_dim), dtype=torch.float32) for _ in range(2 * n_layers)]
    ids = all_ids[:, past_len:]
    mask = torch.ones((batch, past_len + seq), dtype=torch.int64)
    pos = torch.arange(past_len, past_len + seq, dtype=torch.int64).unsqueeze(0).expand(batch, seq).contiguous()
    return (ids, mask, pos, *past)


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------


def export_variant(model, name: str, variant: str, path: Path) -> dict:
    """Export one variant to path/model.onnx. Returns io metadata."""
    causal = is_causal(name)
    kv = variant.endswith("-kv")
    dynamo = variant.startswith("dynamo")
    out0 = "logits" if causal else "last_hidden_state"

    if kv:
        n_layers, _, _ = kv_geometry(model)
        wrapper = KVWrapper(model).eval()
        # Trace/export example: batch 2, past 4, new 3 (avoid 0/1 sizes so
        # nothing is specialised to a constant).
        args = make_kv_inputs(model, batch=2, past_len=4, seq=3, seed=1234)
        past_names, present_names = kv_names(n_layers)
        input_names = ["input_ids", "attention_mask", "position_ids", *past_names]
        output_names = [out0, *present_names]
    else:
        wrapper = PlainWrapper(model, causal).eval()
        args = make_plain_inputs(model.config.vocab_size, batch=2, seq=5, seed=1234)
        input_names = ["input_ids", "attention_mask"]
        output_names = [out0]

    f = path / "model.onnx"
    if not dynamo:
        dyn = {
            "input_ids": {0: "batch", 1: "sequence"},
            out0: {0: "batch", 1: "sequence"},
        }
        if kv:
            dyn["attention_mask"] = {0: "batch", 1: "past_sequence+sequence"}
            dyn["position_ids"] = {0: "batch", 1: "sequence"}
            for n in past_names:
                dyn[n] = {0: "batch", 2: "past_sequence"}
            for n in present_names:
                dyn[n] = {0: "batch", 2: "past_sequence+sequence"}
        else:
            dyn["attention_mask"] = {0: "batch", 1: "sequence"}
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                args,
                str(f),
                dynamo=False,
                opset_version=17,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dyn,
                do_constant_folding=True,
            )
    else:
        batch = torch.export.Dim("batch", min=1, max=1024)
        seq = torch.export.Dim("sequence", min=1, max=model.config.max_position_embeddings)
        if kv:
            past = torch.export.Dim("past_sequence", min=0, max=model.config.max_position_embeddings)
            shapes = [
                {0: batch, 1: seq},  # input_ids
                # past + seq can't be expressed as a derived Dim (only Dim+int is
                # supported), so let torch.export infer this axis.
                {0: batch, 1: torch.export.Dim.DYNAMIC},  # attention_mask
                {0: batch, 1: seq},  # position_ids
            ]
            # *past is a single var-positional entry for torch.export: nest it.
            dynamic_shapes = (*shapes, tuple({0: batch, 2: past} for _ in past_names))
        else:
            dynamic_shapes = ({0: batch, 1: seq}, {0: batch, 1: seq})
        with torch.no_grad():
            prog = torch.onnx.export(
                wrapper,
                args,
                dynamo=True,
                opset_version=18,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                optimize=True,
            )
        rename_dynamo_dims(prog, kv)
        if STRIP_STACK_TRACES:
            strip_stack_traces(prog)
        prog.save(str(f), external_data=True)
    return dict(input_names=input_names, output_names=output_names, wrapper=wrapper)


def rename_dynamo_dims(prog, kv: bool) -> None:
    """Make the dynamo graph's symbolic dim names match the ts variants.

    The Dim names (batch, sequence, past_sequence) carry through, but the
    attention_mask axis of the kv variants is an inferred symbol (e.g. "s23")
    and derived output dims are spelled "past_sequence + sequence". Rename
    the former and drop spaces, so every variant says past_sequence+sequence.
    """
    import onnx_ir as ir

    graph = prog.model.graph
    rename = {}
    if kv:
        for v in graph.inputs:
            if v.name == "attention_mask" and v.shape is not None:
                d = v.shape[1]
                if isinstance(d, ir.SymbolicDim) and d.value is not None:
                    rename[str(d.value)] = "past_sequence+sequence"
    for v in list(graph.inputs) + list(graph.outputs):
        if v.shape is None:
            continue
        dims, changed = [], False
        for d in v.shape:
            if isinstance(d, ir.SymbolicDim) and d.value is not None:
                name = rename.get(str(d.value), str(d.value)).replace(" ", "")
                if name != d.value:
                    d, changed = ir.SymbolicDim(name), True
            dims.append(d)
        if changed:
            v.shape = ir.Shape(dims)


def strip_stack_traces(prog) -> int:
    """Drop the per-node pkg.torch.onnx.stack_trace metadata (it holds absolute
    paths of this machine and is ~40% of the .onnx size). Other metadata kept."""
    n = 0
    for node in prog.model.graph.all_nodes():
        if node.metadata_props.pop("pkg.torch.onnx.stack_trace", None) is not None:
            n += 1
    return n


# --------------------------------------------------------------------------
# Verification & references
# --------------------------------------------------------------------------


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path / "model.onnx"), so, providers=["CPUExecutionProvider"])


def run_both(sess, wrapper, names, args):
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    ort_out = sess.run(None, feeds)
    with torch.no_grad():
        t_out = wrapper(*args)
    if isinstance(t_out, torch.Tensor):
        t_out = (t_out,)
    diff = 0.0
    for o, t in zip(ort_out, t_out):
        t = t.numpy()
        if o.shape != t.shape:
            raise AssertionError(f"shape mismatch: onnxruntime {o.shape} vs torch {t.shape}")
        if o.size:
            diff = max(diff, float(np.max(np.abs(o - t))))
    return feeds, ort_out, diff


def greedy_torch(model, prompt: torch.Tensor, n: int) -> tuple[list[int], float]:
    """Greedy decode with full recompute. Also returns the smallest gap between
    the best and second-best logit over all steps (how robust the reference is
    to small numeric differences)."""
    ids = prompt.clone()
    margin = float("inf")
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
            top2 = logits[0, -1].topk(2).values
            margin = min(margin, float(top2[0] - top2[1]))
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids[0, prompt.shape[1]:].tolist(), margin


def greedy_ort_plain(sess, prompt: np.ndarray, n: int) -> list[int]:
    ids = prompt.copy()
    for _ in range(n):
        (logits,) = sess.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        nxt = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        ids = np.concatenate([ids, nxt], axis=1)
    return ids[0, prompt.shape[1]:].tolist()


def greedy_ort_kv(sess, model, prompt: np.ndarray, n: int) -> list[int]:
    n_layers, kv_heads, head_dim = kv_geometry(model)
    past_names, present_names = kv_names(n_layers)
    b = prompt.shape[0]
    past = [np.zeros((b, kv_heads, 0, head_dim), np.float32) for _ in past_names]
    ids = prompt
    total = 0
    gen = []
    for _ in range(n):
        s = ids.shape[1]
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones((b, total + s), np.int64),
            "position_ids": np.arange(total, total + s, dtype=np.int64)[None, :].repeat(b, 0),
        }
        feeds.update(dict(zip(past_names, past)))
        outs = sess.run(None, feeds)
        logits, past = outs[0], outs[1:]
        total += s
        nxt = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        gen.append(int(nxt[0, 0]))
        ids = nxt
    return gen


def op_counts(path: Path) -> dict[str, int]:
    m = onnx.load(str(path / "model.onnx"), load_external_data=False)
    c = Counter()

    def walk(g):
        for node in g.node:
            c[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"] += 1
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        walk(sg)

    walk(m.graph)
    for fn in m.functions:  # local functions, if any
        for node in fn.node:
            c[f"(fn){node.op_type}"] += 1
    return dict(sorted(c.items()))


def io_summary(path: Path) -> str:
    m = onnx.load(str(path / "model.onnx"), load_external_data=False)

    def fmt(v):
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else str(d.dim_value) for d in t.shape.dim]
        return f"{v.name}:{onnx.TensorProto.DataType.Name(t.elem_type).lower()}[{','.join(dims)}]"

    ins = ", ".join(fmt(v) for v in m.graph.input)
    outs = ", ".join(fmt(v) for v in m.graph.output)
    return f"inputs  {ins}\n    outputs {outs}\n    opset {[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]}"


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def process(name: str, variant: str, model, out_dir: Path, greedy_ref: dict | None, summary: list) -> None:
    folder = out_dir / f"{name}-{variant}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    print(f"\n=== {folder.name} ===", flush=True)
    t0 = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = export_variant(model, name, variant, folder)
    t_export = time.time() - t0
    seen = set()
    for w in caught:
        key = (w.category.__name__, str(w.message).splitlines()[0][:200])
        if key not in seen:
            seen.add(key)
            where = f"{Path(w.filename).name}:{w.lineno}"
            print(f"  [warning] {key[0]} ({where}): {key[1]}")
    model.config.to_json_file(str(folder / "config.json"))

    sess = ort_session(folder)
    wrapper = meta["wrapper"]
    names = meta["input_names"]
    kv = variant.endswith("-kv")
    vocab = model.config.vocab_size

    # 1. extra dynamic-shape checks against torch (not saved)
    if kv:
        checks = [
            ("b2 past4 seq3", make_kv_inputs(model, 2, 4, 3, seed=11)),
            ("b3 past9 seq1", make_kv_inputs(model, 3, 9, 1, seed=12)),
            ("b1 past0 seq5", make_kv_inputs(model, 1, 0, 5, seed=13)),
        ]
    else:
        checks = [
            ("b2 seq5 left-pad", make_plain_inputs(vocab, 2, 5, seed=11, pad_left=2)),
            ("b3 seq11", make_plain_inputs(vocab, 3, 11, seed=12)),
        ]
    worst = 0.0
    for label, args in checks:
        _, _, d = run_both(sess, wrapper, names, args)
        print(f"  check {label:18s} max|ort-torch| = {d:.3e}")
        worst = max(worst, d)

    # 2. reference inputs: batch 1, seq 7 (kv: empty past)
    if kv:
        ref_args = make_kv_inputs(model, 1, 0, REF_SEQ, seed=SEED)
    else:
        ref_args = make_plain_inputs(vocab, 1, REF_SEQ, seed=SEED)
    feeds, ort_out, d = run_both(sess, wrapper, names, ref_args)
    print(f"  ref   {'b1 seq7' + (' past0' if kv else ''):18s} max|ort-torch| = {d:.3e}")
    worst = max(worst, d)
    np.savez(folder / "inputs.npz", **feeds)
    out_names = [o.name for o in sess.get_outputs()]
    np.savez(folder / "expected.npz", **dict(zip(out_names, ort_out)))

    status = "ok" if worst < TOL else f"FAIL (max diff {worst:.3e} >= {TOL})"

    # 3. greedy reference
    if is_causal(name):
        prompt = ref_args[0].numpy()
        if kv:
            gen = greedy_ort_kv(sess, model, prompt, GREEDY_TOKENS)
        else:
            gen = greedy_ort_plain(sess, prompt, GREEDY_TOKENS)
        match = gen == greedy_ref["generated_ids"]
        print(f"  greedy ({'kv loop' if kv else 'full recompute'}) in onnxruntime matches torch greedy: {match}")
        if not match:
            status += "; greedy mismatch"
        with open(folder / "greedy.json", "w") as fh:
            json.dump(greedy_ref, fh)
            fh.write("\n")

    print("    " + io_summary(folder))
    ops = op_counts(folder)
    print(f"  ops: {ops}")
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    print(f"  files: {files}")
    print(f"  export {t_export:.1f}s, total {time.time() - t0:.1f}s, status {status}")
    summary.append((folder.name, status, worst, t_export, ops))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--models", default="gpt2,llama,bert", help="comma-separated subset of gpt2,llama,bert")
    ap.add_argument("--size", default="tiny", choices=sorted(SIZES))
    ap.add_argument(
        "--variants", default="ts,dynamo,ts-kv,dynamo-kv", help="comma-separated subset of ts,dynamo,ts-kv,dynamo-kv"
    )
    ap.add_argument(
        "--attn", default="eager", choices=["eager", "sdpa"], help="transformers attention implementation (default eager)"
    )
    ap.add_argument(
        "--keep-stack-traces",
        action="store_true",
        help="keep the dynamo exporter's per-node stack-trace metadata (machine-specific paths)",
    )
    a = ap.parse_args(argv)
    global STRIP_STACK_TRACES
    STRIP_STACK_TRACES = not a.keep_stack_traces

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    a.out.mkdir(parents=True, exist_ok=True)
    print(
        f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
        f"onnx {onnx.__version__}, onnxruntime {ort.__version__}"
    )
    t_start = time.time()
    summary: list = []
    skipped: list = []
    for name in [m.strip() for m in a.models.split(",") if m.strip()]:
        model = build_model(name, a.size, a.attn)
        nparams = sum(p.numel() for p in model.parameters())
        print(f"\n##### {name} ({a.size}, {nparams} parameters, attn={a.attn})")
        greedy_ref = None
        if is_causal(name):
            prompt, _ = make_plain_inputs(model.config.vocab_size, 1, REF_SEQ, seed=SEED)
            gen, margin = greedy_torch(model, prompt, GREEDY_TOKENS)
            greedy_ref = {"prompt_ids": prompt[0].tolist(), "generated_ids": gen, "min_top2_logit_margin": round(margin, 6)}
            print(f"torch greedy: {gen} (min top-2 logit margin {margin:.2e})")
        for variant in [v.strip() for v in a.variants.split(",") if v.strip()]:
            if variant.endswith("-kv") and not is_causal(name):
                continue
            try:
                process(name, variant, model, a.out, greedy_ref, summary)
            except Exception as e:  # keep going; report at the end
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                print(f"  SKIPPED {name}-{variant}: {reason}")
                traceback.print_exc()
                shutil.rmtree(a.out / f"{name}-{variant}", ignore_errors=True)
                skipped.append((f"{name}-{variant}", reason))

    print("\n##### summary")
    for folder, status, worst, t_exp, _ in summary:
        print(f"  {folder:16s} max diff {worst:.2e}  export {t_exp:5.1f}s  {status}")
    for folder, reason in skipped:
        print(f"  {folder:16s} SKIPPED: {reason}")
    print(f"total time {time.time() - t_start:.1f}s")
    bad = [s for s in summary if s[1] != "ok"]
    return 1 if (bad or skipped) else 0


if __name__ == "__main__":
    sys.exit(main())
