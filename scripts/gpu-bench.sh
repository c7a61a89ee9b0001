#!/usr/bin/env bash
# GPU host benchmark: flightlm-trainer (burn-cuda) against PyTorch/transformers on the same card
# and shapes, in one call. Builds nothing: it runs binaries built beforehand (the GPU host needs
# the NVIDIA driver, the CUDA toolkit's NVRTC, and PyTorch + transformers for the comparison).
# Every burn run trains the base preset from a pipeline process on the same host. Order: the first
# burn config (filling the kernel caches), PyTorch, the first config again, then the others, each
# while the budget lasts.
#
# Usage: bash scripts/gpu-bench.sh BIN_DIR [WORK_DIR]
#   BIN_DIR   holds flightlm-pipeline and flightlm-trainer (or their .gz or .xz)
#   WORK_DIR  run directory; its kernel-cache/ keeps cubecl's autotune and compilation caches,
#             so reuse it between runs (default runs/gpu-bench): a second call starts in seconds
#
# Kernel compilation and autotuning dominate a cold start: on an H200, the first MLM bf16 step
# came about 490 s after launch with empty caches (191 s of it compiling the step-0 evaluation),
# and 8 s with the caches filled; causal bf16 after MLM's caches took 152 s. A cold call therefore
# covers one or two configs within the budget and skips the rest; each call adds to the caches.
# Environment:
#   BURN_CONFIGS   objective:seq_len:batch:precision[:steps[:dp|ckpt]],… (default
#                  mlm:128:32:bf16:200,mlm:128:32:bf16:60:dp,mlm:128:32:bf16:60:ckpt,
#                  mlm:128:32:f32,causal:128:32:bf16,mlm:512:16:bf16; steps default STEPS=60).
#                  precision bf16 is burn's mixed precision (f32 master weights); dp trains
#                  with --devices cuda:0, the data-parallel loop (step exchange, gradient
#                  all-reduce) on one GPU; ckpt with --autodiff-checkpointing balanced
#                  (element-wise activations recomputed in the backward pass, for memory)
#   TORCH_CONFIGS  objective:seq_len:batch:precision,… or "none" (default: the same shapes)
#   BURN_RUNS      2 (default) runs the first burn config again (STEPS steps) right after PyTorch,
#                  to show a second run's start-up with the caches the first one filled; 1 does not
#   LOG_EVERY      steps per burn log line (default 10): reading the loss back syncs the device,
#                  which PyTorch's loop here never does, so logging every step would cost burn
#   BURN_TIMEOUT   s, per burn run (default 300)
#   BUDGET_S       s, the whole call (default 470): a burn run's deadline is cut to what is left,
#                  and a run with under 30 s left is skipped
#   KERNEL_CACHE_ARCHIVE  a .tgz of kernel-cache/ for hosts that start empty: unpacked before the
#                  runs when kernel-cache/ is empty, and rewritten with the filled caches at the end
#   PROFILE_STEPS  N > 0 ends with an N-step run of the first config under cubecl's kernel
#                  profiler, and prints GPU time and launches per step with the top kernels
set -euo pipefail
SCRIPT_STARTED=$(date +%s)
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
BIN_DIR="$(cd "$1" && pwd)"
WORK="${2:-$FLIGHTLM_REPO/runs/gpu-bench}"
STEPS="${STEPS:-60}"
LOG_EVERY="${LOG_EVERY:-10}"
BURN_TIMEOUT="${BURN_TIMEOUT:-300}"
BURN_RUNS="${BURN_RUNS:-2}"
BURN_CONFIGS="${BURN_CONFIGS:-mlm:128:32:bf16:200,mlm:128:32:bf16:60:dp,mlm:128:32:bf16:60:ckpt,mlm:128:32:f32,causal:128:32:bf16,mlm:512:16:bf16}"
BUDGET_S="${BUDGET_S:-470}"
TORCH_CONFIGS="${TORCH_CONFIGS:-mlm:128:32:bf16,mlm:128:32:f32,causal:128:32:bf16,mlm:512:16:bf16}"
mkdir -p "$WORK/kernel-cache"
WORK="$(cd "$WORK" && pwd)"
KERNEL_CACHE_ARCHIVE="${KERNEL_CACHE_ARCHIVE:+$(realpath -m "$KERNEL_CACHE_ARCHIVE")}"
PROFILE_STEPS="${PROFILE_STEPS:-0}"
for binary in flightlm-pipeline flightlm-trainer; do
    rm -f "$WORK/$binary"
    if [ -x "$BIN_DIR/$binary" ]; then
        ln -s "$BIN_DIR/$binary" "$WORK/$binary"
    elif [ -f "$BIN_DIR/$binary.gz" ]; then
        gzip -dc "$BIN_DIR/$binary.gz" > "$WORK/$binary"
    else # .xz, through Python (present for the PyTorch side), so the host needs no xz tool
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' \
            "$BIN_DIR/$binary.xz" > "$WORK/$binary"
    fi
    chmod +x "$WORK/$binary"
