"""PyTorch/transformers side of scripts/gpu-bench.sh (and, with --device cpu, of
scripts/bench-trainer.sh): RobertaForMaskedLM or RobertaForCausalLM in a preset's shape (default
roberta-base), trained on random blocks with the settings users run (SDPA attention, fused AdamW
on CUDA, bf16 autocast or f32/tf32), timed after warm-up. Prints one JSON line per config, plus
(on CUDA) the bf16 matmul peak of the card measured in the same process.
"""

import argparse
import json
import time

import torch
from transformers import RobertaConfig, RobertaForCausalLM, RobertaForMaskedLM


def matmul_peak_tflops(size=8192, repeats=20):
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


# layers, hidden, heads, intermediate: the trainer's presets.
SHAPES = {"tiny": (2, 128, 2, 512), "small": (4, 256, 4, 1024), "base": (12, 768, 12, 3072),
          "large": (24, 1024, 16, 4096)}


def bench(objective, seq_len, batch, precision, vocab, steps, warmup, preset="base", device="cuda"):
    layers, hidden, heads, intermediate = SHAPES[preset]
    config = RobertaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=seq_len + 2,
        type_vocab_size=1,
        is_decoder=objective == "causal",
        attn_implementation="sdpa",
    )
    model_class = RobertaForCausalLM if objective == "causal" else RobertaForMaskedLM
    model = model_class(config).to(device).train()
    cuda = device == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6,
                                  weight_decay=0.1, fused=cuda)
    torch.backends.cuda.matmul.allow_tf32 = precision != "f32-strict"
    input_ids = torch.randint(5, vocab, (batch, seq_len), device=device)
    if objective == "causal":
        labels = input_ids.clone()
    else:
        labels = torch.where(torch.rand(batch, seq_len, device=device) < 0.15, input_ids, -100)
    autocast = precision == "bf16"
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    step()
    synchronize()
    first_step_s = time.perf_counter() - started
    for _ in range(warmup):
        step()
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    seconds = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    tokens_per_s = batch * seq_len * steps / seconds
    return {
        "impl": "pytorch",
        "preset": preset,
        "objective": objective,
        "seq_len": seq_len,
        "batch": batch,
        "precision": precision,
        "tokens_per_s": tokens_per_s,
        "ms_per_step": seconds / steps * 1e3,
        "first_step_s": first_step_s,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "train_flops_per_token": 6 * parameters,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default="mlm:128:32:bf16,mlm:128:32:f32")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--preset", default="base", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        print(json.dumps({"matmul_bf16_tflops": matmul_peak_tflops(),
                          "device": torch.cuda.get_device_name()}), flush=True)
    for spec in args.configs.split(","):
        objective, seq_len, batch, precision = spec.split(":")
        result = bench(objective, int(seq_len), int(batch), precision, args.vocab, args.steps,
                       args.warmup, args.preset, args.device)
        print(json.dumps(result), flush=True)
        if args.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
