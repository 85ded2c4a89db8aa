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
OUT="$CACHE/gpt2-124m-random"
STAMP=".complete"  # holds the hash of what made the folder; written after everything else

exec 3>&1 1>&2  # keep stdout for the result: anything a tool prints goes to stderr

sha() { cat "$@" | sha256sum | cut -d' ' -f1; }

# One run at a time: parallel test processes may all ask for the model at once.
mkdir -p "$CACHE"
exec 9>"$CACHE/.fetch-gpt2.lock"
flock 9

PYTHON="$(bash "$ROOT/scripts/py-gen.sh")"

# A changed exporter (or the module it borrows from, the pins, or this script's arguments) means
# a different folder: redo it.
out_hash="$(sha "$EXPORTER" "$ROOT/examples/export/gguf_llama.py" "$ROOT/examples/export/requirements-gguf.txt" \
    "${BASH_SOURCE[0]}")"
if [[ "$(cat "$OUT/$STAMP" 2>/dev/null || true)" != "$out_hash" ]]; then
    # Export next to the destination and rename, so an interrupted run never leaves a half folder.
    # What a killed run did leave is a temp folder; holding the lock, we know it is dead.
    rm -rf "$CACHE"/.gpt2-124m-random.*
    TMP="$(mktemp -d "$CACHE/.gpt2-124m-random.XXXXXX")"
    trap 'rm -rf "$TMP"' EXIT
    "$PYTHON" "$EXPORTER" --out "$TMP" --seed 0 --check
    chmod 755 "$TMP"  # mktemp makes it owner-only
    rm -rf "$OUT"
    mv "$TMP" "$OUT"
    echo "$out_hash" >"$OUT/$STAMP"
fi

echo "$OUT" >&3
