#!/usr/bin/env bash
# Fault soak: a tiny model trains from a live pipeline while the pipeline is killed with SIGKILL
# at random moments (restarted on the same address) and the trainer is killed with SIGKILL
# (restarted with --resume). At the end the trainer is stopped cleanly and its block log is
# audited: every block of the stream, up to the last one trained on, exactly once.
# Prints one summary line: kills survived, steps, blocks audited, lost, repeated.
#
# Usage: bash scripts/soak.sh   Environment: PIPELINE_KILLS (default 12), TRAINER_KILLS (6),
#        SEED (1), TIME_LIMIT_S (300: the whole soak fails past it), WORK (runs/soak)
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
PIPELINE_KILLS="${PIPELINE_KILLS:-12}"
TRAINER_KILLS="${TRAINER_KILLS:-6}"
RANDOM="${SEED:-1}"
TIME_LIMIT_S="${TIME_LIMIT_S:-300}"
WORK="${WORK:-runs/soak}"
cargo build --workspace --bins
BIN="$(cd "$FLIGHTLM_BIN" && pwd)"
rm -rf "$WORK" && mkdir -p "$WORK"
STARTED=$SECONDS

PIPELINE_PID=""
TRAINER_PID=""
cleanup() {
    kill -9 $PIPELINE_PID $TRAINER_PID 2> /dev/null || true
}
trap cleanup EXIT
fail() {
    echo "soak failed: $*"
    tail -5 "$WORK/trainer.log" "$WORK/pipeline.log" 2> /dev/null || true
    exit 1
}
check_time() {
    [ $((SECONDS - STARTED)) -lt "$TIME_LIMIT_S" ] || fail "ran past ${TIME_LIMIT_S} s"
}
# A random pause between MIN and MAX tenths of a second.
pause() {
    sleep "$(awk -v tenths=$(($1 + RANDOM % ($2 - $1 + 1))) 'BEGIN { print tenths / 10 }')"
}

"$BIN/flightlm-pipeline" train-tokenizer --input data/kjv.txt.zst --vocab-size 2048 \
    --out "$WORK/tokenizer" > /dev/null
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

start_pipeline() {
    "$BIN/flightlm-pipeline" serve --input data/kjv.txt.zst \
        --tokenizer "$WORK/tokenizer/tokenizer.json" --listen "127.0.0.1:$PORT" \
        --shuffle-window 64 > "$WORK/pipeline.out" 2>> "$WORK/pipeline.log" &
    PIPELINE_PID=$!
}
start_trainer() { # [--resume DIR]
    # A small HTTP/2 window keeps the stream on the pipeline's side, so kills cut it mid-flight.
    FLIGHTLM_STREAM_WINDOW_BYTES=65536 "$BIN/flightlm-trainer" train \
        --pipeline "http://127.0.0.1:$PORT" --objective mlm --preset tiny --max-steps 1000000 \
        --seq-len 32 --batch-size 8 --grad-accum 1 --warmup-steps 20 --log-every 10 \
        --eval-every 1000000 --save-every 10 --keep-checkpoints 2 --pipeline-retry-s 60 \
        --out "$WORK/run" "$@" > /dev/null 2>> "$WORK/trainer.log" &
    TRAINER_PID=$!
}
last_step() {
    sed -n 's/.*"kind":"train","step":\([0-9]*\).*/\1/p' "$WORK/run/metrics.jsonl" 2> /dev/null \
        | tail -1
}
# Waits until the trainer has logged a step past $1 (so it made progress since then).
wait_for_progress() {
    local from=$1
    while [ "$(last_step || true)" = "" ] || [ "$(last_step)" -le "$from" ]; do
        kill -0 "$TRAINER_PID" 2> /dev/null || fail "the trainer exited"
        check_time
        sleep 0.2
    done
}

start_pipeline
wait_for_url "$WORK/pipeline.out" "$PIPELINE_PID" > /dev/null
start_trainer
wait_for_progress 10

# The kills, in a random order.
EVENTS=$( (for _ in $(seq "$PIPELINE_KILLS"); do echo pipeline; done
           for _ in $(seq "$TRAINER_KILLS"); do echo trainer; done) \
         | awk -v seed="$RANDOM" 'BEGIN { srand(seed) } { print rand(), $0 }' | sort | cut -d' ' -f2)
pipeline_kills=0
trainer_kills=0
for event in $EVENTS; do
    check_time
    pause 5 25
    if [ "$event" = pipeline ]; then
        kill -9 "$PIPELINE_PID"
        wait "$PIPELINE_PID" 2> /dev/null || true
        pipeline_kills=$((pipeline_kills + 1))
        pause 2 15
        start_pipeline
        wait_for_url "$WORK/pipeline.out" "$PIPELINE_PID" > /dev/null
    else
        # --resume needs a checkpoint: kill only once one exists beyond the resumed step.
        step=$(last_step)
        while ! ls "$WORK/run/checkpoints" 2> /dev/null | grep -q step-; do
            check_time
            sleep 0.2
        done
        kill -9 "$TRAINER_PID"
        wait "$TRAINER_PID" 2> /dev/null || true
        trainer_kills=$((trainer_kills + 1))
        start_trainer --resume "$WORK/run"
        wait_for_progress "$step"
    fi
done

# A last stretch without faults, then a clean stop (SIGTERM writes a checkpoint and exits 0).
wait_for_progress "$(last_step)"
kill -TERM "$TRAINER_PID"
wait "$TRAINER_PID" || fail "the trainer did not stop cleanly"
retries=$(grep -c "pipeline unavailable, retrying" "$WORK/trainer.log" || true)
AUDIT=$("$BIN/flightlm-trainer" audit-blocks "$WORK/run") || fail "audit: $AUDIT"
python3 - "$AUDIT" "$pipeline_kills" "$trainer_kills" "$retries" $((SECONDS - STARTED)) <<'PY'
import json, sys
audit = json.loads(sys.argv[1])
pipeline_kills, trainer_kills, retries, seconds = map(int, sys.argv[2:])
print(
    f"soak: {seconds} s, pipeline SIGKILLs survived {pipeline_kills}, trainer SIGKILLs resumed "
    f"{trainer_kills}, reconnection attempts {retries}, steps {audit['steps']}, "
    f"blocks audited {audit['rows']}, lost {audit['lost']}, repeated {audit['repeated']}"
)
sys.exit(0 if audit["lost"] == 0 and audit["repeated"] == 0 else 1)
PY
