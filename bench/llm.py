"""A decoder LLM end to end: SmolLM2-135M-Instruct, split prefix tuning, split generation.

Two offline tasks, each a whole federated run on the in-process grid (split mode,
``--nodes`` clients, ``--rounds`` rounds of ``--steps`` minibatches of ``--batch``):

- **Guardian headlines** (domain adaptation, ``"Headline:"`` + ``" {text}"``): held-out
  perplexity of the base model (no prefix), at the initial prefix, after every round,
  beside centralized prefix tuning of the *unsplit* model with PEFT for the same number
  of steps, from the same initial prefix, on the same samples (the reference).
- **Rotten Tomatoes as an instruction** (``"Review: {text}\\nSentiment:"`` + ``" positive"``
  / ``" negative"``): accuracy through the verbalizer, zero-shot (no prefix) and after
  tuning.

Then seconds per training step on each side of the split (the device: embeddings and
lower layers, forward then replay; the server: upper layers, head, loss, backward) and a
few greedy generations before and after tuning, produced by split generation
(:mod:`flower_app.generate.session`): the device runs its layers with a KV cache, the server the
rest and the sampling.

    python bench/llm.py                                  # SmolLM2-135M, about 15 minutes on 2 cores
    python bench/llm.py --model random-llama --quick     # plumbing check in seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from flower_app.apps.runner import run_inprocess
from flower_app.config.load import load_config
from flower_app.config.strategy_settings import split_settings
from flower_app.data import files as data_mod
from flower_app.data.setup import build, client_data, test_data
from flower_app.generate.session import generate
from flower_app.model.loading import load
from flower_app.model.split_model import set_state
from flower_app.modes.server_model import SplitServer
from flower_app.modes.training import torch_threads
from flower_app.tasks.family import Setup
from flower_app.tasks.lm import LmTally, lm_loss
from strategies.persist.checkpoint import load_checkpoint
from strategies.persist.rundir import RunDirectory

HEADLINE_PROMPTS = ("Headline:", "Headline: Coronavirus", "Headline: Boris Johnson")


def task_configs(model: str, args: argparse.Namespace) -> dict[str, dict]:
    common = {
        "model.source": model,
        "model.head": "lm",
        "model.pooling": "last",
        "model.split-layer": 2,
        "model.prefix-length": args.prefix,
        "data.objective": "causal-lm",
        "data.test-size": args.test_size,
        "run.num-rounds": args.rounds,
        "run.client-threads": 0,  # the in-process grid runs one client at a time: all cores
        "train.steps-per-round": args.steps,
        "train.batch-size": args.batch,
        "train.lr": args.lr,
        "strategy.policy": "split",
        "eval.batch-size": 25,
    }
    return {
        "headlines": {**common, "data.source": "guardian-headlines", "model.max-length": 32},
        "sentiment": {
            **common,
            "data.source": "rotten-tomatoes",
            # A random test model's word-level vocabulary knows only the synthetic words.
            "model.verbalizer": "bad,good" if model.startswith("random-") else "negative,positive",
            "model.max-length": 64,
        },
    }


def held_out(model: torch.nn.Module, setup: Setup, peft_model: bool = False) -> dict[str, float]:
    """Perplexity and accuracy of an unsplit (optionally PEFT-wrapped) model on the test split."""
    encoded = test_data(setup.config)
    tally = LmTally()
    with torch.no_grad():
        for start in range(0, len(encoded), 25):
            ids, mask, targets = data_mod.collate(
                encoded, np.arange(start, min(start + 25, len(encoded))), setup.pad_id
            )
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1] :]
            tally.add(logits, targets, setup.verbalizer_ids)
    return tally.metrics()


def peft_from(model: torch.nn.Module, setup: Setup):
    """PEFT prefix tuning on the unsplit model, starting from the split model's initial prefix.

    PEFT keeps the prefix as one embedding of ``P`` rows, each the keys and values of
    every layer: ``(layers x 2, kv heads, head dim)`` flattened. The split model's
    prefix is ``(2, kv heads, P, head dim)`` per layer; the same numbers, laid out again.
    """
    import peft

    prefix_length = setup.spec.prefix_length
    wrapped = peft.get_peft_model(
        model, peft.PrefixTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=prefix_length)
    )
    state = setup.initial_state
    layers = [torch.as_tensor(state[f"prefix.{i}"]) for i in range(model.config.num_hidden_layers)]
    stacked = torch.stack(layers)  # (L, 2, H, P, D)
    weight = stacked.flatten(0, 1).permute(2, 0, 1, 3).reshape(prefix_length, -1)  # (P, L*2*H*D)
    with torch.no_grad():
        wrapped.prompt_encoder.default.embedding.weight.copy_(weight)
    return wrapped


def train_peft(wrapped, setup: Setup, steps: int, batch: int, lr: float, seed: int, pool) -> float:
    """Centralized prefix tuning of the unsplit model: ``steps`` minibatches over ``pool``."""
    optimizer = torch.optim.Adam([p for p in wrapped.parameters() if p.requires_grad], lr=lr)
    tick = time.perf_counter()
    for indices in data_mod.batch_plan(len(pool), steps, batch, seed):
        ids, mask, targets = data_mod.collate(pool, indices, setup.pad_id)
        logits = wrapped(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1] :]
        loss = lm_loss(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - tick


def pooled(config, nodes: int) -> data_mod.Encoded:
    """Every client's samples in one encoded set: what the clients of the run hold together."""
    parts = [client_data(config, i, nodes) for i in range(nodes)]
    ids = tuple(row for part in parts for row in part.ids)
    labels = np.concatenate([part.labels for part in parts])
    starts = np.concatenate([part.prompt_lengths for part in parts if part.prompt_lengths is not None])
    return data_mod.Encoded(ids, labels, starts)


