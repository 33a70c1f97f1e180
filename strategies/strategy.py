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
the mode (wire dtype, top-k uploads, plan length) between rounds. Flower's
``Strategy.start`` runs one train and one evaluate exchange a round; a split round has
two, so this class runs its own loop (:mod:`strategies.round.loop`) with Flower's signature and ``Result``. A bad or
missing reply is dropped with its reason; a round with fewer than ``min_clients``
contributions stops the run, keeping the last checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from strategies.cost.costmodel import EnergyLedger
from strategies.fleet import changes as fleet_changes
from strategies.fleet.state import FleetState
from strategies.interfaces import ServerModel
from strategies.persist.checkpoint import Checkpoint
from strategies.persist.rundir import RunDirectory
from strategies.probing import judge as probing
from strategies.probing.modes import apply_mode
from strategies.round import messages as msgs
from strategies.round import record as records
from strategies.round import server_side as server_modes
from strategies.round.deadline import sample_in_time
from strategies.round.loop import run_rounds
from strategies.round.lr_schedule import settings_for_round
from strategies.round.state import RoundState, TrainedPart
from strategies.settings import SplitSettings
from strategies.wire import names as wire
from strategies.wire.records import from_record, to_record

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
State = dict[str, np.ndarray]
Settle = probing.Settle  # (the round's record, its tensors) -> (fields to add, the tensors to keep)


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

    Failures are counted by cause each round and answered by
    :func:`strategies.policy.requirements.react_to_failures` among the policy's modes.
    """

    def __init__(
        self, server_model: ServerModel, settings: SplitSettings | None = None, run_dir: RunDirectory | None = None
    ):
        self.server_model = server_model
        self.settings = settings or SplitSettings()
        self.run_dir = run_dir
        self.fleet = FleetState()
        self.ledger = EnergyLedger()
        self.state: dict[str, np.ndarray] = {}  # the global tensors
        self.first_round = 1
        self.status = "not started"
        self.summary_record: dict[str, Any] = {}
        self.shape = shape = server_model.shape()  # constant over the run
        self.bounds = server_modes.Bounds(shape.hidden, server_model.limits())
        self.basic_settings = self.settings  # what probes compare the optimized mode with
        self.basic_dtype = self.mode = self.settings.activation_dtype  # the basic mode's name; the mode in use
        self.probed: list[str] = []  # modes a plateau probe has started from
        self.decisions: list[dict[str, Any]] = []
        self.keys = server_modes.TensorKeys.of(server_model, self.settings.emulator_layers, shape)

    def resume(self, checkpoint: Checkpoint) -> None:
        """Continue after the checkpoint's round: fleet state, simulated clock, pool."""
        state = checkpoint.state
        self.fleet.restore(state, self.run_dir.load_pool() if self.run_dir is not None else {})
        probe = state.get("probe") or {}  # a hot switch outlives a restart (older checkpoints: a wire dtype)
        self.mode = str(probe.get("mode", probe.get("wire-dtype", self.mode)))
        if self.mode != self.basic_dtype:
            self.settings = apply_mode(self.basic_settings, self.mode)
        self.probed = list(probe.get("probed", []))
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
        self._enter_stage(self.first_round)
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
        try:
            self.status = run_rounds(self, grid, result, history, num_rounds, timeout, train_config, evaluate_fn)
        except BaseException as err:  # a kill, Ctrl-C or a crash: the summary says so, then it goes on up
            self.status = f"interrupted: {type(err).__name__}: {err}"
            self._finish(history, time.time() - started)
            raise
        self._finish(history, time.time() - started)
        return result

    def run_round(
        self,
        grid: Grid,
        state: dict[str, np.ndarray],
        server_round: int,
        num_rounds: int,
        timeout: float,
        train_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
        settle: Settle | None = None,
        seed_round: int | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """One round from the global tensors ``state``: the next ones and the round's record, or None
        when too few contributions were valid. ``settle(record, state)``, once the round is
        evaluated, may add to its record and choose the tensors to keep (a probe's decision)."""
        s = settings_for_round(self.settings, server_round, num_rounds)
        if s is not self.settings:
            log(INFO, "round %d: lr %.3g, head lr %.3g (cosine decay)", server_round, s.lr, s.head_lr)
        rnd = self.begin_round(grid, server_round, num_rounds, timeout)
        part = self.train_part(grid, state, rnd, s, timeout, train_config, seed_round)
        if not fleet_changes.enough_contributions(self.fleet, rnd, part.accepted, self.settings, self.run_dir):
            return None
        state = server_modes.average_part(part, state, rnd, s, self.fleet)
        record, state = self.close_round(rnd, state, part.uploaded, evaluate_fn, settle)
        return state, record

    def begin_round(self, grid: Grid, server_round: int, num_rounds: int, timeout: float) -> RoundState:
        """The fleet's changes at the round's start, then the round's sample."""
        joined, left = self._refresh_fleet(grid, server_round, timeout)
        sampled, sat_out = sample_in_time(self.fleet, server_round, self.settings)
        rnd = RoundState(server_round, num_rounds, sampled, dict(self.fleet.assignments), joined=joined, left=left)
        rnd.sat_out = [c.partition_id for c in sat_out]
        return rnd

    def train_part(
        self,
        grid: Grid,
        state: dict[str, np.ndarray],
        rnd: RoundState,
        s: SplitSettings,
        timeout: float,
        train_config: ConfigRecord | None = None,
        seed_round: int | None = None,
    ) -> TrainedPart:
        """Both exchanges with ``rnd.sampled`` in the settings ``s``, the server's side trained from ``state``
        (:func:`strategies.round.server_side.train_part`)."""
        parts = (self.server_model, self.keys, self.bounds, self.fleet)
        return server_modes.train_part(grid, *parts, state, rnd, s, timeout, train_config, seed_round)

    def close_round(
        self,
        rnd: RoundState,
        state: dict[str, np.ndarray],
        uploaded: bool,
        evaluate_fn: EvaluateFn | None,
        settle: Settle | None = None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Price the round, evaluate, record; save metrics, ledger, pool and checkpoint."""
        sim, costs = records.simulate(rnd, self.fleet, self.settings, self.shape, self.ledger)
        evaluation = evaluate_fn(rnd.server_round, to_record(state)) if evaluate_fn is not None else None
        record = records.round_record(rnd, self.fleet, sim, costs, dict(evaluation) if evaluation else None)
        if settle is not None:
            extra, state = settle(record, state)
            record.update(extra)
        records.log_round(record, rnd.num_rounds)
        if self.run_dir is not None:
            probe = {"wire-dtype": self.settings.activation_dtype, "mode": self.mode, "probed": list(self.probed)}
            records.save_round(self.run_dir, record, state, self.fleet, self.ledger, uploaded, probe)
        return record, state

    # --- Flower's Strategy interface ----------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The first message of each sampled client's round, by its mode (see the module docstring)."""
        sampled, _ = sample_in_time(self.fleet, server_round, self.settings)
        return msgs.first_messages(self.settings, self.fleet, sampled, server_round, arrays, config, self.keys.by_mode)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Volume-weighted average of the prefixes in ``replies`` (local or split backward replies).

        Each reply is validated like in a round (names, shapes, dtypes, finite values,
        ``num-examples`` within what the client holds); invalid ones are left out with a
        warning. Returns None for the arrays when no reply is valid.
        """
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

    # --- the fleet ----------------------------------------------------------------------------

    def _refresh_fleet(self, grid: Grid, server_round: int, timeout: float) -> tuple[list[int], list[int]]:
        """At a round's start, :func:`strategies.fleet.changes.refresh`; groups.json again if re-planned."""
        staged = self._enter_stage(server_round)
        joined, left, replanned = fleet_changes.refresh(
            grid, self.fleet, self.settings, self.shape, self.first_round, server_round, timeout, staged
        )
        if replanned:
            self._write_groups()
        return joined, left

    def _enter_stage(self, server_round: int) -> bool:
        """Take the policy schedule's stage for ``server_round`` (a probe's basic mode too); whether it changed."""
        staged = fleet_changes.stage_of(self.settings, server_round)
        if staged is not None:
            self.settings, self.basic_settings = staged, replace(self.basic_settings, policy=staged.policy)
        return staged is not None

    def _write_groups(self) -> None:
        fleet_changes.report_groups(self.fleet, self.settings, self.run_dir)

    def _finish(self, history: list[dict[str, Any]], wall_s: float) -> None:
        if self.run_dir is not None:  # a resumed run reports the rounds before the restart too
            history = self.run_dir.rounds()
        self.summary_record = records.run_summary(self.status, history, wall_s, self.settings.fleet_policy.name)
        if self.run_dir is not None:
            self.run_dir.write_summary(self.summary_record)
        log(INFO, "run %s: %s", self.status, self.summary_record)
