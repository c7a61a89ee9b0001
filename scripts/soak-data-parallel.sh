#!/usr/bin/env bash
# Data-parallel fault soak: a tiny model trains as a multi-node run (one CPU rank per node
# process, joined through node 0's coordinator on loopback) from two pipeline replicas
# (--pipeline A,B). At random moments one node process is SIGKILLed (the others then end with an
# error naming a rank) and the run is resumed from its last checkpoint on 1, 2 or 3 nodes, drawn
# at random (the global batch stays 6 blocks); and one of the two replicas is SIGKILLed and
# restarted on its address (the nodes continue on the other one, and are sent SIGUSR1 to come
# back to the first). At the end the nodes are stopped with SIGTERM and the block log is
# audited: every block of the stream, up to the last one trained on, exactly once.
# Prints one summary line: kills, resumes per world size, steps, blocks audited, lost, repeated.
#
# Usage: bash scripts/soak-data-parallel.sh   Environment: NODE_KILLS (default 20),
#        REPLICA_KILLS (10), SEED (1), TIME_LIMIT_S (900: the whole soak fails past it),
#        WORK (runs/soak-data-parallel)
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
NODE_KILLS="${NODE_KILLS:-20}"
REPLICA_KILLS="${REPLICA_KILLS:-10}"
RANDOM="${SEED:-1}"
TIME_LIMIT_S="${TIME_LIMIT_S:-900}"
WORK="${WORK:-runs/soak-data-parallel}"
cargo build --workspace --bins
BIN="$(cd "$FLIGHTLM_BIN" && pwd)"
rm -rf "$WORK" && mkdir -p "$WORK"
STARTED=$SECONDS

