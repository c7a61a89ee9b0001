"""Reads what flightlm shows its users' tools, with those tools' own libraries.

  observe_check.py tensorboard OUT
      TensorBoard's EventAccumulator reads OUT: every scalar must equal metrics.jsonl's value at
      its step (as a float32), each step once; then `tensorboard --logdir OUT` started on
      loopback must list the tags over its HTTP API. Prints a JSON summary.
  observe_check.py scrape URL [TOKEN_FILE]
      Fetches a Prometheus endpoint, parses it with prometheus_client's text parser and prints
      {"type:name": {"label=value,...": value}} as JSON.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import numpy as np


def metric_lines(out):
    with open(os.path.join(out, "metrics.jsonl")) as lines:
        return [json.loads(line) for line in lines if line.strip()]


def expected_scalars(out):
    """{tag: {step: value}} from metrics.jsonl, as the trainer tags them."""
    expected = {}
    for line in metric_lines(out):
        kind = line.get("kind")
        if kind not in ("train", "eval"):
            continue
        for name, value in line.items():
            if name in ("kind", "step"):
                continue
            tag = f"{kind}/{name[len('eval_'):] if name.startswith('eval_') else name}"
            parts = value.items() if isinstance(value, dict) else [(None, value)]
            for part, figure in parts:
                if isinstance(figure, (int, float)) and not isinstance(figure, bool):
                    key = tag if part is None else f"{tag}/{part}"
                    expected.setdefault(key, {})[line["step"]] = figure
    return expected


def raw_steps(out, tag):
    """How often each step of `tag` was written, over every event file (before any purge)."""
    from tensorboard.backend.event_processing import event_file_loader

    counts = {}
    for name in sorted(os.listdir(out)):
        if "tfevents" not in name:
            continue
        loader = event_file_loader.LegacyEventFileLoader(os.path.join(out, name))
        for event in loader.Load():
            for value in event.summary.value:
                if value.tag == tag:
                    counts[event.step] = counts.get(event.step, 0) + 1
    return counts


def check_tensorboard(out):
    from tensorboard.backend.event_processing import event_accumulator as ea

    accumulator = ea.EventAccumulator(out, size_guidance={ea.SCALARS: 0})
    accumulator.Reload()
    tags = sorted(accumulator.Tags()["scalars"])
    expected = expected_scalars(out)
    assert tags == sorted(expected), f"tags {tags} != {sorted(expected)}"
    compared = 0
    for tag in tags:
        events = accumulator.Scalars(tag)
        steps = [event.step for event in events]
        assert len(steps) == len(set(steps)), f"{tag}: a step shown twice: {steps}"
        assert sorted(steps) == sorted(expected[tag]), f"{tag}: steps {steps}"
        for event in events:
            want = np.float32(expected[tag][event.step])
            assert np.float32(event.value) == want, (
                f"{tag} step {event.step}: {event.value} != {want}")
            compared += 1
    rewritten = sorted(step for step, count in raw_steps(out, "train/loss").items() if count > 1)
    served_tags = tensorboard_http_tags(out)
    assert sorted(served_tags) == tags, f"served {served_tags}"
    print(json.dumps({
        "tags": tags,
        "scalars_compared": compared,
        "event_files": sorted(n for n in os.listdir(out) if "tfevents" in n),
        "steps_written_twice": rewritten,
        "http_tags": len(served_tags),
    }))


def tensorboard_http_tags(out):
    """Starts `tensorboard --logdir out` on loopback and lists the scalar tags it serves."""
    command = [os.path.join(os.path.dirname(sys.executable), "tensorboard"), "--logdir", out,
               "--host", "127.0.0.1", "--port", "0", "--load_fast", "false"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        url = None
        deadline = time.monotonic() + 90
        while url is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            if not line and server.poll() is not None:
                raise AssertionError(f"tensorboard exited with {server.returncode}")
            found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            url = found and found.group(1)
        assert url, "tensorboard announced no address"
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url + "/data/plugin/scalars/tags", timeout=10) as answer:
                runs = json.load(answer)
            tags = sorted({tag for run in runs.values() for tag in run})
            if tags:
                return tags
            time.sleep(0.5)
        raise AssertionError("tensorboard listed no tags within 90 s")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def scrape(url, token_file=None):
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(url)
    if token_file:
        with open(token_file) as token:
            request.add_header("Authorization", "Bearer " + token.read().strip())
    with urllib.request.urlopen(request, timeout=10) as answer:
        content_type = answer.headers.get("Content-Type", "")
        assert content_type.startswith("text/plain; version=0.0.4"), content_type
        text = answer.read().decode()
    families = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            families.setdefault(f"{family.type}:{sample.name}", {})[labels] = sample.value
    print(json.dumps(families))


if __name__ == "__main__":
    if sys.argv[1] == "tensorboard":
        check_tensorboard(sys.argv[2])
    elif sys.argv[1] == "scrape":
        scrape(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")
