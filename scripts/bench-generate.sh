#!/usr/bin/env bash
# Generation speed on CPU: tokens/s of `flightlm-trainer generate` with its key/value cache and
# without it (the whole context read again for every token), for causal models of the tiny and
# small presets. The models are trained for one step only: speed does not depend on the weights.
# Every run generates exactly NEW tokens (--min-new-tokens keeps the end token out) greedily from
# a 4-token prompt; the model's context is 512 positions, so nothing is cut.
# Usage: bash scripts/bench-generate.sh [NEW ...]   (default: 64 256)
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
command -v zstd >/dev/null || { echo "needs the zstd command" >&2; exit 1; }
cargo build --workspace --bins
LENGTHS=("$@")
[ ${#LENGTHS[@]} -gt 0 ] || LENGTHS=(64 256)
WORK="${FLIGHTLM_BENCH_DIR:-runs/bench-generate}"
rm -rf "$WORK"
mkdir -p "$WORK"

# zstd is cut off by head (SIGPIPE); only the first lines are wanted.
{ zstd -dc data/kjv.txt.zst || true; } | head -n 4000 > "$WORK/corpus.txt"
"$FLIGHTLM_BIN/flightlm-pipeline" train-tokenizer --input "$WORK/corpus.txt" --vocab-size 8192 \
    --out "$WORK/tokenizer" > /dev/null

tokens_per_s() {
    sed -n 's/.*"tokens_per_s":\([0-9.e+-]*\).*/\1/p' | head -1
}

printf '%-7s %5s %12s %12s %7s\n' preset new "cache tok/s" "no-cache" ratio > "$WORK/table.txt"
for preset in tiny small; do
    echo "== $preset: one training step, then generation"
    "$FLIGHTLM_BIN/flightlm-trainer" train-text --text "$WORK/corpus.txt" \
        --tokenizer "$WORK/tokenizer/tokenizer.json" --objective causal --preset "$preset" \
        --seq-len 512 --batch-size 1 --grad-accum 1 --max-steps 1 --warmup-steps 0 \
        --eval-every 100000 --out "$WORK/run-$preset" --export "$WORK/model-$preset" > /dev/null
    for new in "${LENGTHS[@]}"; do
        speed() {
            "$FLIGHTLM_BIN/flightlm-trainer" generate --model "$WORK/model-$preset" \
                --prompt "And God said" --temperature 0 --max-new-tokens "$new" \
                --min-new-tokens "$new" --json "$@" 2>/dev/null | tokens_per_s
        }
        cached=$(speed)
        uncached=$(speed --no-cache)
        awk -v p="$preset" -v n="$new" -v c="$cached" -v u="$uncached" \
            'BEGIN { printf "%-7s %5d %12.1f %12.1f %6.2fx\n", p, n, c, u, c / u }' >> "$WORK/table.txt"
    done
done
cat "$WORK/table.txt"
