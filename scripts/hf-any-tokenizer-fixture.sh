#!/usr/bin/env bash
# Regenerates tests/fixtures/any-tokenizer/: two small models trained by flightlm from a pipeline
# serving tokenizers that are not RoBERTa's — masked-LM on a BERT-style WordPiece tokenizer and
# causal LM on a GPT-2-style byte-level BPE whose template appends <|endoftext|> — exported with
# their tokenizer_config.json, and what HuggingFace transformers (PyTorch, CPU) computes with them
# after loading them with AutoTokenizer and AutoModelForMaskedLM / AutoModelForCausalLM
# (expected.json).
#
# CI does not run this (PyTorch is several GB); tests/tests/hf_any_tokenizer.rs checks flightlm
# against the committed fixture. Needs the PyTorch venv of scripts/env.sh (ensure_torch_python).
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
FIXTURE="$FLIGHTLM_REPO/tests/fixtures/any-tokenizer"

ensure_python
ensure_torch_python
command -v zstd >/dev/null || { echo "needs the zstd command" >&2; exit 1; }

cargo build --workspace --bins
WORK="$(mktemp -d)"
PIDS=()
trap 'kill "${PIDS[@]}" 2> /dev/null || true; rm -rf "$WORK"' EXIT
{ zstd -dc data/kjv.txt.zst || true; } | head -n 3000 > "$WORK/corpus.txt"
"$FLIGHTLM_PYTHON" tests/python/any_tokenizer.py build "$WORK" "$WORK/corpus.txt"
cat > "$WORK/shape.toml" <<'TOML'
[model]
layers = 2
hidden = 32
heads = 2
intermediate = 64
TOML

rm -rf "$FIXTURE"
mkdir -p "$FIXTURE"
for case in "wordpiece-mlm wordpiece mlm" "bpe-causal bpe_eot causal"; do
    read -r name tokenizer objective <<< "$case"
    "$FLIGHTLM_BIN/flightlm-pipeline" serve --input "$WORK/corpus.txt" \
        --tokenizer "$WORK/$tokenizer.json" --listen 127.0.0.1:0 --valid-fraction 0.05 \
        > "$WORK/$name.serve" 2> "$WORK/$name.log" &
    PIDS+=($!)
    url=$(wait_for_url "$WORK/$name.serve" $!)
    "$FLIGHTLM_BIN/flightlm-trainer" train --pipeline "$url" --config "$WORK/shape.toml" \
        --objective "$objective" --preset tiny --seq-len 64 --batch-size 16 --grad-accum 1 \
        --max-steps 600 --warmup-steps 50 --lr 3e-3 --log-every 200 --eval-every 300 \
        --save-every 600 --seed 1 --out "$WORK/run-$name" | tail -n 1
    cp -r "$WORK/run-$name/model" "$FIXTURE/$name"
done

"$TORCH_PYTHON" scripts/hf_any_tokenizer_fixture.py "$FIXTURE"
du -sh "$FIXTURE"
