#!/usr/bin/env bash
# Trainer speed on CPU, fed by a live pipeline process: tokens/s, ms/step and the share of step
# time spent waiting for data, for the tiny and small presets (MLM, seq 128, batch 16), next to
# HF RobertaForMaskedLM in PyTorch on the same shapes and cores (random blocks, AdamW).
# Usage: bash scripts/bench-trainer.sh [STEPS]   (default 60; the first window is warm-up)
# The PyTorch side uses the venv at $FLIGHTLM_TORCH_VENV (default $HOME/.cache/flightlm-torch-venv,
# created from PyPI if missing); TORCH=0 skips it. TRAINER_BIN=PATH measures another trainer build
# (to compare two builds on the same machine).
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
cargo build --workspace --bins
STEPS="${1:-60}"
TRAINER="${TRAINER_BIN:-$FLIGHTLM_BIN/flightlm-trainer}"
WORK="${FLIGHTLM_BENCH_DIR:-runs/bench-trainer}"
rm -rf "$WORK"
mkdir -p "$WORK"

"$FLIGHTLM_BIN/flightlm-pipeline" train-tokenizer --input data/kjv.txt.zst --vocab-size 8192 \
    --out "$WORK/tokenizer" > /dev/null
"$FLIGHTLM_BIN/flightlm-pipeline" serve --input data/kjv.txt.zst --tokenizer "$WORK/tokenizer/tokenizer.json" \
    --listen 127.0.0.1:0 > "$WORK/pipeline.out" 2> "$WORK/pipeline.log" &
PIPELINE_PID=$!
trap 'kill $PIPELINE_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do [ -s "$WORK/pipeline.out" ] && break; sleep 0.1; done
URL=$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' "$WORK/pipeline.out")

for preset in tiny small; do
    echo "== $preset"
    "$TRAINER" train --pipeline "$URL" --objective mlm --preset "$preset" \
        --max-steps "$STEPS" --seq-len 128 --batch-size 16 --grad-accum 1 --warmup-steps 10 \
        --log-every $((STEPS / 3)) --eval-every 100000 --out "$WORK/$preset" > /dev/null
done

: > "$WORK/torch.out"
if [ "${TORCH:-1}" != 0 ]; then
    ensure_torch_python
    for preset in tiny small; do
        echo "== pytorch $preset"
        "$TORCH_PYTHON" scripts/gpu_bench_torch.py --device cpu --threads "$(nproc)" \
            --preset "$preset" --configs mlm:128:16:f32 --vocab 8192 --steps 20 --warmup 3 \
            >> "$WORK/torch.out"
    done
fi

python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
torch = {line["preset"]: line for line in map(json.loads, open(f"{work}/torch.out"))}
print(f'{"preset":8} {"params":>10} {"tokens/s":>10} {"ms/step":>9} {"data wait":>10} {"pytorch tok/s":>13} {"ratio":>6}')
for preset in ("tiny", "small"):
    lines = [json.loads(l) for l in open(f"{work}/{preset}/metrics.jsonl")]
    start = next(l for l in lines if l["kind"] == "start")
    train = [l for l in lines if l["kind"] == "train"]
    steady = train[1:] or train  # the first window includes warm-up
    rate = sum(l["tokens_per_s"] for l in steady) / len(steady)
    wait = sum(l["data_wait"] for l in steady) / len(steady)
    tokens_per_step = start["batch_size"] * start["grad_accum"] * start["seq_len"]
    reference = torch.get(preset, {}).get("tokens_per_s")
    versus = f"{reference:>13,.0f} {rate / reference:>5.2f}x" if reference else f'{"-":>13} {"-":>6}'
    print(f'{preset:8} {start["parameters"]:>10,} {rate:>10,.0f} {tokens_per_step / rate * 1e3:>9.1f} {wait * 100:>9.3f}% {versus}')
PY