declare -A REPLICA_PID
NODE_PIDS=()
cleanup() {
    kill -9 "${REPLICA_PID[@]}" "${NODE_PIDS[@]}" 2> /dev/null || true
}
trap cleanup EXIT
fail() {
    echo "soak failed: $*"
    tail -5 "$WORK"/node-*.log "$WORK"/replica-*.log 2> /dev/null || true
    exit 1
}
check_time() {
    [ $((SECONDS - STARTED)) -lt "$TIME_LIMIT_S" ] || fail "ran past ${TIME_LIMIT_S} s"
}
# A random pause between MIN and MAX tenths of a second (drawn here: $RANDOM inside a command
# substitution would not advance this shell's sequence).
pause() {
    local tenths=$(($1 + RANDOM % ($2 - $1 + 1)))
    sleep "$(awk -v tenths=$tenths 'BEGIN { print tenths / 10 }')"
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

"$BIN/flightlm-pipeline" train-tokenizer --input data/kjv.txt.zst --vocab-size 2048 \
    --out "$WORK/tokenizer" > /dev/null
declare -A REPLICA_PORT=([a]=$(free_port) [b]=$(free_port))
start_replica() { # a|b
    "$BIN/flightlm-pipeline" serve --input data/kjv.txt.zst \
        --tokenizer "$WORK/tokenizer/tokenizer.json" --listen "127.0.0.1:${REPLICA_PORT[$1]}" \
        --shuffle-window 64 > "$WORK/replica-$1.out" 2>> "$WORK/replica-$1.log" &
    REPLICA_PID[$1]=$!
    wait_for_url "$WORK/replica-$1.out" "${REPLICA_PID[$1]}" > /dev/null
}
PIPELINES="http://127.0.0.1:${REPLICA_PORT[a]},http://127.0.0.1:${REPLICA_PORT[b]}"

# Starts the run on $1 nodes of one CPU rank each (global batch 6), resumed unless it is the first.
launch() {
    local nodes=$1 resume=() port
    port=$(free_port)
    [ -d "$WORK/run/checkpoints" ] && resume=(--resume "$WORK/run")
    NODE_PIDS=()
    for rank in $(seq 0 $((nodes - 1))); do
        # A small HTTP/2 window keeps the stream on the replica's side (a few steps ahead), so a
        # replica's kill reaches the node within seconds.
        FLIGHTLM_STREAM_WINDOW_BYTES=4096 "$BIN/flightlm-trainer" train --pipeline "$PIPELINES" \
            --objective mlm --preset tiny --max-steps 1000000 --seq-len 32 \
            --batch-size $((6 / nodes)) --grad-accum 1 --warmup-steps 20 --log-every 5 \
            --eval-every 1000000 --save-every 10 --keep-checkpoints 2 --pipeline-retry-s 60 \
            --devices cpu:1 --nodes "$nodes" --node-rank "$rank" --coordinator "127.0.0.1:$port" \
            --collective-timeout-s 20 --join-timeout-s 60 --out "$WORK/run" "${resume[@]}" \
            > /dev/null 2>> "$WORK/node-$rank.log" &
        NODE_PIDS+=($!)
    done
}
last_step() {
    sed -n 's/.*"kind":"train","step":\([0-9]*\).*/\1/p' "$WORK/run/metrics.jsonl" 2> /dev/null \
        | tail -1
}
# Waits until node 0 has logged a step past $1.
wait_for_progress() {
    local from=$1
    while [ "$(last_step || true)" = "" ] || [ "$(last_step)" -le "$from" ]; do
        for pid in "${NODE_PIDS[@]}"; do
            kill -0 "$pid" 2> /dev/null || fail "node process $pid exited"
        done
        check_time
        sleep 0.2
    done
}
# Waits for every node process; the survivors of a kill end with an error naming a rank.
wait_for_nodes() {
    for pid in "${NODE_PIDS[@]}"; do
        wait "$pid" 2> /dev/null || true
    done
}

start_replica a
start_replica b
launch 2
wait_for_progress 0

EVENTS=$( (for _ in $(seq "$NODE_KILLS"); do echo node; done
           for _ in $(seq "$REPLICA_KILLS"); do echo replica; done) \
         | awk -v seed="$RANDOM" 'BEGIN { srand(seed) } { print rand(), $0 }' | sort | cut -d' ' -f2)
node_kills=0
replica_kills=0
declare -A resumed_on=([1]=0 [2]=0 [3]=0)
for event in $EVENTS; do
    check_time
    pause 5 25
    if [ "$event" = replica ]; then
        which=b
        [ $((RANDOM % 2)) = 0 ] && which=a
        kill -9 "${REPLICA_PID[$which]}"
        wait "${REPLICA_PID[$which]}" 2> /dev/null || true
        replica_kills=$((replica_kills + 1))
        pause 2 15
        start_replica "$which"
        kill -USR1 "${NODE_PIDS[@]}" 2> /dev/null || true
    else
        # A resume needs a checkpoint: kill only once one exists.
        while ! ls "$WORK/run/checkpoints" 2> /dev/null | grep -q step-; do
            check_time
            sleep 0.2
        done
        step=$(last_step)
        victim=${NODE_PIDS[$((RANDOM % ${#NODE_PIDS[@]}))]}
        kill -9 "$victim"
        wait_for_nodes
        node_kills=$((node_kills + 1))
        nodes=$((1 + RANDOM % 3))
        resumed_on[$nodes]=$((resumed_on[$nodes] + 1))
        launch "$nodes"
        wait_for_progress "$step"
    fi
done

# A last stretch without faults, then a clean stop (SIGTERM: every node stops at the same step
# and node 0 writes a checkpoint).
wait_for_progress "$(last_step)"
kill -TERM "${NODE_PIDS[@]}"
for pid in "${NODE_PIDS[@]}"; do
    wait "$pid" || fail "a node did not stop cleanly"
done
failovers=$(cat "$WORK"/node-*.log | grep -c "continuing on replica" || true)
AUDIT=$("$BIN/flightlm-trainer" audit-blocks "$WORK/run") || fail "audit: $AUDIT"
python3 - "$AUDIT" "$node_kills" "$replica_kills" "$failovers" $((SECONDS - STARTED)) \
    "${resumed_on[1]}" "${resumed_on[2]}" "${resumed_on[3]}" <<'PY'
import json, sys
audit = json.loads(sys.argv[1])
node_kills, replica_kills, failovers, seconds, on1, on2, on3 = map(int, sys.argv[2:])
print(
    f"soak (data parallel): {seconds} s, node SIGKILLs {node_kills} (resumed on 1/2/3 nodes "
    f"{on1}/{on2}/{on3}), replica SIGKILLs {replica_kills} (stream moves {failovers}), "
    f"steps {audit['steps']}, blocks audited {audit['rows']}, lost {audit['lost']}, "
    f"repeated {audit['repeated']}"
)
sys.exit(0 if audit["lost"] == 0 and audit["repeated"] == 0 else 1)
PY
