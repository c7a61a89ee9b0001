#!/usr/bin/env bash
# Data-parallel trainer cost on CPU ranks, fed by a live pipeline process: for the tiny and small
# presets (MLM, seq 128, 16 blocks per rank and step), tokens/s of the plain loop on one device,
# of the data-parallel loop on one rank (`--devices cpu:1`: the step exchange and the gradient
# all-reduce with nobody to wait for) and on two ranks (`--devices cpu:2`, both sharing this
# machine's cores), with the share of rank 0's step spent in the exchange and all-reduce.
# Ratios are against the plain loop measured in the same call.
# Usage: bash scripts/bench-data-parallel.sh [STEPS]   (default 45; the first window is warm-up)
# PRESETS="tiny small" (default) names the presets of the table ("" for none); NODES_PRESET=base
# (default; "none" skips it) the preset of the two-node measurement at the end. TRAINER_BIN runs
# another build of flightlm-trainer (to compare two builds).
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
cargo build --workspace --bins
TRAINER="${TRAINER_BIN:-$FLIGHTLM_BIN/flightlm-trainer}"
STEPS="${1:-45}"
PRESETS="${PRESETS-tiny small}"
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

for preset in $PRESETS; do
    for layout in plain cpu:1 cpu:2; do
        echo "== $preset $layout"
        devices=()
        [ "$layout" != plain ] && devices=(--devices "$layout")
        "$TRAINER" train --pipeline "$URL" --objective mlm --preset "$preset" \
            --max-steps "$STEPS" --seq-len 128 --batch-size 16 --grad-accum 1 --warmup-steps 10 \
            --log-every $((STEPS / 3)) --eval-every 100000 --save-every 100000 "${devices[@]}" \
            --out "$WORK/$preset-${layout/:/}" > /dev/null
    done
done

[ -n "$PRESETS" ] && python3 - "$WORK" $PRESETS <<'PY'
import json, sys
work = sys.argv[1]
print(f'{"preset":7} {"layout":7} {"ranks":>5} {"tokens/s":>9} {"ms/step":>8} {"collective":>10} {"vs plain":>8}')
for preset in sys.argv[2:]:
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

# Two nodes on loopback (one CPU rank each, through the coordinator), base preset on a generated
# corpus: what the host-memory transport moves per step and how long a step waits in it. The
# loopback byte counter covers every process on this host: run it on a quiet machine.
if [ "${NODES_PRESET:-base}" != none ]; then
    preset=${NODES_PRESET:-base}
    NODE_STEPS=${NODE_STEPS:-6}
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    echo "== $preset, two nodes on loopback ($NODE_STEPS steps, batch 1 x 32 per rank)"
    lo_bytes() { awk '$1 == "lo:" {print $2}' /proc/net/dev; }
    before=$(lo_bytes)
    nodes=()
    for rank in 1 0; do
        "$TRAINER" bench --preset "$preset" --vocab-size 50265 \
            --max-steps "$NODE_STEPS" --seq-len 32 --batch-size 1 --grad-accum 1 --warmup-steps 1 \
            --log-every 1 --eval-every 100000 --dropout 0 --devices cpu:1 --nodes 2 \
            --node-rank "$rank" --coordinator "127.0.0.1:$PORT" \
            > "$WORK/node-$rank.out" 2> "$WORK/node-$rank.err" &
        nodes+=($!)
    done
    wait "${nodes[@]}"
    after=$(lo_bytes)
    python3 - "$WORK" "$before" "$after" "$NODE_STEPS" <<'PY'
import json, sys
work, before, after, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
lines = [json.loads(l) for l in open(f"{work}/node-0.out") if l.startswith("{")]
start = next(l for l in lines if l["kind"] == "start")
train = [l for l in lines if l["kind"] == "train"][1:]  # the first step includes start-up
step_s = [start["seq_len"] * 2 / l["tokens_per_s"] for l in train]  # 2 ranks x 1 block
collective = [s * l["collective"] for s, l in zip(step_s, train)]
params = start["parameters"]
print(f"parameters {params:,}; gradients per rank and step {params * 4 / 2**20:,.0f} MiB up and as much back")
print(f"loopback bytes per step {(after - before) / steps / 2**30:.2f} GiB (all {steps} steps, start-up included)")
print(f"seconds per step {sum(step_s) / len(step_s):.2f}, of which in the collective {sum(collective) / len(collective):.2f} "
      f"({sum(collective) / sum(step_s) * 100:.0f} %)")
PY
fi
