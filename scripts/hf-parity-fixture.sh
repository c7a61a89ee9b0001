#!/usr/bin/env bash
# Regenerates tests/fixtures/hf-parity/: two small models trained by flightlm on the sample
# corpus (masked and causal), exported with `flightlm-trainer export`, and what HuggingFace
# transformers (PyTorch, CPU) computes with them (expected.json).
#
# CI does not run this (PyTorch is several GB); it runs tests/tests/hf_parity.rs against the
# committed fixture. This script needs PyTorch: it keeps a venv with torch + transformers at
# $FLIGHTLM_TORCH_VENV (default $HOME/.cache/flightlm-torch-venv), installed from PyPI.
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
FIXTURE="$FLIGHTLM_REPO/tests/fixtures/hf-parity"

ensure_torch_python
command -v zstd >/dev/null || { echo "needs the zstd command" >&2; exit 1; }

cargo build --workspace --bins
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# zstd is cut off by head (SIGPIPE); only the first lines are wanted.
{ zstd -dc data/kjv.txt.zst || true; } | head -n 3000 > "$WORK/corpus.txt"
"$FLIGHTLM_BIN/flightlm-pipeline" train-tokenizer --input "$WORK/corpus.txt" \
    --vocab-size 800 --out "$WORK/tokenizer" > /dev/null

rm -rf "$FIXTURE"
mkdir -p "$FIXTURE"
for objective in mlm causal; do
    # 2 layers, 32 wide, 2 heads: about 190 KB of weights, enough to give peaked predictions.
    "$FLIGHTLM_BIN/flightlm-trainer" train-text --text "$WORK/corpus.txt" \
        --tokenizer "$WORK/tokenizer/tokenizer.json" --objective "$objective" --preset tiny \
        --layers 2 --hidden 32 --heads 2 --intermediate 64 --seq-len 64 --batch-size 16 \
        --grad-accum 1 --max-steps 1200 --warmup-steps 100 --lr 3e-3 --log-every 400 \
        --eval-every 1200 --seed 1 --out "$WORK/run-$objective" \
        --export "$WORK/checkpoint-$objective" | tail -n 1
    "$FLIGHTLM_BIN/flightlm-trainer" export --checkpoint "$WORK/checkpoint-$objective" \
        --out "$FIXTURE/$objective"
done

"$TORCH_PYTHON" scripts/hf_parity_fixture.py "$FIXTURE" "$FLIGHTLM_BIN/flightlm-trainer"
du -sh "$FIXTURE"
