"""HuggingFace side of the any-tokenizer tests: Python `tokenizers` builds the tokenizers, and
`transformers` + `group_texts` says what a stream of them must hold.

    any_tokenizer.py build DIR CORPUS
        Trains four tokenizers on CORPUS (one document per non-empty line) into DIR/NAME.json:
        wordpiece  WordPiece, BERT normalizer and pre-tokenizer, template `[CLS] $A [SEP]`
        bpe_eot    byte-level BPE whose template appends `<|endoftext|>`
        unigram    Unigram with Metaspace, template `$A </s>` (T5's layout)
        gpt2       byte-level BPE with `<|endoftext|>` and no template (served with --add-eos)
    any_tokenizer.py reference TOKENIZER CORPUS SEQ_LEN [EOS_TOKEN]
        Prints {"blocks": [[ids]...], "starts": [[offsets]...], "special_ids": [...]}: the documents
        encoded by `PreTrainedTokenizerFast(tokenizer_file=...)` (EOS_TOKEN appended to each when
        given), grouped into SEQ_LEN blocks with `group_texts`, and where each block's documents
        begin.
    any_tokenizer.py train MODEL CORPUS VOCAB_SIZE OUT
        Trains MODEL (wordpiece or unigram) with Python `tokenizers` with the settings flightlm's
        `train-tokenizer --model MODEL` uses, and writes OUT.
    any_tokenizer.py compare TOKENIZER_A TOKENIZER_B CORPUS
        Prints {"overlap": share of A's tokens in B, "tokens_a", "tokens_b"}: the vocabularies'
        overlap and how many tokens each encodes CORPUS into.
"""

import json
import sys

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

VOCAB_SIZE = 2000
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
UNIGRAM_SPECIALS = ["<pad>", "</s>", "<unk>", "<mask>"]


def documents(corpus):
    with open(corpus, encoding="utf-8") as handle:
        return [line.rstrip("\r\n") for line in handle if line.strip()]


def wordpiece_tokenizer():
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def wordpiece_trainer(vocab_size):
    return trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, limit_alphabet=1000,
                                     special_tokens=WORDPIECE_SPECIALS,
                                     continuing_subword_prefix="##", show_progress=False)


def unigram_tokenizer():
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tokenizer


def unigram_trainer(vocab_size):
    return trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=UNIGRAM_SPECIALS,
                                   unk_token="<unk>", show_progress=False)


def byte_level_bpe(docs):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(docs, trainer)
    return tokenizer


def build(directory, corpus):
    docs = documents(corpus)
    tokenizer = wordpiece_tokenizer()
    tokenizer.train_from_iterator(docs, wordpiece_trainer(VOCAB_SIZE))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(token, tokenizer.token_to_id(token)) for token in ["[CLS]", "[SEP]"]])
    tokenizer.save(f"{directory}/wordpiece.json")

    tokenizer = byte_level_bpe(docs)
    eot = tokenizer.token_to_id("<|endoftext|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", eot)])
    tokenizer.save(f"{directory}/bpe_eot.json")

    tokenizer = unigram_tokenizer()
    tokenizer.train_from_iterator(docs, unigram_trainer(VOCAB_SIZE))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1",
        special_tokens=[("</s>", tokenizer.token_to_id("</s>"))])
    tokenizer.save(f"{directory}/unigram.json")

    byte_level_bpe(docs).save(f"{directory}/gpt2.json")


def group_texts(input_ids, block_size):
    concatenated = [token for ids in input_ids for token in ids]
    total = len(concatenated) // block_size * block_size
    return [concatenated[i: i + block_size] for i in range(0, total, block_size)]


def document_starts(input_ids, block_size):
    total = sum(len(ids) for ids in input_ids) // block_size
    starts = [[] for _ in range(total)]
    position = 0
    for ids in input_ids:
        if ids and position // block_size < total:
            starts[position // block_size].append(position % block_size)
        position += len(ids)
    return starts


def reference(tokenizer_file, corpus, seq_len, eos_token=None):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=tokenizer_file)
    encoded = tokenizer(documents(corpus))["input_ids"]
    if eos_token is not None:
        eos = tokenizer.convert_tokens_to_ids(eos_token)
        encoded = [ids + [eos] for ids in encoded]
    special = sorted(id for id, token in tokenizer.added_tokens_decoder.items() if token.special)
    print(json.dumps({"blocks": group_texts(encoded, seq_len),
                      "starts": document_starts(encoded, seq_len),
                      "special_ids": special}))


def train(model, corpus, vocab_size, out):
    docs = documents(corpus)
    if model == "wordpiece":
        tokenizer = wordpiece_tokenizer()
        tokenizer.train_from_iterator(docs, wordpiece_trainer(vocab_size))
    else:
        tokenizer = unigram_tokenizer()
        tokenizer.train_from_iterator(docs, unigram_trainer(vocab_size))
    tokenizer.save(out)


def compare(first, second, corpus):
    a, b = Tokenizer.from_file(first), Tokenizer.from_file(second)
    vocab_a, vocab_b = set(a.get_vocab()), set(b.get_vocab())
    docs = documents(corpus)
    count = lambda tokenizer: sum(len(e.ids) for e in tokenizer.encode_batch(docs, add_special_tokens=False))
    print(json.dumps({"overlap": len(vocab_a & vocab_b) / len(vocab_a),
                      "vocab_a": len(vocab_a), "vocab_b": len(vocab_b),
                      "tokens_a": count(a), "tokens_b": count(b)}))


if __name__ == "__main__":
    command, arguments = sys.argv[1], sys.argv[2:]
    if command == "build":
        build(*arguments)
    elif command == "reference":
        reference(arguments[0], arguments[1], int(arguments[2]), *arguments[3:])
    elif command == "train":
        train(arguments[0], arguments[1], int(arguments[2]), arguments[3])
    elif command == "compare":
        compare(*arguments)
    else:
        raise SystemExit(f"unknown command {command}")
