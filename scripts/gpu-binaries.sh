#!/usr/bin/env bash
# Builds what scripts/gpu-bench.sh runs on a GPU host that has no Rust toolchain: release
# flightlm-pipeline and flightlm-trainer (CUDA compiled in), stripped and xz-compressed (about
# 31 MB for the two; gpu-bench.sh unpacks .xz through Python, so the host needs no xz tool).
# Usage: bash scripts/gpu-binaries.sh [OUT_DIR]   (default runs/gpu-binaries)
# The release build has its own target dir ($FLIGHTLM_RELEASE_TARGET, default
# $HOME/.cache/flightlm-target-release): cold, it takes about as long as the debug build.
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
OUT="${1:-runs/gpu-binaries}"
export CARGO_TARGET_DIR="${FLIGHTLM_RELEASE_TARGET:-$HOME/.cache/flightlm-target-release}"
cargo build --release --workspace --bins
mkdir -p "$OUT"
for binary in flightlm-pipeline flightlm-trainer; do
    rm -f "$OUT/$binary" "$OUT/$binary.xz"
    strip -o "$OUT/$binary" "$CARGO_TARGET_DIR/release/$binary"
    xz -T0 -9 "$OUT/$binary"
done
git rev-parse HEAD > "$OUT/REVISION"
ls -l "$OUT"
