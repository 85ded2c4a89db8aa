#!/usr/bin/env bash
# A GPT-2 124M-shaped model for kiln's benchmarks: the architecture and sizes of GPT-2 small with
# seeded random weights, written by examples/export/gpt2_random.py (no model hub, no torch).
# Idempotent; lives in $KILN_CACHE (default ~/.cache/kiln), outside the clone. Prints the
# folder's path on stdout and nothing else; progress goes to stderr.
#
#   model=$(scripts/fetch-gpt2.sh)    # ~500 MB: model.onnx(.data), config.json, no tokenizer
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXPORTER="$ROOT/examples/export/gpt2_random.py"
CACHE="${KILN_CACHE:-$HOME/.cache/kiln}"
source "$ROOT/scripts/cached-folder.sh"

exec 3>&1 1>&2  # keep stdout for the result: anything a tool prints goes to stderr

build() {
    "$(bash "$ROOT/scripts/py-gen.sh")" "$EXPORTER" --out "$1" --seed 0 --check
}

# The exporter, the module it borrows from, the pins and this script's arguments make the folder.
cached_folder gpt2-124m-random "$(content_hash "$EXPORTER" "$ROOT/examples/export/gguf_llama.py" \
    "$ROOT/examples/export/requirements-gguf.txt" "${BASH_SOURCE[0]}")" build
