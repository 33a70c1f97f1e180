"""Single-mode policies: every client in group 0 with the same mode (``split``, ``local``, ``centralized``).

They are the baselines a grouping policy is measured against. There is one per training mode,
named after it, so a new mode brings its own baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from strategies.cost.costmodel import Workload
from strategies.fleet.profile import DeviceProfile
from strategies.policy.grouping import Fleet, GroupConfig, GroupingPolicy, ModeAssignment, assignment, check_modes
from strategies.wire.names import MODES


@dataclass(frozen=True)
class SingleModeParams:
    """A single-mode policy has no parameters: its name is its mode."""


def assign_single(
    profiles: Mapping[int, DeviceProfile],
    config: GroupConfig,
    workloads: Mapping[int, Mapping[str, Workload]] | None = None,
) -> list[ModeAssignment]:
    """Everyone in group 0 with the same config (the single-mode baselines)."""
    return [assignment(cid, 0, config, profiles, workloads) for cid in sorted(profiles)]


def for_mode(mode: str) -> GroupingPolicy[SingleModeParams]:
    """The policy named ``mode`` that gives every client that mode."""
    check_modes((mode,))

    def assign(params: SingleModeParams, fleet: Fleet) -> list[ModeAssignment]:
        return assign_single(fleet.profiles, fleet.config(mode), fleet.workloads)

    def modes(params: SingleModeParams) -> tuple[str, ...]:
        return (mode,)

    return GroupingPolicy(mode, SingleModeParams(), assign, modes)


GROUPINGS = tuple(for_mode(mode) for mode in MODES)
