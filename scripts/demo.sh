#!/usr/bin/env bash
# The main job on the embedded default: train a tokenizer on the sample corpus, start the pipeline,
# and train a tiny RoBERTa (masked LM) on CPU from its stream (shuffled, checkpointed). Prints the
# eval perplexity as it falls and asks the exported HuggingFace model to fill a mask; then trains
# the same tiny model as a causal LM from the same pipeline and lets it continue three verses,
# which shows what it learned. Usage: bash scripts/demo.sh [extra flags for the masked-LM run]
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
cargo build --workspace --bins

RUN="${FLIGHTLM_RUN:-runs/demo}"
CORPUS=data/kjv.txt.zst
rm -rf "$RUN"
mkdir -p "$RUN"

echo "== training a byte-level BPE tokenizer on $CORPUS"
"$FLIGHTLM_BIN/flightlm-pipeline" train-tokenizer --input "$CORPUS" --vocab-size 8192 --out "$RUN/tokenizer"

echo "== starting the pipeline"
"$FLIGHTLM_BIN/flightlm-pipeline" serve --input "$CORPUS" --tokenizer "$RUN/tokenizer/tokenizer.json" \
    --listen 127.0.0.1:0 --valid-fraction 0.01 --shuffle-window 256 > "$RUN/pipeline.out" 2> "$RUN/pipeline.log" &
PIPELINE_PID=$!
trap 'kill $PIPELINE_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    [ -s "$RUN/pipeline.out" ] && break
    kill -0 $PIPELINE_PID 2>/dev/null || { cat "$RUN/pipeline.log"; exit 1; }
    sleep 0.1
done
URL=$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' "$RUN/pipeline.out" | head -1)
[ -n "$URL" ] || { echo "the pipeline did not start"; cat "$RUN/pipeline.log"; exit 1; }
echo "   pipeline at $URL"

echo "== training a tiny RoBERTa (masked LM) on CPU"
"$FLIGHTLM_BIN/flightlm-trainer" train --pipeline "$URL" --objective mlm --preset tiny \
    --max-steps 200 --seq-len 128 --batch-size 16 --grad-accum 1 --lr 1e-3 --warmup-steps 50 \
    --log-every 25 --eval-every 100 --save-every 200 --out "$RUN" "$@"

echo "== eval perplexity, step by step"
grep '"kind":"eval"' "$RUN/metrics.jsonl" | sed -n 's/.*"step":\([0-9]*\).*"eval_perplexity":\([0-9.e+-]*\).*/   step \1: \2/p'

echo "== the exported model ($RUN/model, loadable by transformers) fills a mask"
"$FLIGHTLM_BIN/flightlm-trainer" fill-mask --model "$RUN/model" --top-k 3 \
    --text "And God said, Let there be <mask>: and there was light."

# A tiny masked LM sits on the unigram plateau for thousands of steps (it fills masks with `,` and
# ` the`); a causal one learns word order within minutes, and its samples show it.
echo "== training the same tiny RoBERTa as a causal LM (each token predicts the next) on CPU"
"$FLIGHTLM_BIN/flightlm-trainer" train --pipeline "$URL" --objective causal --preset tiny \
    --max-steps 400 --seq-len 128 --batch-size 8 --grad-accum 1 --lr 3e-3 --dropout 0 \
    --warmup-steps 50 --log-every 50 --eval-every 200 --save-every 400 --out "$RUN/causal"

echo "== eval perplexity of the causal model, step by step"
grep '"kind":"eval"' "$RUN/causal/metrics.jsonl" | sed -n 's/.*"step":\([0-9]*\).*"eval_perplexity":\([0-9.e+-]*\).*/   step \1: \2/p'

echo "== the causal model ($RUN/causal/model) continues three verses (temperature 0.7, top-k 40)"
"$FLIGHTLM_BIN/flightlm-trainer" generate --model "$RUN/causal/model" --temperature 0.7 --top-k 40 \
    --seed 0 --min-new-tokens 16 --max-new-tokens 40 --prompt "And God said" \
    --prompt "And the LORD spake unto Moses, saying," --prompt "In the beginning"
