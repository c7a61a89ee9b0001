"""Summarizes cubecl's kernel profile log (profiling level "basic": one `| DURATION | NAME` line per
kernel, each timed on the device) for scripts/gpu-bench.sh: GPU time per training step, kernels
per step, and the kernels that take the most time. Set beside the step time of an unprofiled run,
it tells whether a step is bound by kernel time or by launching kernels from the host.

Usage: python3 gpu_kernel_profile.py LOG STEPS [RUN_OUT]
  RUN_OUT  an unprofiled run's metrics lines (its start line and train lines), whose steady-state
           step time (the second half of its steps) the GPU time is set against
"""

import collections
import json
import re
import sys

# Rust's Debug format of a Duration: 850ns, 12.5µs, 1.25ms, 2.1s.
KERNEL_LINE = re.compile(r"^\| (\d+(?:\.\d+)?)(ns|µs|ms|s)\s*\| (.+)$")
SCALE_MS = {"ns": 1e-6, "µs": 1e-3, "ms": 1.0, "s": 1e3}


def kernel_times(lines):
    """(name, milliseconds) for every kernel line; the per-sync summary tables are skipped."""
    for line in lines:
        match = KERNEL_LINE.match(line.rstrip("\n"))
        if match:
            value, unit, name = match.groups()
            yield name.strip(), float(value) * SCALE_MS[unit]


def unprofiled_ms_per_step(path):
    """Mean step time over the second half of a run's steps, or None."""
    try:
        with open(path) as lines:
            metrics = [json.loads(line) for line in lines if line.startswith("{")]
    except (OSError, ValueError):
        return None
    start = next((m for m in metrics if m.get("kind") == "start"), None)
    train = [m for m in metrics if m.get("kind") == "train"]
    steady = train[len(train) // 2:]
    if not start or len(steady) < 2:
        return None
    tokens = start["batch_size"] * start["seq_len"] * start["grad_accum"]
    return sum(tokens / m["tokens_per_s"] * 1e3 for m in steady) / len(steady)


def summarize(lines, steps, unprofiled_ms=None, top=15):
    totals = collections.defaultdict(float)
    counts = collections.Counter()
    for name, milliseconds in kernel_times(lines):
        totals[name] += milliseconds
        counts[name] += 1
    gpu_ms = sum(totals.values())
    launches = sum(counts.values())
    report = [f"kernels: {launches / steps:,.0f} per step, {len(totals)} distinct; "
              f"GPU time {gpu_ms / steps:.1f} ms per step"]
    if unprofiled_ms:
        share = gpu_ms / steps / unprofiled_ms * 100
        report.append(f"an unprofiled step takes {unprofiled_ms:.1f} ms: kernels busy the GPU "
                      f"{share:.0f} % of it (the rest is launch and host time)")
    report.append(f'{"ms/step":>8} {"share":>6} {"calls/step":>10}  kernel')
    for name, total in sorted(totals.items(), key=lambda item: -item[1])[:top]:
        report.append(f"{total / steps:8.2f} {total / gpu_ms * 100:5.1f}% "
                      f"{counts[name] / steps:10.1f}  {name[:110]}")
    return "\n".join(report)


def main():
    path, steps = sys.argv[1], int(sys.argv[2])
    unprofiled_ms = unprofiled_ms_per_step(sys.argv[3]) if len(sys.argv) > 3 else None
    with open(path, encoding="utf-8", errors="replace") as lines:
        print(summarize(lines, steps, unprofiled_ms))


if __name__ == "__main__":
    main()
