#!/usr/bin/env bash
# Pipeline throughput, side by side on the same corpus and cores, in one run:
#   (a) the HF path: datasets.map(batched, num_proc=cores) + group_texts, and the tokenizer alone;
#   (b) flightlm-pipeline serve -> Flight -> flightlm-pipeline consume (every batch decoded).
# Usage: bash scripts/bench-pipeline.sh [CORPUS]   (default: the sample corpus repeated to >= 100 MB)
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

echo "== (a) HF datasets.map + group_texts (num_proc=$CORES)"
"$FLIGHTLM_PYTHON" scripts/bench_hf_pipeline.py --corpus "$CORPUS" --tokenizer "$TOKENIZER" \
    --seq-len $SEQ_LEN --num-proc "$CORES" 2> "$WORK/hf.log" > "$WORK/hf.json"

echo "== (b) flightlm serve -> Flight -> consume"
"$FLIGHTLM_BIN/flightlm-pipeline" serve --input "$CORPUS" --tokenizer "$TOKENIZER" \
    --listen 127.0.0.1:0 --valid-fraction 0 --workers "$CORES" > "$WORK/serve.out" 2> "$WORK/serve.log" &
SERVE_PID=$!
trap 'kill $SERVE_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do [ -s "$WORK/serve.out" ] && break; sleep 0.1; done
URL=$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' "$WORK/serve.out")
"$FLIGHTLM_BIN/flightlm-pipeline" consume --pipeline "$URL" --seq-len $SEQ_LEN --batch-size 32 \
    --epochs 1 > "$WORK/flightlm.json"
SERVE_RSS_KIB=$(awk '/VmHWM/ {print $2}' /proc/$SERVE_PID/status)
kill $SERVE_PID

"$FLIGHTLM_PYTHON" - "$WORK/hf.json" "$WORK/flightlm.json" "$SERVE_RSS_KIB" <<'PY'
import json, sys
hf = json.load(open(sys.argv[1]))
fl = json.load(open(sys.argv[2]))
rss = int(sys.argv[3]) / 1024
rows = [
    ("HF datasets.map + group_texts", hf["hf_tokens_per_s"], hf["hf_first_batch_ms"], "-", "-", hf["hf_peak_rss_mib"]),
    ("tokenizer alone (encode_batch_fast)", hf["tokenizer_tokens_per_s"], None, "-", "-", None),
    ("flightlm serve -> Flight -> consume", fl["tokens_per_s"], fl["first_batch_ms"],
     f'{fl["wire_bytes_per_token"]:.3f}', f'{fl["uncompressed_bytes_per_token"]:.3f}', rss),
]
print(f'{"path":38} {"tokens/s":>12} {"first batch":>12} {"wire B/tok":>10} {"raw B/tok":>10} {"peak RSS":>10}')
for name, rate, first, wire, raw, peak in rows:
    first = f"{first/1000:.2f} s" if first is not None else "-"
    peak = f"{peak:.0f} MiB" if peak is not None else "-"
    print(f"{name:38} {rate:12,.0f} {first:>12} {wire:>10} {raw:>10} {peak:>10}")
print(f'flightlm / HF path: {fl["tokens_per_s"] / hf["hf_tokens_per_s"]:.2f}x;'
      f' flightlm / tokenizer alone: {fl["tokens_per_s"] / hf["tokenizer_tokens_per_s"]:.2f}x')
print(f'tokens: HF {hf["hf_tokens"]:,}, flightlm {fl["tokens"]:,}')
PY
