"""Split prefix-tuning strategy: two message exchanges a round, volume-weighted average.

A round, for every sampled client (in order of partition id):

1. ``train.split_forward``: the server sends the global lower-layer prefix and
   a seed; the client draws its batch plan from the seed, runs its lower
   layers on every planned minibatch and replies with all boundary
   activations (plus masks and labels) at once.
2. The server steps through those minibatches with the upper-layer prefix
   and head and keeps one boundary gradient per minibatch. ``sequential``
   (default): one server copy trains through the clients in partition order,
   so the head takes every client's steps in a row (SplitFed-V2 style);
   ``parallel``: a copy per client, averaged like the client prefixes
   (SplitFed-V1 style).
3. ``train.split_backward``: the server sends the gradients back; the client
   replays its forward and applies them in order, then replies with its
   updated prefix and ``num-examples``.
4. Every contribution ``(tensors, num-examples)`` (client prefixes and the
   server's per-client upper halves) enters one data-volume weighted average.

Flower's ``Strategy.start`` runs one train and one evaluate exchange a round;
a split round has two train exchanges, so this class runs its own loop.
Replies are validated before they touch the average; a bad or missing reply
is dropped with its reason logged, and a round with fewer than
``min_clients`` contributions stops the run cleanly, keeping the checkpoint
of the last completed round.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies import wire
from strategies.aggregation import Contribution, aggregate
from strategies.interfaces import ServerModel
from strategies.requirements import (Failure, FailureCause, TrainingRequirement, count_causes,
                                     failure_from_config, is_failure_config, react_to_failures,
                                     requirement_to_config)
from strategies.records import content_bytes, from_record, to_record
from strategies.rundir import RunDirectory
from strategies.validation import judge, spec_of


@dataclass(frozen=True)
class ClientInfo:
    """What a client told the server in its ``query`` reply."""

    node_id: int
    partition_id: int
    num_available: int


def round_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed of one client's batch plan in one round, independent of node ids and reply order."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0] % (2**31))


def plan_batches(activations: Mapping[str, np.ndarray], steps: int) -> tuple[list[dict], list[str]]:
    """Group a forward reply into minibatches; list what is wrong with it."""
    problems, batches = [], []
    expected = {f(i) for i in range(steps) for f in (wire.activation_key, wire.mask_key, wire.label_key)}
    if set(activations) != expected:
        missing, extra = sorted(expected - set(activations)), sorted(set(activations) - expected)
        return [], [f"activations record: missing {missing[:3]}, unexpected {extra[:3]}"]
    width = None
    for i in range(steps):
        act, mask, label = (activations[f(i)] for f in (wire.activation_key, wire.mask_key, wire.label_key))
        if act.ndim != 3 or mask.shape != act.shape[:2] or label.shape != act.shape[:1]:
            problems.append(f"minibatch {i}: shapes act {act.shape}, mask {mask.shape}, label {label.shape}")
        elif not np.isfinite(act).all():
            problems.append(f"minibatch {i}: {int((~np.isfinite(act)).sum())} non-finite activations")
        elif width is not None and act.shape[2] != width:
            problems.append(f"minibatch {i}: hidden size {act.shape[2]} != {width}")
        width = act.shape[2] if act.ndim == 3 else width
        batches.append({"act": act, "mask": mask, "label": label})
    return batches, problems


class SplitPrefixStrategy(Strategy):
    """Federated split prefix-tuning with data-volume weighted aggregation.

    Parameters
    ----------
    server_model : ServerModel
        The server's half of the model (upper layers, head, held-out evaluation).
    seed : int
        Seed of the batch plans (combined with round and partition id).
    steps : int (default: 10)
        Minibatches each client trains per round.
    batch_size : int (default: 16)
        Samples per minibatch.
    lr : float (default: 0.01)
        Client-side learning rate of the prefix.
    activation_dtype : str (default: "float32")
        Dtype of activations and gradients on the wire ("float32" or "float16").
    min_clients : int (default: 2)
        Fewest valid contributions a round needs; fewer stops the run cleanly.
    fraction_train : float (default: 1.0)
        Fraction of known clients sampled each round (at least ``min_clients``).
    timeout_s : float (default: 600)
        Seconds to wait for the replies of one exchange.
    wait_for_nodes_s : float (default: 120)
        Seconds to wait at start for ``min_clients`` nodes to connect.
    server_side : str (default: "sequential")
        ``"sequential"`` or ``"parallel"`` training of the server's tensors (see above).
    eval_every : int (default: 1)
        Evaluate the global tensors every N rounds (and after the last).
    run_dir : RunDirectory | None (default: None)
        Where metrics, checkpoints and the summary go.
    requirement : TrainingRequirement | None (default: None)
        Sent in every train message; clients that cannot meet it reply with a failure cause.
    max_strikes : int (default: 3)
        Consecutive errors, timeouts or invalid replies after which a client is excluded.

    Failures are counted by cause each round and answered by
    :func:`strategies.requirements.react_to_failures`: with split as the only mode,
    insufficient samples or compute exclude the client; a result below the
    threshold only leaves this round's average; transient faults exclude the client
    after ``max_strikes`` rounds in a row.
    """

    def __init__(self, server_model: ServerModel, *, seed: int, steps: int = 10, batch_size: int = 16,
                 lr: float = 0.01, activation_dtype: str = "float32", min_clients: int = 2,
                 fraction_train: float = 1.0, timeout_s: float = 600.0, wait_for_nodes_s: float = 120.0,
                 server_side: str = "sequential", eval_every: int = 1, run_dir: RunDirectory | None = None,
                 requirement: TrainingRequirement | None = None, max_strikes: int = 3):
        if server_side not in ("sequential", "parallel"):
            raise ValueError(f"server_side='{server_side}' must be 'sequential' or 'parallel'")
        self.server_side = server_side
        self.server_model = server_model
        self.seed, self.steps, self.batch_size, self.lr = seed, steps, batch_size, lr
        self.activation_dtype = activation_dtype
        self.min_clients, self.fraction_train = min_clients, fraction_train
        self.timeout_s, self.wait_for_nodes_s, self.eval_every = timeout_s, wait_for_nodes_s, eval_every
        self.run_dir = run_dir
        self.state: dict[str, np.ndarray] = server_model.initial_state()
        self.requirement = requirement or TrainingRequirement()
        self.max_strikes = max_strikes
        self.clients: dict[int, ClientInfo] = {}
        self.dropped: dict[int, str] = {}
        self.failures: dict[int, Failure] = {}
        self.strikes: dict[int, int] = {}   # by partition id
        self.excluded: set[int] = set()     # partition ids

    def restore(self, state: Mapping) -> None:
        """Strategy state from a checkpoint (JSON turned int keys into strings)."""
        self.strikes = {int(k): int(v) for k, v in state.get("strikes", {}).items()}
        self.excluded = {int(p) for p in state.get("excluded", [])}

    def _state(self, server_round: int) -> dict:
        return {"round": server_round, "strikes": self.strikes, "excluded": sorted(self.excluded)}

    def summary(self) -> None:
        log(INFO, "SplitPrefixStrategy: %d steps x batch %d per client per round, lr %g, %s on the wire, "
            "min %d clients", self.steps, self.batch_size, self.lr, self.activation_dtype, self.min_clients)

    # --- the round loop ---------------------------------------------------------------------

    def start(self, grid: Grid, num_rounds: int, first_round: int = 1) -> dict:
        """Run rounds ``first_round..num_rounds``; return the summary."""
        self.summary()
        started, history = time.time(), []
        status = "completed"
        self._discover(grid)
        for server_round in range(first_round, num_rounds + 1):
            record = self.run_round(grid, server_round, num_rounds)
            if record is None:
                status = f"stopped at round {server_round}: fewer than {self.min_clients} valid contributions"
                log(ERROR, "%s; the checkpoint of round %d is kept", status, server_round - 1)
                break
            history.append(record)
        return self._finish(status, history, time.time() - started)

    def run_round(self, grid: Grid, server_round: int, num_rounds: int) -> dict | None:
        tick = time.time()
        self.dropped, self.failures = {}, {}
        sampled = self._sample(server_round)
        forward = self._exchange(grid, self.configure_train(server_round, to_record(self.state),
                                                              ConfigRecord(), grid, nodes=sampled))
        gradients, server_parts, losses = self._train_server_side(server_round, forward)
        backward = self._exchange(grid, self._configure_backward(server_round, gradients))
        accepted = self._collect(backward)
        self._react(accepted)
        if len(accepted) < self.min_clients:
            self._log_dropped(server_round)
            return None
        self.state = aggregate(list(accepted.values()) + self._server_contributions(accepted, server_parts),
                               self.state)
        record = self._round_record(server_round, num_rounds, forward, backward, losses, tick)
        if self.run_dir is not None:
            self.run_dir.log_round(record)
            self.run_dir.checkpoint(server_round, self.state, self._state(server_round))
        return record

    # --- Strategy interface -----------------------------------------------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid, nodes: Sequence[ClientInfo] = ()) -> Iterable[Message]:
        """``train.split_forward`` messages: lower-layer prefix, seed and plan size per client."""
        client_part = ArrayRecord({k: arrays[k] for k in self.server_model.client_keys})
        return [self._message(info, wire.SPLIT_FORWARD, server_round,
                              {wire.ARRAYS: client_part, wire.CONFIG: self._plan_config(server_round, info)})
                for info in nodes]

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The current global tensors.

        A split round aggregates in :meth:`run_round`, after its second exchange
        (client prefixes and server halves together); this method only exposes
        the result through Flower's Strategy interface.
        """
        return to_record(self.state), None

    def configure_evaluate(self, server_round, arrays, config, grid) -> Iterable[Message]:
        return []  # evaluation runs on the server's held-out split

    def aggregate_evaluate(self, server_round, replies) -> MetricRecord | None:
        return None

    # --- steps of a round -------------------------------------------------------------------

    def _discover(self, grid: Grid) -> None:
        """Ask every connected node who it is (partition id, data volume)."""
        deadline = time.time() + self.wait_for_nodes_s
        nodes = list(grid.get_node_ids())
        while len(nodes) < self.min_clients and time.time() < deadline:
            time.sleep(1.0)
            nodes = list(grid.get_node_ids())
        if len(nodes) < self.min_clients:
            raise RuntimeError(f"only {len(nodes)} nodes connected after {self.wait_for_nodes_s:.0f} s; "
                               f"strategy.min-clients is {self.min_clients}")
        messages = [Message(RecordDict({wire.CONFIG: ConfigRecord({})}), node, wire.QUERY, group_id="0")
                    for node in nodes]
        for reply in self._exchange(grid, messages).values():
            info = self._client_info(reply)
            if info is not None:
                self.clients[info.node_id] = info
        log(INFO, "%d of %d nodes answered the query", len(self.clients), len(nodes))

    def _client_info(self, reply: Message) -> ClientInfo | None:
        node = reply.metadata.src_node_id
        try:
            profile = reply.content.config_records[wire.PROFILE]
            info = ClientInfo(node, int(profile[wire.PARTITION_ID]), int(profile[wire.NUM_AVAILABLE]))
        except Exception as err:  # a malformed query reply: leave the node out, say why
            log(WARNING, "node %d: unusable query reply (%s)", node, _reason(reply, err))
            return None
        return info if info.num_available > 0 else None

    def _sample(self, server_round: int) -> list[ClientInfo]:
        known = sorted((c for c in self.clients.values() if c.partition_id not in self.excluded),
                       key=lambda c: c.partition_id)
        count = max(self.min_clients, int(np.ceil(self.fraction_train * len(known))))
        if count >= len(known):
            return known
        rng = np.random.default_rng([self.seed, server_round])
        chosen = rng.choice(len(known), size=count, replace=False)
        return [known[i] for i in sorted(chosen)]

    def _plan_config(self, server_round: int, info: ClientInfo) -> ConfigRecord:
        return ConfigRecord({**requirement_to_config(self.requirement), wire.SERVER_ROUND: server_round,
                             wire.SEED: round_seed(self.seed, server_round, info.partition_id),
                             wire.STEPS: self.steps, wire.BATCH_SIZE: self.batch_size, wire.LR: self.lr,
                             wire.ACTIVATION_DTYPE: self.activation_dtype})

    def _message(self, info: ClientInfo, message_type: str, server_round: int,
                 records: Mapping[str, ArrayRecord | ConfigRecord]) -> Message:
        return Message(RecordDict(dict(records)), info.node_id, message_type, group_id=str(server_round))

    def _exchange(self, grid: Grid, messages: Iterable[Message]) -> dict[int, Message]:
        """Send, wait up to the timeout, and return the good replies by node id."""
        messages = list(messages)
        self._sent = {m.metadata.dst_node_id: m for m in messages}
        replies = {}
        for reply in grid.send_and_receive(messages, timeout=self.timeout_s):
            node = reply.metadata.src_node_id
            if reply.has_error():
                self._drop(node, FailureCause.CLIENT_ERROR, f"error reply: {reply.error.reason}")
            else:
                replies[node] = reply
        for node in self._sent:
            if node not in replies and node not in self.dropped:
                self._drop(node, FailureCause.TIMEOUT, f"no reply within {self.timeout_s:.0f} s")
        self._bytes_down = getattr(self, "_bytes_down", {})
        for node, message in self._sent.items():
            self._bytes_down[node] = self._bytes_down.get(node, 0) + content_bytes(message)
        return replies

    def _train_server_side(self, server_round: int, forward: Mapping[int, Message],
                           ) -> tuple[dict[int, list[np.ndarray]], dict[int, Contribution], dict[int, float]]:
        gradients, server_parts, losses = {}, {}, {}
        server_state = {k: self.state[k] for k in self.server_model.server_keys}
        self._sequential_state = server_state
        for info in sorted((self.clients[n] for n in forward), key=lambda c: c.partition_id):
            reply = forward[info.node_id]
            config = reply.content.config_records.get(wire.CONFIG)
            if config is not None and is_failure_config(config):
                self._report_failure(info, config)
                continue
            try:
                batches, problems = plan_batches(from_record(reply.content.array_records[wire.ACTIVATIONS]),
                                                 self.steps)
                if problems:
                    raise ValueError("; ".join(problems))
                volume = int(reply.content.metric_records[wire.METRICS][wire.NUM_EXAMPLES])
                trained, grads, loss = self.server_model.train_split(server_state, batches)
            except Exception as err:  # one client's bad activations must not end the round
                self._drop(info.node_id, FailureCause.INVALID_REPLY, f"forward reply rejected: {_reason(reply, err)}")
                continue
            gradients[info.node_id] = grads
            server_parts[info.node_id] = Contribution(trained, volume, f"server half of client {info.partition_id}")
            losses[info.node_id] = loss
            if self.server_side == "sequential":
                server_state = self._sequential_state = trained
        return gradients, server_parts, losses

    def _server_contributions(self, accepted: Mapping[int, Contribution],
                              server_parts: Mapping[int, Contribution]) -> list[Contribution]:
        """The server's tensors as contributions: one sequential result, or one per client.

        A sequential server has already taken the steps of a client whose backward
        reply was then rejected; its activations had passed validation, so the
        steps stand, and the result carries the volume of the accepted clients.
        """
        if self.server_side == "parallel":
            return [server_parts[node] for node in accepted]
        volume = sum(c.num_examples for c in accepted.values())
        return [Contribution(self._sequential_state, volume, "server (sequential split)")]

    def _configure_backward(self, server_round: int, gradients: Mapping[int, list[np.ndarray]]) -> list[Message]:
        client_part = to_record({k: self.state[k] for k in self.server_model.client_keys})
        messages = []
        for node, grads in gradients.items():
            info = self.clients[node]
            grad_record = to_record({wire.gradient_key(i): g for i, g in enumerate(grads)})
            messages.append(self._message(info, wire.SPLIT_BACKWARD, server_round,
                                          {wire.ARRAYS: client_part, wire.GRADIENTS: grad_record,
                                           wire.CONFIG: self._plan_config(server_round, info)}))
        return messages

    def _collect(self, backward: Mapping[int, Message]) -> dict[int, Contribution]:
        """Validated client contributions by node id, in partition order."""
        expected = spec_of({k: self.state[k] for k in self.server_model.client_keys})
        contributions = {}
        for info in sorted((self.clients[n] for n in backward), key=lambda c: c.partition_id):
            reply = backward[info.node_id]
            try:
                arrays = from_record(reply.content.array_records[wire.ARRAYS])
                volume = reply.content.metric_records[wire.METRICS][wire.NUM_EXAMPLES]
            except Exception as err:
                self._drop(info.node_id, FailureCause.INVALID_REPLY, f"backward reply rejected: {_reason(reply, err)}")
                continue
            ceiling = min(info.num_available, self.steps * self.batch_size)
            verdict = judge(arrays, expected, volume, ceiling)
            if not verdict.ok:
                self._drop(info.node_id, FailureCause.INVALID_REPLY,
                           "backward reply rejected: " + "; ".join(verdict.reasons))
                continue
            contributions[info.node_id] = Contribution(arrays, int(volume), f"client {info.partition_id}")
        return contributions

    # --- failures -----------------------------------------------------------------------------

    def _drop(self, node: int, cause: FailureCause, why: str) -> None:
        self.dropped[node] = why
        self.failures[node] = Failure(cause, detail=why)

    def _report_failure(self, info: ClientInfo, config: ConfigRecord) -> None:
        try:
            failure = failure_from_config(dict(config))
        except ValueError as err:
            self._drop(info.node_id, FailureCause.INVALID_REPLY, f"unreadable failure reply: {err}")
            return
        self.failures[info.node_id] = failure
        self.dropped[info.node_id] = f"{failure.cause}: {failure.detail}"

    def _react(self, accepted: Mapping[int, Contribution]) -> None:
        """Apply the failure policy: exclude clients that cannot or keep failing to train."""
        by_partition = {self.clients[n].partition_id: f for n, f in self.failures.items() if n in self.clients}
        reactions, self.strikes = react_to_failures(
            by_partition, {p: "split" for p in by_partition}, ("split",), self.strikes,
            succeeded=[self.clients[n].partition_id for n in accepted], max_strikes=self.max_strikes)
        for partition_id, reaction in sorted(reactions.items()):
            if reaction.excluded:
                self.excluded.add(partition_id)
                log(WARNING, "client %d excluded from later rounds (%s)", partition_id, reaction.cause)

    # --- records ----------------------------------------------------------------------------

    def _round_record(self, server_round: int, num_rounds: int, forward, backward, losses, tick) -> dict:
        up = {n: content_bytes(r) for n, r in forward.items()}
        for n, r in backward.items():
            up[n] = up.get(n, 0) + content_bytes(r)
        down, self._bytes_down = self._bytes_down, {}
        clients = {str(self.clients[n].partition_id): {"bytes-up": up.get(n, 0), "bytes-down": down.get(n, 0),
                                                        "mode": "split", "train-loss": losses.get(n)}
                   for n in sorted(set(up) | set(down)) if n in self.clients}
        record = {"round": server_round, "train-loss": float(np.mean(list(losses.values()))) if losses else None,
                  "bytes-up": sum(up.values()), "bytes-down": sum(down.values()), "clients": clients,
                  "dropped": {str(self.clients[n].partition_id) if n in self.clients else str(n): why
                              for n, why in self.dropped.items()},
                  "failures": count_causes(self.failures.values()), "excluded": sorted(self.excluded),
                  "wall-s": round(time.time() - tick, 3)}
        if server_round % self.eval_every == 0 or server_round == num_rounds:
            record.update({f"eval-{k}" if k != wire.ACCURACY else k: v
                           for k, v in self.server_model.evaluate(self.state).items()})
        self._log_dropped(server_round)
        log(INFO, "[round %d/%d] train-loss %.4f  accuracy %s  up %.2f MB  down %.2f MB  %d dropped  %.1f s",
            server_round, num_rounds, record["train-loss"] or float("nan"),
            f"{record['accuracy']:.4f}" if "accuracy" in record else "-", record["bytes-up"] / 1e6,
            record["bytes-down"] / 1e6, len(self.dropped), record["wall-s"])
        return record

    def _log_dropped(self, server_round: int) -> None:
        for node, why in sorted(self.dropped.items()):
            log(WARNING, "round %d: node %d dropped: %s", server_round, node, why)

    def _finish(self, status: str, history: list[dict], wall_s: float) -> dict:
        if self.run_dir is not None:  # a resumed run reports the rounds before the restart too
            history = self.run_dir.rounds()
        evaluated = [r for r in history if "accuracy" in r]
        summary = {"status": status, "rounds": len(history), "wall-s": round(wall_s, 3),
                   "final-accuracy": evaluated[-1]["accuracy"] if evaluated else None,
                   "final-eval-loss": evaluated[-1]["eval-loss"] if evaluated else None,
                   "bytes-up": sum(r["bytes-up"] for r in history),
                   "bytes-down": sum(r["bytes-down"] for r in history)}
        if self.run_dir is not None:
            self.run_dir.write_summary(summary)
        log(INFO, "run %s: %s", status, summary)
        return summary


def _reason(reply: Message, err: Exception) -> str:
    return f"{type(err).__name__}: {err}"
