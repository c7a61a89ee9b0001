#!/usr/bin/env bash
# Pipeline and trainer on two "hosts": two network namespaces joined by a veth pair, with
# flightlm-fault-proxy on the trainer's side adding latency, a bandwidth cap and connection resets
# at random moments. The pipeline listens on its veth address with a token and TLS; the trainer
# trains a tiny model through the proxy and must finish with every block trained on exactly once.
# Prints one summary line: eval perplexity, data-wait share, resets survived, blocks audited.
#
# Needs root (ip netns), iproute2 and openssl. Creates and removes its namespaces; uses only
# addresses inside them.
# Usage: bash scripts/two-hosts.sh   Environment: STEPS (default 200), LATENCY_MS (20),
#        BANDWIDTH_MBIT (100), RESET_MIN_S / RESET_MAX_S (3 / 6), WORK (runs/two-hosts)
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
STEPS="${STEPS:-200}"
LATENCY_MS="${LATENCY_MS:-20}"
BANDWIDTH_MBIT="${BANDWIDTH_MBIT:-100}"
RESET_MIN_S="${RESET_MIN_S:-3}"
RESET_MAX_S="${RESET_MAX_S:-6}"
WORK="${WORK:-runs/two-hosts}"
[ "$(id -u)" = 0 ] || { echo "two-hosts.sh needs root (it creates network namespaces)"; exit 1; }
command -v ip > /dev/null || { echo "two-hosts.sh needs iproute2 (ip)"; exit 1; }
cargo build --workspace --bins
BIN="$(cd "$FLIGHTLM_BIN" && pwd)"
rm -rf "$WORK" && mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

PIPELINE_NS="flightlm-pipeline-$$"
TRAINER_NS="flightlm-trainer-$$"
PIPELINE_IP=10.231.0.1
TRAINER_IP=10.231.0.2
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2> /dev/null || true; done
    wait 2> /dev/null || true
    ip netns del "$PIPELINE_NS" 2> /dev/null || true
    ip netns del "$TRAINER_NS" 2> /dev/null || true
}
trap cleanup EXIT

echo "== two hosts: $PIPELINE_NS ($PIPELINE_IP) and $TRAINER_NS ($TRAINER_IP) over a veth pair"
ip netns add "$PIPELINE_NS"
ip netns add "$TRAINER_NS"
ip link add "flp$$" netns "$PIPELINE_NS" type veth peer name "flt$$" netns "$TRAINER_NS"
ip -n "$PIPELINE_NS" addr add "$PIPELINE_IP/30" dev "flp$$"
ip -n "$TRAINER_NS" addr add "$TRAINER_IP/30" dev "flt$$"
for ns in "$PIPELINE_NS" "$TRAINER_NS"; do
    ip -n "$ns" link set lo up
done
ip -n "$PIPELINE_NS" link set "flp$$" up
ip -n "$TRAINER_NS" link set "flt$$" up

echo "== credentials: a token and a CA-signed certificate for the pipeline"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/token"
(
    cd "$WORK"
    curve="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    openssl req -x509 $curve -keyout ca.key -out ca.pem -days 2 -subj /CN=flightlm-two-hosts-ca 2> /dev/null
    openssl req $curve -keyout server.key -out server.csr -subj /CN=pipeline 2> /dev/null
    # The trainer reaches the pipeline through the proxy on its own loopback.
    echo "subjectAltName=IP:$PIPELINE_IP,IP:127.0.0.1" > san.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
        -days 2 -extfile san.ext 2> /dev/null
)

"$BIN/flightlm-pipeline" train-tokenizer --input data/kjv.txt.zst --vocab-size 4096 \
    --out "$WORK/tokenizer" > /dev/null

echo "== pipeline on $PIPELINE_IP:50051 (token + TLS)"
ip netns exec "$PIPELINE_NS" "$BIN/flightlm-pipeline" serve --input data/kjv.txt.zst \
    --tokenizer "$WORK/tokenizer/tokenizer.json" --listen "$PIPELINE_IP:50051" \
    --auth-token-file "$WORK/token" --tls-cert "$WORK/server.pem" --tls-key "$WORK/server.key" \
    --shuffle-window 64 > "$WORK/pipeline.out" 2> "$WORK/pipeline.log" &
PIDS+=($!)
wait_for_url "$WORK/pipeline.out" "${PIDS[-1]}" > /dev/null

echo "== fault proxy in $TRAINER_NS: ${LATENCY_MS} ms, ${BANDWIDTH_MBIT} Mbit/s, resets every ${RESET_MIN_S}-${RESET_MAX_S} s"
ip netns exec "$TRAINER_NS" "$BIN/flightlm-fault-proxy" --listen 127.0.0.1:0 \
    --upstream "$PIPELINE_IP:50051" --latency-ms "$LATENCY_MS" --bandwidth-mbit "$BANDWIDTH_MBIT" \
    --reset-min-s "$RESET_MIN_S" --reset-max-s "$RESET_MAX_S" --seed $$ \
    > "$WORK/proxy.out" 2> "$WORK/proxy.log" &
PIDS+=($!)
PROXY=$(wait_for_url "$WORK/proxy.out" "${PIDS[-1]}")

echo "== trainer in $TRAINER_NS: tiny MLM, $STEPS steps, via https://$PROXY"
# A small HTTP/2 window keeps the stream on the pipeline's side of the proxy, so a reset cuts it
# mid-flight: with the default 8 MiB window the whole run's blocks arrive in the first second and
# a later reset is never seen.
ip netns exec "$TRAINER_NS" env FLIGHTLM_AUTH_TOKEN_FILE="$WORK/token" \
    FLIGHTLM_STREAM_WINDOW_BYTES=65536 "$BIN/flightlm-trainer" train --pipeline "https://$PROXY" --tls-ca "$WORK/ca.pem" \
    --objective mlm --preset tiny --max-steps "$STEPS" --seq-len 64 --batch-size 16 \
    --grad-accum 1 --lr 1e-3 --warmup-steps 20 --log-every 10 --eval-every $((STEPS / 2)) \
    --save-every 50 --pipeline-retry-s 60 --out "$WORK/run" > /dev/null 2> "$WORK/trainer.log" \
    || { tail -20 "$WORK/trainer.log"; exit 1; }

AUDIT=$("$BIN/flightlm-trainer" audit-blocks "$WORK/run")
python3 - "$WORK" "$AUDIT" <<'PY'
import json, sys
work, audit = sys.argv[1], json.loads(sys.argv[2])
lines = [json.loads(line) for line in open(f"{work}/run/metrics.jsonl")]
evals = [line["eval_perplexity"] for line in lines if line["kind"] == "eval"]
train = [line for line in lines if line["kind"] == "train"]
wait = sum(line["data_wait"] for line in train) / len(train)
resets = sum('"reset_after_s"' in line for line in open(f"{work}/proxy.out"))
retries = sum("pipeline unavailable, retrying" in line for line in open(f"{work}/trainer.log"))
print(
    f"two-hosts: steps {train[-1]['step']}, eval perplexity {evals[0]:.1f} -> {evals[-1]:.1f}, "
    f"data wait {100 * wait:.1f} %, connection resets {resets}, trainer reconnections {retries}, "
    f"blocks audited {audit['rows']}, lost {audit['lost']}, repeated {audit['repeated']}"
)
ok = evals[-1] < evals[0] and audit["lost"] == 0 and audit["repeated"] == 0 and retries > 0
sys.exit(0 if ok else 1)
PY
