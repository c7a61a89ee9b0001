#!/usr/bin/env bash
# Online data mixing against static equal weights, on CPU: the same steps and tokens from a
# mixture of four sources of different difficulty cut from the sample corpus: natural verses,
# verses with their words reversed, verses with their words shuffled, and random words (nothing
# to learn but their frequencies). For the tiny and small presets it trains `--mixing static` and
# `--mixing odm` (default reward) and prints each source's held-out perplexity at the end (the
# valid split, `eval_loss_by_source`), the equal-weight mixture's (exp of the sources' mean
# held-out loss; and of the three learnable sources alone), the odm run's final weights, and the
# training speed of both runs (tokens/s over the train lines). Then the cost of odm's updates and
# changes of weights alone: COST_PAIRS pairs (default 3) of 300-step tiny runs, static and odm
# alternating: the median ratios of their step times and of the trainer's CPU time, and for each
# pair the CPU seconds of trainer and pipeline and the share of time the trainer waited for data;
# with pipeline and trainer sharing the cores, then on separate cores.
# Usage: bash scripts/bench-mixing.sh [TINY_STEPS [SMALL_STEPS]]   (default: 600 300; 0 0 measures
# the cost only)
set -euo pipefail
FLIGHTLM_REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$FLIGHTLM_REPO"
source scripts/env.sh
command -v zstd >/dev/null || { echo "needs the zstd command" >&2; exit 1; }
cargo build --workspace --bins
TINY_STEPS="${1:-600}"
SMALL_STEPS="${2:-300}"
WORK="${FLIGHTLM_BENCH_DIR:-runs/bench-mixing}"
rm -rf "$WORK"
mkdir -p "$WORK"

zstd -dc data/kjv.txt.zst > "$WORK/kjv.txt"
python3 - "$WORK" <<'EOF'
import random, sys
work = sys.argv[1]
lines = [line.split() for line in open(f"{work}/kjv.txt") if line.strip()]
quarter = len(lines) // 4
rng = random.Random(7)
words = sorted({word for line in lines for word in line})
parts = {
    "verses": lines[:quarter],
    "reversed": [line[::-1] for line in lines[quarter:2 * quarter]],
    "shuffled": [rng.sample(line, len(line)) for line in lines[2 * quarter:3 * quarter]],
    "noise": [[rng.choice(words) for _ in line] for line in lines[3 * quarter:]],
}
for name, part in parts.items():
    with open(f"{work}/{name}.txt", "w") as out:
        out.writelines(" ".join(line) + "\n" for line in part)
EOF
"$FLIGHTLM_BIN/flightlm-pipeline" train-tokenizer --input "$WORK/kjv.txt" --vocab-size 2000 \
    --out "$WORK/tokenizer" > /dev/null

SOURCES=()
for name in verses reversed shuffled noise; do
    SOURCES+=(--source "$name=$WORK/$name.txt:1")
done
PIPELINE=""
trap '[ -n "$PIPELINE" ] && kill $PIPELINE 2>/dev/null || true' EXIT
# Starts the pipeline on a fresh port (PORT), under the command prefix given (e.g. taskset).
serve() {
    [ -n "$PIPELINE" ] && { kill $PIPELINE; wait $PIPELINE 2>/dev/null || true; }
    PORT=$((20000 + RANDOM % 20000))
    "$@" "$FLIGHTLM_BIN/flightlm-pipeline" serve --tokenizer "$WORK/tokenizer/tokenizer.json" \
        "${SOURCES[@]}" --valid-fraction 0.02 --listen "127.0.0.1:$PORT" \
        >> "$WORK/pipeline.log" 2>&1 &
    PIPELINE=$!
    for _ in $(seq 100); do
        "$FLIGHTLM_BIN/flightlm-pipeline" stats --pipeline "http://127.0.0.1:$PORT" \
            > /dev/null 2>&1 && return
        sleep 0.1
    done
}
serve

for preset in tiny small; do
    steps=$TINY_STEPS
    [ "$preset" = small ] && steps=$SMALL_STEPS
    [ "$steps" -gt 0 ] || continue
    for mixing in static odm; do
        echo "== $preset, $mixing: $steps steps"
        "$FLIGHTLM_BIN/flightlm-trainer" train --pipeline "http://127.0.0.1:$PORT" \
            --objective mlm --preset "$preset" --seq-len 64 --batch-size 16 --grad-accum 1 \
            --warmup-steps 20 --max-steps "$steps" --log-every 25 --eval-every "$steps" \
            --eval-blocks 1024 --save-every 100000 --mixing "$mixing" \
            --out "$WORK/$preset-$mixing" > /dev/null
    done
done

# CPU time of the pipeline process so far, in clock ticks (user + system).
pipeline_ticks() {
    awk '{print $14 + $15}' "/proc/$PIPELINE/stat"
}

