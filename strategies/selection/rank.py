"""Choosing a candidate under device constraints: footprints, constraints, ranking.

A *candidate* is a model with its split point, prefix length, learning rate and mode.
Before anything trains, its *footprint* on a reference device follows from the split
model's shape and the cost model (:mod:`strategies.cost.workload`, :mod:`strategies.cost.costmodel`):

==================  ====  ==========================================================
figure              unit  from
==================  ====  ==========================================================
memory              B     the mode's ``client_memory_bytes`` (weights + activations)
device parameters   -     embeddings + the layers the device runs (lower; local mode:
                          lower + emulator layers)
round latency       s     ``round_cost`` under the latency-optimal ``allocate``; a
                          round over the energy budget runs at full speed
round energy        J     the same round's client energy
uplink              B     the mode's ``uplink_bytes`` per round
==================  ====  ==========================================================

:func:`violations` names every limit a footprint breaks, with both figures; the
survivors are ranked by predicted accuracy (:func:`choose`), ties going to the
faster round. :func:`kendall_tau` (tau-b, ties counted) compares two rankings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from strategies.cost.costmodel import Allocation, Workload, round_cost
from strategies.cost.workload import ModelShape, RoundPlan
from strategies.fleet.devices import DeviceProfile
from strategies.modes.registry import TRAINING_MODES, training_mode
from strategies.policy.allocation import allocate

SELECTABLE_MODES = tuple(TRAINING_MODES)


@dataclass(frozen=True)
class Footprint:
    """What one round of a candidate asks of the reference device (units in the module table)."""

    memory_bytes: float
    device_params: int
    latency_s: float
    energy_j: float
    uplink_bytes: float
    over_budget: bool  # no allocation fits the device's energy budget


@dataclass(frozen=True)
class Limits:
    """Constraints a candidate must keep; ``None``: no bound.

    ``memory_bytes`` and ``energy_j`` default (in :func:`limits_for`) to the device's own memory
    and energy budget.
    """

    memory_bytes: float | None = None
    device_params: float | None = None
    latency_s: float | None = None
    energy_j: float | None = None
    uplink_bytes: float | None = None


# Limit field -> (what the user reads, unit).
LIMIT_NAMES = {
    "memory_bytes": ("device memory", "B"),
    "device_params": ("parameters on the device", ""),
    "latency_s": ("round latency", "s"),
    "energy_j": ("round energy", "J"),
    "uplink_bytes": ("uplink per round", "B"),
}


@dataclass(frozen=True)
class Violation:
    """One broken constraint: which, the candidate's figure and the limit."""

    limit: str
    value: float
    bound: float

    def __str__(self) -> str:
        name, unit = LIMIT_NAMES[self.limit]
        return f"{name} {self.value:.4g}{' ' + unit if unit else ''} > {self.bound:.4g}{' ' + unit if unit else ''}"


def workload_of(shape: ModelShape, mode: str, plan: RoundPlan) -> Workload:
    """One round of ``mode`` for the shape (a client that uploads uploads the round's samples)."""
    return training_mode(mode).workload(shape, plan, plan.samples)


def footprint(shape: ModelShape, mode: str, plan: RoundPlan, device: DeviceProfile, server_flops: float) -> Footprint:
    """A candidate's round on ``device`` (see the module table)."""
    work = workload_of(shape, mode, plan)
    allocation = allocate(device, work)
    over = allocation is None
    if allocation is None:  # what the strategy does too: run at full speed, over budget
        allocation = Allocation(device.max_tx_power_w, device.cpu_hz_max, device.energy_budget_j)
    cost = round_cost(device, work, allocation, server_flops)
    return Footprint(
        memory_bytes=work.client_memory_bytes,
        device_params=training_mode(mode).device_params(shape, plan),
        latency_s=cost.latency_s,
        energy_j=cost.energy_j,
        uplink_bytes=work.uplink_bytes,
        over_budget=over,
    )


def limits_for(device: DeviceProfile, given: Mapping[str, float | None]) -> Limits:
    """The user's limits, with the device's memory and energy budget where none is given."""
    unknown = sorted(set(given) - set(LIMIT_NAMES))
    if unknown:
        raise ValueError(f"unknown constraint(s) {unknown}; valid: {sorted(LIMIT_NAMES)}")
    for key, value in given.items():
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"constraint '{key}' must be a positive number, got {value!r}")
    merged: dict[str, float | None] = {"memory_bytes": device.memory_bytes, "energy_j": device.energy_budget_j}
    merged.update({k: v for k, v in given.items() if v is not None})
    return Limits(**merged)


def violations(figures: Footprint, limits: Limits) -> list[Violation]:
    """Every limit ``figures`` break, in the order of ``LIMIT_NAMES``."""
    broken = []
    for key in LIMIT_NAMES:
        bound = getattr(limits, key)
        value = float(getattr(figures, key))
        if bound is not None and value > bound:
            broken.append(Violation(key, value, float(bound)))
    return broken


def ranks(scores: Sequence[float]) -> list[float]:
    """Rank 1 for the highest score; tied scores share the mean of their ranks."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    out = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            out[i] = (start + end) / 2 + 1
        start = end + 1
    return out


def choose(predicted: Sequence[float], latency_s: Sequence[float]) -> int:
    """Index of the highest prediction; among equal predictions the faster round, then the first."""
    if not predicted or len(predicted) != len(latency_s):
        raise ValueError(f"choose needs one latency per prediction, got {len(predicted)} and {len(latency_s)}")
    return min(range(len(predicted)), key=lambda i: (-predicted[i], latency_s[i], i))


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two score lists: +1 same order, -1 reversed; ties counted.

    ``(C - D) / sqrt((P - Tx) (P - Ty))`` over the ``P`` pairs, with ``C`` concordant and ``D``
    discordant pairs and ``Tx``, ``Ty`` the pairs tied in ``x`` or ``y``. NaN when either list
    is constant (no order to compare).
    """
    if len(x) != len(y):
        raise ValueError(f"kendall_tau needs lists of one length, got {len(x)} and {len(y)}")
    concordant = discordant = tied_x = tied_y = pairs = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            pairs += 1
            dx, dy = x[i] - x[j], y[i] - y[j]
            tied_x += dx == 0
            tied_y += dy == 0
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
    denominator = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return (concordant - discordant) / denominator if denominator else math.nan