def step_seconds(setup: Setup, batch: int, reps: int = 3) -> dict[str, float]:
    """Seconds of one training step on the device and on the server (forward and backward)."""
    encoded = client_data(setup.config, 0, 4)
    ids, mask, targets = data_mod.collate(encoded, np.arange(min(batch, len(encoded))), setup.pad_id)
    client, server = setup.client, setup.server
    timings: dict[str, list[float]] = {"device": [], "server": []}
    for _ in range(reps + 1):  # the first is a warm-up
        tick = time.perf_counter()
        with torch.no_grad():
            boundary = client(ids, mask)
        replay = client(ids, mask)  # the replay: forward again with grad
        device_s = time.perf_counter() - tick
        upstream = boundary.clone().requires_grad_(True)
        tick = time.perf_counter()
        lm_loss(server(upstream, mask), targets).backward()
        server_s = time.perf_counter() - tick
        tick = time.perf_counter()
        assert upstream.grad is not None
        replay.backward(upstream.grad)
        device_s += time.perf_counter() - tick
        timings["device"].append(device_s)
        timings["server"].append(server_s)
    client.zero_grad(set_to_none=True)
    server.zero_grad(set_to_none=True)
    return {side: float(np.median(values[1:])) for side, values in timings.items()}


def generations(setup: Setup, prompts: tuple[str, ...], tokens: int) -> list[dict]:
    out = []
    for prompt in prompts:
        result = generate(setup.client, setup.server, setup.tokenizer, prompt, max_new_tokens=tokens)
        out.append({"prompt": prompt, "text": result.text, "up-bytes-per-token": result.boundary_bytes_up})
    return out


