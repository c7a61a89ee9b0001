"""HF `Trainer` fed by a flightlm pipeline through `flightlm_stream.FlightlmDataset`: flightlm's
data side under a PyTorch trainer, with no datasets.map and no preprocessing on disk.

Usage: hf_trainer_stream.py URL TOKENIZER_JSON STEPS

Trains a tiny RobertaForMaskedLM (2 layers x 128) for STEPS steps of 16 blocks of 128 tokens,
masked by `DataCollatorForLanguageModeling`, then checks the dataset's `state_dict()` the way a
resumed run uses it: a new dataset started from it must yield exactly the block that follows the
last one the training loop took. Prints one JSON line.
"""

import json
import os
import sys
import tempfile
import time

import torch
from transformers import (
    DataCollatorForLanguageModeling,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaTokenizerFast,
    Trainer,
    TrainingArguments,
)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from flightlm_stream import BlockReader, FlightlmDataset  # noqa: E402

SEQ_LEN = 128
BATCH = 16


def main():
    url, tokenizer_file, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    tokenizer = RobertaTokenizerFast(tokenizer_file=tokenizer_file)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=512, max_position_embeddings=SEQ_LEN + 2, pad_token_id=1,
        bos_token_id=0, eos_token_id=2,
    )
    model = RobertaForMaskedLM(config)
    dataset = FlightlmDataset(url, SEQ_LEN, batch_size=BATCH)
    # The reader that checks the resume position follows the whole stream from its start.
    following = iter(BlockReader(url, SEQ_LEN, batch_size=BATCH))
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, max_steps=steps, per_device_train_batch_size=BATCH,
            learning_rate=5e-4, warmup_steps=steps // 10, weight_decay=0.1,
            logging_steps=max(1, steps // 5), save_strategy="no", report_to=[],
            use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
        )
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
        started = time.time()
        result = trainer.train()
        seconds = time.time() - started
    state = dataset.state_dict()
    taken = state["cursor"]["state"]["block_seq"] + state["cursor"]["skip"]
    for _ in range(taken):
        next(following)
    resumed = FlightlmDataset(url, SEQ_LEN, batch_size=BATCH)
    resumed.load_state_dict(state)
    same_next = bool(torch.equal(
        next(iter(resumed))["input_ids"], torch.from_numpy(next(following).astype("int64"))
    ))
    print(json.dumps({
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "seconds": seconds,
        "tokens_per_s": result.global_step * BATCH * SEQ_LEN / seconds,
        "blocks_taken": taken,
        "blocks_trained": result.global_step * BATCH,
        "resumed_reader_continues_exactly": same_next,
    }))


if __name__ == "__main__":
    main()
