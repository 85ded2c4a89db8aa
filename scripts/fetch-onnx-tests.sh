#!/usr/bin/env bash
# Fetches the ONNX backend node tests (the data kiln's conformance suite runs) from the pinned
# `onnx` wheel on PyPI and unpacks only onnx/backend/test/data/node/** into
#   $KILN_CACHE/onnx-node-tests-1.20.0/
# Idempotent: does nothing when the data is already there. Installs nothing; needs python3 and
# pip (unzip is used when present, python3's zipfile otherwise).
#
# Environment:
#   KILN_CACHE   cache folder (default ~/.cache/kiln)
set -euo pipefail

ONNX_VERSION=1.20.0
# The wheel pip selects for these tags; every platform's wheel holds the same test data.
PY_VERSION=3.11
PLATFORM=manylinux_2_28_x86_64
WHEEL_SHA256=71177f8fd5c0dd90697bc281f5035f73707bdac83257a5c54d74403a1100ace9

CACHE="${KILN_CACHE:-$HOME/.cache/kiln}"
WHEELS="$CACHE/wheels"
DEST="$CACHE/onnx-node-tests-$ONNX_VERSION"
NODE_DIR="$DEST/onnx/backend/test/data/node"
MARKER="$DEST/.complete"

if [[ -f "$MARKER" && -d "$NODE_DIR" ]]; then
    echo "onnx node tests already in $NODE_DIR ($(find "$NODE_DIR" -mindepth 1 -maxdepth 1 -type d | wc -l) cases)" >&2
    exit 0
fi

mkdir -p "$WHEELS"
find_wheel() {
    find "$WHEELS" -maxdepth 1 -name "onnx-$ONNX_VERSION-*.whl" -print | sort | head -n 1
}
wheel="$(find_wheel)"
if [[ -z "$wheel" ]]; then
    echo "downloading onnx==$ONNX_VERSION wheel into $WHEELS" >&2
    python3 -m pip download --no-deps "onnx==$ONNX_VERSION" --only-binary=:all: \
        --python-version "$PY_VERSION" --platform "$PLATFORM" -d "$WHEELS" >&2
    wheel="$(find_wheel)"
    if [[ -z "$wheel" ]]; then
        echo "error: pip reported success but no onnx-$ONNX_VERSION-*.whl is in $WHEELS" >&2
        exit 1
    fi
fi

# Check the pinned wheel's digest (another platform's wheel, put there by hand, is accepted).
if [[ "$(basename "$wheel")" == onnx-$ONNX_VERSION-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl ]]; then
    got="$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$wheel")"
    if [[ "$got" != "$WHEEL_SHA256" ]]; then
        echo "error: $wheel has sha256 $got, expected $WHEEL_SHA256; delete it and run again" >&2
        exit 1
    fi
fi

echo "unpacking node tests from $(basename "$wheel") into $DEST" >&2
tmp="$DEST.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
if command -v unzip >/dev/null 2>&1; then
    unzip -q "$wheel" 'onnx/backend/test/data/node/*' -d "$tmp"
else
    python3 - "$wheel" "$tmp" <<'EOF'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith("onnx/backend/test/data/node/")]
    z.extractall(dest, members)
EOF
fi
count="$(find "$tmp/onnx/backend/test/data/node" -mindepth 1 -maxdepth 1 -type d | wc -l)"
if [[ "$count" -eq 0 ]]; then
    echo "error: no node test cases found in $wheel" >&2
    exit 1
fi
touch "$tmp/.complete"
rm -rf "$DEST"
mv "$tmp" "$DEST"
trap - EXIT
echo "onnx node tests ready: $count cases in $NODE_DIR" >&2