def federated(name: str, overrides: dict, nodes: int, out: Path) -> tuple[Setup, list[dict], float]:
    run_dir = out / name
    print(f"--- federated split prefix tuning, {name}: {nodes} clients", flush=True)
    tick = time.perf_counter()
    summary = run_inprocess({**overrides, "run.run-dir": str(run_dir)}, num_nodes=nodes)
    wall = time.perf_counter() - tick
    if summary["status"] != "completed":
        raise SystemExit(f"the {name} run ended {summary['status']}")
    setup = build(load_config({**overrides, "run.run-dir": str(run_dir)}))
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint is not None, f"{run_dir} has no checkpoint"
    set_state(setup.client, checkpoint.arrays)
    set_state(setup.server, checkpoint.arrays)
    return setup, RunDirectory(run_dir).rounds(), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="model.source (smollm2, random-llama, a folder)")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="minibatches per client per round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prefix", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--out", default="runs/bench-llm")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a plumbing check")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.test_size, args.new_tokens = 2, 2, 50, 6
    out = Path(args.out)
    configs = task_configs(args.model, args)
    report: dict = {"args": vars(args)}
    started = time.perf_counter()

    # Headlines: perplexity before and after, federated split against centralized PEFT.
    heads = configs["headlines"]
    before = build(load_config({**heads, "run.run-dir": str(out / "headlines")}))
    seed = before.config.run.seed  # a random test model is built from it
    base_model, _ = load(args.model, seed=seed)
    report["headlines-base"] = held_out(base_model.eval(), before)
    with torch_threads(0):
        report["step-seconds"] = step_seconds(before, args.batch)
    report["generations-before"] = generations(before, HEADLINE_PROMPTS, args.new_tokens)
    initial = {k: v.copy() for k, v in before.initial_state.items()}
    report["headlines-initial"] = SplitServer(before, split_settings(before.config)).evaluate(initial)
    tuned, rounds, wall = federated("headlines", heads, args.nodes, out)
    report["headlines-rounds"] = [{k: r.get(k) for k in ("round", "eval-perplexity", "accuracy")} for r in rounds]
    report["headlines-split-wall-s"] = wall
    report["generations-after"] = generations(tuned, HEADLINE_PROMPTS, args.new_tokens)

    steps = args.nodes * args.rounds * args.steps
    print(f"--- centralized PEFT prefix tuning of the unsplit model: {steps} steps", flush=True)
    peft_base, _ = load(args.model, seed=seed)
    wrapped = peft_from(peft_base, before)
    report["headlines-peft-initial"] = held_out(wrapped.eval(), before)
    wrapped.train()
    pool = pooled(before.config, args.nodes)
    report["headlines-peft-wall-s"] = train_peft(wrapped, before, steps, args.batch, args.lr, seed, pool)
    report["headlines-peft"] = held_out(wrapped.eval(), before)

    # Sentiment: verbalizer accuracy zero-shot and after federated split tuning.
    sent = configs["sentiment"]
    sentiment_setup = build(load_config({**sent, "run.run-dir": str(out / "sentiment")}))
    report["sentiment-zero-shot"] = held_out(base_model, sentiment_setup)
    _, sentiment_rounds, sentiment_wall = federated("sentiment", sent, args.nodes, out)
    report["sentiment-rounds"] = [
        {k: r.get(k) for k in ("round", "accuracy", "eval-perplexity")} for r in sentiment_rounds
    ]
    report["sentiment-split-wall-s"] = sentiment_wall
    report["wall-s"] = time.perf_counter() - started
    print_report(report, steps)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    return 0


def print_report(report: dict, steps: int) -> None:
    args = report["args"]
    print(
        f"\n{args['model']}: {args['nodes']} clients x {args['rounds']} rounds x {args['steps']} steps x batch "
        f"{args['batch']}, prefix {args['prefix']}, split after 2 layers ({steps} steps in all)\n"
    )
    print("Guardian headlines, held-out perplexity of the target tokens")
    print(f"  {'base model, no prefix':<46} {report['headlines-base']['perplexity']:8.2f}")
    print(f"  {'initial prefix (split model)':<46} {report['headlines-initial']['perplexity']:8.2f}")
    print(f"  {'initial prefix (PEFT, unsplit)':<46} {report['headlines-peft-initial']['perplexity']:8.2f}")
    for r in report["headlines-rounds"]:
        print(f"  {'federated split, after round ' + str(r['round']):<46} {r['eval-perplexity']:8.2f}")
    print(f"  {'centralized PEFT prefix tuning, same steps':<46} {report['headlines-peft']['perplexity']:8.2f}")
    print(
        f"  wall: federated split {report['headlines-split-wall-s']:.0f} s (with evaluation), "
        f"PEFT {report['headlines-peft-wall-s']:.0f} s"
    )
    print("\nRotten Tomatoes as an instruction, accuracy through the verbalizer")
    print(f"  {'zero-shot (base model, no prefix)':<46} {report['sentiment-zero-shot']['accuracy']:8.3f}")
    for r in report["sentiment-rounds"]:
        print(f"  {'federated split, after round ' + str(r['round']):<46} {r['accuracy']:8.3f}")
    s = report["step-seconds"]
    print(
        f"\nSeconds per training step (batch {args['batch']}): device {s['device']:.3f} s, server {s['server']:.3f} s"
    )
    print("\nGreedy split generation (before -> after tuning on headlines)")
    for b, a in zip(report["generations-before"], report["generations-after"], strict=True):
        print(f"  {b['prompt']!r}\n    before: {b['text']!r}\n    after:  {a['text']!r}")
    print(f"\nbench wall time {report['wall-s']:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
