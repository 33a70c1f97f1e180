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

Clients need not all train in split mode. A policy (:mod:`strategies.fleet`)
gives each client a group and a mode from its device profile, reported in its
``query`` reply; in the first exchange of a round a ``local`` client gets
``train.local`` (it trains the lower prefix through an emulator of the upper
layers and replies with the prefix), and a ``centralized`` client that has not
yet uploaded gets ``train.upload`` (its samples or lower-layer activations, as
many as its energy budget pays for). The server trains on the pool of uploads
every round, as a share of ``steps`` minibatches per centralized client, and
that result enters the same average, weighted by the samples it drew.
Every round's simulated time and energy per client (:mod:`strategies.costmodel`)
go to ``ledger.jsonl`` and the round's metrics, beside the real wall time.

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

from strategies import fleet, wire
from strategies.aggregation import Contribution, aggregate
from strategies.costmodel import MODES, EnergyLedger, Workload, round_cost
from strategies.devices import PROFILE_KEYS, DeviceProfile, from_config
from strategies.grouping import ModeAssignment
from strategies.interfaces import ServerModel
from strategies.requirements import (Failure, FailureCause, TrainingRequirement, count_causes,
                                     failure_from_config, is_failure_config, react_to_failures,
                                     requirement_to_config)
from strategies.records import content_bytes, from_record, to_record
from strategies.rundir import RunDirectory
from strategies.validation import judge, spec_of, validate_upload
from strategies.workload import pool_server_flops

POOL_ID = 2**31 - 1  # seeds the server's pool training apart from every partition


