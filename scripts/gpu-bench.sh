#!/usr/bin/env bash
# GPU host benchmark: flightlm-trainer (burn-cuda) against PyTorch/transformers on the same card
# and shapes, in one call. Builds nothing: it runs binaries built beforehand (the GPU host needs
# the NVIDIA driver, the CUDA toolkit's NVRTC, and PyTorch + transformers for the comparison).
# Every burn run trains the base preset from a pipeline process on the same host.
#
# Usage: bash scripts/gpu-bench.sh BIN_DIR [WORK_DIR]
#   BIN_DIR   holds flightlm-pipeline and flightlm-trainer (or their .gz)
#   WORK_DIR  run directory; its kernel-cache/ keeps cubecl's autotune and compilation caches,
#             so reuse it between runs (default runs/gpu-bench): a second call starts in seconds
# Environment:
#   BURN_CONFIGS   objective:seq_len:batch:precision[:steps],… (default
#                  mlm:128:32:bf16:200,mlm:128:32:f32,causal:128:32:bf16,mlm:512:16:bf16; steps
#                  default STEPS=30). precision bf16 is burn's mixed precision (f32 master weights)
#   TORCH_CONFIGS  objective:seq_len:batch:precision,… or "none" (default: the same shapes)
#   BURN_RUNS      2 (default) runs the first burn config again at the end, to show the start-up
#                  with the caches the call filled; 1 does not
#   BURN_TIMEOUT   s, per burn run (default 300)
#   BUDGET_S       s, the whole call (default 470): a burn run's deadline is cut to what is left,
#                  and a run with under 30 s left is skipped
set -euo pipefail
SCRIPT_STARTED=$(date +%s)
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
BIN_DIR="$(cd "$1" && pwd)"
WORK="${2:-$FLIGHTLM_REPO/runs/gpu-bench}"
STEPS="${STEPS:-30}"
BURN_TIMEOUT="${BURN_TIMEOUT:-300}"
BURN_RUNS="${BURN_RUNS:-2}"
BURN_CONFIGS="${BURN_CONFIGS:-mlm:128:32:bf16:200,mlm:128:32:f32,causal:128:32:bf16,mlm:512:16:bf16}"
BUDGET_S="${BUDGET_S:-470}"
TORCH_CONFIGS="${TORCH_CONFIGS:-mlm:128:32:bf16,mlm:128:32:f32,causal:128:32:bf16,mlm:512:16:bf16}"
mkdir -p "$WORK/kernel-cache"
WORK="$(cd "$WORK" && pwd)"
for binary in flightlm-pipeline flightlm-trainer; do
    if [ ! -x "$BIN_DIR/$binary" ] && [ -f "$BIN_DIR/$binary.gz" ]; then
        gzip -dc "$BIN_DIR/$binary.gz" > "$WORK/$binary" && chmod +x "$WORK/$binary"
    else
        ln -sf "$BIN_DIR/$binary" "$WORK/$binary"
    fi
done
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

burn_run() { # name objective seq_len batch precision steps: the base preset from the pipeline
    local name=$1 objective=$2 seq_len=$3 batch=$4 precision=$5 steps=$6
    # Seconds left of the budget, less 15 for the summary.
    local left=$((SCRIPT_STARTED + BUDGET_S - 15 - $(date +%s)))
    local deadline=$BURN_TIMEOUT
    [ "$deadline" -gt "$left" ] && deadline=$left
    echo "$name $objective $seq_len $batch $precision" >> burn-runs.txt
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
    timeout "$deadline" ./flightlm-trainer train --pipeline "$URL" --device cuda \
        --objective "$objective" --precision "$precision" --preset base --seq-len "$seq_len" \
        --batch-size "$batch" --grad-accum 1 --warmup-steps 10 --max-steps "$steps" \
        --log-every 1 --eval-every 100000 --save-every 100000 --out "burn-$name" \
        > "burn-$name.out" 2> "burn-$name.err" || echo "{\"kind\":\"exit\",\"status\":$?}" >> "burn-$name.out"
    echo "{\"kind\":\"wall\",\"started\":$started,\"ended\":$(date +%s.%N)}" >> "burn-$name.out"
    kill "$sampler" 2> /dev/null || true
    grep -E '"kind":"(train|exit)"' "burn-$name.out" | tail -1 || true
    tail -2 "burn-$name.err" | tr '\r' '\n' | tail -2 || true
}
if [ "$TORCH_CONFIGS" != none ]; then
    echo "== PyTorch"
    timeout 240 python3 "$FLIGHTLM_REPO/scripts/gpu_bench_torch.py" --configs "$TORCH_CONFIGS" \
        --steps 20 > torch.out 2> torch.err || echo "pytorch exit $?" >> torch.err
    cat torch.out
