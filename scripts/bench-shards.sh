#!/usr/bin/env bash
# What serving the shards of one data-parallel job costs the pipeline, in one run: one unsharded
# reader of the corpus (the baseline), then SHARDS readers of `--shard i/SHARDS` at once, as the
# ranks of a job read. Prints wall time and the pipeline process's CPU time for each, and the
# sharded run's CPU time as a multiple of the baseline's (the same blocks are delivered in total).
# Usage: bash scripts/bench-shards.sh [SHARDS] [CORPUS]   (default: 4 shards, sample corpus x4)
# PIPELINE_BIN=path runs another build of flightlm-pipeline (for before/after comparisons).
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
PIPELINE="${PIPELINE_BIN:-}"
if [ -z "$PIPELINE" ]; then
    cargo build --workspace --bins
    PIPELINE="$FLIGHTLM_BIN/flightlm-pipeline"
fi

SHARDS="${1:-4}"
WORK="${FLIGHTLM_BENCH_DIR:-runs/bench-shards}"
mkdir -p "$WORK"
SEQ_LEN=128
CORES=$(nproc)
CORPUS="${2:-}"
if [ -z "$CORPUS" ]; then
    CORPUS="$WORK/sample-x4.txt.zst"
    [ -s "$CORPUS" ] || for _ in 1 2 3 4; do cat data/kjv.txt.zst; done > "$CORPUS"
fi
TOKENIZER="$WORK/tokenizer/tokenizer.json"
[ -s "$TOKENIZER" ] || "$PIPELINE" train-tokenizer --input data/kjv.txt.zst \
    --vocab-size 8192 --out "$WORK/tokenizer" > /dev/null

"$PIPELINE" serve --input "$CORPUS" --tokenizer "$TOKENIZER" \
    --listen 127.0.0.1:0 --valid-fraction 0 --workers "$CORES" > "$WORK/serve.out" 2> "$WORK/serve.log" &
SERVE_PID=$!
trap 'kill $SERVE_PID 2>/dev/null || true' EXIT
URL=$(wait_for_url "$WORK/serve.out" $SERVE_PID)

# utime + stime of the pipeline process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVE_PID/stat"; }
consume() { # SHARD_ARG OUT
    timeout 600 "$PIPELINE" consume --pipeline "$URL" --seq-len $SEQ_LEN \
        --batch-size 32 --epochs 1 $1 > "$2"
}

measure() { # NAME then one or more shard arguments ("" for unsharded)
    local name=$1 start_ticks start_ns pids=() index=0
    shift
    start_ticks=$(cpu_ticks)
    start_ns=$(date +%s%N)
    for shard in "$@"; do
        consume "$shard" "$WORK/$name-$index.json" &
        pids+=($!)
        index=$((index + 1))
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    echo "$name $(( $(date +%s%N) - start_ns )) $(( $(cpu_ticks) - start_ticks ))" >> "$WORK/runs.txt"
}

rm -f "$WORK/runs.txt" "$WORK"/unsharded-*.json "$WORK"/sharded-*.json
measure unsharded ""
shard_args=()
for index in $(seq 0 $((SHARDS - 1))); do shard_args+=("--shard $index/$SHARDS"); done
measure sharded "${shard_args[@]}"

python3 - "$WORK" "$SHARDS" "$(getconf CLK_TCK)" "$CORES" <<'PY'
import glob, json, sys
work, shards, ticks, cores = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
runs = {}
for line in open(f"{work}/runs.txt"):
    name, wall_ns, cpu = line.split()
    blocks = sum(json.load(open(path))["blocks"] for path in glob.glob(f"{work}/{name}-*.json"))
    runs[name] = (blocks, int(wall_ns) / 1e9, int(cpu) / ticks)
base_blocks, base_wall, base_cpu = runs["unsharded"]
print(f"{shards} shards of one job, {cores} cores")
print(f'{"readers":28} {"blocks":>8} {"wall s":>8} {"pipeline CPU s":>15} {"CPU vs 1 reader":>16}')
for name, label in [("unsharded", "1 reader, unsharded"), ("sharded", f"{shards} readers, --shard i/{shards}")]:
    blocks, wall, cpu = runs[name]
    print(f"{label:28} {blocks:8,} {wall:8.2f} {cpu:15.2f} {cpu / base_cpu:15.2f}x")
if runs["sharded"][0] != base_blocks:
    sys.exit(f"the shards delivered {runs['sharded'][0]} blocks, the unsharded stream {base_blocks}")
PY
