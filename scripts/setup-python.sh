#!/usr/bin/env bash
# A Python with the pinned `onnx` package, for the tests that generate models with the onnx
# helper API (the Gemma-scale planning test). Idempotent; lives in $KILN_CACHE (default
# ~/.cache/kiln), outside the clone. Prints the interpreter's path on stdout.
set -euo pipefail
CACHE="${KILN_CACHE:-$HOME/.cache/kiln}"
VENV="$CACHE/py-onnx"
if ! "$VENV/bin/python" -c "import onnx, numpy" >/dev/null 2>&1; then
    mkdir -p "$CACHE"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "onnx==1.20.0" "numpy<3" >&2
fi
echo "$VENV/bin/python"
