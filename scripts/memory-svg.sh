#!/usr/bin/env bash
# Regenerates docs/memory-gpt2.svg: the memory plan of the tiny GPT-2's decode step
# (tests/fixtures/gpt2-ts-kv, 64-token context, 64 KiB buffers so the arena is split in two
# and the embedding table and output head are split into column blocks).
# Usage: scripts/memory-svg.sh [OUT.svg]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/memory-gpt2.svg}"
cargo build --release --quiet --bin kiln
kiln="${CARGO_TARGET_DIR:-target}/release/kiln"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$kiln" --quiet compile tests/fixtures/gpt2-ts-kv -o "$tmp/gpt2-ts-kv.kiln" \
    --max-context 64 --prefill-max 32 --max-buffer 64KiB 2>/dev/null
"$kiln" --quiet inspect "$tmp/gpt2-ts-kv.kiln" --entry decode --memory-svg "$out" >/dev/null
echo "wrote $out" >&2
