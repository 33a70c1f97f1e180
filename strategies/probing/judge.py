"""Probing a training mode against the basic one at a stage of training, then a hot switch.

At a target stage (a round of :attr:`ProbePlan.rounds`, or the first round after the
held-out loss stops falling by :attr:`ProbePlan.plateau`), the strategy trains one round
in the optimized mode and one round in the basic mode, both from the same global tensors
(sequential probing: the state is restored between them). Each trial's reference figures
are its convergence amount (held-out loss drop, or accuracy gain) and its simulated
duration; their ratio is its convergence rate. The mode with the higher rate (or the
higher accuracy reached, with ``criterion="accuracy"``) is kept, with the tensors it
trained, and the run goes on in it without a restart. Ties go to the basic mode: a
change must earn its keep. When neither trial converged, the one that lost less wins.

A compressed mode (a wire dtype or top-k uploads) buys time with noise. Under the rate
criterion, one whose trial round saves less than :attr:`ProbePlan.min_saving` of the basic
trial's simulated seconds is not taken, whatever the trials' losses say: on links where
bytes cost nothing, its one-round loss difference from the basic mode is noise of the
size of its real accuracy cost, so a single trial cannot tell them apart (README, *Probing*).

A mode is named by its spec (:mod:`strategies.probing.modes`): a wire dtype of the boundary
tensors (``float16``, ``int8``), top-k uploads (``topk:0.1``) or a longer replay plan
(``plan:2``); the basic mode by its wire dtype (``float32``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from strategies.probing.modes import PLAN, parse_mode

CRITERIA = ("rate", "accuracy")
AMOUNTS = ("loss", "accuracy")
VARIANTS = ("sequential", "parallel")  # two trial rounds, or one round on two halves of the clients


@dataclass(frozen=True)
class ProbePlan:
    """When to probe, what against what, and how to judge.

    Parameters
    ----------
    optimized : str
        The optimized mode's spec, e.g. ``"int8"``, ``"topk:0.1"``, ``"plan:2"`` ("" turns probing off).
    rounds : tuple[int, ...]
        Rounds that start a probe stage (sequential: that round and the next; parallel: that round).
    plateau : float
        Also probe after a round whose held-out loss fell by less than this fraction
        of the loss before it (0: off). At most once per mode in use.
    amount : str
        Convergence amount: ``"loss"`` (held-out loss drop) or ``"accuracy"`` (gain).
    criterion : str
        ``"rate"`` (amount per simulated second) or ``"accuracy"`` (accuracy reached).
    variant : str
        ``"sequential"``: a stage is two rounds, one per mode, the state restored between
        them; ``"parallel"``: a stage is one round, each half of the clients in one mode
        (:mod:`strategies.probing.parallel`).
    min_saving : float
        Under the rate criterion, the least fraction of the basic trial's simulated seconds
        a compressed mode's trial must save to be taken (0: any rate gain will do).
    """

    optimized: str = ""
    rounds: tuple[int, ...] = ()
    plateau: float = 0.0
    amount: str = "loss"
    criterion: str = "rate"
    variant: str = "sequential"
    min_saving: float = 0.05

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"probe variant {self.variant!r} must be one of {list(VARIANTS)}")
        if self.amount not in AMOUNTS:
            raise ValueError(f"probe amount {self.amount!r} must be one of {list(AMOUNTS)}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"probe criterion {self.criterion!r} must be one of {list(CRITERIA)}")
        if not 0.0 <= self.min_saving < 1.0:
            raise ValueError(f"probe min_saving {self.min_saving!r} must be in [0, 1)")
        if not 0.0 <= self.plateau < 1.0:
            raise ValueError(f"probe plateau {self.plateau!r} must be in [0, 1)")
        if any(r < 1 for r in self.rounds):
            raise ValueError(f"probe rounds {self.rounds} must be >= 1")

    @property
    def enabled(self) -> bool:
        return bool(self.optimized) and (bool(self.rounds) or self.plateau > 0)


@dataclass(frozen=True)
class Decision:
    """A probe stage's verdict: the mode the run goes on in, and the figures that decided it.

    ``figures`` is what :func:`judge` returned (and, for a parallel stage, its variant); the
    probe controller keeps ``{"round": server_round, **figures}`` among its decisions.
    """

    server_round: int
    chosen: str
    figures: dict[str, Any]


@dataclass(frozen=True)
class Settled:
    """What a probe makes of one of its rounds as the round closes, before it is saved.

    ``extra``: fields added to the round's record; ``state``: the tensors to keep (a
    sequential stage may keep its first trial's); ``decision``: the stage's verdict when the
    stage ends with this round, applied before the round's checkpoint is written so that a
    resumed run goes on in the chosen mode.
    """

    extra: dict[str, Any]
    state: dict[str, np.ndarray]
    decision: Decision | None = None


# (a round's record, its tensors) -> what the probe adds, keeps and decides
Settle = Callable[[dict[str, Any], dict[str, np.ndarray]], Settled]


@dataclass(frozen=True)
class Trial:
    """One probe trial's reference figures."""

    mode: str
    start_loss: float
    end_loss: float
    start_accuracy: float
    end_accuracy: float
    seconds: float  # simulated duration of the trial round

    def amount(self, kind: str) -> float:
        if kind == "loss":
            return self.start_loss - self.end_loss
        return self.end_accuracy - self.start_accuracy


