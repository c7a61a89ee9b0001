"""HuggingFace reference for flightlm's tokenizer and packing.

Loads a flightlm tokenizer.json with `transformers.RobertaTokenizerFast`, tokenizes the documents
of a text corpus (one per non-empty line) the way `run_mlm.py` does, and groups them into blocks
with `group_texts` over the whole corpus. Prints one JSON object:
  {"blocks": [[ids...], ...], "round_trip_failures": [...], "special_ids": {...}}
"""

import json
import sys

from transformers import RobertaTokenizerFast


def group_texts(input_ids, block_size):
    concatenated = [token for ids in input_ids for token in ids]
    total = len(concatenated) // block_size * block_size
    return [concatenated[i : i + block_size] for i in range(0, total, block_size)]


def main():
    tokenizer_file, corpus, seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tokenizer = RobertaTokenizerFast(tokenizer_file=tokenizer_file)
    with open(corpus, encoding="utf-8") as handle:
        documents = [line.rstrip("\r\n") for line in handle if line.strip()]
    encoded = tokenizer(documents)["input_ids"]
    failures = [
        doc
        for doc, ids in zip(documents, encoded)
        if tokenizer.decode(ids, skip_special_tokens=True) != doc
    ]
    print(
        json.dumps(
            {
                "blocks": group_texts(encoded, seq_len),
                "round_trip_failures": failures[:5],
                "special_ids": {
                    "bos": tokenizer.bos_token_id,
                    "pad": tokenizer.pad_token_id,
                    "eos": tokenizer.eos_token_id,
                    "unk": tokenizer.unk_token_id,
                    "mask": tokenizer.mask_token_id,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