done
if [ -n "$KERNEL_CACHE_ARCHIVE" ] && [ -f "$KERNEL_CACHE_ARCHIVE" ] && [ -z "$(ls -A "$WORK/kernel-cache")" ]; then
    tar xzf "$KERNEL_CACHE_ARCHIVE" -C "$WORK"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$WORK/card.txt"

# cubecl reads cubecl.toml from the working directory: keep its caches in WORK/kernel-cache.
cat > "$WORK/cubecl.toml" <<TOML
[autotune]
cache = { file = "$WORK/kernel-cache/autotune" }

[compilation]
cache = { file = "$WORK/kernel-cache/compilation" }
TOML

cd "$WORK"
./flightlm-pipeline train-tokenizer --input "$FLIGHTLM_REPO/data/kjv.txt.zst" --vocab-size 8192 \
    --out tokenizer > /dev/null
./flightlm-pipeline serve --input "$FLIGHTLM_REPO/data/kjv.txt.zst" --tokenizer tokenizer/tokenizer.json \
    --listen 127.0.0.1:0 > pipeline.out 2> pipeline.log &
PIPELINE_PID=$!
trap 'kill $PIPELINE_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do [ -s pipeline.out ] && break; sleep 0.1; done
URL=$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' pipeline.out)

trainer_args() { # objective seq_len batch precision steps out [dp|ckpt]: the base preset from the pipeline
    TRAIN_ARGS=(train --pipeline "$URL" --device cuda --objective "$1" --precision "$4"
        --preset base --seq-len "$2" --batch-size "$3" --grad-accum 1 --warmup-steps 10
        --max-steps "$5" --log-every "$LOG_EVERY" --eval-every 100000 --save-every 100000 --out "$6")
    [ "${7:-}" = dp ] && TRAIN_ARGS+=(--devices cuda:0)
    [ "${7:-}" = ckpt ] && TRAIN_ARGS+=(--autodiff-checkpointing balanced)
    return 0
}
burn_run() { # name objective seq_len batch precision steps [dp|ckpt]: the base preset from the pipeline
    local name=$1 objective=$2 seq_len=$3 batch=$4 precision=$5 steps=$6 variant=${7:-}
    # Seconds left of the budget, less 15 for the summary.
    local left=$((SCRIPT_STARTED + BUDGET_S - 15 - $(date +%s)))
    local deadline=$BURN_TIMEOUT
    [ "$deadline" -gt "$left" ] && deadline=$left
    echo "$name $objective $seq_len $batch $precision $variant" >> burn-runs.txt
    if [ "$deadline" -lt 30 ]; then
        echo "   skipped: ${left}s left of the ${BUDGET_S}s budget"
        echo '{"kind":"exit","status":"skipped"}' > "burn-$name.out"
        return
    fi
    # Peak device memory: sampled every 200 ms, less what was in use before the run.
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1 > "mem-$name.txt"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >> "mem-$name.txt" &
    local sampler=$!
    local started=$(date +%s.%N)
    # Time to the first log line (step LOG_EVERY) as a user sees it, from the launch.
    (for _ in $(seq 1 $((deadline * 10))); do
        grep -q '"kind":"train"' "burn-$name.out" 2> /dev/null && { date +%s.%N > "first-$name.txt"; break; }
        sleep 0.1
    done) &
    local watcher=$!
    trainer_args "$objective" "$seq_len" "$batch" "$precision" "$steps" "burn-$name" "$variant"
    timeout -k 20 "$deadline" ./flightlm-trainer "${TRAIN_ARGS[@]}" \
        > "burn-$name.out" 2> "burn-$name.err" || echo "{\"kind\":\"exit\",\"status\":$?}" >> "burn-$name.out"
    echo "{\"kind\":\"wall\",\"started\":$started,\"ended\":$(date +%s.%N)}" >> "burn-$name.out"
    kill "$sampler" "$watcher" 2> /dev/null || true
    [ -f "first-$name.txt" ] && echo "{\"kind\":\"first_step\",\"at\":$(cat "first-$name.txt")}" >> "burn-$name.out"
    grep -E '"kind":"(train|exit)"' "burn-$name.out" | tail -1 || true
    tail -2 "burn-$name.err" | tr '\r' '\n' | tail -2 || true
}
run_torch() {
    if [ "$TORCH_CONFIGS" != none ]; then
        echo "== PyTorch"
        timeout 240 python3 "$FLIGHTLM_REPO/scripts/gpu_bench_torch.py" --configs "$TORCH_CONFIGS" \
            --steps 20 > torch.out 2> torch.err || echo "pytorch exit $?" >> torch.err
        cat torch.out
    fi
}
# With TORCH_CONFIGS=none an earlier call's torch.out stays, and the table says so.
[ "$TORCH_CONFIGS" != none ] && : > torch.out
: > burn-runs.txt
rm -f burn-* mem-* first-*
IFS=, read -ra CONFIGS <<< "$BURN_CONFIGS"
ORDER=(0 torch)
[ "$BURN_RUNS" -ge 2 ] && ORDER+=(again)
for index in "${!CONFIGS[@]}"; do [ "$index" -gt 0 ] && ORDER+=("$index"); done
for entry in "${ORDER[@]}"; do
    [ "$entry" = torch ] && { run_torch; continue; }
    config=${CONFIGS[${entry/again/0}]}
    IFS=: read -r objective seq_len batch precision steps variant <<< "$config"
    [ "$entry" = again ] && steps=$STEPS
    CACHED=$(find kernel-cache -type f | wc -l)
    echo "== burn-cuda $objective seq $seq_len batch $batch $precision ${variant:-} ($CACHED cached kernel files)"
    burn_run "$entry" "$objective" "$seq_len" "$batch" "$precision" "${steps:-$STEPS}" "${variant:-}"
