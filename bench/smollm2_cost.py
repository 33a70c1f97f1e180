"""What SmolLM2-135M-Instruct costs on this machine: conversion, load, memory, seconds per step.

Figures for sizing a job on ``model.source=smollm2``:

- the one-time GGUF -> float32 safetensors conversion (into a fresh temporary cache,
  so it runs even where the user cache already holds the folder), then a load from
  that cache, and the process's resident memory;
- one prefix-only training step per batch size, the server part and the client part
  timed apart, as split mode runs them: the server's forward and backward through the
  upper layers and the LM head (the loss on the verbalizer's logits), then the
  client's replay: forward through the lower layers, backward of the boundary gradient.

    python bench/smollm2_cost.py [--batches 8,16] [--length 64] [--split 2] [--prefix 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F

from flower_app.model.loading import load, smollm2_path
from flower_app.model.split_model import SplitSpec, initial_prefix, split
from flower_app.modes.training import adam, class_logits

REPEATS = 5  # timed steps per figure, after one untimed warm-up step


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def timed(step) -> tuple[float, float]:
    """Fastest and median wall seconds of ``REPEATS`` calls, after a warm-up call (allocator, kernels).

    On a machine shared with other jobs the median grows with their load; the fastest
    call is the better estimate of the step on idle cores.
    """
    step()
    wall = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        step()
        wall.append(time.perf_counter() - start)
    return min(wall), statistics.median(wall)


def step_seconds(model, tokenizer, batch: int, length: int, spec: SplitSpec) -> dict[str, tuple[float, float]]:
    """``{part: (fastest, median)}`` seconds of one prefix-only step on a random full-length batch."""
    prefix = initial_prefix(model, "llama", spec.prefix_length, seed=0, vocab_size=model.config.vocab_size)
    client, server = split(model, spec, prefix)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (batch,), generator=generator)
    verbalizer = tuple(tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" bad", " good"))
    with torch.no_grad():
        boundary = client(ids, mask)
    server_opt, client_opt = adam([server], 0.01, 0.0), adam([client], 0.01, 0.0)
    grad = torch.zeros_like(boundary)

    def server_step() -> None:
        server_opt.zero_grad()
        received = boundary.detach().requires_grad_(True)
        logits = server(received, mask)
        F.cross_entropy(class_logits(spec, logits, mask, verbalizer), labels).backward()
        server_opt.step()
        grad.copy_(received.grad)

    def client_step() -> None:
        client_opt.zero_grad()
        client(ids, mask).backward(grad)
        client_opt.step()

    return {"server": timed(server_step), "client": timed(client_step)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="8,16")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--split", type=int, default=2)
    parser.add_argument("--prefix", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--convert-into", help="only convert into this cache and print the seconds (child process)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.convert_into:
        start = time.perf_counter()
        smollm2_path(Path(args.convert_into))
        print(f"{time.perf_counter() - start:.1f}")
        return

    with tempfile.TemporaryDirectory(prefix="smollm2-bench-") as cache:
        # In a child process, so that this one then loads from the cache as a fresh process does.
        child = [sys.executable, __file__, "--convert-into", cache]
        seconds = subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip()
        print(f"conversion (GGUF -> float32 safetensors): {seconds} s")
        before = rss_mb()
        start = time.perf_counter()
        model, tokenizer = load("smollm2", cache=Path(cache))
        print(f"load from the cache: {time.perf_counter() - start:.1f} s (torch imported before)")
        with torch.no_grad():
            model(**tokenizer("The capital of France is", return_tensors="pt"))  # every weight page read
        print(f"resident memory: {before:.0f} MB before the load, {rss_mb():.0f} MB after a forward")
    spec = SplitSpec(split_layer=args.split, prefix_length=args.prefix, head="lm", pooling="last")
    for batch in (int(b) for b in args.batches.split(",")):
        seconds = step_seconds(model, tokenizer, batch, args.length, spec)
        parts = ", ".join(f"{part} {fast:.2f} s (median {mid:.2f} s)" for part, (fast, mid) in seconds.items())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"batch {batch} x {args.length} tokens, split after {args.split}, prefix {args.prefix}, "
            f"{args.threads} threads, a step: {parts}; resident {rss_mb():.0f} MB, peak {peak:.0f} MB"
        )


if __name__ == "__main__":
    main()