else
    : > torch.out
fi
: > burn-runs.txt
IFS=, read -ra CONFIGS <<< "$BURN_CONFIGS"
[ "$BURN_RUNS" -ge 2 ] && CONFIGS+=("${CONFIGS[0]}")
for index in "${!CONFIGS[@]}"; do
    IFS=: read -r objective seq_len batch precision steps <<< "${CONFIGS[$index]}"
    CACHED=$(find kernel-cache -type f | wc -l)
    echo "== burn-cuda $objective seq $seq_len batch $batch $precision ($CACHED cached kernel files)"
    burn_run "$index" "$objective" "$seq_len" "$batch" "$precision" "${steps:-$STEPS}"
done

python3 - <<'PY'
import json
def lines(path):
    out = []
    for line in open(path):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out
torch_lines = lines("torch.out")
peak = next((l["matmul_bf16_tflops"] for l in torch_lines if "matmul_bf16_tflops" in l), None)
rows = [l for l in torch_lines if l.get("impl") == "pytorch"]
flops_per_token = rows[0]["train_flops_per_token"] if rows else None
def reference(objective, seq_len):
    return next((r["tokens_per_s"] for r in rows if r["precision"] == "bf16"
                 and r["objective"] == objective and r["seq_len"] == seq_len), None)
print(f"card: {open('card.txt').read().strip()}; bf16 matmul peak measured: {peak and round(peak)} TFLOP/s")
print("MFU: 6 x parameters FLOPs per token against that peak; 'vs torch' is against PyTorch bf16 autocast, same shape")
print(f'{"impl":16} {"obj":>6} {"shape":>7} {"prec":>5} {"tokens/s":>10} {"vs torch":>8} {"MFU":>6} {"1st step s":>10} {"peak GiB":>8}  loss')
def show(name, objective, shape, precision, rate, first, memory, seq_len, loss=""):
    base = reference(objective, seq_len)
    ratio = f"{rate / base:.2f}x" if rate and base else "-"
    mfu = f"{rate * flops_per_token / (peak * 1e12) * 100:.1f}%" if rate and peak and flops_per_token else "-"
    rate_text = f"{rate:,.0f}" if rate else "-"
    first_text = f"{first:.1f}" if first is not None else "-"
    memory_text = f"{memory:.1f}" if memory is not None else "-"
    print(f"{name:16} {objective:>6} {shape:>7} {precision:>5} {rate_text:>10} {ratio:>8} {mfu:>6} {first_text:>10} {memory_text:>8}  {loss}")
for name, objective, seq_len, batch, precision in (line.split() for line in open("burn-runs.txt") if line.strip()):
    metrics = lines(f"burn-{name}.out")
    wall = next((l for l in metrics if l.get("kind") == "wall"), None)
    train = [l for l in metrics if l.get("kind") == "train"]
    exit_line = next((l for l in metrics if l.get("kind") == "exit"), None)
    # Steady state: the second half of the steps (the first ones include compilation).
    steady = train[len(train) // 2:]
    rate = sum(l["tokens_per_s"] for l in steady) / len(steady) if len(train) >= 4 else None
    first = train[0]["elapsed_s"] if train else None
    memory = None
    try:
        used = [float(v) for v in open(f"mem-{name}.txt").read().split()]
        memory = (max(used) - used[0]) / 1024 if len(used) > 1 else None
    except (OSError, ValueError):
        pass
    loss = f"{train[0]['loss']:.3f} -> {train[-1]['loss']:.3f} ({train[-1]['step']} steps)" if train else ""
    show(f"burn-cuda #{name}", objective, f"{batch}x{seq_len}", precision, rate, first, memory, int(seq_len), loss)
    if exit_line:
        took = f" after {wall['ended'] - wall['started']:.0f} s" if wall else ""
        print(f"   burn run #{name} stopped: exit {exit_line['status']}{took}")
for r in rows:
    show("pytorch", r["objective"], f"{r['batch']}x{r['seq_len']}", r["precision"], r["tokens_per_s"],
         r["first_step_s"], r["peak_mem_gib"], r["seq_len"])
PY
