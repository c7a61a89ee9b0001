#!/usr/bin/env bash
# Pipeline throughput, side by side on the same corpus and cores, in one run:
#   (a) the HF path: datasets.map(batched, num_proc=cores) + group_texts, and the tokenizer alone;
#   (b) flightlm-pipeline serve -> Flight -> flightlm-pipeline consume (every batch decoded);
#   (c) the same, with the corpus read from an S3 API on loopback (moto) instead of a local file;
#   (d) (b) with --metrics-listen on, /metrics and the status page's /status.json polled every
#       second while it streams, as Prometheus and an open page would;
#   (e) (b) with the stream asked for its document starts (consume --document-starts).
# FLIGHTLM_BIN=DIR runs another build's binaries (to compare two builds on one machine).
# Usage: bash scripts/bench-pipeline.sh [CORPUS]   (default: the sample corpus repeated to >= 100 MB)
#        OBSERVE_ONLY=1 [PAIRS=3] bash scripts/bench-pipeline.sh [CORPUS]: only (b) and (d),
#        alternated PAIRS times, with the on/off ratio of each pair.
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
ensure_python
"$FLIGHTLM_VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-bench.txt
cargo build --workspace --bins

WORK="${FLIGHTLM_BENCH_DIR:-runs/bench-pipeline}"
mkdir -p "$WORK"
SEQ_LEN=128
CORES=$(nproc)
CORPUS="${1:-}"
if [ -z "$CORPUS" ]; then
    CORPUS="$WORK/sample-x25.txt"
    if [ ! -s "$CORPUS" ]; then
        if command -v zstd > /dev/null; then
            zstd -dc data/kjv.txt.zst > "$WORK/sample.txt"
        else
            "$FLIGHTLM_PYTHON" -c "import sys, zstandard
sys.stdout.buffer.write(zstandard.ZstdDecompressor().stream_reader(open('data/kjv.txt.zst', 'rb')).read())" \
                > "$WORK/sample.txt"
        fi
        for _ in $(seq 1 25); do cat "$WORK/sample.txt"; done > "$CORPUS"
    fi
fi
echo "corpus: $CORPUS ($(du -m "$CORPUS" | cut -f1) MB), seq_len $SEQ_LEN, $CORES cores"

TOKENIZER="$WORK/tokenizer/tokenizer.json"
[ -s "$TOKENIZER" ] || "$FLIGHTLM_BIN/flightlm-pipeline" train-tokenizer --input data/kjv.txt.zst \
    --vocab-size 8192 --out "$WORK/tokenizer" > /dev/null

# Serves INPUT, consumes one pass into OUT.json (with any further consume arguments) and prints the server's peak RSS (KiB). With
# OBSERVE=1 the metrics listener is on and polled once a second (metrics and page data).
run_flightlm() {
    local input=$1 out=$2 observe_flags=() poll_pid=""
    shift 2
    [ "${OBSERVE:-0}" = 1 ] && observe_flags=(--metrics-listen 127.0.0.1:0)
    "$FLIGHTLM_BIN/flightlm-pipeline" serve --input "$input" --tokenizer "$TOKENIZER" \
        --listen 127.0.0.1:0 --valid-fraction 0 --workers "$CORES" "${observe_flags[@]}" \
        > "$WORK/$out.serve" 2> "$WORK/$out.log" &
    local serve_pid=$!
    local url
    url=$(wait_for_url "$WORK/$out.serve" $serve_pid)
    if [ "${OBSERVE:-0}" = 1 ]; then
        local metrics
        metrics=$(sed -n 's/.*"metrics":"\([^"]*\)".*/\1/p' "$WORK/$out.serve")
        "$FLIGHTLM_PYTHON" -c 'import sys, time, urllib.request
for _ in range(36000):
    for path in ("/metrics", "/status.json"):
        urllib.request.urlopen(sys.argv[1] + path, timeout=10).read()
    time.sleep(1)' "$metrics" > /dev/null 2>&1 &
        poll_pid=$!
    fi
    "$FLIGHTLM_BIN/flightlm-pipeline" consume --pipeline "$url" --seq-len $SEQ_LEN \
        --batch-size 32 --epochs 1 "$@" > "$WORK/$out.json"
    [ -n "$poll_pid" ] && { kill $poll_pid; wait $poll_pid 2> /dev/null || true; }
    awk '/VmHWM/ {print $2}' /proc/$serve_pid/status
    kill $serve_pid
    wait $serve_pid 2> /dev/null || true
}

if [ "${OBSERVE_ONLY:-0}" = 1 ]; then
    for pair in $(seq 1 "${PAIRS:-3}"); do
        run_flightlm "$CORPUS" "off-$pair" > /dev/null
        OBSERVE=1 run_flightlm "$CORPUS" "on-$pair" > /dev/null
        "$FLIGHTLM_PYTHON" - "$WORK/off-$pair.json" "$WORK/on-$pair.json" "$pair" <<'PY'
import json, sys
off, on = (json.load(open(path))["tokens_per_s"] for path in sys.argv[1:3])
print(f"pair {sys.argv[3]}: metrics+page off {off:,.0f} tokens/s, on {on:,.0f} tokens/s, on/off {on / off:.3f}")
PY
    done
    exit 0
fi

