"""Hostile clients against the defences of the average, side by side with a clean run.

Each cell is a whole federated run in this process (the in-process grid, real
training, held-out accuracy). The attackers are the first ``fraction x nodes``
partitions; they attack in every round through the runner's fault hook, on the wire:

- ``scaled``: the split client's updated prefix, scaled x30, with an honest ``num-examples``;
- ``sign-flip``: the update reversed (global - (trained - global)), scaled x3;
- ``colluding``: every attacker sends the same reversed update, 30x the first attacker's
  own update (colluders that agree set the round's median norm when they are many);
- ``huge-acts``: boundary activations multiplied by 1e6 in the forward reply;
- ``constant-acts``: boundary activations of the right shape, all 0.5;
- ``flip-labels``: every label of the forward reply flipped (data poisoning);
- ``inflated-count``: flipped labels, a query reply claiming 10^9 samples, and the largest
  ``num-examples`` the round's plan allows in every reply.

Defences (config overrides of every run of that column):

- ``none``: no screening, no volume cap, no bound on updates or activations, volume-weighted mean;
- ``clip``: only the update bound against the round's median norm and the activation bound
  (the defaults before screening and volume caps);
- ``defaults``: the defaults: split clients screened by loss and activations with
  reputations, volumes capped at 3x the median, updates above 3x earlier rounds' median
  norm clipped, activations above 1e4 refused;
- ``median``: the defaults with the volume-weighted median per value;
- ``fltrust``: the defaults with FLTrust's trust scores (Cao et al., NDSS 2021) from a root
  set of 100 samples on the server.

    python bench/robust.py [--nodes 10] [--rounds 4] [--fractions 0.2,0.3] [--seeds 42,43,44] [key=value ...]
    python bench/robust.py --nodes 10 --rounds 3 config=test     # tiny random model, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from flower_app.apps.runner import Fault, run_inprocess
from flower_app.config.load import load_config
from flower_app.config.overrides import overrides_of
from strategies.wire import names as wire
from strategies.wire.records import from_record, to_record

NO_TRUST = {"strategy.trust": "off", "strategy.volume-cap": 0.0, "strategy.update-reference": "round"}
DEFENCES = {
    "none": {
        **NO_TRUST,
        "strategy.update-check": "off",
        "strategy.aggregation": "mean",
        "strategy.max-activation": 1e30,
    },
    "clip": NO_TRUST,
    "defaults": {},
    "median": {"strategy.aggregation": "median"},
    "fltrust": {"strategy.root-samples": 100},
}
ATTACKS = ("scaled", "sign-flip", "colluding", "huge-acts", "constant-acts", "flip-labels", "inflated-count")
POISONED = ("flip-labels", "inflated-count")  # attacks whose forward replies carry flipped labels


def _replace(reply: Message, record: str, arrays: dict[str, np.ndarray]) -> Message:
    """The reply with one array record replaced (its other records kept)."""
    records = dict(reply.content.array_records)
    records[record] = to_record(arrays)
    reply.content = RecordDict({**records, **reply.content.config_records, **reply.content.metric_records})
    return reply


def _with_volume(reply: Message, volume: int) -> Message:
    """The reply with its ``num-examples`` replaced."""
    metrics = dict(reply.content.metric_records)
    metrics[wire.METRICS] = MetricRecord({**dict(metrics[wire.METRICS]), wire.NUM_EXAMPLES: volume})
    reply.content = RecordDict({**reply.content.array_records, **reply.content.config_records, **metrics})
    return reply


def attack_hook(attack: str, attackers: set[int]) -> Fault:
    """A fault hook that lets the attacker partitions tamper with their replies."""
    shared: dict[str, dict[str, np.ndarray]] = {}  # colluding: the round's agreed update, by round

    def hook(index: int, message: Message, call: Callable[[], Message]) -> Message | None:
        reply = call()
        kind = message.metadata.message_type
        if index not in attackers or reply.has_error():
            return reply
        if attack == "inflated-count" and kind == wire.QUERY and wire.PROFILE in reply.content.config_records:
            profile = dict(reply.content.config_records[wire.PROFILE])
            profile[wire.NUM_AVAILABLE] = 10**9
            reply.content = RecordDict({wire.PROFILE: ConfigRecord(profile)})
            return reply
        plan = wire.TrainPlan.from_config(message.content.config_records[wire.CONFIG]) if kind != wire.QUERY else None
        if kind == wire.SPLIT_FORWARD and wire.ACTIVATIONS in reply.content.array_records:
            arrays = from_record(reply.content.array_records[wire.ACTIVATIONS])
            for key in list(arrays):
                if attack == "huge-acts" and key.startswith("act."):
                    arrays[key] = (arrays[key].astype(np.float32) * 1e6).astype(arrays[key].dtype)
                if attack == "constant-acts" and key.startswith("act."):
                    arrays[key] = np.full_like(arrays[key], 0.5)
                if attack in POISONED and key.startswith("label."):
                    arrays[key] = 1 - arrays[key]
            reply = _replace(reply, wire.ACTIVATIONS, arrays)
            if attack == "inflated-count" and plan is not None:
                rows = sum(len(v) for k, v in arrays.items() if k.startswith("label."))
                reply = _with_volume(reply, min(rows, plan.steps * plan.batch_size))
            return reply
        if kind == wire.SPLIT_BACKWARD and wire.ARRAYS in reply.content.array_records:
            sent = from_record(message.content.array_records[wire.ARRAYS])
            trained = from_record(reply.content.array_records[wire.ARRAYS])
            if attack == "scaled":
                return _replace(reply, wire.ARRAYS, {k: v * 30.0 for k, v in trained.items()})
            if attack == "sign-flip":
                return _replace(reply, wire.ARRAYS, {k: sent[k] - 3.0 * (v - sent[k]) for k, v in trained.items()})
            if attack == "colluding":
                agreed = shared.setdefault(
                    message.metadata.group_id, {k: -30.0 * (v - sent[k]) for k, v in trained.items()}
                )
                return _replace(reply, wire.ARRAYS, {k: (sent[k] + agreed[k]).astype(sent[k].dtype) for k in trained})
            if attack == "inflated-count" and plan is not None:
                return _with_volume(reply, plan.steps * plan.batch_size)
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
    parser.add_argument("--seeds", default="42,43,44", help="run.seed of each repetition (default: 42,43,44)")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help=f"attacks (default: {','.join(ATTACKS)})")
    parser.add_argument("--defences", default=",".join(DEFENCES), help=f"defences (default: {','.join(DEFENCES)})")
    parser.add_argument("--out", default="runs/bench-robust", help="parent of the runs' directories")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. config=test")
    args = parser.parse_args(argv)
    base: dict = {"run.num-rounds": args.rounds, **overrides_of(parser, args.overrides)}
    out = Path(args.out)
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    attacks, defences = args.attacks.split(","), args.defences.split(",")
    for name in attacks:
        if name not in ATTACKS:
            parser.error(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    for name in defences:
        if name not in DEFENCES:
            parser.error(f"unknown defence {name!r}; choose from {', '.join(DEFENCES)}")
    clean: dict[int, dict] = {}
    cells: dict[tuple[float, str, str, int], dict] = {}
    for seed in seeds:
        seeded = {**base, "run.seed": seed}
        clean[seed] = run_cell(f"clean-s{seed}", seeded, args.nodes, None, out)
        for fraction in fractions:
            attackers = set(range(round(fraction * args.nodes)))
            for attack in attacks:
                for defence in defences:
                    name = f"{attack}-{int(100 * fraction)}pct-{defence}-s{seed}"
                    cells[(fraction, attack, defence, seed)] = run_cell(
                        name, {**seeded, **DEFENCES[defence]}, args.nodes, attack_hook(attack, attackers), out
                    )
    config = load_config(base)
    clean_mean = float(np.mean([clean[s]["final"] for s in seeds]))
    print()
    print(
        f"{args.nodes} clients, {args.rounds} rounds, model {config.model.source}, seeds {args.seeds}; "
        f"clean run (defaults): mean final accuracy {clean_mean:.4f} "
        f"({', '.join(format(clean[s]['final'], '.4f') for s in seeds)})"
    )
    head = f"{'attack':<15} {'attackers':>9} " + " ".join(f"{d:>9}" for d in defences)
    print(head + "\n" + "-" * len(head))
    for fraction in fractions:
        for attack in attacks:
            means = [float(np.mean([cells[(fraction, attack, d, s)]["final"] for s in seeds])) for d in defences]
            print(f"{attack:<15} {f'{int(100 * fraction)}%':>9} " + " ".join(f"{m:>9.4f}" for m in means))
    print("(mean final held-out accuracy over the seeds; a run that stopped early shows its last evaluation)")
    print()
    print("points below the clean run, mean over the seeds:")
    print(head + "\n" + "-" * len(head))
    for fraction in fractions:
        for attack in attacks:
            gaps = [
                100 * float(np.mean([clean[s]["final"] - cells[(fraction, attack, d, s)]["final"] for s in seeds]))
                for d in defences
            ]
            print(f"{attack:<15} {f'{int(100 * fraction)}%':>9} " + " ".join(f"{g:>+9.1f}" for g in gaps))
    (out / "robust.json").write_text(
        json.dumps(
            {
                "nodes": args.nodes,
                "rounds": args.rounds,
                "seeds": seeds,
                "overrides": args.overrides,
                "clean": {str(s): c for s, c in clean.items()},
                "cells": [
                    {"fraction": f, "attack": a, "defence": d, "seed": s, **c} for (f, a, d, s), c in cells.items()
                ],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
