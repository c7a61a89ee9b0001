"""HuggingFace side of the generation fixture: what `transformers` generates greedily with the
causal model of the HF parity fixture.

Usage: hf_generate_fixture.py MODEL_DIR OUT_JSON

Loads MODEL_DIR (a RobertaForCausalLM directory exported by flightlm) with PyTorch on the CPU in
eval mode and, for each prompt, writes to OUT_JSON the prompt ids (the tokenizer's `<s>`, then the
text's tokens without special tokens: how flightlm's pipeline frames a document) and the tokens of
`model.generate(input_ids, do_sample=False, max_new_tokens=32)`.

`generate` is given `position_ids` explicitly, the ones RoBERTa's own forward computes for an
unpadded sequence (`pad_token_id + 1` onwards, as `model(input_ids)` uses and flightlm trains
with). Left to itself, transformers 5.24's `generate` numbers a decoder's positions from 0
(`_prepare_position_ids_for_generation`: attention-mask cumsum - 1), which for RoBERTa shifts every
position by two against training and gives other tokens; the script records that output too
(`default_positions_ids`), to show the difference is real.

`margins` is, for each generated token, the gap between the two largest logits at that step: how
far float differences between two implementations are from flipping the argmax.
"""

import json
import sys

import torch
from transformers import AutoTokenizer, RobertaForCausalLM

MAX_NEW_TOKENS = 32

PROMPTS = [
    "And God said",
    "In the beginning",
    "And the LORD spake unto Moses",
]


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model, info = RobertaForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    if any(info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        sys.exit(f"{model_dir}: transformers did not load it cleanly: {info}")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    first_position = model.config.pad_token_id + 1
    cases = []
    for text in PROMPTS:
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids = torch.tensor([ids])
        positions = torch.arange(first_position, first_position + len(ids)).unsqueeze(0)
        with torch.no_grad():
            output = model.generate(
                input_ids,
                position_ids=positions,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=MAX_NEW_TOKENS,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                output_scores=True,
                return_dict_in_generate=True,
            )
            default = model.generate(
                input_ids,
                do_sample=False,
                max_new_tokens=MAX_NEW_TOKENS,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = output.sequences[0, len(ids):].tolist()
        margins = []
        for scores in output.scores:
            top = torch.topk(scores[0], 2).values
            margins.append(round(float(top[0] - top[1]), 6))
        cases.append(
            {
                "prompt": text,
                "input_ids": ids,
                "output_ids": new,
                "text": tokenizer.decode(new, skip_special_tokens=True),
                "margins": margins,
                "default_positions_ids": default[0, len(ids):].tolist(),
            }
        )
    expected = {
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "max_new_tokens": MAX_NEW_TOKENS,
        "cases": cases,
    }
    with open(out, "w") as file:
        json.dump(expected, file, indent=1)
        file.write("\n")


if __name__ == "__main__":
    main()
