#!/usr/bin/env bash
# Peak RSS of the pipeline while it streams a large corpus, at two corpus sizes in one run, to show
# memory is bounded and flat in corpus size (target: under 300 MiB).
# Usage: bash scripts/bench-pipeline-memory.sh [SMALL_MB] [LARGE_MB]   (defaults: 256 and 1100)
# The corpora are the sample corpus repeated, written under runs/bench-memory (and reused).
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
ensure_python
"$FLIGHTLM_VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-bench.txt
cargo build --workspace --bins

WORK="${FLIGHTLM_BENCH_DIR:-runs/bench-memory}"
mkdir -p "$WORK"
SMALL_MB="${1:-256}"
LARGE_MB="${2:-1100}"
SEQ_LEN=128
CORES=$(nproc)

[ -s "$WORK/sample.txt" ] || "$FLIGHTLM_PYTHON" -c "import sys, zstandard
sys.stdout.buffer.write(zstandard.ZstdDecompressor().stream_reader(open('data/kjv.txt.zst', 'rb')).read())" \
    > "$WORK/sample.txt"

# Repeats the sample into `size` MB of text.
make_corpus() {
    local size_mb=$1 path="$WORK/corpus-$1mb.txt"
    if [ ! -s "$path" ] || [ "$(du -m "$path" | cut -f1)" -lt "$size_mb" ]; then
        : > "$path"
        while [ "$(du -m "$path" | cut -f1)" -lt "$size_mb" ]; do cat "$WORK/sample.txt" >> "$path"; done
    fi
    echo "$path"
}

TOKENIZER="$WORK/tokenizer/tokenizer.json"
[ -s "$TOKENIZER" ] || "$FLIGHTLM_BIN/flightlm-pipeline" train-tokenizer --input data/kjv.txt.zst \
    --vocab-size 8192 --out "$WORK/tokenizer" > /dev/null

# Streams `corpus` once through serve -> Flight -> consume; prints "MB tokens seconds peak_rss_mib".
measure() {
    local corpus=$1
    "$FLIGHTLM_BIN/flightlm-pipeline" serve --input "$corpus" --tokenizer "$TOKENIZER" \
        --listen 127.0.0.1:0 --valid-fraction 0 --workers "$CORES" --shuffle-window 1024 \
        > "$WORK/serve.out" 2> "$WORK/serve.log" &
    local pid=$!
    for _ in $(seq 1 600); do [ -s "$WORK/serve.out" ] && break; sleep 0.1; done
    local url
    url=$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' "$WORK/serve.out")
    timeout 1800 "$FLIGHTLM_BIN/flightlm-pipeline" consume --pipeline "$url" --seq-len $SEQ_LEN \
        --batch-size 32 --epochs 1 > "$WORK/consume.json"
    local rss_kib
    rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    kill "$pid"
    wait "$pid" 2> /dev/null || true
    "$FLIGHTLM_PYTHON" -c "import json,sys; s=json.load(open('$WORK/consume.json'))
print($(du -m "$corpus" | cut -f1), s['tokens'], round(s['seconds'], 1), round($rss_kib/1024))"
}

SMALL=$(make_corpus "$SMALL_MB")
LARGE=$(make_corpus "$LARGE_MB")
echo "corpora: $SMALL, $LARGE; seq_len $SEQ_LEN, shuffle window 1024, $CORES cores"
read -r small_mb small_tokens small_s small_rss <<< "$(measure "$SMALL")"
read -r large_mb large_tokens large_s large_rss <<< "$(measure "$LARGE")"
printf '%-10s %14s %10s %14s\n' "corpus" "tokens" "seconds" "peak RSS"
printf '%-10s %14s %10s %14s\n' "${small_mb} MB" "$small_tokens" "$small_s" "${small_rss} MiB"
printf '%-10s %14s %10s %14s\n' "${large_mb} MB" "$large_tokens" "$large_s" "${large_rss} MiB"
"$FLIGHTLM_PYTHON" -c "print(f'corpus {${large_mb}/${small_mb}:.1f}x larger -> peak RSS {${large_rss}/${small_rss}:.2f}x; target < 300 MiB: ' + ('met' if ${large_rss} < 300 else 'NOT met'))"
