"""The probe controller: the one owner of the mode a run trains in, and of what probing learnt.

It holds the basic settings (the run's own, under the policy schedule's current stage), the
mode in use (a spec of :mod:`strategies.probing.modes`; the basic mode is named by its wire
dtype), the modes a probe stage has started from, and every stage's decision. Each round asks
it for the round's context (:meth:`ProbeController.context_for`): it enters the schedule's
stage, then gives the settings of the mode in use at the round's learning rates. A stage runner
(:mod:`strategies.probing.stage`, :mod:`strategies.probing.parallel`) asks it for a trial's
settings and hands back a :class:`~strategies.probing.judge.Decision`, which the strategy
passes to :meth:`ProbeController.decide` as the deciding round closes. A checkpoint keeps
:meth:`ProbeController.checkpoint_entry`, and :meth:`ProbeController.restore` takes it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from logging import INFO
from typing import Any

from flwr.common.logger import log

from strategies.fleet.changes import stage_of
from strategies.probing.judge import Decision, stage_due
from strategies.probing.modes import PLAN, TOPK, parse_mode
from strategies.round.context import RoundContext
from strategies.round.lr_schedule import settings_for_round
from strategies.settings import SplitSettings


def apply_mode(basic: SplitSettings, spec: str) -> SplitSettings:
    """The basic settings in the mode ``spec`` (see the table of :mod:`strategies.probing.modes`)."""
    mode = parse_mode(spec)
    if mode.kind == TOPK:
        return replace(basic, upload_topk=mode.value)
    if mode.kind == PLAN:
        return replace(basic, steps=basic.steps * int(mode.value))
    return replace(basic, activation_dtype=mode.kind)


class ProbeController:
    """The mode in use, the basic settings, the modes probed from and the decisions of a run.

    Parameters
    ----------
    settings : SplitSettings
        The run's settings: the basic mode's (its ``activation_dtype`` names that mode).
    """

    def __init__(self, settings: SplitSettings) -> None:
        self._basic = settings
        self._basic_mode = settings.activation_dtype
        self._mode = self._basic_mode
        self._probed: list[str] = []
        self._decisions: list[dict[str, Any]] = []

    @property
    def settings(self) -> SplitSettings:
        """The settings of the mode in use, at the run's own learning rates."""
        return self.settings_in(self._mode)

    @property
    def mode(self) -> str:
        """The mode in use."""
        return self._mode

    @property
    def basic_mode(self) -> str:
        """The basic mode's name: the run's own wire dtype."""
        return self._basic_mode

    @property
    def probed(self) -> tuple[str, ...]:
        """The modes a probe stage has started from, in order."""
        return tuple(self._probed)

    @property
    def decisions(self) -> list[dict[str, Any]]:
        """Every stage's decision, ``{"round": ..., **figures}``, in order (a copy)."""
        return [dict(d) for d in self._decisions]

    def settings_in(self, mode: str) -> SplitSettings:
        """The basic settings in ``mode`` (the basic settings themselves in the basic mode)."""
        return self._basic if mode == self._basic_mode else apply_mode(self._basic, mode)

    def round_settings(self, server_round: int, num_rounds: int, mode: str | None = None) -> SplitSettings:
        """The settings of ``mode`` (default: the mode in use) at ``server_round``'s learning rates."""
        return settings_for_round(self.settings_in(self._mode if mode is None else mode), server_round, num_rounds)

    def enter_stage(self, server_round: int) -> bool:
        """Take the policy schedule's stage for ``server_round``; whether it changed."""
        staged = stage_of(self._basic, server_round)
        if staged is not None:
            self._basic = replace(self._basic, policy=staged.policy)
        return staged is not None

    def context_for(
        self, run: RoundContext, server_round: int, mode: str | None = None, seed_round: int | None = None
    ) -> RoundContext:
        """Round ``server_round``'s context from the run's: the schedule's stage entered, then the
        settings of ``mode`` (default: the mode in use) at the round's learning rates."""
        replan = self.enter_stage(server_round)
        base = self.settings_in(self._mode if mode is None else mode)
        settings = settings_for_round(base, server_round, run.num_rounds)
        if settings is not base:
            log(INFO, "round %d: lr %.3g, head lr %.3g (cosine decay)", server_round, settings.lr, settings.head_lr)
        return replace(run, server_round=server_round, settings=settings, seed_round=seed_round, replan=replan)

    def stage_due(self, server_round: int, history: Sequence[Mapping[str, Any]]) -> bool:
        """Whether ``server_round`` starts a probe stage (:func:`strategies.probing.judge.stage_due`)."""
        return stage_due(self.settings.probe, server_round, history, self._probed, self._mode)

    def begin_stage(self) -> None:
        """A probe stage starts from the mode in use: a plateau does not probe from it again."""
        self._probed.append(self._mode)

    def decide(self, decision: Decision) -> None:
        """Go on in the mode a stage chose; keep its figures among the decisions."""
        self._mode = decision.chosen
        self._decisions.append({"round": decision.server_round, **decision.figures})

    def checkpoint_entry(self) -> dict[str, Any]:
        """The checkpoint's ``probe`` entry (``wire-dtype`` too, for readers of older checkpoints)."""
        return {"wire-dtype": self.settings.activation_dtype, "mode": self._mode, "probed": list(self._probed)}

    def restore(self, entry: Mapping[str, Any]) -> None:
        """Take back a checkpoint's ``probe`` entry: a hot switch outlives a restart.

        Older checkpoints name the mode by its wire dtype alone; an empty entry keeps the basic mode.
        """
        self._mode = str(entry.get("mode", entry.get("wire-dtype", self._mode)))
        self._probed = [str(m) for m in entry.get("probed", [])]
