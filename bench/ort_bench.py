#!/usr/bin/env python3
"""onnxruntime's side of bench/compare.sh: the same measurements `kiln bench` makes, on the same
ONNX export, token ids and thread count, printed as one JSON object.

    load_s                 InferenceSession creation
    first_token_s          session creation until the first prefill's logits (its first run)
    prefill_tokens_per_s   one forward pass over the prompt (empty past), median of repeats
    decode_tokens_per_s    tokens per second over `--gen` single-token steps feeding presents back
    peak_rss_bytes         the process's peak resident set (ru_maxrss)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import numpy as np
import onnxruntime as ort


def prompt_ids(n: int) -> np.ndarray:
    # Must match `kiln bench`: valid, varied, meaningless ids.
    return np.array([[(i * 7919 + 13) % 97 + 3 for i in range(n)]], dtype=np.int64)


def feeds(sess, ids: np.ndarray, past: dict[str, np.ndarray], past_len: int) -> dict[str, np.ndarray]:
    n = ids.shape[1]
    out = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            out[i.name] = ids
        elif i.name == "attention_mask":
            out[i.name] = np.ones((1, past_len + n), dtype=np.int64)
        elif i.name == "position_ids":
            out[i.name] = np.arange(past_len, past_len + n, dtype=np.int64)[None, :]
        elif i.name in past:
            out[i.name] = past[i.name]
        else:
            raise SystemExit(f"cannot feed input {i.name}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    t = time.perf_counter()
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t

    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    past_names = [n for n in inputs if n.startswith("past")]
    present_of = {p: p.replace("past_key_values", "present") for p in past_names}

    def empty_past() -> dict[str, np.ndarray]:
        past = {}
        for n in past_names:
            shape = [1 if isinstance(d, str) else d for d in inputs[n].shape]
            shape[2] = 0
            past[n] = np.zeros(shape, dtype=np.float32)
        return past

    ids = prompt_ids(args.prompt_len)
    prefill_times, decode_rates = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        res = dict(zip(outputs, sess.run(None, feeds(sess, ids, empty_past(), 0))))
        prefill_times.append(time.perf_counter() - t)
        past = {p: res[present_of[p]] for p in past_names}
        tok = np.array([[int(res["logits"][0, -1].argmax())]], dtype=np.int64)
        length = args.prompt_len
        t = time.perf_counter()
        for _ in range(args.gen):
            res = dict(zip(outputs, sess.run(None, feeds(sess, tok, past, length))))
            past = {p: res[present_of[p]] for p in past_names}
            tok = np.array([[int(res["logits"][0, -1].argmax())]], dtype=np.int64)
            length += 1
        decode_rates.append(args.gen / (time.perf_counter() - t))

    print(json.dumps({
        "engine": f"onnxruntime {ort.__version__}",
        "load_s": load_s,
        "first_token_s": load_s + prefill_times[0],
        "prefill_tokens_per_s": args.prompt_len / statistics.median(prefill_times),
        "decode_tokens_per_s": statistics.median(decode_rates),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
