"""HF `Trainer` fed by a flightlm pipeline through `flightlm_stream.FlightlmDataset`: flightlm's
data side under a PyTorch trainer, with no datasets.map and no preprocessing on disk.

Usage: hf_trainer_stream.py URL TOKENIZER_JSON STEPS

Trains a tiny RobertaForMaskedLM (2 layers x 128) for STEPS steps of 16 blocks of 128 tokens,
masked by `DataCollatorForLanguageModeling`, saving a checkpoint halfway with
`FlightlmStateCallback`. A second Trainer then resumes from that checkpoint, its dataset started
from the saved position: it must train on exactly the blocks the first run trained on after the
checkpoint. The first run also evaluates on the valid split (a `FlightlmDataset` of split "valid")
at the checkpoint and at the end, and the valid dataset must give the whole split at every
pass. Prints one JSON line.
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
from flightlm_stream import FlightlmDataset, FlightlmStateCallback  # noqa: E402

SEQ_LEN = 128
BATCH = 16


class Recorded:
    """The collator, keeping each batch's unmasked ids in the order the Trainer asks for them."""

    def __init__(self, collator):
        self.collator, self.batches = collator, []

    def __call__(self, features):
        self.batches.append(torch.stack([feature["input_ids"] for feature in features]))
        return self.collator(features)


def train(url, tokenizer, output_dir, steps, resume_from=None, valid=None):
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=512, max_position_embeddings=SEQ_LEN + 2, pad_token_id=1,
        bos_token_id=0, eos_token_id=2,
    )
    model = RobertaForMaskedLM(config)
    dataset = FlightlmDataset(url, SEQ_LEN, batch_size=BATCH)
    if resume_from:
        dataset.load_checkpoint(resume_from)
    args = TrainingArguments(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=BATCH,
        learning_rate=5e-4, warmup_steps=steps // 10, weight_decay=0.1, logging_steps=1,
        save_strategy="steps", save_steps=steps // 2, report_to=[], use_cpu=True,
        eval_strategy="steps" if valid else "no", eval_steps=steps // 2,
        disable_tqdm=True, dataloader_num_workers=0, ignore_data_skip=True, seed=0,
    )
    collator = Recorded(DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15))
    trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=valid,
                      data_collator=collator, callbacks=[FlightlmStateCallback(dataset)])
    started = time.time()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.time() - started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    evals = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    return result, seconds, collator.batches, losses, dataset, evals


def main():
    url, tokenizer_file, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tokenizer = RobertaTokenizerFast(tokenizer_file=tokenizer_file)
    half = steps // 2
    with tempfile.TemporaryDirectory() as output_dir:
        valid = FlightlmDataset(url, SEQ_LEN, batch_size=BATCH, split="valid")
        result, seconds, batches, losses, dataset, evals = train(
            url, tokenizer, output_dir, steps, valid=valid)
        state = dataset.state_dict()
        taken = state["cursor"]["state"]["block_seq"] + state["cursor"]["skip"]
        checkpoint = os.path.join(output_dir, f"checkpoint-{half}")
        with tempfile.TemporaryDirectory() as resumed_dir:
            _, _, resumed_batches, resumed_losses, _, _ = train(
                url, tokenizer, resumed_dir, steps, resume_from=checkpoint)
    valid_passes = [sum(1 for _ in valid) for _ in range(2)]
    # The Trainer collates its eval batches with the same collator: leave them out.
    valid_rows = {tuple(row["input_ids"].tolist()) for row in valid}
    batches = [batch for batch in batches if tuple(batch[0].tolist()) not in valid_rows]
    trained_after = batches[half:steps]
    same_blocks = len(resumed_batches) >= len(trained_after) and all(
        torch.equal(a, b) for a, b in zip(trained_after, resumed_batches))
    print(json.dumps({
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "seconds": seconds,
        "tokens_per_s": result.global_step * BATCH * SEQ_LEN / seconds,
        "blocks_taken": taken,
        "blocks_trained": result.global_step * BATCH,
        "resumed_at": half,
        "resumed_trains_the_same_blocks": same_blocks,
        "last_loss": losses[-1],
        "resumed_last_loss": resumed_losses[-1],
        "eval_losses": evals,
        "valid_blocks_per_pass": valid_passes,
    }))


if __name__ == "__main__":
    main()
