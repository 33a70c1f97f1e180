"""The server's cost of a large fleet: strategy time per round and peak memory at 100 and 1000 nodes.

Two cases, each at 100 and 1000 virtual nodes: the same sampled FRACTION (so ten times
the sampled nodes at 1000) and the same sampled NUMBER (so a tenth of the fraction).
Linear in the sampled nodes means a ratio near 10 in the first case and near 1 in the
second; a ratio that follows the node count instead is a scaling hotspot.

Each row runs the same seeded job twice in this process on the in-process grid:

1. **record**: the real ClientApp answers every message; each reply is kept as Flower's
   protobuf bytes, by node, message type and round.
2. **replay**: the same job again, every node answering from the recorded bytes (decoded
   per message, as a SuperLink's grid does). The replay checks it reproduces the recorded
   run's metrics, so the strategy did exactly the same work, with no client work at all.

Measured in the replay: the strategy's time per round (the round's time less the time
inside the grid), of which the server model's time (split training, pool training,
held-out evaluation) and the rest, bookkeeping; the start-up (node discovery, fleet
plan, round-0 evaluation); and the peak of Python and numpy memory that tracemalloc
traces from the strategy's start (torch's own buffers are not traced: they are the
same at any fleet size). Times are CPU seconds of the strategy's thread (one torch
thread on the server), so other work on a shared machine does not inflate them; the
round's wall time is shown beside them.

A second table times one sweep of the message extractor of Flower's simulation engine
(flwr 1.41 ``vce_api.add_messages_to_queue``: ``get_message_ins`` for every node, every
0.1 s, each call scanning every stored message) with N nodes and M messages in flight:
what ``flwr run`` pays per 0.1 s at 1000 virtual nodes, independent of this app.

    python bench/scale.py [--rounds 3] [--fraction 0.05] [--number 20] [key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage

from flower_app.apps.client_app import app as client_app
from flower_app.apps.runner import InProcessGrid
from flower_app.config.load import load_config
from flower_app.config.overrides import overrides_of
from flower_app.config.strategy_settings import split_settings
from flower_app.data.setup import build
from flower_app.modes.server_model import SplitServer
from strategies.persist.rundir import RunDirectory
from strategies.strategy import SplitPrefixStrategy
from strategies.wire.records import to_record

Key = tuple[int, str, str]  # node id, message type, round (group id)


class RecordingGrid(InProcessGrid):
    """The in-process grid that keeps every reply as protobuf bytes."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.recorded: dict[Key, bytes] = {}

    def _deliver(self, node: int, message: Message) -> Message | None:
        reply = super()._deliver(node, message)
        if reply is not None:
            key = (node, message.metadata.message_type, message.metadata.group_id)
            self.recorded[key] = message_to_proto(reply).SerializeToString()
        return reply


def clock() -> tuple[float, float]:
    """(wall s, CPU s of this thread)."""
    return time.perf_counter(), time.thread_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    now = clock()
    return now[0] - start[0], now[1] - start[1]


