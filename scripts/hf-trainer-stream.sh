#!/usr/bin/env bash
# HF `Trainer` (PyTorch) trained from a flightlm pipeline through python/flightlm_stream.py: the
# sample corpus served on 127.0.0.1, a tiny RobertaForMaskedLM, STEPS steps on the CPU, then
# resumed from its halfway checkpoint (FlightlmStateCallback). Prints the steps, the loss,
# tokens/s, and whether the resumed run trains on the same blocks to the same loss.
#
#   bash scripts/hf-trainer-stream.sh [STEPS]      (default 100)
#
# Needs PyTorch + transformers + pyarrow: a venv at $FLIGHTLM_TORCH_VENV (default
# $HOME/.cache/flightlm-torch-venv), completed from PyPI if something is missing.
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
STEPS="${1:-100}"
ensure_torch_python

cargo build --workspace --bins
WORK="$(mktemp -d)"
"$FLIGHTLM_BIN/flightlm-pipeline" train-tokenizer --input data/kjv.txt.zst --vocab-size 8192 \
    --out "$WORK/tokenizer" > /dev/null
"$FLIGHTLM_BIN/flightlm-pipeline" serve --input data/kjv.txt.zst \
    --tokenizer "$WORK/tokenizer/tokenizer.json" --listen 127.0.0.1:0 \
    > "$WORK/pipeline.out" 2> "$WORK/pipeline.log" &
PIPELINE_PID=$!
trap 'kill $PIPELINE_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 1 300); do [ -s "$WORK/pipeline.out" ] && break; sleep 0.1; done
URL=$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' "$WORK/pipeline.out")

result=$("$TORCH_PYTHON" scripts/hf_trainer_stream.py "$URL" \
    "$WORK/tokenizer/tokenizer.json" "$STEPS" 2> "$WORK/trainer.log" | tail -n 1) ||
    { cat "$WORK/trainer.log" >&2; exit 1; }
echo "$result"
"$TORCH_PYTHON" - "$result" <<'PY'
import json, sys
run = json.loads(sys.argv[1])
print(f"HF Trainer from the pipeline: {run['steps']} steps, train loss {run['train_loss']:.4f}, "
      f"{run['tokens_per_s']:,.0f} tokens/s, {run['blocks_taken']} blocks taken for "
      f"{run['blocks_trained']} trained")
print(f"resumed from step {run['resumed_at']}: the same blocks {run['resumed_trains_the_same_blocks']}, "
      f"last loss {run['resumed_last_loss']:.6f} (uninterrupted {run['last_loss']:.6f})")
passes = run["valid_blocks_per_pass"]
print(f"eval losses {', '.join(f'{loss:.4f}' for loss in run['eval_losses'])}; "
      f"valid blocks per pass of the eval dataset: {passes}")
whole_passes = passes[0] > 0 and len(set(passes)) == 1 and len(run["eval_losses"]) == 2
sys.exit(0 if run["resumed_trains_the_same_blocks"] and whole_passes else 1)
PY
