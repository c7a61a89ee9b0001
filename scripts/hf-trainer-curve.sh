#!/usr/bin/env bash
# flightlm vs HuggingFace Trainer on the same run: the tiny preset on the sample corpus, the same
# blocks in the same order, the same recipe, on the CPU. Prints both final eval losses and their
# ratio; flightlm should be within 5 % of HF.
#
#   bash scripts/hf-trainer-curve.sh [STEPS] [OBJECTIVE]     (defaults: 600 mlm)
#
# LR_SCHEDULE=linear|cosine|constant_with_warmup picks the learning-rate schedule of both sides
# (transformers' lr_scheduler_type); the learning rates flightlm logged are compared with
# transformers' scheduler.
#
# Needs PyTorch + transformers: a venv at $FLIGHTLM_TORCH_VENV (default
# $HOME/.cache/flightlm-torch-venv), created from PyPI if missing.
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
STEPS="${1:-600}"
OBJECTIVE="${2:-mlm}"
SEQ_LEN=128
BATCH=16
WARMUP=$((STEPS / 10))
LR=5e-4
SEED=42
LR_SCHEDULE="${LR_SCHEDULE:-linear}"

ensure_torch_python
command -v zstd >/dev/null || { echo "needs the zstd command" >&2; exit 1; }

cargo build --workspace --bins
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
zstd -dc data/kjv.txt.zst > "$WORK/corpus.txt"
"$FLIGHTLM_BIN/flightlm-pipeline" train-tokenizer --input "$WORK/corpus.txt" \
    --vocab-size 8192 --out "$WORK/tokenizer" > /dev/null

started=$(date +%s)
"$FLIGHTLM_BIN/flightlm-trainer" train-text --text "$WORK/corpus.txt" \
    --tokenizer "$WORK/tokenizer/tokenizer.json" --objective "$OBJECTIVE" --preset tiny \
    --seq-len "$SEQ_LEN" --batch-size "$BATCH" --grad-accum 1 --max-steps "$STEPS" \
    --warmup-steps "$WARMUP" --lr "$LR" --lr-schedule "$LR_SCHEDULE" --weight-decay 0.1 --dropout 0.1 --seed "$SEED" \
    --log-every $(( STEPS >= 20 ? STEPS / 20 : 1 )) --eval-every "$STEPS" --valid-fraction 0.05 \
    --out "$WORK/flightlm" --export "$WORK/flightlm-model" > /dev/null
flightlm_seconds=$(( $(date +%s) - started ))
flightlm_eval=$(grep '"kind":"done"' "$WORK/flightlm/metrics.jsonl" |
    sed 's/.*"last_eval_loss":\([^,]*\),.*/\1/')

cat > "$WORK/run.json" <<EOF
{"corpus": "$WORK/corpus.txt", "tokenizer": "$WORK/tokenizer/tokenizer.json",
 "flightlm_model": "$WORK/flightlm-model", "objective": "$OBJECTIVE", "steps": $STEPS,
 "seq_len": $SEQ_LEN, "batch_size": $BATCH, "grad_accum": 1, "lr": $LR,
 "warmup_steps": $WARMUP, "weight_decay": 0.1, "mlm_probability": 0.15,
 "valid_fraction": 0.05, "seed": $SEED, "lr_schedule": "$LR_SCHEDULE",
 "flightlm_metrics": "$WORK/flightlm/metrics.jsonl"}
EOF
hf=$("$TORCH_PYTHON" scripts/hf_trainer_curve.py "$WORK/run.json" 2>/dev/null | tail -n 1)

"$TORCH_PYTHON" - "$hf" "$flightlm_eval" "$flightlm_seconds" "$OBJECTIVE" "$STEPS" <<'EOF'
import json, sys
hf, flightlm_eval, flightlm_seconds = json.loads(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
same = hf["same_masks_eval_loss"]
print(f"objective {sys.argv[4]}, {sys.argv[5]} steps, tiny preset, "
      f"{hf['train_blocks']} train / {hf['valid_blocks']} valid blocks")
print(f"{'':34}{'flightlm':>10}{'HF Trainer':>12}")
print(f"{'own eval_loss':34}{flightlm_eval:>10.4f}{hf['hf_trainer_eval_loss']:>12.4f}")
print(f"{'eval_loss, same evaluator+masks':34}{same['flightlm']:>10.4f}{same['hf']:>12.4f}")
print(f"{'train seconds':34}{flightlm_seconds:>10}{hf['hf_trainer_seconds']:>12.0f}")
ratio = same["ratio"]
verdict = "within" if abs(ratio - 1) <= 0.05 else "NOT within"
print(f"ratio flightlm/HF (same evaluator): {ratio:.4f} -> {verdict} 5 %")
print(f"{hf['lr_schedule']} learning rate at {hf['lr_lines_compared']} logged steps: "
      f"largest difference from transformers {hf['lr_max_difference']:.2e} of the peak")
print(json.dumps({"flightlm_eval_loss": flightlm_eval, **hf}))
EOF
