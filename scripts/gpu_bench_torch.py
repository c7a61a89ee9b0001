"""PyTorch/transformers side of scripts/gpu-bench.sh: RobertaForMaskedLM or RobertaForCausalLM in
the roberta-base shape, trained on random blocks with the settings users run (SDPA attention,
fused AdamW, bf16 autocast or f32/tf32), timed after warm-up. Prints one JSON line per config,
plus the bf16 matmul peak of the card measured in the same process.
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


def bench(objective, seq_len, batch, precision, vocab, steps, warmup):
    config = RobertaConfig(
        vocab_size=vocab,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=seq_len + 2,
        type_vocab_size=1,
        is_decoder=objective == "causal",
        attn_implementation="sdpa",
    )
    model_class = RobertaForCausalLM if objective == "causal" else RobertaForMaskedLM
    model = model_class(config).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6,
                                  weight_decay=0.1, fused=True)
    torch.backends.cuda.matmul.allow_tf32 = precision != "f32-strict"
    input_ids = torch.randint(5, vocab, (batch, seq_len), device="cuda")
    if objective == "causal":
        labels = input_ids.clone()
    else:
        labels = torch.where(torch.rand(batch, seq_len, device="cuda") < 0.15, input_ids, -100)
    autocast = precision == "bf16"
    torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first_step_s = time.perf_counter() - started
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    tokens_per_s = batch * seq_len * steps / seconds
    return {
        "impl": "pytorch",
        "objective": objective,
        "seq_len": seq_len,
        "batch": batch,
        "precision": precision,
        "tokens_per_s": tokens_per_s,
        "ms_per_step": seconds / steps * 1e3,
        "first_step_s": first_step_s,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "train_flops_per_token": 6 * parameters,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default="mlm:128:32:bf16,mlm:128:32:f32")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps({"matmul_bf16_tflops": matmul_peak_tflops(),
                      "device": torch.cuda.get_device_name()}), flush=True)
    for spec in args.configs.split(","):
        objective, seq_len, batch, precision = spec.split(":")
        result = bench(objective, int(seq_len), int(batch), precision, args.vocab, args.steps, args.warmup)
        print(json.dumps(result), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
