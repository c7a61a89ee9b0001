"""Prints scripts/gpu-bench.sh's table from the files a call left in its work directory (the
current directory): card.txt, torch.out, burn-runs.txt, burn-NAME.out and mem-NAME.txt.
"""

import json
import os
import time


def json_lines(path):
    found = []
    try:
        with open(path) as lines:
            for line in lines:
                try:
                    found.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return found


def peak_memory_gib(name):
    """Peak device memory of a burn run: nvidia-smi samples, less what was in use before it."""
    try:
        used = [float(value) for value in open(f"mem-{name}.txt").read().split()]
    except (OSError, ValueError):
        return None
    return (max(used) - used[0]) / 1024 if len(used) > 1 else None


def main():
    torch_lines = json_lines("torch.out")
    peak = next((l["matmul_bf16_tflops"] for l in torch_lines if "matmul_bf16_tflops" in l), None)
    torch_rows = [l for l in torch_lines if l.get("impl") == "pytorch"]
    flops_per_token = torch_rows[0]["train_flops_per_token"] if torch_rows else None

    def reference(objective, seq_len):
        return next((r["tokens_per_s"] for r in torch_rows if r["precision"] == "bf16"
                     and r["objective"] == objective and r["seq_len"] == seq_len), None)

    card = open("card.txt").read().strip()
    print(f"card: {card}; bf16 matmul peak measured: {peak and round(peak)} TFLOP/s")
    if torch_rows and os.path.getmtime("torch.out") < os.path.getmtime("burn-runs.txt") - 600:
        taken = time.strftime("%Y-%m-%d %H:%M", time.gmtime(os.path.getmtime("torch.out")))
        print(f"PyTorch rows and the peak are from an earlier call on this host ({taken} UTC)")
    print("MFU: 6 x parameters FLOPs per token against that peak; 'vs torch' is against PyTorch "
          "bf16 autocast, same shape")
    print("1st step: burn from the process launch to its first log line, at the step in brackets "
          "(start-up, CUDA init, kernel compilation and autotune); PyTorch the first step alone")
    print(f'{"impl":20} {"obj":>6} {"shape":>7} {"prec":>5} {"tokens/s":>10} {"vs torch":>8} '
          f'{"MFU":>6} {"1st step s":>11} {"peak GiB":>8}  loss')

    def show(name, objective, shape, precision, rate, first, memory, seq_len, loss=""):
        base = reference(objective, seq_len)
        ratio = f"{rate / base:.2f}x" if rate and base else "-"
        mfu = (f"{rate * flops_per_token / (peak * 1e12) * 100:.1f}%"
               if rate and peak and flops_per_token else "-")
        rate_text = f"{rate:,.0f}" if rate else "-"
        first_text = first if isinstance(first, str) else f"{first:.1f}" if first is not None else "-"
        memory_text = f"{memory:.1f}" if memory is not None else "-"
        print(f"{name:20} {objective:>6} {shape:>7} {precision:>5} {rate_text:>10} {ratio:>8} "
              f"{mfu:>6} {first_text:>11} {memory_text:>8}  {loss}")

    for line in open("burn-runs.txt"):
        if not line.strip():
            continue
        name, objective, seq_len, batch, precision, *variant = line.split()
        metrics = json_lines(f"burn-{name}.out")
        wall = next((l for l in metrics if l.get("kind") == "wall"), None)
        train = [l for l in metrics if l.get("kind") == "train"]
        exit_line = next((l for l in metrics if l.get("kind") == "exit"), None)
        # Steady state: the second half of the steps (the first ones include compilation).
        steady = train[len(train) // 2:]
        rate = sum(l["tokens_per_s"] for l in steady) / len(steady) if len(train) >= 4 else None
        seen = next((l["at"] for l in metrics if l.get("kind") == "first_step"), None)
        first = f"{seen - wall['started']:.1f} ({train[0]['step']})" if seen and wall and train else None
        loss = (f"{train[0]['loss']:.3f} -> {train[-1]['loss']:.3f} ({train[-1]['step']} steps)"
                if train else "")
        label = f"burn-cuda #{name}" + "".join(f" {tag}" for tag in variant)
        show(label, objective, f"{batch}x{seq_len}", precision, rate, first,
             peak_memory_gib(name), int(seq_len), loss)
        if exit_line:
            took = f" after {wall['ended'] - wall['started']:.0f} s" if wall else ""
            print(f"   burn run #{name} stopped: exit {exit_line['status']}{took}")
    for r in torch_rows:
        show("pytorch", r["objective"], f"{r['batch']}x{r['seq_len']}", r["precision"],
             r["tokens_per_s"], r["first_step_s"], r["peak_mem_gib"], r["seq_len"])


if __name__ == "__main__":
    main()