class ReplayGrid(InProcessGrid):
    """Every node answers from recorded bytes; the CPU time spent in the grid is counted by round."""

    def __init__(self, recorded: Mapping[Key, bytes], *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.recorded = recorded
        self.grid_s: dict[str, float] = {}

    def _deliver(self, node: int, message: Message) -> Message | None:
        data = self.recorded[(node, message.metadata.message_type, message.metadata.group_id)]
        reply = message_from_proto(ProtoMessage.FromString(data))
        reply.metadata.__dict__["_reply_to_message_id"] = message.metadata.message_id
        return reply

    def send_and_receive(self, messages, *, timeout=None):
        outgoing = list(messages)
        start = clock()
        replies = super().send_and_receive(outgoing, timeout=timeout)
        group = outgoing[0].metadata.group_id if outgoing else "-"
        self.grid_s[group] = self.grid_s.get(group, 0.0) + since(start)[1]
        return replies


class TimedServer(SplitServer):
    """The server's half, with the CPU time of its training and evaluation counted."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.model_s = 0.0

    def _timed(self, method, *args, **kwargs):
        start = clock()
        try:
            return method(*args, **kwargs)
        finally:
            self.model_s += since(start)[1]

    def train_split(self, *args, **kwargs):
        return self._timed(super().train_split, *args, **kwargs)

    def score_split(self, *args, **kwargs):
        return self._timed(super().score_split, *args, **kwargs)

    def train_pool(self, *args, **kwargs):
        return self._timed(super().train_pool, *args, **kwargs)

    def evaluate(self, *args):
        return self._timed(super().evaluate, *args)


class TimedStrategy(SplitPrefixStrategy):
    """The strategy, with each round's wall and CPU time and the server model's share kept."""

    def __init__(self, server: TimedServer, *args: Any):
        super().__init__(server, *args)
        self.rounds: list[tuple[float, float, float]] = []  # (wall s, CPU s, server model CPU s)

    def run_round(self, ctx, origin, settle=None):
        server = self.server_model
        assert isinstance(server, TimedServer)
        start, model_before = clock(), server.model_s
        outcome = super().run_round(ctx, origin, settle)
        self.rounds.append((*since(start), server.model_s - model_before))
        return outcome


def run_strategy(run_config: Mapping[str, Any], grid: InProcessGrid, trace: bool) -> dict[str, Any]:
    """What ``server_app.run_server`` does, with the timed strategy; its figures and records."""
    config = load_config(run_config)
    settings = split_settings(config)
    server = TimedServer(build(config), settings)
    run_dir = RunDirectory(config.run.run_dir)
    strategy = TimedStrategy(server, settings, run_dir)
    initial = to_record(server.initial_state())
    if trace:
        tracemalloc.start()
    start = clock()
    strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=config.run.num_rounds,
        timeout=config.strategy.timeout_s,
        evaluate_fn=server.evaluate_fn(config.eval.every, config.run.num_rounds),
    )
    total = since(start)[1]
    peak = 0
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    records = [{k: v for k, v in r.items() if k != "wall-s"} for r in run_dir.rounds()]
    return {"strategy": strategy, "total-cpu-s": total, "peak-bytes": peak, "records": records}


def measure(nodes: int, fraction: float, base: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """Record the job with real clients, then replay it twice with none: timed, then traced
    (tracemalloc slows every allocation, so times come from the untraced replay)."""
    run_config = {**base, "strategy.fraction-train": fraction}
    recording = RecordingGrid(client_app, nodes, run_config)
    recorded = run_strategy({**run_config, "run.run-dir": str(out / f"record-{nodes}-{fraction}")}, recording, False)
    replays = []
    for trace in (False, True):
        replay_config = {**run_config, "run.run-dir": str(out / f"replay-{nodes}-{fraction}-{trace}")}
        grid = ReplayGrid(recording.recorded, client_app, nodes, replay_config)
        replayed = run_strategy(replay_config, grid, trace)
        if replayed["records"] != recorded["records"]:
            raise RuntimeError(f"the replay at {nodes} nodes did not reproduce the recorded run")
        replays.append((replayed, grid))
    (timed, grid), (traced, _) = replays
    rounds = timed["strategy"].rounds
    cpu = [c - grid.grid_s.get(str(i), 0.0) for i, (_, c, _) in enumerate(rounds, start=1)]
    models = [m for _, _, m in rounds]
    return {
        "nodes": nodes,
        "fraction": fraction,
        "sampled": statistics.median(len(r["clients"]) for r in timed["records"]),
        "startup-s": timed["total-cpu-s"] - sum(c for _, c, _ in rounds) - grid.grid_s.get("0", 0.0),
        "round-s": statistics.median(cpu),
        "model-s": statistics.median(models),
        "bookkeeping-s": statistics.median(c - m for c, m in zip(cpu, models, strict=True)),
        "wall-s": statistics.median(w for w, _, _ in rounds),
        "peak-mib": traced["peak-bytes"] / 2**20,
    }


def table(cases: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str:
    columns = (  # (header, key, scale, format)
        ("start-up CPU s", "startup-s", 1.0, ".3f"),
        ("CPU ms/round", "round-s", 1e3, ".1f"),
        ("model ms", "model-s", 1e3, ".1f"),
        ("bookkeeping ms", "bookkeeping-s", 1e3, ".1f"),
        ("wall ms/round", "wall-s", 1e3, ".1f"),
        ("peak MiB", "peak-mib", 1.0, ".2f"),
    )
    head = f"{'case':<16} {'nodes':>6} {'fraction':>8} {'sampled':>7} " + " ".join(
        f"{h:>{len(h)}}" for h, *_ in columns
    )
    lines = [head, "-" * len(head)]
    for name, small, large in cases:
        for r in (small, large):
            cells = " ".join(f"{r[k] * x:>{len(h)}{f}}" for h, k, x, f in columns)
            lines.append(f"{name:<16} {r['nodes']:>6d} {r['fraction']:>8.3f} {r['sampled']:>7.0f} {cells}")
        ratios = " ".join(f"{large[k] / small[k]:>{len(h)}.2f}" for h, k, _, _ in columns)
        lines.append(
            f"{'  ratio 1000/100':<16} {large['nodes'] / small['nodes']:>6.1f} {'':>8} "
            f"{large['sampled'] / small['sampled']:>7.1f} {ratios}"
        )
    return "\n".join(lines)


def engine_sweep_s(nodes: int, in_flight: int) -> float:
    """One steady-state sweep of Flower's message extractor: ``get_message_ins`` for every node,
    with ``in_flight`` messages delivered but not yet answered in the in-memory LinkState."""
    from flwr.app import ConfigRecord, RecordDict
    from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation import NoOpFederationManager

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    node_ids = list(_register_nodes(nodes, factory))
    state = factory.state()
    run_id = state.create_run(None, None, None, {}, NOOP_FEDERATION_ID, None, None, "serverapp")
    for node in node_ids[:in_flight]:
        message = Message(RecordDict({"config": ConfigRecord({})}), node, "query", group_id="0")
        message.metadata.__dict__["_message_id"] = message.object_id
        message.metadata.__dict__["_run_id"] = run_id
        if state.store_message_ins(message) is None:
            raise RuntimeError("the LinkState refused a message")
    for node in node_ids:  # the first sweep delivers; the messages stay until their replies are pulled
        state.get_message_ins(node_id=node, limit=1)
    times = []
    for _ in range(3):
        tick = time.thread_time()
        for node in node_ids:
            state.get_message_ins(node_id=node, limit=1)
        times.append(time.thread_time() - tick)
    return min(times)


def engine_table(number: int) -> str:
    head = f"{'nodes':>6} {'messages in flight':>18} {'one sweep CPU ms':>16}"
    lines = [head, "-" * len(head)]
    for nodes, in_flight in ((100, 0), (100, number), (100, 100), (1000, 0), (1000, number), (1000, 1000)):
        lines.append(f"{nodes:>6d} {in_flight:>18d} {1e3 * engine_sweep_s(nodes, in_flight):>16.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (default: 3)")
    parser.add_argument("--fraction", type=float, default=0.05, help="the same-fraction case (default: 0.05)")
    parser.add_argument("--number", type=int, default=20, help="the same-number case (default: 20)")
    parser.add_argument("--out", default="", help="parent of the run directories (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. strategy.policy=threshold")
    args = parser.parse_args(argv)
    # One torch thread on the server: timings on a shared 2-core machine stay stable.
    base: dict[str, Any] = {
        "config": "scale",
        "run.num-rounds": args.rounds,
        "run.server-threads": 1,
        **overrides_of(parser, args.overrides),
    }
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        measure(10, 1.0, {**base, "run.num-rounds": 1}, out / "warm-up")  # imports, first torch calls, caches
        cases = [
            (
                f"fraction {args.fraction:g}",
                measure(100, args.fraction, base, out),
                measure(1000, args.fraction, base, out),
            ),
            (
                f"number {args.number}",
                measure(100, args.number / 100, base, out),
                measure(1000, args.number / 1000, base, out),
            ),
        ]
    config = load_config(base)
    print(
        f"\nthe strategy in the replay (no client work), median of {args.rounds} rounds; model "
        f"{config.model.source}, data {config.data.source}, policy {config.strategy.policy}, "
        f"{config.train.steps_per_round} steps x batch {config.train.batch_size}, overrides "
        f"{' '.join(args.overrides) or '(none)'}"
    )
    print(table(cases))
    print("\nFlower's simulation engine (flwr 1.41 vce_api): one extractor sweep, repeated every 0.1 s")
    print(engine_table(args.number))


if __name__ == "__main__":
    main()
