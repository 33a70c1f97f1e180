"""From a fleet's profiles to each client's group, mode, allocation and upload size.

A *policy* is one of :data:`strategies.policy.groupings.registry.GROUPING_POLICIES`: one mode
for everyone (``split``, ``local``, ``centralized``: the single-mode baselines) or a grouping
policy (``threshold``, ``cost``, ``kmeans``, ``random``), each a module of
:mod:`strategies.policy.groupings` with its own parameters. Clients are keyed by partition id,
which is stable across runs and restarts (Flower node ids are not).

What the strategy tells a client in every train message, and so in its first:
``group``, ``mode``, ``policy``, the policy's ``threshold-flops`` (threshold policy), and its
allocation as ``alloc-tx-power-w``, ``alloc-cpu-hz``, ``alloc-energy-budget-j``. A client whose
mode does not fit its energy budget (possible under a single-mode policy, or when no mode fits)
is told ``alloc-over-budget = true`` and runs at full speed; the ledger shows what it spent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from strategies.cost.costmodel import Allocation, Workload
from strategies.cost.workload import ModelShape, RoundPlan, affordable_rows
from strategies.fleet.profile import DeviceProfile
from strategies.modes.registry import TRAINING_MODES
from strategies.policy.allocation import allocate
from strategies.policy.grouping import Fleet, GroupConfig, GroupingPolicy, ModeAssignment, group_config
from strategies.policy.groupings.registry import GROUPING_POLICIES
from strategies.wire import names as wire
from strategies.wire.names import MODES

POLICIES = tuple(GROUPING_POLICIES)
# (policy name, rounds) stages of a schedule; rounds 0 in the last stage: until the run ends
Schedule = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Policy:
    """Which policy groups the fleet, every policy's parameters, and the settings they share.

    Attributes
    ----------
    name : str (default: "split")
        The policy in effect, a key of ``GROUPING_POLICIES``.
    params : Mapping[str, Any] (default: every policy's defaults)
        Each policy's own parameters dataclass by policy name, as
        :func:`strategies.policy.groupings.registry.grouping_params` builds them; a policy left
        out takes its defaults. All of them, as a schedule moves from one policy to another.
    local_epochs, batch_size, seed, server_flops
        What every policy shares (:class:`strategies.policy.grouping.Fleet`).
    schedule, stage_deadlines, round_deadline_s
        The policy schedule (:meth:`at`).
    """

    name: str = "split"
    params: Mapping[str, Any] = field(default_factory=dict)
    local_epochs: int = 1
    batch_size: int = 16
    seed: int = 0
    server_flops: float = 10e12
    schedule: Schedule = ()
    # A stage's own round deadline (``threshold:3@30``), None where it has none; the one in
    # effect is ``round_deadline_s``, which ``at`` sets (None: the run's strategy.round-deadline-s).
    stage_deadlines: tuple[float | None, ...] = ()
    round_deadline_s: float | None = None

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"policy '{self.name}' must be one of {list(POLICIES)}")
        for name, params in self.params.items():
            if name not in POLICIES:
                raise ValueError(f"parameters for an unknown policy '{name}'; policies: {list(POLICIES)}")
            expected = type(GROUPING_POLICIES[name].defaults)
            if type(params) is not expected:
                raise ValueError(f"policy '{name}' takes {expected.__name__}, got {type(params).__name__}")
        for stage, (name, rounds) in enumerate(self.schedule):
            last = stage == len(self.schedule) - 1
            if name not in POLICIES:
                raise ValueError(f"policy schedule: '{name}' must be one of {list(POLICIES)}")
            if rounds < (0 if last else 1):
                raise ValueError(f"policy schedule: stage {stage + 1} ({name}) needs a number of rounds >= 1")
        if self.stage_deadlines and len(self.stage_deadlines) != len(self.schedule):
            raise ValueError(f"{len(self.stage_deadlines)} stage deadlines for {len(self.schedule)} stages")

    @property
    def grouping(self) -> GroupingPolicy[Any]:
        """The registry entry of the policy in effect."""
        return GROUPING_POLICIES[self.name]

    def params_of(self, name: str) -> Any:
        """Policy ``name``'s parameters: this policy's own, or that policy's defaults."""
        return self.params.get(name, GROUPING_POLICIES[name].defaults)

    @property
    def modes(self) -> tuple[str, ...]:
        """Modes the policy may give a client (a failed client may move among them), in ``MODES`` order."""
        chosen = self.grouping.modes(self.params_of(self.name))
        return tuple(m for m in MODES if m in chosen)

    @property
    def threshold_flops(self) -> float | None:
        """The capability threshold (FLOP/s) the policy in effect splits at; None if it has none."""
        return self.grouping.threshold(self.params_of(self.name))

    def at(self, server_round: int) -> Policy:
        """The policy in effect at ``server_round``: its schedule's stage, or itself without one.

        A schedule regroups the fleet as training goes: for example cheap, fast modes while
        accuracy climbs quickly, then the accurate, slower ones (``cost:1,threshold``).
        The stage is a function of the round alone, so a resumed run is in the same one.
        """
        if not self.schedule:
            return self
        deadlines = self.stage_deadlines or (None,) * len(self.schedule)
        end, stage = 0, len(self.schedule) - 1
        for i, (_, rounds) in enumerate(self.schedule):
            end += rounds
            if server_round <= end or rounds == 0:
                stage = i
                break
        return replace(self, name=self.schedule[stage][0], round_deadline_s=deadlines[stage])

    def group_config(self, mode: str) -> GroupConfig:
        """A group's training config: local-mode groups take ``local_epochs`` passes a round."""
        return group_config(mode, self.local_epochs, self.batch_size)


def parse_schedule(text: str) -> Schedule:
    """``"cost:1,threshold:2,split"`` as ``(("cost", 1), ("threshold", 2), ("split", 0))``.

    Each stage is ``policy:rounds``; the last may leave out its rounds (it lasts until the end).
    A stage may end in ``@seconds``, its round deadline (:func:`stage_deadlines`), left out here.
    ValueError names the stage that is wrong.
    """
    stages = [part.strip().partition("@")[0].strip() for part in text.split(",") if part.strip()]
    out = []
    for i, stage in enumerate(stages):
        name, sep, rounds = stage.partition(":")
        if not sep and i < len(stages) - 1:
            raise ValueError(f"policy schedule stage '{stage}' needs its rounds, as in 'cost:2'")
        try:
            count = int(rounds) if sep else 0
        except ValueError:
            raise ValueError(f"policy schedule stage '{stage}': rounds must be a whole number") from None
        out.append((name.strip(), count))
    return tuple(out)


def stage_deadlines(text: str) -> tuple[float | None, ...]:
    """Each stage's round deadline in seconds (``threshold:3@30`` -> 30.0), None where none is given."""
    out: list[float | None] = []
    for stage in (part.strip() for part in text.split(",") if part.strip()):
        _, at, seconds = stage.partition("@")
        if not at:
            out.append(None)
            continue
        try:
            deadline = float(seconds)
        except ValueError:
            deadline = -1.0
        if not (math.isfinite(deadline) and deadline >= 0):
            raise ValueError(f"policy schedule stage '{stage}': the deadline after '@' must be seconds >= 0")
        out.append(deadline)
    return tuple(out)


def round_plan(
    policy: Policy, mode: str, steps: int, emulator_layers: int, activation_bytes: float, upload_kind: str
) -> RoundPlan:
    """What one round of ``mode`` processes, for the workload model."""
    epochs = policy.group_config(mode).local_epochs
    return RoundPlan(
        samples=steps * epochs * policy.batch_size,
        batch_size=policy.batch_size,
        emulator_layers=emulator_layers,
        activation_bytes=activation_bytes,
        upload_kind=upload_kind,
    )


def fleet_workloads(
    policy: Policy,
    shape: ModelShape,
    profiles: Mapping[int, DeviceProfile],
    available: Mapping[int, int],
    steps: int,
    emulator_layers: int,
    activation_bytes: float,
    upload_kind: str,
    upload_cap: int = 0,
) -> tuple[dict[int, dict[str, Workload]], dict[int, int]]:
    """Each client's workload in every mode, and the rows it would upload in centralized mode.

    A centralized client uploads up to ``upload_cap`` samples (0: one round's plan), fewer
    when one round's energy budget cannot pay for them; one that cannot afford a single row
    uploads the cap anyway, over budget. The cap matters: at a low enough transmit power
    almost any amount of data fits an energy budget, only ever more slowly.
    ``emulator_layers`` 0 means every upper layer (the full model).
    """
    kept = emulator_layers or shape.server_layers
    workloads, rows = {}, {}
    for cid, profile in profiles.items():
        plans = {m: round_plan(policy, m, steps, kept, activation_bytes, upload_kind) for m in MODES}
        rows[cid] = _upload_rows(profile, shape, plans, available[cid], upload_cap)
        workloads[cid] = {m: TRAINING_MODES[m].workload(shape, plans[m], rows[cid]) for m in MODES}
    return workloads, rows


def _upload_rows(
    profile: DeviceProfile, shape: ModelShape, plans: Mapping[str, RoundPlan], available: int, upload_cap: int
) -> int:
    """Rows a client would upload in the mode that uploads (:attr:`TrainingMode.uploads_once`); 0 with none."""
    rows = 0
    for mode in (m for m in TRAINING_MODES.values() if m.uploads_once):
        cap = min(available, upload_cap or plans[mode.name].samples)
        rows = affordable_rows(profile, shape, plans[mode.name], cap) or cap
    return rows


def assign(
    policy: Policy, profiles: Mapping[int, DeviceProfile], workloads: Mapping[int, Mapping[str, Workload]]
) -> dict[int, ModeAssignment]:
    """Every client's group, mode, training config and allocation under ``policy``."""
    fleet = Fleet(profiles, workloads, policy.local_epochs, policy.batch_size, policy.seed, policy.server_flops)
    out = policy.grouping.assign(policy.params_of(policy.name), fleet)
    return {a.client_id: a for a in out}


def reassign(
    assignment: ModeAssignment, mode: str, policy: Policy, profile: DeviceProfile, workloads: Mapping[str, Workload]
) -> ModeAssignment:
    """The same client and group in another mode (after a failure), with that mode's allocation."""
    config = policy.group_config(mode)
    return ModeAssignment(
        assignment.client_id,
        assignment.group,
        mode,
        config.local_epochs,
        config.batch_size,
        allocate(profile, workloads[mode]),
        assignment.threshold,
    )


def effective_allocation(assignment: ModeAssignment, profile: DeviceProfile) -> tuple[Allocation, bool]:
    """The allocation to run with, and whether it is over budget (then: full speed)."""
    if assignment.allocation is not None:
        return assignment.allocation, False
    return Allocation(profile.max_tx_power_w, profile.cpu_hz_max, profile.energy_budget_j), True


def assignment_config(assignment: ModeAssignment, policy: Policy, profile: DeviceProfile) -> dict[str, Any]:
    """The group, mode and allocation as config entries of a train message."""
    allocation, over = effective_allocation(assignment, profile)
    config: dict[str, Any] = {
        wire.GROUP: assignment.group,
        wire.MODE: assignment.mode,
        wire.POLICY: policy.name,
        wire.ALLOC_PREFIX + "tx-power-w": allocation.tx_power_w,
        wire.ALLOC_PREFIX + "cpu-hz": allocation.cpu_hz,
        wire.ALLOC_PREFIX + "energy-budget-j": allocation.energy_budget_j,
        wire.OVER_BUDGET: over,
    }
    if assignment.threshold is not None:
        config[wire.THRESHOLD_FLOPS] = assignment.threshold
    return config


def describe(assignment: ModeAssignment, profile: DeviceProfile, upload_rows: int) -> dict[str, Any]:
    """One client's line of ``groups.json``: what it is, where it went, what it may spend."""
    allocation, over = effective_allocation(assignment, profile)
    return {
        "group": assignment.group,
        "mode": assignment.mode,
        "local-epochs": assignment.local_epochs,
        "capability-flops": profile.capability,
        "snr-db": round(profile.snr_db, 2),
        "memory-bytes": profile.memory_bytes,
        "energy-budget-j": profile.energy_budget_j,
        "tx-power-w": allocation.tx_power_w,
        "cpu-hz": allocation.cpu_hz,
        "over-budget": over,
        "upload-rows": upload_rows if TRAINING_MODES[assignment.mode].uploads_once else 0,
    }