echo "== (a) HF datasets.map + group_texts (num_proc=$CORES)"
"$FLIGHTLM_PYTHON" scripts/bench_hf_pipeline.py --corpus "$CORPUS" --tokenizer "$TOKENIZER" \
    --seq-len $SEQ_LEN --num-proc "$CORES" 2> "$WORK/hf.log" > "$WORK/hf.json"

echo "== (b) flightlm serve -> Flight -> consume"
SERVE_RSS_KIB=$(run_flightlm "$CORPUS" flightlm)
echo "== (d) the same, metrics and status page on and polled every second"
OBSERVE_RSS_KIB=$(OBSERVE=1 run_flightlm "$CORPUS" flightlm-observed)

echo "== (c) the same, the corpus in a bucket of a loopback S3 server (moto)"
mkdir -p "$WORK/bucket"
ln -f "$CORPUS" "$WORK/bucket/$(basename "$CORPUS")" 2> /dev/null \
    || cp "$CORPUS" "$WORK/bucket/$(basename "$CORPUS")"
"$FLIGHTLM_PYTHON" tests/python/object_server.py s3 --root "$WORK/bucket" --bucket bench \
    > "$WORK/s3.out" 2> "$WORK/s3.log" < <(sleep 3600) &
S3_PID=$!
trap 'kill $S3_PID 2> /dev/null || true' EXIT
for _ in $(seq 1 1200); do [ -s "$WORK/s3.out" ] && break; sleep 0.1; done
s3_field() { sed -n "s/.*\"$1\": \"\([^\"]*\)\".*/\1/p" "$WORK/s3.out"; }
S3_RSS_KIB=$(AWS_ENDPOINT_URL=$(s3_field endpoint) AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=$(s3_field access_key) AWS_SECRET_ACCESS_KEY=$(s3_field secret_key) \
    run_flightlm "s3://bench/$(basename "$CORPUS")" flightlm-s3)
kill $S3_PID

echo "== (e) as (b), with each block's document starts"
STARTS_RSS_KIB=$(run_flightlm "$CORPUS" flightlm-starts --document-starts)

"$FLIGHTLM_PYTHON" - "$WORK/hf.json" "$WORK/flightlm.json" "$SERVE_RSS_KIB" \
    "$WORK/flightlm-s3.json" "$S3_RSS_KIB" "$WORK/flightlm-observed.json" "$OBSERVE_RSS_KIB" \
    "$WORK/flightlm-starts.json" "$STARTS_RSS_KIB" <<'PY'
import json, sys
observed = json.load(open(sys.argv[6]))
observed_rss = int(sys.argv[7]) / 1024
starts = json.load(open(sys.argv[8]))
starts_rss = int(sys.argv[9]) / 1024
hf = json.load(open(sys.argv[1]))
fl = json.load(open(sys.argv[2]))
rss = int(sys.argv[3]) / 1024
s3 = json.load(open(sys.argv[4]))
s3_rss = int(sys.argv[5]) / 1024
rows = [
    ("HF datasets.map + group_texts", hf["hf_tokens_per_s"], hf["hf_first_batch_ms"], "-", "-", hf["hf_peak_rss_mib"]),
    ("tokenizer alone (encode_batch_fast)", hf["tokenizer_tokens_per_s"], None, "-", "-", None),
    ("flightlm serve -> Flight -> consume", fl["tokens_per_s"], fl["first_batch_ms"],
     f'{fl["wire_bytes_per_token"]:.3f}', f'{fl["uncompressed_bytes_per_token"]:.3f}', rss),
    ("  the corpus from S3 (loopback moto)", s3["tokens_per_s"], s3["first_batch_ms"],
     f'{s3["wire_bytes_per_token"]:.3f}', f'{s3["uncompressed_bytes_per_token"]:.3f}', s3_rss),
    ("  metrics + status page on, polled", observed["tokens_per_s"], observed["first_batch_ms"],
     f'{observed["wire_bytes_per_token"]:.3f}', f'{observed["uncompressed_bytes_per_token"]:.3f}',
     observed_rss),
    ("  with document starts", starts["tokens_per_s"], starts["first_batch_ms"],
     f'{starts["wire_bytes_per_token"]:.3f}', f'{starts["uncompressed_bytes_per_token"]:.3f}',
     starts_rss),
]
print(f'{"path":38} {"tokens/s":>12} {"first batch":>12} {"wire B/tok":>10} {"raw B/tok":>10} {"peak RSS":>10}')
for name, rate, first, wire, raw, peak in rows:
    first = f"{first/1000:.2f} s" if first is not None else "-"
    peak = f"{peak:.0f} MiB" if peak is not None else "-"
    print(f"{name:38} {rate:12,.0f} {first:>12} {wire:>10} {raw:>10} {peak:>10}")
print(f'flightlm / HF path: {fl["tokens_per_s"] / hf["hf_tokens_per_s"]:.2f}x;'
      f' flightlm / tokenizer alone: {fl["tokens_per_s"] / hf["tokenizer_tokens_per_s"]:.2f}x')
print(f'from S3 / from a local file: {s3["tokens_per_s"] / fl["tokens_per_s"]:.2f}x')
print(f'metrics + status page on / off: {observed["tokens_per_s"] / fl["tokens_per_s"]:.3f}x')
print(f'with document starts / without: {starts["tokens_per_s"] / fl["tokens_per_s"]:.3f}x')
print(f'tokens: HF {hf["hf_tokens"]:,}, flightlm {fl["tokens"]:,}, from S3 {s3["tokens"]:,}')
PY
