#!/usr/bin/env bash
# GPU host benchmark: flightlm-trainer (burn-cuda) against PyTorch/transformers on the same card
# and shapes, in one call. Builds nothing: it runs binaries built beforehand (the GPU host needs
# the NVIDIA driver, the CUDA toolkit's NVRTC, and PyTorch + transformers for the comparison).
#
# Usage: bash scripts/gpu-bench.sh BIN_DIR [WORK_DIR]
#   BIN_DIR   holds flightlm-pipeline and flightlm-trainer (or their .gz)
#   WORK_DIR  run directory; its kernel-cache/ keeps cubecl's autotune and compilation caches,
#             so reuse it between runs (default runs/gpu-bench)
# Environment: STEPS (default 30); BURN_PRECISIONS (the trainer's --precision values to run,
# default bf16,f32: bf16 is burn's mixed precision, to set against PyTorch's bf16 autocast);
# BURN_RUNS (1 or 2, default 2: the second run of a precision shows the start-up with the caches
# the first one filled; every precision's first run goes before any second run);
# BURN_TIMEOUT (s, first run, default 300); BURN_WARM_TIMEOUT (s, second run, default 150);
# BUDGET_S (s, the whole call, default 470: a burn run's deadline is cut to what is left, and a
# run with under 30 s left is skipped); TORCH_CONFIGS (objective:seq:batch:precision,…, or "none").
set -euo pipefail
SCRIPT_STARTED=$(date +%s)
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
BIN_DIR="$(cd "$1" && pwd)"
WORK="${2:-$FLIGHTLM_REPO/runs/gpu-bench}"
STEPS="${STEPS:-30}"
BURN_TIMEOUT="${BURN_TIMEOUT:-300}"
BURN_WARM_TIMEOUT="${BURN_WARM_TIMEOUT:-150}"
BURN_RUNS="${BURN_RUNS:-2}"
BURN_PRECISIONS="${BURN_PRECISIONS:-bf16,f32}"
BUDGET_S="${BUDGET_S:-470}"
TORCH_CONFIGS="${TORCH_CONFIGS:-mlm:128:32:bf16,mlm:128:32:f32}"
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

burn_run() { # name precision deadline: trains the base preset from the pipeline
    local name=$1 precision=$2 deadline=$3
    # Seconds left of the budget, less 10 for the summary.
    local left=$((SCRIPT_STARTED + BUDGET_S - 10 - $(date +%s)))
    [ "$deadline" -gt "$left" ] && deadline=$left
    echo "$name $precision" >> burn-runs.txt
    if [ "$deadline" -lt 30 ]; then
        echo "   skipped: ${left}s left of the ${BUDGET_S}s budget"
        echo '{"kind":"exit","status":"skipped"}' > "burn-$name.out"
        return
    fi
    local started=$(date +%s.%N)
    timeout "$deadline" ./flightlm-trainer train --pipeline "$URL" --device cuda --objective mlm \
        --precision "$precision" --preset base --seq-len 128 --batch-size 32 --grad-accum 1 \
        --warmup-steps 10 --max-steps "$STEPS" --log-every 5 --eval-every 100000 --out "burn-$name" \
        > "burn-$name.out" 2> "burn-$name.err" || echo "{\"kind\":\"exit\",\"status\":$?}" >> "burn-$name.out"
    echo "{\"kind\":\"wall\",\"started\":$started,\"ended\":$(date +%s.%N)}" >> "burn-$name.out"
    grep -E '"kind":"(train|exit)"' "burn-$name.out" | tail -2 || true
    tail -3 "burn-$name.err" || true
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
IFS=, read -ra PRECISIONS <<< "$BURN_PRECISIONS"
for precision in "${PRECISIONS[@]}"; do
    CACHED=$(find kernel-cache -type f | wc -l)
    echo "== burn-cuda $precision, run 1 ($CACHED cached kernel files at start)"
    burn_run "$precision-run1" "$precision" "$BURN_TIMEOUT"
done
if [ "$BURN_RUNS" -ge 2 ]; then
    for precision in "${PRECISIONS[@]}"; do
        echo "== burn-cuda $precision, run 2 (caches filled by run 1)"
        burn_run "$precision-run2" "$precision" "$BURN_WARM_TIMEOUT"
    done
fi

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
reference = next((r["tokens_per_s"] for r in rows if r["precision"] == "bf16"), None)
print(f"card: {open('card.txt').read().strip()}; bf16 matmul peak measured: {peak and round(peak)} TFLOP/s")
print(f'{"impl":22} {"shape":>10} {"prec":>5} {"tokens/s":>10} {"vs torch bf16":>13} {"MFU":>6} {"1st step s":>10} {"peak GiB":>8}')
def show(name, shape, precision, rate, first, memory):
    ratio = f"{rate / reference:.2f}x" if rate and reference else "-"
    mfu = f"{rate * flops_per_token / (peak * 1e12) * 100:.1f}%" if rate and peak and flops_per_token else "-"
    rate_text = f"{rate:,.0f}" if rate else "-"
    first_text = f"{first:.1f}" if first is not None else "-"
    memory_text = f"{memory:.1f}" if memory is not None else "-"
    print(f"{name:22} {shape:>10} {precision:>5} {rate_text:>10} {ratio:>13} {mfu:>6} {first_text:>10} {memory_text:>8}")
for name, precision in (line.split() for line in open("burn-runs.txt") if line.strip()):
    metrics = lines(f"burn-{name}.out")
    wall = next((l for l in metrics if l.get("kind") == "wall"), None)
    train = [l for l in metrics if l.get("kind") == "train"]
    exit_line = next((l for l in metrics if l.get("kind") == "exit"), None)
    # The first logged window includes compilation; steady state is the last window.
    rate = train[-1]["tokens_per_s"] if len(train) >= 2 else None
    first = train[0]["elapsed_s"] if train else None
    show(f"burn-cuda ({name.split('-')[-1]})", "32x128", precision, rate, first, None)
    if exit_line:
        took = f" after {wall['ended'] - wall['started']:.0f} s" if wall else ""
        print(f"   burn {name} run stopped: exit {exit_line['status']}{took}")
for r in rows:
    show(f"pytorch {r['objective']}", f"{r['batch']}x{r['seq_len']}", r["precision"], r["tokens_per_s"], r["first_step_s"], r["peak_mem_gib"])
PY
