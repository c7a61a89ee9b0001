#!/usr/bin/env bash
# Regenerates tests/fixtures/hf-generate/expected.json: what HuggingFace transformers (PyTorch,
# CPU) generates greedily with the causal model of tests/fixtures/hf-parity/ (3 prompts x 32 new
# tokens). tests/tests/generate.rs holds `flightlm-trainer generate` to it.
#
# CI does not run this (PyTorch is several GB); it runs the test against the committed fixture.
# This script needs PyTorch: it keeps a venv with torch + transformers at $FLIGHTLM_TORCH_VENV
# (default $HOME/.cache/flightlm-torch-venv), installed from PyPI. Rerun it after
# scripts/hf-parity-fixture.sh, which retrains the model.
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
FIXTURE="$FLIGHTLM_REPO/tests/fixtures/hf-generate"

ensure_torch_python
mkdir -p "$FIXTURE"
"$TORCH_PYTHON" scripts/hf_generate_fixture.py tests/fixtures/hf-parity/causal "$FIXTURE/expected.json"
echo "wrote $FIXTURE/expected.json"
