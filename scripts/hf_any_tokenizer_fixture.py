"""HuggingFace side of the any-tokenizer fixture: what `transformers` computes with flightlm's
exports of models trained on a WordPiece and a GPT-2-style tokenizer.

Usage: hf_any_tokenizer_fixture.py FIXTURE_DIR

FIXTURE_DIR holds `wordpiece-mlm/` and `bpe-causal/`, model directories written by flightlm.
Loads each with AutoTokenizer and AutoModelForMaskedLM / AutoModelForCausalLM (PyTorch, CPU,
eval mode) and writes FIXTURE_DIR/expected.json: the loading report (must be clean), the
tokenizer's class and special tokens by role, and for a few texts the ids and every position's
logits at every LOGIT_STRIDE-th vocabulary column.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

LOGIT_STRIDE = 7
TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    "And the LORD spake unto Moses, saying,",
]
MASKED = "And God said, Let there be [MASK]: and there was light."
ROLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
         "mask_token")


def main():
    fixture = Path(sys.argv[1])
    expected = {"transformers": __import__("transformers").__version__,
                "torch": torch.__version__, "models": {}}
    for name, model_class in (("wordpiece-mlm", AutoModelForMaskedLM),
                              ("bpe-causal", AutoModelForCausalLM)):
        directory = fixture / name
        model, info = model_class.from_pretrained(directory, output_loading_info=True)
        model.eval()
        report = {key: sorted(str(item) for item in info.get(key, [])) for key in
                  ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
        if any(report.values()):
            sys.exit(f"{directory}: transformers did not load it cleanly: {report}")
        tokenizer = AutoTokenizer.from_pretrained(directory)
        texts = TEXTS + ([MASKED] if name == "wordpiece-mlm" else [])
        inputs = []
        for text in texts:
            ids = tokenizer(text)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0]
            inputs.append({"text": text, "ids": ids, "logit_columns": LOGIT_STRIDE,
                           "logits": [[round(float(x), 7) for x in row]
                                      for row in logits[:, ::LOGIT_STRIDE].tolist()]})
        expected["models"][name] = {
            "architecture": type(model).__name__,
            "loading": report,
            "tokenizer_class": type(tokenizer).__name__,
            "special_tokens": {role: getattr(tokenizer, role) for role in ROLES},
            "inputs": inputs,
        }
    (fixture / "expected.json").write_text(json.dumps(expected, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
