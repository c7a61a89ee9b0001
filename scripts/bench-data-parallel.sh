#!/usr/bin/env bash
# Data-parallel trainer cost on CPU ranks, fed by a live pipeline process: for the tiny and small
# presets (MLM, seq 128, 16 blocks per rank and step), tokens/s of the plain loop on one device,
# of the data-parallel loop on one rank (`--devices cpu:1`: the step exchange and the gradient
# all-reduce with nobody to wait for) and on two ranks (`--devices cpu:2`, both sharing this
# machine's cores), with the share of rank 0's step spent in the exchange and all-reduce.
# Ratios are against the plain loop measured in the same call.
# Usage: bash scripts/bench-data-parallel.sh [STEPS]   (default 45; the first window is warm-up)
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
cargo build --workspace --bins
STEPS="${1:-45}"
WORK="${FLIGHTLM_BENCH_DIR:-runs/bench-data-parallel}"
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
    for layout in plain cpu:1 cpu:2; do
        echo "== $preset $layout"
        devices=()
        [ "$layout" != plain ] && devices=(--devices "$layout")
        "$FLIGHTLM_BIN/flightlm-trainer" train --pipeline "$URL" --objective mlm --preset "$preset" \
            --max-steps "$STEPS" --seq-len 128 --batch-size 16 --grad-accum 1 --warmup-steps 10 \
            --log-every $((STEPS / 3)) --eval-every 100000 --save-every 100000 "${devices[@]}" \
            --out "$WORK/$preset-${layout/:/}" > /dev/null
    done
done

python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
print(f'{"preset":7} {"layout":7} {"ranks":>5} {"tokens/s":>9} {"ms/step":>8} {"collective":>10} {"vs plain":>8}')
for preset in ("tiny", "small"):
    plain = None
    for layout in ("plain", "cpu1", "cpu2"):
        lines = [json.loads(l) for l in open(f"{work}/{preset}-{layout}/metrics.jsonl")]
        start = next(l for l in lines if l["kind"] == "start")
        train = [l for l in lines if l["kind"] == "train"]
        steady = train[1:] or train  # the first window includes warm-up
        rate = sum(l["tokens_per_s"] for l in steady) / len(steady)
        shares = [l["collective"] for l in steady if "collective" in l]
        collective = f"{sum(shares) / len(shares) * 100:>9.2f}%" if shares else f'{"-":>10}'
        plain = plain or rate
        ranks = start.get("world_size", 1)
        tokens_per_step = ranks * start["batch_size"] * start["grad_accum"] * start["seq_len"]
        name = {"plain": "plain", "cpu1": "cpu:1", "cpu2": "cpu:2"}[layout]
        print(f'{preset:7} {name:7} {ranks:>5} {rate:>9,.0f} {tokens_per_step / rate * 1e3:>8.1f} {collective} {rate / plain:>7.2f}x')
PY
