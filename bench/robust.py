"""Hostile clients against the defences of the average, side by side with a clean run.

Each cell is a whole federated run in this process (the in-process grid, real
training, held-out accuracy). The attackers are the first ``fraction x nodes``
partitions; they attack in every round through the runner's fault hook, on the wire:

- ``scaled``: the split client's updated prefix, scaled x30, with an honest ``num-examples``;
- ``sign-flip``: the update reversed (global - (trained - global)), scaled x3;
- ``huge-acts``: boundary activations multiplied by 1e6 in the forward reply;
- ``flip-labels``: every label of the forward reply flipped (data poisoning).

Defences (config overrides of every run of that column):

- ``plain``: no bound on updates or activations, volume-weighted mean;
- ``clip``: the defaults: updates above 3x the round's median norm clipped, activations
  above 1e4 refused, volume-weighted mean;
- ``median``: as ``clip``, with the volume-weighted median per value.

    python bench/robust.py [--nodes 10] [--rounds 4] [--fractions 0.2,0.3] [key=value ...]
    python bench/robust.py --nodes 10 --rounds 3 config=test     # tiny random model, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Message, RecordDict

from flower_app.apps.runner import Fault, run_inprocess
from flower_app.config.load import load_config
from flower_app.config.overrides import overrides_of
from strategies.wire import names as wire
from strategies.wire.records import from_record, to_record

DEFENCES = {
    "plain": {"strategy.update-check": "off", "strategy.aggregation": "mean", "strategy.max-activation": 1e30},
    "clip": {},
    "median": {"strategy.aggregation": "median"},
}
ATTACKS = ("scaled", "sign-flip", "huge-acts", "flip-labels")


def _replace(reply: Message, record: str, arrays: dict[str, np.ndarray]) -> Message:
    """The reply with one array record replaced (its other records kept)."""
    records = dict(reply.content.array_records)
    records[record] = to_record(arrays)
    reply.content = RecordDict({**records, **reply.content.config_records, **reply.content.metric_records})
    return reply


def attack_hook(attack: str, attackers: set[int]) -> Fault:
    """A fault hook that lets the attacker partitions tamper with their replies."""

    def hook(index: int, message: Message, call: Callable[[], Message]) -> Message | None:
        reply = call()
        kind = message.metadata.message_type
        if index not in attackers or reply.has_error():
            return reply
        if (
            attack in ("huge-acts", "flip-labels")
            and kind == wire.SPLIT_FORWARD
            and wire.ACTIVATIONS in reply.content.array_records
        ):
            arrays = from_record(reply.content.array_records[wire.ACTIVATIONS])
            for key in list(arrays):
                if attack == "huge-acts" and key.startswith("act."):
                    arrays[key] = (arrays[key].astype(np.float32) * 1e6).astype(arrays[key].dtype)
                if attack == "flip-labels" and key.startswith("label."):
                    arrays[key] = 1 - arrays[key]
            return _replace(reply, wire.ACTIVATIONS, arrays)
        if (
            attack in ("scaled", "sign-flip")
            and kind == wire.SPLIT_BACKWARD
            and wire.ARRAYS in reply.content.array_records
        ):
            sent = from_record(message.content.array_records[wire.ARRAYS])
            trained = from_record(reply.content.array_records[wire.ARRAYS])
            if attack == "scaled":
                tampered = {k: v * 30.0 for k, v in trained.items()}
            else:
                tampered = {k: sent[k] - 3.0 * (v - sent[k]) for k, v in trained.items()}
            return _replace(reply, wire.ARRAYS, tampered)
        return reply

    return hook


def run_cell(name: str, config: dict, nodes: int, fault: Fault | None, out: Path) -> dict:
    run_dir = out / name
    print(f"--- {name}", flush=True)
    tick = time.perf_counter()
    summary = run_inprocess({**config, "run.run-dir": str(run_dir)}, num_nodes=nodes, fault=fault)
    final = summary["final-accuracy"]
    return {
        "name": name,
        "final": float("nan") if final is None else final,
        "status": summary["status"],
        "wall-s": round(time.perf_counter() - tick, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10, help="clients (default: 10)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (default: 4)")
    parser.add_argument("--fractions", default="0.1,0.2,0.3", help="attacker fractions (default: 0.1,0.2,0.3)")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help=f"attacks (default: {','.join(ATTACKS)})")
    parser.add_argument("--defences", default=",".join(DEFENCES), help=f"defences (default: {','.join(DEFENCES)})")
    parser.add_argument("--out", default="runs/bench-robust", help="parent of the runs' directories")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. config=test")
    args = parser.parse_args(argv)
    base: dict = {"run.num-rounds": args.rounds, **overrides_of(parser, args.overrides)}
    out = Path(args.out)
    fractions = [float(f) for f in args.fractions.split(",")]
    attacks, defences = args.attacks.split(","), args.defences.split(",")
    clean = run_cell("clean", base, args.nodes, None, out)
    cells = {}
    for fraction in fractions:
        attackers = set(range(round(fraction * args.nodes)))
        for attack in attacks:
            for defence in defences:
                name = f"{attack}-{int(100 * fraction)}pct-{defence}"
                cells[(fraction, attack, defence)] = run_cell(
                    name, {**base, **DEFENCES[defence]}, args.nodes, attack_hook(attack, attackers), out
                )
    config = load_config(base)
    print()
    print(
        f"{args.nodes} clients, {args.rounds} rounds, model {config.model.source}, seed {config.run.seed}; "
        f"clean run: final accuracy {clean['final']:.4f}"
    )
    head = f"{'attack':<12} {'attackers':>9} " + " ".join(f"{d:>9}" for d in defences)
    print(head + "\n" + "-" * len(head))
    for fraction in fractions:
        for attack in attacks:
            accs = " ".join(f"{cells[(fraction, attack, d)]['final']:>9.4f}" for d in defences)
            print(f"{attack:<12} {f'{int(100 * fraction)}%':>9} {accs}")
    print("(final held-out accuracy; a run that stopped early shows its last evaluation)")
    (out / "robust.json").write_text(
        json.dumps(
            {
                "clean": clean,
                "cells": [{"fraction": f, "attack": a, "defence": d, **c} for (f, a, d), c in cells.items()],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