@dataclass(frozen=True)
class ClientInfo:
    """What a client told the server in its ``query`` reply."""

    node_id: int
    partition_id: int
    num_available: int
    profile: DeviceProfile


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
    """Federated split prefix-tuning over a fleet of unequal clients, volume-weighted aggregation.

    Parameters
    ----------
    server_model : ServerModel
        The server's half of the model (upper layers, head, held-out evaluation).
    seed : int
        Seed of the batch plans (combined with round and partition id).
    steps : int (default: 10)
        Minibatches each client trains per round (a local-mode group: times its local epochs).
    batch_size : int (default: 16)
        Samples per minibatch.
    lr : float (default: 0.01)
        Client-side learning rate of the prefix.
    head_lr : float (default: 0.01)
        Learning rate of a local-mode emulator's head.
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
        Where metrics, checkpoints, groups, the ledger and the summary go.
    requirement : TrainingRequirement | None (default: None)
        Sent in every train message; clients that cannot meet it reply with a failure cause.
    max_strikes : int (default: 3)
        Consecutive errors, timeouts or invalid replies after which a client is excluded.
    policy : fleet.Policy | None (default: None)
        How clients get their group and mode; None: everyone in split mode.
    emulator_layers : int (default: 1)
        Upper layers a local-mode emulator keeps (0: all, the full model: FedAvg).
    upload_kind : str (default: "activations")
        What a centralized client uploads: ``"activations"`` or ``"samples"``.
    local_eval_size : int (default: 32)
        Samples a local-mode client holds back to check the performance threshold.
    upload_rows : int (default: 0)
        Most samples a centralized client uploads (0: one round's plan, ``steps * batch_size``).

    Failures are counted by cause each round and answered by
    :func:`strategies.requirements.react_to_failures` among the policy's modes:
    insufficient compute moves a client to a cheaper mode, insufficient samples
    to centralized training; with no such mode left the client is excluded. A
    result below the threshold only leaves this round's average; transient
    faults exclude the client after ``max_strikes`` rounds in a row.
    """

    def __init__(self, server_model: ServerModel, *, seed: int, steps: int = 10, batch_size: int = 16,
                 lr: float = 0.01, head_lr: float = 0.01, activation_dtype: str = "float32", min_clients: int = 2,
                 fraction_train: float = 1.0, timeout_s: float = 600.0, wait_for_nodes_s: float = 120.0,
                 server_side: str = "sequential", eval_every: int = 1, run_dir: RunDirectory | None = None,
                 requirement: TrainingRequirement | None = None, max_strikes: int = 3,
                 policy: fleet.Policy | None = None, emulator_layers: int = 1, upload_kind: str = "activations",
                 local_eval_size: int = 32, upload_rows: int = 0):
        if server_side not in ("sequential", "parallel"):
            raise ValueError(f"server_side='{server_side}' must be 'sequential' or 'parallel'")
        if upload_kind not in ("activations", "samples"):
            raise ValueError(f"upload_kind='{upload_kind}' must be 'activations' or 'samples'")
        self.server_side = server_side
        self.server_model = server_model
        self.seed, self.steps, self.batch_size, self.lr, self.head_lr = seed, steps, batch_size, lr, head_lr
        self.activation_dtype = activation_dtype
        self.min_clients, self.fraction_train = min_clients, fraction_train
        self.timeout_s, self.wait_for_nodes_s, self.eval_every = timeout_s, wait_for_nodes_s, eval_every
        self.run_dir = run_dir
        self.state: dict[str, np.ndarray] = server_model.initial_state()
        self.requirement = requirement or TrainingRequirement()
        self.max_strikes = max_strikes
        self.policy = policy or fleet.Policy(batch_size=batch_size, seed=seed)
        self.emulator_layers, self.upload_kind, self.local_eval_size = emulator_layers, upload_kind, local_eval_size
        self.upload_cap = upload_rows
        self.clients: dict[int, ClientInfo] = {}
        self.dropped: dict[int, str] = {}
        self.failures: dict[int, Failure] = {}
        self.strikes: dict[int, int] = {}   # by partition id
        self.excluded: set[int] = set()     # partition ids
        self.assignments: dict[int, ModeAssignment] = {}  # by partition id
        self.workloads: dict[int, dict[str, Workload]] = {}
        self.upload_rows: dict[int, int] = {}
        self.pool: dict[int, dict[str, np.ndarray]] = {}  # centralized uploads by partition id
        self.ledger = EnergyLedger()
        self._restored_modes: dict[int, str] = {}

    def restore(self, state: Mapping) -> None:
        """Strategy state from a checkpoint (JSON turned int keys into strings)."""
        self.strikes = {int(k): int(v) for k, v in state.get("strikes", {}).items()}
        self.excluded = {int(p) for p in state.get("excluded", [])}
        self._restored_modes = {int(k): str(v) for k, v in state.get("modes", {}).items()}
        self.ledger = EnergyLedger(rows=[], clock_s=float(state.get("clock-s", 0.0)))
        if self.run_dir is not None:
            self.pool = self.run_dir.load_pool()

    def _state(self, server_round: int) -> dict:
        return {"round": server_round, "strikes": self.strikes, "excluded": sorted(self.excluded),
                "modes": {str(p): a.mode for p, a in self.assignments.items()}, "clock-s": self.ledger.clock_s}

    def summary(self) -> None:
        log(INFO, "SplitPrefixStrategy: policy %s (modes %s), %d steps x batch %d per client per round, lr %g, "
            "%s on the wire, min %d clients", self.policy.name, ",".join(self.policy.modes), self.steps,
            self.batch_size, self.lr, self.activation_dtype, self.min_clients)

    # --- the round loop ---------------------------------------------------------------------

    def start(self, grid: Grid, num_rounds: int, first_round: int = 1) -> dict:
        """Run rounds ``first_round..num_rounds``; return the summary."""
        self.summary()
        started, history = time.time(), []
        status = "completed"
        self._discover(grid)
        self._plan_fleet()
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
        self.dropped, self.failures, self._steps_done, self._local_losses = {}, {}, {}, {}
        self.assignments_at_start = dict(self.assignments)
        sampled = self._sample(server_round)
        first = self._exchange(grid, self.configure_train(server_round, to_record(self.state),
                                                            ConfigRecord(), grid, nodes=sampled))
        by_mode = {m: {n: r for n, r in first.items() if self._mode(n) == m} for m in MODES}
        gradients, server_parts, losses = self._train_server_side(server_round, by_mode["split"])
        local = self._collect(by_mode["local"], "local")
        uploaded = self._receive_uploads(by_mode["centralized"])
        pool_part, pool_members = self._train_pool(server_round, sampled)
        backward = self._exchange(grid, self._configure_backward(server_round, gradients)) if gradients else {}
        accepted = {**self._collect(backward, "split"), **local}
        self._react(accepted, pool_members)
        if len(accepted) + len(pool_members) < self.min_clients:
            self._log_dropped(server_round)
            return None
        ordered = [accepted[n] for n in sorted(accepted, key=lambda n: self.clients[n].partition_id)]
        split_accepted = {n: c for n, c in accepted.items() if n in backward}
        self.state = aggregate(ordered + self._server_contributions(split_accepted, server_parts)
                               + ([pool_part] if pool_part is not None else []), self.state)
        sim = self._simulate(server_round, first, backward, pool_members)
        record = self._round_record(server_round, num_rounds, first, backward, losses, tick, sim)
        if self.run_dir is not None:
            if uploaded:
                self.run_dir.save_pool(self.pool)
            self.run_dir.log_round(record)
            self.run_dir.log_ledger([r for r in self.ledger.rows if r["round"] == server_round])
            self.run_dir.checkpoint(server_round, self.state, self._state(server_round))
        return record

    # --- Strategy interface -----------------------------------------------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid, nodes: Sequence[ClientInfo] = ()) -> Iterable[Message]:
        """The first message of each sampled client's round, by its mode.

        ``split``: ``train.split_forward`` with the lower prefix; ``local``:
        ``train.local`` with the lower prefix and the emulator's tensors;
        ``centralized``: ``train.upload`` until the client has uploaded, then
        nothing (the server trains on its upload).
        """
        client_keys = list(self.server_model.client_keys)
        messages = []
        for info in nodes:
            mode = self.assignments[info.partition_id].mode
            if mode == "centralized" and info.partition_id in self.pool:
                continue
            keys = client_keys + list(self.emulator_keys) if mode == "local" else client_keys
            message_type = {"split": wire.SPLIT_FORWARD, "local": wire.LOCAL, "centralized": wire.UPLOAD}[mode]
            messages.append(self._message(info, message_type, server_round,
                                          {wire.ARRAYS: ArrayRecord({k: arrays[k] for k in keys}),
                                           wire.CONFIG: self._plan_config(server_round, info)}))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The current global tensors.

        A round aggregates in :meth:`run_round`, after its second exchange
        (client prefixes, server halves and the pool's result together); this
        method only exposes the result through Flower's Strategy interface.
        """
        return to_record(self.state), None

    def configure_evaluate(self, server_round, arrays, config, grid) -> Iterable[Message]:
        return []  # evaluation runs on the server's held-out split

    def aggregate_evaluate(self, server_round, replies) -> MetricRecord | None:
        return None

    # --- the fleet ----------------------------------------------------------------------------

    def _discover(self, grid: Grid) -> None:
        """Ask every connected node who it is (partition id, data volume, device profile)."""
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
        self._bytes_down = {}  # the query is not a round's traffic (and a resumed run repeats it)
        log(INFO, "%d of %d nodes answered the query", len(self.clients), len(nodes))

    def _client_info(self, reply: Message) -> ClientInfo | None:
        node = reply.metadata.src_node_id
        try:
            profile = reply.content.config_records[wire.PROFILE]
            device = from_config({k: profile[k] for k in PROFILE_KEYS if k in profile})
            info = ClientInfo(node, int(profile[wire.PARTITION_ID]), int(profile[wire.NUM_AVAILABLE]), device)
        except Exception as err:  # a malformed query reply: leave the node out, say why
            log(WARNING, "node %d: unusable query reply (%s)", node, _reason(reply, err))
            return None
        return info if info.num_available > 0 else None

    def _plan_fleet(self) -> None:
        """Group the fleet, give each client a mode and an allocation, write ``groups.json``."""
        infos = {c.partition_id: c for c in self.clients.values()}
        profiles = {p: c.profile for p, c in infos.items()}
        self.shape = self.server_model.shape()
        self.emulator_keys = self.server_model.emulator_keys(self.emulator_layers)
        # What a local client sends back beside its lower prefix: the head, and the upper
        # prefix too when the emulator dropped nothing (then it is the real model).
        full = self.emulator_layers in (0, self.shape.server_layers)
        self.local_reply_keys = tuple(k for k in self.emulator_keys if k.startswith("head.") or full)
        self.workloads, self.upload_rows = fleet.fleet_workloads(
            self.policy, self.shape, profiles, {p: c.num_available for p, c in infos.items()}, self.steps,
            self.emulator_layers, 2 if self.activation_dtype == "float16" else 4, self.upload_kind, self.upload_cap)
        self.assignments = fleet.assign(self.policy, profiles, self.workloads)
        for pid, mode in self._restored_modes.items():  # modes changed by failures before a restart
            if pid in self.assignments and self.assignments[pid].mode != mode:
                self.assignments[pid] = fleet.reassign(self.assignments[pid], mode, self.policy, profiles[pid],
                                                       self.workloads[pid])
        self._write_groups()
        counts = {m: sum(a.mode == m for a in self.assignments.values()) for m in MODES}
        log(INFO, "policy %s: %s", self.policy.name, ", ".join(f"{n} {m}" for m, n in counts.items() if n))

    def _write_groups(self) -> None:
        if self.run_dir is None:
            return
        infos = {c.partition_id: c for c in self.clients.values()}
        self.run_dir.write_groups({
            "policy": self.policy.name, "modes": list(self.policy.modes),
            "threshold-flops": self.policy.threshold_flops if self.policy.name == "threshold" else None,
            "clients": {str(p): fleet.describe(a, infos[p].profile, self.upload_rows[p])
                        for p, a in sorted(self.assignments.items())}})

    def _mode(self, node: int) -> str:
        return self.assignments[self.clients[node].partition_id].mode

    # --- steps of a round -------------------------------------------------------------------

    def _sample(self, server_round: int) -> list[ClientInfo]:
        known = sorted((c for c in self.clients.values() if c.partition_id not in self.excluded),
                       key=lambda c: c.partition_id)
        count = max(self.min_clients, int(np.ceil(self.fraction_train * len(known))))
        if count >= len(known):
            return known
        rng = np.random.default_rng([self.seed, server_round])
        chosen = rng.choice(len(known), size=count, replace=False)
        return [known[i] for i in sorted(chosen)]

    def _steps_of(self, info: ClientInfo) -> int:
        return self.steps * self.assignments[info.partition_id].local_epochs

    def _plan_config(self, server_round: int, info: ClientInfo) -> ConfigRecord:
        assignment = self.assignments[info.partition_id]
        return ConfigRecord({**requirement_to_config(self.requirement), wire.SERVER_ROUND: server_round,
                             wire.SEED: round_seed(self.seed, server_round, info.partition_id),
                             wire.STEPS: self._steps_of(info), wire.BATCH_SIZE: self.batch_size, wire.LR: self.lr,
                             wire.HEAD_LR: self.head_lr, wire.ACTIVATION_DTYPE: self.activation_dtype,
                             wire.EMULATOR_LAYERS: self.emulator_layers, wire.LOCAL_EVAL_SIZE: self.local_eval_size,
                             wire.UPLOAD_KIND: self.upload_kind,
                             wire.UPLOAD_ROWS: self.upload_rows.get(info.partition_id, 0),
                             **fleet.assignment_config(assignment, self.policy, info.profile)})

    def _message(self, info: ClientInfo, message_type: str, server_round: int,
                 records: Mapping[str, ArrayRecord | ConfigRecord]) -> Message:
        return Message(RecordDict(dict(records)), info.node_id, message_type, group_id=str(server_round))

    def _exchange(self, grid: Grid, messages: Iterable[Message]) -> dict[int, Message]:
        """Send, wait up to the timeout, and return the good replies by node id."""
        messages = list(messages)
        self._sent = {m.metadata.dst_node_id: m for m in messages}
        replies = {}
        if not messages:
            return replies
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

    def _answers(self, replies: Mapping[int, Message]) -> Iterable[tuple[ClientInfo, Message]]:
        """Replies that carry work, in partition order; a failure reply is recorded, not yielded."""
        for info in sorted((self.clients[n] for n in replies), key=lambda c: c.partition_id):
            reply = replies[info.node_id]
            config = reply.content.config_records.get(wire.CONFIG)
            if config is not None and is_failure_config(config):
                self._report_failure(info, config)
                continue
            yield info, reply

    def _train_server_side(self, server_round: int, forward: Mapping[int, Message],
                           ) -> tuple[dict[int, list[np.ndarray]], dict[int, Contribution], dict[int, float]]:
        gradients, server_parts, losses = {}, {}, {}
        server_state = {k: self.state[k] for k in self.server_model.server_keys}
        self._sequential_state = server_state
        for info, reply in self._answers(forward):
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
        """The server's tensors of split training as contributions: one sequential result, or one per client.

        A sequential server has already taken the steps of a client whose backward
        reply was then rejected; its activations had passed validation, so the
        steps stand, and the result carries the volume of the accepted clients.
        """
        if not accepted:
            return []
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

    def _collect(self, replies: Mapping[int, Message], mode: str) -> dict[int, Contribution]:
        """Validated prefix contributions of split (backward) or local replies, by node id."""
        keys = list(self.server_model.client_keys)
        if mode == "local":
            keys += list(self.local_reply_keys)
        expected = spec_of({k: self.state[k] for k in keys})
        contributions = {}
        for info, reply in self._answers(replies):
            try:
                arrays = from_record(reply.content.array_records[wire.ARRAYS])
                metrics = reply.content.metric_records[wire.METRICS]
                volume = metrics[wire.NUM_EXAMPLES]
                self._steps_done[info.node_id] = int(metrics.get(wire.STEPS_DONE, self._steps_of(info)))
            except Exception as err:
                self._drop(info.node_id, FailureCause.INVALID_REPLY, f"{mode} reply rejected: {_reason(reply, err)}")
                continue
            ceiling = min(info.num_available, self._steps_of(info) * self.batch_size)
            verdict = judge(arrays, expected, volume, ceiling)
            if not verdict.ok:
                self._drop(info.node_id, FailureCause.INVALID_REPLY,
                           f"{mode} reply rejected: " + "; ".join(verdict.reasons))
                continue
            contributions[info.node_id] = Contribution(arrays, int(volume), f"client {info.partition_id} ({mode})")
            if mode == "local" and _finite(metrics.get(wire.TRAIN_LOSS)):
                self._local_losses[info.node_id] = float(metrics[wire.TRAIN_LOSS])
        return contributions

    def _receive_uploads(self, replies: Mapping[int, Message]) -> bool:
        """Validate centralized clients' uploads into the pool; whether any arrived."""
        arrived = False
        for info, reply in self._answers(replies):
            try:
                arrays = from_record(reply.content.array_records[wire.UPLOAD_RECORD])
                claimed = reply.content.metric_records[wire.METRICS][wire.NUM_EXAMPLES]
                problems = validate_upload(arrays, self.upload_kind, self.shape.hidden,
                                           self.upload_rows[info.partition_id], claimed)
            except Exception as err:
                problems = [_reason(reply, err)]
            if problems:
                self._drop(info.node_id, FailureCause.INVALID_REPLY, "upload rejected: " + "; ".join(problems))
                continue
            self.pool[info.partition_id] = arrays
            arrived = True
        return arrived

    def _train_pool(self, server_round: int, sampled: Sequence[ClientInfo],
                    ) -> tuple[Contribution | None, list[int]]:
        """Train on the uploads of the sampled centralized clients: ``steps`` minibatches each."""
        members = [c.partition_id for c in sampled
                   if c.partition_id in self.pool and self.assignments[c.partition_id].mode == "centralized"
                   and c.node_id not in self.dropped]
        self._pool_samples = 0
        if not members:
            return None, []
        steps = self.steps * len(members)
        tensors, loss, volume = self.server_model.train_pool(
            self.state, [self.pool[p] for p in members], self.upload_kind, steps, self.batch_size,
            round_seed(self.seed, server_round, POOL_ID))
        self._pool_samples = steps * self.batch_size
        self._pool_loss = loss
        return Contribution(tensors, volume, f"server (centralized pool of {len(members)})"), members

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

    def _react(self, accepted: Mapping[int, Contribution], pool_members: Sequence[int]) -> None:
        """Apply the failure policy: another mode, or exclusion for clients that cannot or keep failing."""
        by_partition = {self.clients[n].partition_id: f for n, f in self.failures.items() if n in self.clients}
        modes = {p: self.assignments[p].mode for p in by_partition}
        reactions, self.strikes = react_to_failures(
            by_partition, modes, self.policy.modes, self.strikes,
            succeeded=[self.clients[n].partition_id for n in accepted] + list(pool_members),
            max_strikes=self.max_strikes)
        changed = False
        for partition_id, reaction in sorted(reactions.items()):
            if reaction.excluded:
                self.excluded.add(partition_id)
                log(WARNING, "client %d excluded from later rounds (%s)", partition_id, reaction.cause)
            elif reaction.mode != modes[partition_id]:
                info = next(c for c in self.clients.values() if c.partition_id == partition_id)
                self.assignments[partition_id] = fleet.reassign(self.assignments[partition_id], reaction.mode,
                                                                self.policy, info.profile, self.workloads[partition_id])
                changed = True
                log(WARNING, "client %d moves from %s to %s mode (%s)", partition_id, modes[partition_id],
                    reaction.mode, reaction.cause)
        if changed:
            self._write_groups()

    # --- simulated clock ----------------------------------------------------------------------

    def _simulate(self, server_round: int, first: Mapping[int, Message], backward: Mapping[int, Message],
                  pool_members: Sequence[int]) -> dict:
        """Each working client's simulated time and energy this round, and the round's latency.

        FLOPs come from the workload model of the client's mode (scaled by the
        steps it reports having taken); bytes are the measured payload of this
        round's messages; time and energy follow from the profile and the allocation.
        """
        costs, extra = {}, {}
        # Partition order: float sums must not depend on the order replies arrived in.
        for node, reply in sorted(first.items(), key=lambda item: self.clients[item[0]].partition_id):
            info = self.clients[node]
            assignment = self.assignments_at_start[info.partition_id]
            mode = assignment.mode
            planned = self.workloads[info.partition_id][mode]
            done = self._steps_done.get(node, self._steps_of(info)) / self._steps_of(info)
            failure = self.failures.get(node)
            stopped = failure is not None and failure.cause in (FailureCause.INSUFFICIENT_SAMPLES,
                                                                 FailureCause.INSUFFICIENT_COMPUTE)
            if stopped:
                done = 0.0  # it declined before training (its one measured step is not counted)
            up = content_bytes(reply) + (content_bytes(backward[node]) if node in backward else 0)
            observed = Workload(mode, planned.client_flops * (done if mode != "centralized" or stopped else 1.0),
                                up, self._bytes_down.get(node, 0),
                                0.0 if mode == "centralized" else planned.server_flops * done,
                                planned.client_memory_bytes)
            allocation, over = fleet.effective_allocation(assignment, info.profile)
            costs[info.partition_id] = round_cost(info.profile, observed, allocation, self.policy.server_flops)
            extra[info.partition_id] = {"mode": mode, "group": assignment.group, "over-budget": over,
                                        "energy-budget-j": info.profile.energy_budget_j}
        pool_s = pool_server_flops(self.shape, self._pool_samples, self.upload_kind) / self.policy.server_flops
        latency = self.ledger.record(server_round, costs, server_busy_s=pool_s, extra=extra)
        return {"sim-latency-s": latency, "sim-clock-s": self.ledger.clock_s, "sim-pool-s": pool_s,
                "energy-j": sum(c.energy_j for c in costs.values()),
                "over-budget": sum(e["over-budget"] for e in extra.values()), "costs": costs}

    # --- records ----------------------------------------------------------------------------

    def _round_record(self, server_round: int, num_rounds: int, forward, backward, losses, tick, sim) -> dict:
        up = {n: content_bytes(r) for n, r in forward.items()}
        for n, r in backward.items():
            up[n] = up.get(n, 0) + content_bytes(r)
        down, self._bytes_down = self._bytes_down, {}
        clients = {}
        for n in sorted(set(up) | set(down)):
            if n not in self.clients:
                continue
            pid = self.clients[n].partition_id
            entry = {"bytes-up": up.get(n, 0), "bytes-down": down.get(n, 0),
                     "mode": self.assignments_at_start[pid].mode, "group": self.assignments_at_start[pid].group,
                     "train-loss": losses.get(n)}
            if pid in sim["costs"]:
                entry.update({"sim-latency-s": sim["costs"][pid].latency_s, "energy-j": sim["costs"][pid].energy_j})
            clients[str(pid)] = entry
        every_loss = list(losses.values()) + list(self._local_losses.values()) + (
            [self._pool_loss] if self._pool_samples else [])
        record = {"round": server_round, "train-loss": float(np.mean(every_loss)) if every_loss else None,
                  "bytes-up": sum(up.values()), "bytes-down": sum(down.values()), "clients": clients,
                  "dropped": {str(self.clients[n].partition_id) if n in self.clients else str(n): why
                              for n, why in self.dropped.items()},
                  "failures": count_causes(self.failures.values()), "excluded": sorted(self.excluded),
                  "modes": {m: sum(a.mode == m for a in self.assignments_at_start.values()) for m in MODES},
                  "pool-rows": sum(len(a) for upload in self.pool.values()
                                   for k, a in upload.items() if k.startswith("label.")),
                  **{k: v for k, v in sim.items() if k != "costs"},
                  "wall-s": round(time.time() - tick, 3)}
        if server_round % self.eval_every == 0 or server_round == num_rounds:
            record.update({f"eval-{k}" if k != wire.ACCURACY else k: v
                           for k, v in self.server_model.evaluate(self.state).items()})
        self._log_dropped(server_round)
        log(INFO, "[round %d/%d] train-loss %.4f  accuracy %s  up %.2f MB  down %.2f MB  %d dropped  %.1f s  "
            "(simulated %.1f s, %.1f J)", server_round, num_rounds, record["train-loss"] or float("nan"),
            f"{record['accuracy']:.4f}" if "accuracy" in record else "-", record["bytes-up"] / 1e6,
            record["bytes-down"] / 1e6, len(self.dropped), record["wall-s"], record["sim-latency-s"],
            record["energy-j"])
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
                   "bytes-down": sum(r["bytes-down"] for r in history),
                   "sim-clock-s": history[-1].get("sim-clock-s") if history else None,
                   "energy-j": sum(r.get("energy-j", 0.0) for r in history), "policy": self.policy.name}
        if self.run_dir is not None:
            self.run_dir.write_summary(summary)
        log(INFO, "run %s: %s", status, summary)
        return summary


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and bool(np.isfinite(value))


def _reason(reply: Message, err: Exception) -> str:
    return f"{type(err).__name__}: {err}"