# The cost: the tiny preset's short steps (about 80 ms) make any wait or extra pipeline work
# show. Once with pipeline and trainer sharing every core, once (with taskset) with the pipeline
# on the last core and the trainer on the others, as with a pipeline on a host of its own.
cost_pairs() {
    local setting=$1
    shift
    for pair in $(seq "${COST_PAIRS:-3}"); do
        for mixing in static odm; do
            local before
            before=$(pipeline_ticks)
            local out="$WORK/cost-$setting-$pair-$mixing"
            mkdir -p "$out"
            # The trainer's CPU seconds (user, system), by bash's `time`.
            local TIMEFORMAT='%U %S'
            { time "$@" "$FLIGHTLM_BIN/flightlm-trainer" train \
                --pipeline "http://127.0.0.1:$PORT" \
                --objective mlm --preset tiny --seq-len 64 --batch-size 16 --grad-accum 1 \
                --warmup-steps 20 --max-steps 300 --log-every 25 --eval-every 100000 \
                --save-every 100000 --mixing "$mixing" \
                --out "$out" > /dev/null 2> "$out.stderr"; } 2> "$out.trainer-cpu"
            echo $(($(pipeline_ticks) - before)) > "$out/pipeline-ticks"
        done
    done
}
cost_pairs shared
SETTINGS=shared
CORES=$(nproc)
if command -v taskset > /dev/null && [ "$CORES" -ge 2 ]; then
    serve taskset -c $((CORES - 1))
    cost_pairs separate taskset -c 0-$((CORES - 2))
    SETTINGS="shared separate"
fi

python3 - "$WORK" "${COST_PAIRS:-3}" "$SETTINGS" "$(getconf CLK_TCK)" <<'EOF'
import json, math, os, statistics, sys
work, pairs, settings = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
sources = ["verses", "reversed", "shuffled", "noise"]
header = f"{'preset':<6} {'mixing':<7}" + "".join(f" {s:>9}" for s in sources)
print(header + f" {'mixture':>9} {'learnable':>9} {'tok/s':>8}  final weights")
TICKS = int(sys.argv[4])
for preset in ["tiny", "small"]:
    if not os.path.exists(f"{work}/{preset}-odm/metrics.jsonl"):
        continue
    speeds = {}
    for mixing in ["static", "odm"]:
        lines = [json.loads(l) for l in open(f"{work}/{preset}-{mixing}/metrics.jsonl")]
        final = [l for l in lines if l["kind"] == "eval"][-1]["eval_loss_by_source"]
        train = [l for l in lines if l["kind"] == "train"]
        # The first window holds the start-up; the rest is steady training.
        speed = sum(l["tokens_per_s"] for l in train[1:]) / max(1, len(train) - 1)
        speeds[mixing] = speed
        mixture = math.exp(sum(final[s] for s in sources) / len(sources))
        learnable = math.exp(sum(final[s] for s in sources[:3]) / 3)
        weights = train[-1].get("mixing_weights", {})
        shown = " ".join(f"{s}={weights[s]:.3f}" for s in sources if s in weights)
        print(f"{preset:<6} {mixing:<7}" + "".join(f" {math.exp(final[s]):9.1f}" for s in sources)
              + f" {mixture:9.1f} {learnable:9.1f} {speed:8.0f}  {shown}")
    print(f"{preset:<6} odm trains at {speeds['odm'] / speeds['static']:.3f}x static's tokens/s")

def train_lines(run):
    # Train lines only (the start's evaluation is not a step); the first window holds start-up.
    return [json.loads(l) for l in open(f"{work}/{run}/metrics.jsonl") if '"train"' in l][1:]
def step_seconds(run):
    return 16 * 64 / statistics.mean(line["tokens_per_s"] for line in train_lines(run))
def data_wait(run):
    return statistics.mean(line["data_wait"] for line in train_lines(run))
for setting in settings:
    ratios, trainer_ratios = [], []
    for pair in range(1, pairs + 1):
        static = step_seconds(f"cost-{setting}-{pair}-static")
        odm = step_seconds(f"cost-{setting}-{pair}-odm")
        ratios.append(odm / static)
        run = {m: f"cost-{setting}-{pair}-{m}" for m in ["static", "odm"]}
        cpu = {m: int(open(f"{work}/{run[m]}/pipeline-ticks").read()) / TICKS for m in run}
        trainer = {
            m: sum(map(float, open(f"{work}/{run[m]}.trainer-cpu").read().split())) for m in run
        }
        trainer_ratios.append(trainer["odm"] / trainer["static"])
        print(f"cost ({setting} cores) pair {pair}: static {1000 * static:.1f} ms/step, "
              f"odm {1000 * odm:.1f} ms/step, ratio {odm / static:.3f}; CPU s trainer "
              f"{trainer['static']:.1f} / {trainer['odm']:.1f}, pipeline "
              f"{cpu['static']:.2f} / {cpu['odm']:.2f}; waiting for data "
              f"{100 * data_wait(run['static']):.2f} % / {100 * data_wait(run['odm']):.2f} %")
    print(f"cost ({setting} cores): odm's step time is {statistics.median(ratios):.3f}x "
          f"static's, its trainer CPU time {statistics.median(trainer_ratios):.3f}x "
          f"(medians of {pairs} pairs)")
EOF
