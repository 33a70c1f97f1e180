"""Split prefix-tuning strategy: a heterogeneous fleet, two exchanges a round, volume-weighted average.

A round, for every sampled client (in order of partition id):

1. The first exchange sends each client the message of its mode (a policy of
   :mod:`strategies.policy.policies` gives each client a group and a mode from the device
   profile it reported in its ``query`` reply):

   - ``split``: ``train.split_forward`` carries the global lower prefix and a seed;
     the client draws its batch plan from the seed and replies with the boundary
     activations of every planned minibatch at once.
   - ``local``: ``train.local``; the client trains its lower prefix through an
     emulator of the upper layers and replies with the prefix (and the head).
   - ``centralized``: ``train.upload`` until the client has uploaded its samples or
     lower-layer activations once, then nothing.

2. The server trains its side (:mod:`strategies.round.server_side`): on each split client's
   activations, keeping one boundary gradient per minibatch, and on the pool of uploads.
3. The second exchange, ``train.split_backward``, sends the split clients their
   gradients; each replays its forward, applies them in order and replies with its
   updated prefix and ``num-examples``.
4. Every contribution ``(tensors, num-examples)`` (client prefixes, the server's
   split-trained tensors, the pool's result) enters one data-volume weighted average.

The fleet may change during the run (:mod:`strategies.fleet.membership`, re-planned when a
client joins or a profile changes); a probe stage (:mod:`strategies.probing.judge`) may switch
the mode (wire dtype, top-k uploads, plan length) between rounds; the probe controller
(:mod:`strategies.probing.controller`) owns the mode in use and gives each round its settings.
Flower's ``Strategy.start`` runs one train and one evaluate exchange a round; a split round
has two, so this class runs its own loop (:mod:`strategies.round.loop`) with Flower's
signature and ``Result``. As in Flower's ``FedAvg``, the loop builds each round's first
messages with :meth:`~SplitPrefixStrategy.configure_train` and averages with
:meth:`~SplitPrefixStrategy.aggregate_train`: a subclass that overrides either changes the
run. A bad or missing reply is dropped with its reason; a round with fewer than
``min_clients`` contributions stops the run, keeping the last checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from strategies.aggregate.accountant import PrivacyLedger, sampling_rate
from strategies.aggregate.volume import Contribution
from strategies.cost.costmodel import EnergyLedger
from strategies.fleet import changes as fleet_changes
from strategies.fleet.state import FleetState
from strategies.interfaces import ServerModel
from strategies.persist.checkpoint import Checkpoint
from strategies.persist.rundir import RunDirectory
from strategies.probing.controller import ProbeController
from strategies.probing.judge import Settle
from strategies.round import messages as msgs
from strategies.round import record as records
from strategies.round import server_side as server_modes
from strategies.round.context import EvaluateFn, Outcome, RoundContext, State
from strategies.round.deadline import sample_in_time
from strategies.round.loop import run_rounds
from strategies.round.state import RoundState, TrainedPart
from strategies.settings import SplitSettings
from strategies.trust.state import TrustState
from strategies.wire import names as wire
from strategies.wire.records import from_record, to_record


@dataclass(frozen=True)
class RoundPart:
    """The part of a round that Flower's hooks are called for: a whole round, or a parallel probe's half.

    Flower's ``configure_train`` and ``aggregate_train`` carry a round number, not a round: while
    the loop calls them, the strategy holds this value so that the hooks build and average that
    part's messages. ``trained``: the part's validated contributions, once its exchanges are done.
    """

    ctx: RoundContext
    rnd: RoundState
    origin: State
    trained: TrainedPart | None = None


class SplitPrefixStrategy(Strategy):
    """Federated split prefix-tuning over a fleet of unequal clients, volume-weighted aggregation.

    Use it like Flower's ``FedAvg`` in a ServerApp::

        strategy = SplitPrefixStrategy(server_model, SplitSettings(steps=6))
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=6,
                                evaluate_fn=my_evaluate)

    Parameters
    ----------
    server_model : ServerModel
        The server's half of the model (upper layers and head), see :mod:`strategies.interfaces`.
    settings : SplitSettings (default: SplitSettings())
        Training, sampling, fleet policy and requirement settings.
    run_dir : RunDirectory | None (default: None)
        Where metrics, checkpoints, groups, the ledger and the summary go.

    Notes
    -----
    Failures are counted by cause each round and answered by
    :func:`strategies.policy.requirements.react_to_failures` among the policy's modes.
    """

    def __init__(
        self, server_model: ServerModel, settings: SplitSettings | None = None, run_dir: RunDirectory | None = None
    ):
        self.server_model = server_model
        self.probes = ProbeController(settings or SplitSettings())
        self.run_dir = run_dir
        self.fleet = FleetState()
        self.ledger = EnergyLedger()
        self.trust = TrustState()  # reputations and norm history, changed only when a round closes
        self.privacy = PrivacyLedger()  # the rounds released under DP, for the run's epsilon
        self.state: State = {}  # the global tensors after the last closed round
        self.first_round = 1
        self.status = "not started"
        self.summary_record: dict[str, Any] = {}
        self.shape = shape = server_model.shape()  # constant over the run
        self.bounds = server_modes.Bounds(shape.hidden, server_model.limits())
        self.keys = server_modes.TensorKeys.of(server_model, self.settings.emulator_layers, shape)
        self._part: RoundPart | None = None  # set only while the loop calls a Flower hook

    @property
    def settings(self) -> SplitSettings:
        """The settings of the mode in use (the probe controller's)."""
        return self.probes.settings

    def resume(self, checkpoint: Checkpoint) -> None:
        """Continue after the checkpoint's round: fleet state, simulated clock, pool, probe mode."""
        state = checkpoint.state
        self.fleet.restore(state, self.run_dir.load_pool() if self.run_dir is not None else {})
        self.probes.restore(state.get("probe") or {})
        self.trust = TrustState.from_state(state.get("trust"))
        self.privacy = PrivacyLedger.from_state(state.get("privacy"))
        self.ledger = EnergyLedger(rows=[], clock_s=float(state.get("clock-s", 0.0)))
        self.first_round = checkpoint.round + 1

    def summary(self) -> None:
        records.log_settings(self.settings)

    # --- the round loop ---------------------------------------------------------------------

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
    ) -> Result:
        """Run rounds ``first_round..num_rounds`` (1 unless resumed) and return Flower's ``Result``.

        Arguments as in Flower's ``Strategy.start``: ``timeout`` bounds each exchange;
        ``train_config`` is added to every train message's config; ``evaluate_fn``
        (if given) evaluates the global tensors before the first round and after each.
        Federated evaluation is not used (``evaluate_config`` is accepted and unused).
        """
        self.probes.enter_stage(self.first_round)
        self.summary()
        started, result = time.time(), Result()
        self.state = from_record(initial_arrays)
        result.arrays = initial_arrays
        if evaluate_fn is not None:
            records.store(
                result.evaluate_metrics_serverapp,
                self.first_round - 1,
                evaluate_fn(self.first_round - 1, initial_arrays),
            )
        fleet_changes.discover(grid, self.fleet, self.settings, self.shape, self.first_round, timeout)
        self._write_groups()
        history: list[dict[str, Any]] = []
        self.status = "running"
        self._finish(history, 0.0)  # a summary left by an earlier run must not stand for this one
        config = train_config or ConfigRecord()
        run = RoundContext(grid, self.first_round, num_rounds, self.settings, timeout, config, evaluate_fn)
        try:
            self.status = run_rounds(self, run, result, history)
        except BaseException as err:  # a kill, Ctrl-C or a crash: the summary says so, then it goes on up
            self.status = f"interrupted: {type(err).__name__}: {err}"
            self._finish(history, time.time() - started)
            raise
        self._finish(history, time.time() - started)
        return result

    def run_round(self, ctx: RoundContext, origin: State, settle: Settle | None = None) -> Outcome:
        """One round from the global tensors ``origin``: the next ones and the round's record, or None
        when too few contributions were valid. ``settle(record, state)``, once the round is
        evaluated, may add to its record, choose the tensors to keep and decide a probe."""
        rnd = self.begin_round(ctx)
        part = self.train_part(ctx, rnd, origin)
        if not self.enough_contributions(ctx, rnd, part.accepted):
            return None
        state = self.average_part(ctx, rnd, part, origin)
        record, state = self.close_round(ctx, rnd, state, part.uploaded, settle)
        return state, record

    def begin_round(self, ctx: RoundContext) -> RoundState:
        """The fleet's changes at the round's start, then the round's sample."""
        joined, left = self._refresh_fleet(ctx)
        sampled, sat_out = sample_in_time(self.fleet, ctx.server_round, ctx.settings)
        assignments = dict(self.fleet.assignments)
        rnd = RoundState(ctx.server_round, ctx.num_rounds, sampled, assignments, joined=joined, left=left)
        rnd.population = len(self.fleet.active())
        rnd.sat_out = [c.partition_id for c in sat_out]
        return rnd

    def train_part(self, ctx: RoundContext, rnd: RoundState, origin: State) -> TrainedPart:
        """Both exchanges with ``rnd.sampled`` in ``ctx.settings``, the server's side trained from ``origin``
        (:func:`strategies.round.server_side.train_part`); the first messages are ``configure_train``'s."""
        with self._hooks_for(RoundPart(ctx, rnd, origin)):
            first = list(self.configure_train(ctx.server_round, to_record(origin), ctx.train_config, ctx.grid))
        parts = (self.server_model, self.keys, self.bounds, self.fleet)
        return server_modes.train_part(ctx, *parts, origin, rnd, first, self.trust)

    def average_part(self, ctx: RoundContext, rnd: RoundState, part: TrainedPart, origin: State) -> State:
        """The part's average, by ``aggregate_train`` over the replies of its accepted contributions;
        ``origin`` again when it returns no arrays."""
        # A node's last reply of the round is the one that carried its trained prefix.
        replies = [rnd.backward[n] if n in rnd.backward else rnd.first[n] for n in part.accepted]
        with self._hooks_for(RoundPart(ctx, rnd, origin, part)):
            arrays, _ = self.aggregate_train(ctx.server_round, replies)
        return origin if arrays is None else from_record(arrays)

    def enough_contributions(self, ctx: RoundContext, rnd: RoundState, accepted: Mapping[int, Contribution]) -> bool:
        """The failure policy applied to the round; whether ``min_clients`` contributions were valid."""
        return fleet_changes.enough_contributions(self.fleet, rnd, accepted, ctx.settings, self.run_dir)

    def close_round(
        self, ctx: RoundContext, rnd: RoundState, state: State, uploaded: bool, settle: Settle | None = None
    ) -> tuple[dict[str, Any], State]:
        """Price the round, evaluate, record, settle (a probe's decision goes to the controller);
        keep the tensors; save metrics, ledger, pool and checkpoint."""
        sim, costs = records.simulate(rnd, self.fleet, ctx.settings, self.shape, self.ledger)
        evaluation = ctx.evaluate_fn(rnd.server_round, to_record(state)) if ctx.evaluate_fn is not None else None
        record = records.round_record(rnd, self.fleet, sim, costs, dict(evaluation) if evaluation else None)
        record.update(self._spend_privacy(ctx, rnd))
        if settle is not None:
            settled = settle(record, state)
            record.update(settled.extra)
            state = settled.state
            if settled.decision is not None:  # before the checkpoint: a resumed run goes on in the chosen mode
                self.probes.decide(settled.decision)
        records.log_round(record, rnd.num_rounds)
        self.state = state
        self.trust.commit(rnd.in_line, rnd.norms, rnd.references)
        if self.run_dir is not None:
            probe = self.probes.checkpoint_entry()
            trust, privacy = self.trust.to_state(), self.privacy.to_state() if self.privacy.steps else None
            records.save_round(self.run_dir, record, state, self.fleet, self.ledger, uploaded, probe, trust, privacy)
        return record, state

    def _spend_privacy(self, ctx: RoundContext, rnd: RoundState) -> dict[str, Any]:
        """Under DP, the round's release composed into the run's ledger: its record's privacy figures."""
        s = ctx.settings
        if s.dp_clip <= 0:
            return {}
        rate = sampling_rate(len(rnd.sampled) + len(rnd.sat_out), rnd.population)
        self.privacy = self.privacy.after(s.dp_noise, rate)
        spent = self.privacy.epsilon(s.dp_delta)
        log(INFO, "round %d: DP epsilon %.4g at delta %g", rnd.server_round, spent, s.dp_delta)
        return {"dp-epsilon": spent, "dp-delta": s.dp_delta, "dp-sampling-rate": rate}

    # --- Flower's Strategy interface ----------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The first message of each sampled client's round, by its mode (see the module docstring).

        In a round, the round's sample in its settings; called outside one, the clients that
        would be sampled now, in the settings of the mode in use.
        """
        part = self._part
        if part is None:
            sampled, _ = sample_in_time(self.fleet, server_round, self.settings)
            return msgs.first_messages(
                self.settings, self.fleet, sampled, server_round, arrays, config, self.keys.by_mode
            )
        ctx = part.ctx
        return msgs.first_messages(
            ctx.settings, self.fleet, part.rnd.sampled, server_round, arrays, config, self.keys.by_mode, ctx.seed_round
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Volume-weighted average of the prefixes in ``replies`` (local or split backward replies).

        In a round, ``replies`` are those of the round's contributions, validated as they
        arrived: the contributions of the replies passed here are averaged with the server's
        (its split-trained tensors, the centralized pool) by the round's rule
        (:func:`strategies.round.server_side.average_part`), from the tensors the round
        started from. Called outside a round, each reply is validated against the global
        tensors (names, shapes, dtypes, finite values, ``num-examples`` within what the
        client holds) and invalid ones are left out with a warning. Returns None for the
        arrays when no reply is valid.
        """
        part = self._part
        if part is not None and part.trained is not None:
            trained = part.trained.only_from({r.metadata.src_node_id for r in replies})
            average = server_modes.average_part(
                trained, part.origin, part.rnd, part.ctx.settings, self.fleet, self.trust
            )
            volume = sum(c.num_examples for c in trained.accepted.values())
            return to_record(average), MetricRecord({wire.NUM_EXAMPLES: volume})
        arrays, volume = server_modes.aggregate_replies(replies, self.fleet, self.state)
        if arrays is None:
            return None, None
        return to_record(arrays), MetricRecord({wire.NUM_EXAMPLES: volume})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the global tensors are evaluated on the server (``evaluate_fn``)."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    @contextmanager
    def _hooks_for(self, part: RoundPart) -> Iterator[None]:
        """While the loop calls a Flower hook: the part of the round it is for."""
        self._part = part
        try:
            yield
        finally:
            self._part = None

    # --- the fleet ----------------------------------------------------------------------------

    def _refresh_fleet(self, ctx: RoundContext) -> tuple[list[int], list[int]]:
        """At a round's start, :func:`strategies.fleet.changes.refresh`; groups.json again if re-planned."""
        joined, left, replanned = fleet_changes.refresh(
            ctx.grid,
            self.fleet,
            ctx.settings,
            self.shape,
            self.first_round,
            ctx.server_round,
            ctx.timeout,
            ctx.replan,
        )
        if replanned:
            self._write_groups()
        return joined, left

    def _write_groups(self) -> None:
        fleet_changes.report_groups(self.fleet, self.settings, self.run_dir)

    def _finish(self, history: list[dict[str, Any]], wall_s: float) -> None:
        if self.run_dir is not None:  # a resumed run reports the rounds before the restart too
            history = self.run_dir.rounds()
        self.summary_record = records.run_summary(self.status, history, wall_s, self.settings.fleet_policy.name)
        if self.run_dir is not None:
            self.run_dir.write_summary(self.summary_record)
        log(INFO, "run %s: %s", self.status, self.summary_record)
