"""The HF preprocessing path users run today, timed: `datasets.load_dataset("text")` +
`map(tokenize, batched=True, num_proc=N)` + `map(group_texts)`, as in transformers' run_mlm.py,
with the same tokenizer file and block size as flightlm. Also times the tokenizer alone
(`encode_batch_fast` over the same documents), the ceiling for any pipeline.

Prints one JSON line.
"""

import argparse
import json
import os
import resource
import tempfile
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--num-proc", type=int, default=os.cpu_count())
    args = parser.parse_args()

    cache = tempfile.mkdtemp(prefix="hf-bench-cache-")
    os.environ["HF_DATASETS_CACHE"] = cache
    from datasets import load_dataset
    from tokenizers import Tokenizer
    from transformers import RobertaTokenizerFast

    tokenizer = RobertaTokenizerFast(tokenizer_file=args.tokenizer)
    block = args.seq_len

    def tokenize(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    def group_texts(examples):
        concatenated = {k: sum(examples[k], []) for k in examples.keys()}
        total = len(concatenated["input_ids"]) // block * block
        return {k: [t[i : i + block] for i in range(0, total, block)] for k, t in concatenated.items()}

    started = time.perf_counter()
    raw = load_dataset("text", data_files={"train": args.corpus}, cache_dir=cache)["train"]
    raw = raw.filter(lambda example: len(example["text"].strip()) > 0, num_proc=args.num_proc)
    tokenized = raw.map(tokenize, batched=True, num_proc=args.num_proc, remove_columns=["text"])
    grouped = tokenized.map(group_texts, batched=True, num_proc=args.num_proc)
    hf_seconds = time.perf_counter() - started
    hf_tokens = len(grouped) * block

    documents = [text for text in raw["text"]]
    fast = Tokenizer.from_file(args.tokenizer)
    started = time.perf_counter()
    encodings = fast.encode_batch_fast(documents, add_special_tokens=True)
    tokenizer_seconds = time.perf_counter() - started
    tokenizer_tokens = sum(len(encoding.ids) for encoding in encodings)

    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "hf_seconds": hf_seconds,
                "hf_tokens": hf_tokens,
                "hf_tokens_per_s": hf_tokens / hf_seconds,
                "hf_first_batch_ms": hf_seconds * 1e3,
                "hf_peak_rss_mib": (self_rss + child_rss) / 1024,
                "tokenizer_tokens": tokenizer_tokens,
                "tokenizer_tokens_per_s": tokenizer_tokens / tokenizer_seconds,
                "documents": len(documents),
            }
        )
    )


if __name__ == "__main__":
    main()
