"""HF `Trainer` side of scripts/hf-trainer-curve.sh: the same run as `flightlm-trainer train-text`.

Usage: hf_trainer_curve.py RUN_JSON

RUN_JSON names the corpus, the tokenizer, flightlm's exported model directory (its config.json
gives the network) and the recipe (objective, steps, seq_len, batch, lr, warmup, seed...).

Same data and order as train-text: every non-blank line tokenized with <s> ... </s>, all of it
concatenated and cut into seq_len blocks (group_texts), the last `valid_fraction` of the blocks
held out, train batches taken in block order (`train_sampling_strategy="sequential"`), cycling.
Same recipe: AdamW (betas, eps, weight decay without biases and LayerNorm), linear warmup and
the run's `lr_schedule` (linear by default), clipping at 1.0, dropout 0.1, N(0, 0.02) init. Masking draws differ (torch vs flightlm's
generator) but follow the same 80/10/10 rule.

Prints one JSON object: HF Trainer's own eval_loss, both final models (HF's and flightlm's,
loaded from its export) scored by one evaluator on the same fixed masks of the valid split, and
the largest difference between the learning rates flightlm logged and transformers' scheduler.
"""

import json
import math
import sys
import tempfile
import time

import torch
from transformers import (
    DataCollatorForLanguageModeling,
    RobertaConfig,
    RobertaForCausalLM,
    RobertaForMaskedLM,
    RobertaTokenizerFast,
    Trainer,
    TrainingArguments,
    get_scheduler,
)

EVAL_MASKING_SEED = 1234


def blocks_of(corpus, tokenizer, seq_len):
    with open(corpus, encoding="utf-8") as handle:
        documents = [line.rstrip("\r\n") for line in handle if line.strip()]
    ids = [token for doc in tokenizer(documents)["input_ids"] for token in doc]
    total = len(ids) // seq_len * seq_len
    return [ids[i : i + seq_len] for i in range(0, total, seq_len)]


class Blocks(torch.utils.data.Dataset):
    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, index):
        return {"input_ids": self.blocks[index]}


def fixed_batches(valid, collator, batch_size):
    """The valid split collated once, with a fixed seed: the same masks for every model."""
    torch.manual_seed(EVAL_MASKING_SEED)
    return [
        collator([{"input_ids": block} for block in valid[i : i + batch_size]])
        for i in range(0, len(valid), batch_size)
    ]


def mean_loss(model, batches, causal):
    """Mean cross-entropy over every predicted token of every batch."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            logits = model(input_ids=batch["input_ids"]).logits
            labels = batch["labels"]
            if causal:
                logits, labels = logits[:, :-1], labels[:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(losses)
            count += int((labels != -100).sum())
    return total / count


def schedule_difference(run):
    """Largest |flightlm - transformers| learning rate over flightlm's train lines, relative to
    the peak. A line for step k logs the rate of its last update, the one with 0-based index k-1."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=run["lr"])
    scheduler = get_scheduler(
        run["lr_schedule"], optimizer, num_warmup_steps=run["warmup_steps"],
        num_training_steps=run["steps"],
    )
    rates = []
    for _ in range(run["steps"]):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    with open(run["flightlm_metrics"], encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle]
    logged = [(line["step"], line["lr"]) for line in lines if line.get("kind") == "train"]
    return max(abs(lr - rates[step - 1]) / run["lr"] for step, lr in logged), len(logged)


def main():
    run = json.load(open(sys.argv[1]))
    torch.set_num_threads(run.get("threads", torch.get_num_threads()))
    causal = run["objective"] == "causal"
    tokenizer = RobertaTokenizerFast(tokenizer_file=run["tokenizer"])
    blocks = blocks_of(run["corpus"], tokenizer, run["seq_len"])
    held_out = max(1, math.ceil(len(blocks) * run["valid_fraction"]))
    train, valid = blocks[:-held_out], blocks[-held_out:]
    rows = run["steps"] * run["batch_size"] * run["grad_accum"]
    order = [train[i % len(train)] for i in range(rows)]

    config = RobertaConfig.from_pretrained(run["flightlm_model"])
    model_class = RobertaForCausalLM if causal else RobertaForMaskedLM
    torch.manual_seed(run["seed"])
    model = model_class(config)
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm=not causal, mlm_probability=run["mlm_probability"]
    )
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=run["steps"],
            per_device_train_batch_size=run["batch_size"],
            per_device_eval_batch_size=run["batch_size"],
            gradient_accumulation_steps=run["grad_accum"],
            learning_rate=run["lr"],
            warmup_steps=run["warmup_steps"],
            lr_scheduler_type=run["lr_schedule"],
            weight_decay=run["weight_decay"],
            adam_beta1=0.9,
            adam_beta2=0.98,
            adam_epsilon=1e-6,
            max_grad_norm=1.0,
            train_sampling_strategy="sequential",
            dataloader_drop_last=True,
            logging_steps=max(1, run["steps"] // 5),
            save_strategy="no",
            report_to=[],
            seed=run["seed"],
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=Blocks(order), data_collator=collator
        )
        started = time.time()
        trainer.train()
        seconds = time.time() - started
        hf_eval = trainer.evaluate(eval_dataset=Blocks(valid))["eval_loss"]

    batches = fixed_batches(valid, collator, run["batch_size"])
    flightlm_model = model_class.from_pretrained(run["flightlm_model"])
    same_masks = {
        "hf": mean_loss(model, batches, causal),
        "flightlm": mean_loss(flightlm_model, batches, causal),
    }
    same_masks["ratio"] = same_masks["flightlm"] / same_masks["hf"]
    lr_difference, lr_lines = schedule_difference(run)
    print(
        json.dumps(
            {
                "train_blocks": len(train),
                "valid_blocks": len(valid),
                "hf_trainer_eval_loss": hf_eval,
                "hf_trainer_seconds": seconds,
                "same_masks_eval_loss": same_masks,
                "lr_schedule": run["lr_schedule"],
                "lr_max_difference": lr_difference,
                "lr_lines_compared": lr_lines,
            }
        )
    )


if __name__ == "__main__":
    main()
