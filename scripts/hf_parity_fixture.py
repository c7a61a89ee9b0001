"""HuggingFace side of the parity fixture: what `transformers` computes with flightlm's exports.

Usage: hf_parity_fixture.py FIXTURE_DIR

FIXTURE_DIR holds `mlm/` and `causal/`, two HF model directories written by
`flightlm-trainer export`. Loads them with RobertaForMaskedLM / RobertaForCausalLM and
AutoTokenizer (PyTorch, CPU, eval mode) and writes FIXTURE_DIR/expected.json:

- loading: missing / unexpected / mismatched keys reported by from_pretrained (must be empty);
- inputs: for each model and text, the token ids, the logits at every position for a fixed
  subset of vocabulary columns (every LOGIT_STRIDE-th id), and each row's logsumexp, argmax;
- causal_losses: the model's loss with labels=input_ids (mean next-token cross-entropy);
- fill_mask: transformers.pipeline("fill-mask") results for a few texts, one and two masks.
"""

import json
import sys
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


def loading_report(info):
    return {key: sorted(str(item) for item in info.get(key, [])) for key in
            ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}


def main():
    fixture = Path(sys.argv[1])
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
            entry["fill_mask"] = [
                {"text": text, "top_k": TOP_K, "output": fill(text, top_k=TOP_K)}
                for text in MASKED_TEXTS
            ]
        expected["models"][kind] = entry
    # Compact: the logits dominate the file, and the fixture should stay small.
    (fixture / "expected.json").write_text(json.dumps(expected, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
