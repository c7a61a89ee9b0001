"""HuggingFace side of the parity fixture: what `transformers` computes with flightlm's exports.

Usage: hf_parity_fixture.py FIXTURE_DIR FLIGHTLM_TRAINER

FIXTURE_DIR holds `mlm/` and `causal/`, two HF model directories written by
`flightlm-trainer export`. Loads them with RobertaForMaskedLM / RobertaForCausalLM and
AutoTokenizer (PyTorch, CPU, eval mode) and writes FIXTURE_DIR/expected.json:

- loading: missing / unexpected / mismatched keys reported by from_pretrained (must be empty);
- inputs: for each model and text, the token ids, the logits at every position for a fixed
  subset of vocabulary columns (every LOGIT_STRIDE-th id), and each row's logsumexp, argmax;
- causal_losses: the model's loss with labels=input_ids (mean next-token cross-entropy);
- fill_mask: transformers.pipeline("fill-mask") results for a few texts, one and two masks;
- mlm_scores: for each text, the masked input and labels `flightlm-trainer score --show-inputs`
  chose, and the loss transformers computes on them (`model(input_ids, labels=labels).loss`).
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    RobertaForCausalLM,
    RobertaForMaskedLM,
    pipeline,
)

LOGIT_STRIDE = 19
TOP_K = 5

TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    "And the LORD spake unto Moses, saying,",
    "Thou shalt love thy neighbour as thyself.",
]

MASKED_TEXTS = [
    "In the beginning God created the <mask> and the earth.",
    "And the LORD spake unto <mask>, saying,",
    "And God said, Let there be <mask>: and there was light.",
    "And the <mask> said unto <mask>, Go.",
]


def rows(values):
    return [[round(float(x), 7) for x in row] for row in values]


def describe_inputs(model, tokenizer):
    described = []
    for text in TEXTS + MASKED_TEXTS:
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        described.append(
            {
                "text": text,
                "ids": ids,
                "logit_columns": LOGIT_STRIDE,
                "logits": rows(logits[:, ::LOGIT_STRIDE].tolist()),
                "logsumexp": [round(float(x), 7) for x in torch.logsumexp(logits, dim=-1)],
                "argmax": [int(x) for x in logits.argmax(dim=-1)],
            }
        )
    return described


def mlm_scores(model, directory, trainer):
    """The loss transformers computes on the masked inputs flightlm's `score` scored."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as lines:
        lines.write("\n".join(TEXTS) + "\n")
        lines.flush()
        output = subprocess.run(
            [trainer, "score", "--model", str(directory), "--text-file", lines.name,
             "--show-inputs"],
            check=True, capture_output=True, text=True,
        ).stdout
    records = [json.loads(line) for line in output.splitlines()][: len(TEXTS)]
    scores = []
    for text, record in zip(TEXTS, records):
        with torch.no_grad():
            loss = model(torch.tensor([record["input_ids"]]),
                         labels=torch.tensor([record["labels"]])).loss
        scores.append({"text": text, "input_ids": record["input_ids"],
                       "labels": record["labels"], "loss": float(loss)})
    return scores


def loading_report(info):
    return {key: sorted(str(item) for item in info.get(key, [])) for key in
            ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}


def main():
    fixture, trainer = Path(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)
    expected = {"transformers": __import__("transformers").__version__,
                "torch": torch.__version__, "models": {}}
    for kind, model_class in (("mlm", RobertaForMaskedLM), ("causal", RobertaForCausalLM)):
        directory = fixture / kind
        model, info = model_class.from_pretrained(directory, output_loading_info=True)
        model.eval()
        report = loading_report(info)
        if any(report.values()):
            sys.exit(f"{directory}: transformers did not load it cleanly: {report}")
        tokenizer = AutoTokenizer.from_pretrained(directory)
        entry = {
            "architecture": type(model).__name__,
            "loading": report,
            "inputs": describe_inputs(model, tokenizer),
        }
        if kind == "causal":
            losses = []
            for text in TEXTS:
                ids = torch.tensor([tokenizer(text)["input_ids"]])
                with torch.no_grad():
                    losses.append(float(model(ids, labels=ids).loss))
            entry["causal_losses"] = [{"text": t, "loss": l} for t, l in zip(TEXTS, losses)]
        else:
            fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, device="cpu")
            entry["mlm_scores"] = mlm_scores(model, directory, trainer)
            entry["fill_mask"] = [
                {"text": text, "top_k": TOP_K, "output": fill(text, top_k=TOP_K)}
                for text in MASKED_TEXTS
            ]
        expected["models"][kind] = entry
    # Compact: the logits dominate the file, and the fixture should stay small.
    (fixture / "expected.json").write_text(json.dumps(expected, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
