#!/usr/bin/env bash
# kiln beside onnxruntime, in the same run, on the same ONNX export, token ids and thread count:
# load time, prefill and decode tokens/s, peak RSS, and kiln's ratio to onnxruntime for each.
#
#   bash bench/compare.sh                 # SmolLM2-135M-Instruct (fetched and exported if missing)
#   THREADS=1 PROMPT_LEN=64 GEN=32 bash bench/compare.sh
#
# Uses the venv scripts/fetch-smollm2.sh makes (onnxruntime from PyPI) and caches the compiled
# bundle in $KILN_CACHE/bench. Results go to stdout as a markdown table.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KILN_CACHE:-$HOME/.cache/kiln}"
THREADS="${THREADS:-2}"
PROMPT_LEN="${PROMPT_LEN:-128}"
GEN="${GEN:-64}"
REPEATS="${REPEATS:-3}"

model="$(bash "$ROOT/scripts/fetch-smollm2.sh")"
python="$CACHE/py-gen/bin/python"
(cd "$ROOT" && cargo build --release --quiet --bin kiln)
kiln="${CARGO_TARGET_DIR:-$ROOT/target}/release/kiln"
mkdir -p "$CACHE/bench"
for weights in f32 q8 q4; do
    bundle="$CACHE/bench/smollm2-$weights.kiln"
    if [[ ! -f "$bundle" || "$kiln" -nt "$bundle" || "$model/model.onnx" -nt "$bundle" ]]; then
        "$kiln" --quiet compile "$model" -o "$bundle" --max-context 512 --weights "$weights" >&2
    fi
done

ort="$("$python" "$ROOT/bench/ort_bench.py" --model "$model/model.onnx" --prompt-len "$PROMPT_LEN" \
    --gen "$GEN" --threads "$THREADS" --repeats "$REPEATS")"
bench() {
    "$kiln" --quiet bench "$CACHE/bench/smollm2-$1.kiln" --prompt-len "$PROMPT_LEN" --gen "$GEN" \
        --repeats "$REPEATS" --threads "$THREADS" --json 2>/dev/null
}
kj="$(bench f32)"
kq="$(bench q8)"
k4="$(bench q4)"

"$python" - "$ort" "$kj" "$kq" "$k4" "$THREADS" "$PROMPT_LEN" "$GEN" <<'PY'
import json, platform, sys
ort, kiln, q8, q4 = (json.loads(a) for a in sys.argv[1:5])
threads, prompt_len, gen = sys.argv[5:8]
print(f"SmolLM2-135M-Instruct fp32, {threads} threads, prompt {prompt_len} tokens, {gen} generated; "
      f"{platform.machine()} {platform.processor() or ''}".strip())
print()
print(f"| measure | kiln f32 | kiln q8 | kiln q4 | {ort['engine']} fp32 | kiln f32 / onnxruntime "
      "| kiln q8 / onnxruntime | kiln q4 / onnxruntime |")
print("|---|---|---|---|---|---|---|---|")
rows = [("load (s, lower is better)", "load_s", True), ("prefill tokens/s", "prefill_tokens_per_s", False),
        ("decode tokens/s", "decode_tokens_per_s", False), ("peak RSS (MiB, lower is better)", "peak_rss_bytes", True)]
for label, key, lower in rows:
    k, q, f, o = kiln[key], q8[key], q4[key], ort[key]
    if None in (k, q, f, o):
        print(f"| {label} | {k} | {q} | {f} | {o} | n/a | n/a | n/a |")
        continue
    scale = 1 / (1 << 20) if key == "peak_rss_bytes" else 1
    print(f"| {label} | {k * scale:.3g} | {q * scale:.3g} | {f * scale:.3g} | {o * scale:.3g} "
          f"| {k / o:.2f} | {q / o:.2f} | {f / o:.2f} |")
PY
