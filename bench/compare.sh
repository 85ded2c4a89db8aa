#!/usr/bin/env bash
# kiln beside onnxruntime, in the same run, on the same ONNX export, token ids and thread count:
# load time, prefill and decode tokens/s, peak RSS, and kiln's ratio to onnxruntime for each.
#
#   bash bench/compare.sh                 # SmolLM2-135M-Instruct, then GPT-2 124M (made if missing)
#   THREADS=1 PROMPT_LEN=64 GEN=32 FORMATS='f32 q8' MODELS=smollm2 bash bench/compare.sh
#
# FORMATS are `--weights` values; `+f16kv` after one adds `--kv-cache f16` (q4+f16kv).
#
# MODELS: smollm2 (scripts/fetch-smollm2.sh) and gpt2 (scripts/fetch-gpt2.sh: GPT-2 small's shapes,
# random weights, which speed does not depend on). Uses the venv of scripts/py-gen.sh (onnxruntime
# from PyPI) and caches the compiled bundles in $KILN_CACHE/bench as <model>-<format>.kiln.
# Results go to stdout as one markdown table per model.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KILN_CACHE:-$HOME/.cache/kiln}"
MODELS="${MODELS:-smollm2 gpt2}"
THREADS="${THREADS:-2}"
PROMPT_LEN="${PROMPT_LEN:-128}"
GEN="${GEN:-64}"
REPEATS="${REPEATS:-3}"
# A short prompt, for the time from opening the model to the first token of an interactive turn.
SHORT_LEN="${SHORT_LEN:-8}"
FORMATS="${FORMATS:-f32 f16 bf16 q8 q4 q8+f16kv q4+f16kv}"

for name in $MODELS; do
    case "$name" in
        smollm2 | gpt2) ;;
        *) echo "unknown model '$name' in MODELS (known: smollm2 gpt2)" >&2; exit 2 ;;
    esac
done
python="$(bash "$ROOT/scripts/py-gen.sh")"
(cd "$ROOT" && cargo build --release --quiet --bin kiln)
kiln="${CARGO_TARGET_DIR:-$ROOT/target}/release/kiln"
mkdir -p "$CACHE/bench"

# One table: the model's name, its export folder, the title line's model description.
compare() {
    local name="$1" model="$2" title="$3" weights format bundle ort ort_short full bare cache
    for format in $FORMATS; do
        bundle="$CACHE/bench/$name-$format.kiln"
        weights="${format%%+*}" cache=f32
        [[ "$format" == *+f16kv ]] && cache=f16
        if [[ ! -f "$bundle" || "$kiln" -nt "$bundle" || "$model/model.onnx" -nt "$bundle" ]]; then
            "$kiln" --quiet compile "$model" -o "$bundle" --max-context 512 --weights "$weights" \
                --kv-cache "$cache" >&2
        fi
    done

    ort="$("$python" "$ROOT/bench/ort_bench.py" --model "$model/model.onnx" --prompt-len "$PROMPT_LEN" \
        --gen "$GEN" --threads "$THREADS" --repeats "$REPEATS")"
    ort_short="$("$python" "$ROOT/bench/ort_bench.py" --model "$model/model.onnx" --prompt-len "$SHORT_LEN" \
        --gen 2 --threads "$THREADS" --repeats 1)"
    local results=()
    for format in $FORMATS; do
        bundle="$CACHE/bench/$name-$format.kiln"
        # --bandwidth: the machine's read bandwidth, measured right after this bundle's decode.
        full="$("$kiln" --quiet bench "$bundle" --prompt-len "$PROMPT_LEN" --gen "$GEN" --repeats "$REPEATS" \
            --threads "$THREADS" --bandwidth --json 2>/dev/null)"
        # Load, and the first token of a short prompt, without hashing the weights: onnxruntime does
        # not checksum its input either.
        bare="$("$kiln" --quiet bench "$bundle" --prompt-len "$SHORT_LEN" --gen 2 --repeats 1 --threads "$THREADS" \
            --no-verify-checksums --json 2>/dev/null)"
        results+=("$format" "$full" "$bare")
    done

    "$python" - "$title" "$ort" "$ort_short" "$THREADS" "$PROMPT_LEN" "$GEN" "$SHORT_LEN" "${results[@]}" <<'PY'
import json, platform, sys
title = sys.argv[1]
ort, ort_short = json.loads(sys.argv[2]), json.loads(sys.argv[3])
threads, prompt_len, gen, short_len = sys.argv[4:8]
rest = sys.argv[8:]
runs = [(rest[i], json.loads(rest[i + 1]), json.loads(rest[i + 2])) for i in range(0, len(rest), 3)]
for _, full, bare in runs:
    full["load_unverified_s"] = bare["load_s"]
    full["first_token_short_s"] = bare["first_token_s"]
ort["load_unverified_s"] = ort["load_s"]
ort["first_token_short_s"] = ort_short["first_token_s"]
print(f"{title}, {threads} threads, prompt {prompt_len} tokens, {gen} generated; "
      f"{platform.machine()} {platform.processor() or ''}".strip())
print()
names = [w for w, _, _ in runs]
print("| measure | " + " | ".join(f"kiln {w}" for w in names) + f" | {ort['engine']} fp32 | "
      + " | ".join(f"kiln {w} / onnxruntime" for w in names) + " |")
print("|---" * (2 + 2 * len(names)) + "|")
rows = [("load (s, lower is better)", "load_s"),
        ("load without checksums (s, lower is better)", "load_unverified_s"),
        ("open to first token (s, lower is better)", "first_token_s"),
        (f"open to first token, {short_len}-token prompt, no checksums (s, lower is better)", "first_token_short_s"),
        ("prefill tokens/s", "prefill_tokens_per_s"),
        ("decode tokens/s", "decode_tokens_per_s"), ("peak RSS (MiB, lower is better)", "peak_rss_bytes"),
        ("weights read per decoded token (MB)", "decode_weight_bytes"),
        ("memory read bandwidth over that many bytes, measured after the decode (GB/s)", "read_bandwidth_bytes_per_s"),
        ("decode weight traffic / read bandwidth", "decode_bandwidth_share")]
for label, key in rows:
    vals = [full.get(key) for _, full, _ in runs]
    o = ort.get(key)
    scale = {"peak_rss_bytes": 1 / (1 << 20), "decode_weight_bytes": 1e-6, "read_bandwidth_bytes_per_s": 1e-9}.get(key, 1)
    cells = ["n/a" if v is None else f"{v * scale:.3g}" for v in vals]
    ratios = ["n/a" if v is None or not o else f"{v / o:.2f}" for v in vals]
    print(f"| {label} | " + " | ".join(cells) + f" | {'n/a' if o is None else f'{o * scale:.3g}'} | "
          + " | ".join(ratios) + " |")
print()
print("open to first token / onnxruntime session creation: "
      + ", ".join(f"{w} {full[k]:.3f} / {ort['load_s']:.3f} = 1/{ort['load_s'] / full[k]:.0f} ({k})"
                  for w, full, _ in runs for k in ("first_token_s", "first_token_short_s")))
PY
}

first=1
for name in $MODELS; do
    # Assignments, not arguments: set -e stops on a failed fetch only in an assignment.
    case "$name" in
        smollm2) model="$(bash "$ROOT/scripts/fetch-smollm2.sh")" title="SmolLM2-135M-Instruct" ;;
        gpt2) model="$(bash "$ROOT/scripts/fetch-gpt2.sh")" title="GPT-2 124M (random weights, same shapes)" ;;
    esac
    ((first)) || echo
    first=0
    compare "$name" "$model" "$title"
done