done

if [ "$PROFILE_STEPS" -gt 0 ]; then
    # Every kernel timed on the device (which serializes launches, so only the GPU time counts).
    IFS=: read -r objective seq_len batch precision _ <<< "${CONFIGS[0]}"
    echo "== kernel profile: burn-cuda $objective seq $seq_len batch $batch $precision, $PROFILE_STEPS steps"
    mkdir -p profile && rm -rf profile/run profile/kernels.log
    { cat cubecl.toml
      printf '\n[profiling.logger]\nlevel = "basic"\nfile = "%s"\nappend = false\n' "$WORK/profile/kernels.log"
    } > profile/cubecl.toml
    trainer_args "$objective" "$seq_len" "$batch" "$precision" "$PROFILE_STEPS" run
    (cd profile && timeout -k 20 "$BURN_TIMEOUT" ../flightlm-trainer "${TRAIN_ARGS[@]}" \
        > run.out 2> run.err) || echo "   profile run exit $?"
    # Set beside the first config's unprofiled steady state, when it ran.
    [ -s profile/kernels.log ] && python3 "$FLIGHTLM_REPO/scripts/gpu_kernel_profile.py" \
        profile/kernels.log "$PROFILE_STEPS" burn-0.out | tee profile/summary.txt
fi

python3 "$FLIGHTLM_REPO/scripts/gpu_bench_table.py"
if [ -n "$KERNEL_CACHE_ARCHIVE" ]; then
    tar czf "$KERNEL_CACHE_ARCHIVE.partial" kernel-cache && mv "$KERNEL_CACHE_ARCHIVE.partial" "$KERNEL_CACHE_ARCHIVE"
fi