def rate(trial: Trial, kind: str) -> float:
    """Convergence amount per simulated second (an instant trial: +-inf by the amount's sign)."""
    amount = trial.amount(kind)
    if trial.seconds > 0:
        return amount / trial.seconds
    return math.copysign(math.inf, amount) if amount else 0.0


def decide(basic: Trial, optimized: Trial, plan: ProbePlan) -> tuple[str, dict[str, Any]]:
    """The mode to keep and the figures that decided it; a tie keeps the basic mode."""
    trials = (basic, optimized)
    if plan.criterion == "rate" and any(t.amount(plan.amount) > 0 for t in trials):
        scores = {t.mode: rate(t, plan.amount) for t in trials}
    elif plan.criterion == "rate":
        # Neither trial converged: a rate of divergence would favour the slower mode, so the
        # one that lost less wins, whatever it took.
        scores = {t.mode: t.amount(plan.amount) for t in trials}
    else:
        scores = {basic.mode: basic.end_accuracy, optimized.mode: optimized.end_accuracy}
    chosen = optimized.mode if scores[optimized.mode] > scores[basic.mode] else basic.mode
    saving = 1.0 - optimized.seconds / basic.seconds if basic.seconds > 0 else 0.0
    too_little = plan.criterion == "rate" and compresses(optimized.mode) and saving < plan.min_saving
    if too_little:
        chosen = basic.mode
    figures = {
        "criterion": plan.criterion,
        "amount": plan.amount,
        "chosen": chosen,
        "time-saving": saving,
        "trials": {
            t.mode: {
                "amount": t.amount(plan.amount),
                "seconds": t.seconds,
                "score": scores[t.mode],
                "end-loss": t.end_loss,
                "end-accuracy": t.end_accuracy,
            }
            for t in (basic, optimized)
        },
    }
    if too_little:
        figures["rule"] = f"saves {100 * saving:.1f}% of the round's time, under the {100 * plan.min_saving:g}% minimum"
    return chosen, figures


def compresses(mode: str) -> bool:
    """Whether a mode spec trades noise for bytes (a narrower wire dtype, top-k uploads)."""
    return mode != "float32" and parse_mode(mode).kind != PLAN


def stage_due(
    plan: ProbePlan, server_round: int, history: Sequence[Mapping[str, Any]], probed_modes: Sequence[str], mode: str
) -> bool:
    """Whether ``server_round`` starts a probe stage."""
    if not plan.enabled or mode == plan.optimized and not plan.rounds:
        return False
    if server_round in plan.rounds:
        return True
    if plan.plateau <= 0 or mode in probed_modes or len(history) < 2:
        return False
    before, after = history[-2].get("eval-loss"), history[-1].get("eval-loss")
    if before is None or after is None or before <= 0:
        return False
    return bool((before - after) / before < plan.plateau)


def mark(mode: str) -> Settle:
    """The first trial's settle: its record says which mode it tried."""
    return lambda record, state: Settled({"probe": {"trial": mode}}, state)


def judge(
    start: Mapping[str, Any],
    optimized_record: Mapping[str, Any],
    basic_record: Mapping[str, Any],
    optimized: str,
    basic: str,
    plan: ProbePlan,
) -> tuple[str, dict[str, Any]]:
    """The decision of a stage from its two trials' round records; basic if one was not evaluated."""
    if not (figures_of(optimized_record) and figures_of(basic_record)):
        return basic, {"chosen": basic, "reason": "a trial was not evaluated"}
    return decide(trial_of(basic, start, basic_record), trial_of(optimized, start, optimized_record), plan)


def figures_of(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Held-out loss and accuracy of a round record or of an evaluation (``loss``), if it has them."""
    if not metrics:
        return {}
    loss = metrics.get("eval-loss", metrics.get("loss"))
    accuracy = metrics.get("accuracy")
    return {} if loss is None or accuracy is None else {"eval-loss": float(loss), "accuracy": float(accuracy)}


def describe(figures: Mapping[str, Any]) -> str:
    """One log line of a decision."""
    if "trials" not in figures:
        return f"keeps {figures['chosen']}: {figures.get('reason', '')}"
    trials = ", ".join(
        f"{mode} {t['amount']:+.4f} {figures['amount']} in {t['seconds']:.2f} s (score {t['score']:.4g})"
        for mode, t in figures["trials"].items()
    )
    return f"keeps {figures['chosen']}: {trials}"


def trial_of(mode: str, start: Mapping[str, Any], record: Mapping[str, Any]) -> Trial:
    """A trial from the held-out figures before it and its round's record."""
    return Trial(
        mode=mode,
        start_loss=float(start["eval-loss"]),
        end_loss=float(record["eval-loss"]),
        start_accuracy=float(start["accuracy"]),
        end_accuracy=float(record["accuracy"]),
        seconds=float(record.get("sim-latency-s") or 0.0),
    )


def parse_rounds(text: str) -> tuple[int, ...]:
    """``"3,6"`` as rounds; a clear error naming the setting otherwise."""
    try:
        return tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError as err:
        raise ValueError(f"strategy.probe-rounds={text!r} must list round numbers, e.g. '3,6'") from err
