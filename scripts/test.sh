#!/usr/bin/env bash
# Runs every test: unit tests of each crate and the end-to-end tests that start real pipeline and
# trainer processes on loopback, with HuggingFace (Python) as the referee.
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
ensure_python
ensure_azurite
# The end-to-end tests run the binaries, so build them first (same profile as the tests: the
# dependency tree is built once).
cargo build --workspace --bins
cargo test --workspace "$@"
