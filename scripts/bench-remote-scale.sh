#!/usr/bin/env bash
# Start-up at scale: a corpus of OBJECTS small JSON-lines objects (default 10,000) in a bucket of
# a loopback S3 server (moto), against the same documents as one object and as a local directory:
#   - time from launching `serve` to the first batch of a consumer (32 blocks of 128 tokens), and
#     the bytes the pipeline read from the store by then (`stats`, read right after that batch:
#     an upper bound, since the pipeline reads a little ahead);
#   - requests and listing pages by then;
#   - one whole pass of the bucket and of the directory: identical blocks (sha256 of the dumps).
# Usage: bash scripts/bench-remote-scale.sh [OBJECTS]
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
ensure_python
cargo build --workspace --bins

OBJECTS="${1:-10000}"
WORK="${FLIGHTLM_BENCH_DIR:-runs/bench-remote-scale}"
SEQ_LEN=128
rm -rf "$WORK/bucket"
mkdir -p "$WORK/bucket/many" "$WORK/bucket/one"
if [ ! -s "$WORK/sample.txt" ]; then
    if command -v zstd > /dev/null; then
        zstd -dc data/kjv.txt.zst > "$WORK/sample.txt"
    else
        "$FLIGHTLM_PYTHON" -c "import sys, zstandard
sys.stdout.buffer.write(zstandard.ZstdDecompressor().stream_reader(open('data/kjv.txt.zst', 'rb')).read())" \
            > "$WORK/sample.txt"
    fi
fi
"$FLIGHTLM_PYTHON" - "$WORK/bucket" "$OBJECTS" "$WORK/sample.txt" <<'PY'
import json, sys
root, count = sys.argv[1], int(sys.argv[2])
lines = [line for line in open(sys.argv[3]).read().splitlines() if line.strip()]
per_object = 12
with open(f"{root}/one/all.jsonl", "w") as whole:
    for index in range(count):
        rows = "".join(json.dumps({"text": lines[(index * per_object + k) % len(lines)],
                                   "id": index * per_object + k}) + "\n"
                       for k in range(per_object))
        with open(f"{root}/many/shard-{index:05d}.jsonl", "w") as part:
            part.write(rows)
        whole.write(rows)
PY
echo "corpus: $OBJECTS objects of $(( $(du -sb "$WORK/bucket/many" | cut -f1) / OBJECTS )) bytes" \
     "(about), $(du -sh "$WORK/bucket/one/all.jsonl" | cut -f1) as one object"

TOKENIZER="$WORK/tokenizer/tokenizer.json"
[ -s "$TOKENIZER" ] || "$FLIGHTLM_BIN/flightlm-pipeline" train-tokenizer --input data/kjv.txt.zst \
    --vocab-size 8192 --out "$WORK/tokenizer" > /dev/null

"$FLIGHTLM_PYTHON" tests/python/object_server.py s3 --root "$WORK/bucket" --bucket bench \
    > "$WORK/s3.out" 2> "$WORK/s3.log" < <(sleep 3600) &
S3_PID=$!
trap 'kill $S3_PID 2> /dev/null || true' EXIT
for _ in $(seq 1 1200); do [ -s "$WORK/s3.out" ] && break; sleep 0.1; done
s3_field() { sed -n "s/.*\"$1\": \"\([^\"]*\)\".*/\1/p" "$WORK/s3.out"; }
export AWS_ENDPOINT_URL=$(s3_field endpoint) AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=$(s3_field access_key) AWS_SECRET_ACCESS_KEY=$(s3_field secret_key)

# Serves INPUT; prints one JSON line: seconds from launch to the first batch, and the
# pipeline's remote counters right after it. With DUMP, then reads a whole pass into DUMP.
measure() {
    local input=$1 name=$2 dump=${3:-}
    local started url
    started=$(date +%s.%N)
    "$FLIGHTLM_BIN/flightlm-pipeline" serve --input "$input" --tokenizer "$TOKENIZER" \
        --listen 127.0.0.1:0 --valid-fraction 0 > "$WORK/$name.serve" 2> "$WORK/$name.log" &
    local serve_pid=$!
    url=$(wait_for_url "$WORK/$name.serve" $serve_pid)
    local listening
    listening=$(date +%s.%N)
    "$FLIGHTLM_BIN/flightlm-pipeline" consume --pipeline "$url" --seq-len $SEQ_LEN \
        --batch-size 32 --max-blocks 32 > "$WORK/$name.first.json"
    "$FLIGHTLM_BIN/flightlm-pipeline" stats --pipeline "$url" > "$WORK/$name.stats.json"
    if [ -n "$dump" ]; then
        "$FLIGHTLM_BIN/flightlm-pipeline" consume --pipeline "$url" --seq-len $SEQ_LEN \
            --batch-size 64 --epochs 1 --dump "$dump" > "$WORK/$name.pass.json"
    fi
    kill $serve_pid
    wait $serve_pid 2> /dev/null || true
    "$FLIGHTLM_PYTHON" - "$name" "$started" "$listening" "$WORK/$name.first.json" \
        "$WORK/$name.stats.json" "$dump" <<'PY'
import hashlib, json, sys
name, started, listening, first, stats, dump = sys.argv[1:]
first = json.loads(open(first).read().strip().splitlines()[-1])
stats = json.loads(open(stats).read().strip().splitlines()[-1])
remote = stats.get("remote", {})
row = {"name": name, "listening_s": float(listening) - float(started),
       "first_batch_s": float(listening) - float(started) + first["first_batch_ms"] / 1000,
       "bytes": remote.get("bytes", 0), "requests": remote.get("requests", 0),
       "list_pages": remote.get("list_pages", 0), "files": stats["files"]}
if dump:
    row["pass_sha256"] = hashlib.sha256(open(dump, "rb").read()).hexdigest()[:16]
    row["pass_blocks"] = sum(1 for _ in open(dump))
print(json.dumps(row))
PY
}

{
    measure "$WORK/bucket/many" local-directory "$WORK/local.dump"
    measure "s3://bench/one/all.jsonl" s3-one-object
    measure "s3://bench/many" s3-many-objects "$WORK/s3.dump"
} > "$WORK/rows.jsonl"

"$FLIGHTLM_PYTHON" - "$WORK/rows.jsonl" "$OBJECTS" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f'{"corpus":30} {"files":>7} {"ready":>8} {"first batch":>12} {"bytes read":>12} '
      f'{"requests":>9} {"pages":>6} {"pass blocks":>12} {"pass sha256":>17}')
for row in rows:
    print(f'{row["name"]:30} {row["files"]:>7} {row["listening_s"]:>7.2f}s '
          f'{row["first_batch_s"]:>11.2f}s {row["bytes"] / 2**20:>10.2f}MiB '
          f'{row["requests"]:>9} {row["list_pages"]:>6} {row.get("pass_blocks", "-"):>12} '
          f'{row.get("pass_sha256", "-"):>17}')
many = next(row for row in rows if row["name"] == "s3-many-objects")
one = next(row for row in rows if row["name"] == "s3-one-object")
local = next(row for row in rows if row["name"] == "local-directory")
print(f'{sys.argv[2]} objects / one object, first batch: '
      f'{many["first_batch_s"] / one["first_batch_s"]:.2f}x; '
      f'bytes before it: {many["bytes"] / max(one["bytes"], 1):.2f}x')
print("blocks identical to the local directory:", many["pass_sha256"] == local["pass_sha256"])
PY
