"""What the round loop and the probe stage runners need of the strategy that runs them.

:class:`RoundHost` is the strategy's side of a round, step by step, so that the loop
(:mod:`strategies.round.loop`) and the stage runners (:mod:`strategies.probing.stage`,
:mod:`strategies.probing.parallel`) can run rounds without importing the strategy.
:class:`~strategies.strategy.SplitPrefixStrategy` is the one implementation. A runner reads
through it and calls its steps; the host's state changes only inside its own methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from strategies.aggregate.volume import Contribution
from strategies.cost.workload import ModelShape
from strategies.fleet.state import FleetState
from strategies.probing.controller import ProbeController
from strategies.probing.judge import Settle
from strategies.round.context import Outcome, RoundContext, State
from strategies.round.state import RoundState, TrainedPart


class RoundHost(Protocol):
    """The steps of a round and the state they read, as the strategy offers them."""

    @property
    def probes(self) -> ProbeController:
        """The owner of the mode in use and of what probing learnt."""

    @property
    def fleet(self) -> FleetState:
        """The clients, their assignments and the pool."""

    @property
    def shape(self) -> ModelShape:
        """The model's dimensions, for the cost model."""

    @property
    def state(self) -> State:
        """The global tensors after the last closed round."""

    @property
    def first_round(self) -> int:
        """The run's first round (after a resumed checkpoint's)."""

    def run_round(self, ctx: RoundContext, origin: State, settle: Settle | None = None) -> Outcome:
        """A whole round from ``origin``: its tensors and record, or None with too few contributions."""

    def begin_round(self, ctx: RoundContext) -> RoundState:
        """The fleet's changes at the round's start, then the round's sample."""

    def train_part(self, ctx: RoundContext, rnd: RoundState, origin: State) -> TrainedPart:
        """Both exchanges with ``rnd.sampled`` in ``ctx.settings``, the server's side trained from ``origin``."""

    def average_part(self, ctx: RoundContext, rnd: RoundState, part: TrainedPart, origin: State) -> State:
        """The average of a part's contributions (through the strategy's ``aggregate_train``)."""

    def enough_contributions(self, ctx: RoundContext, rnd: RoundState, accepted: Mapping[int, Contribution]) -> bool:
        """The failure policy applied to the round; whether ``min_clients`` contributions were valid."""

    def close_round(
        self, ctx: RoundContext, rnd: RoundState, state: State, uploaded: bool, settle: Settle | None = None
    ) -> tuple[dict[str, Any], State]:
        """Price, evaluate, settle (a probe's decision is applied here) and save the round."""
