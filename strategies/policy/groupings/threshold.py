"""The ``threshold`` policy: clients below a capability threshold form the weak group.

Capability is a profile's compute throughput at full frequency, ``cpu-hz-max / cycles-per-flop``
in FLOP/s. Clients below ``strategy.threshold-flops`` go to group 0 in ``strategy.weak-mode``
(centralized: they upload once and stop computing), the rest to group 1 in
``strategy.strong-mode`` (split). The threshold travels in every train message as
``threshold-flops``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from strategies.cost.costmodel import Workload
from strategies.fleet.profile import DeviceProfile
from strategies.policy.grouping import Fleet, GroupConfig, GroupingPolicy, ModeAssignment, assignment, check_modes


@dataclass(frozen=True)
class ThresholdParams:
    """Parameters of the threshold policy.

    Attributes
    ----------
    threshold_flops : float (default: 20e9)
        Capability (FLOP/s) below which a client is weak (``strategy.threshold-flops``).
    weak_mode : str (default: "centralized")
        Mode of the weak group, group 0 (``strategy.weak-mode``).
    strong_mode : str (default: "split")
        Mode of the strong group, group 1 (``strategy.strong-mode``).
    """

    threshold_flops: float = 20e9
    weak_mode: str = "centralized"
    strong_mode: str = "split"

    def __post_init__(self) -> None:
        check_modes((self.weak_mode, self.strong_mode))


def assign_threshold(
    profiles: Mapping[int, DeviceProfile],
    threshold: float,
    strong: GroupConfig,
    weak: GroupConfig,
    workloads: Mapping[int, Mapping[str, Workload]] | None = None,
) -> list[ModeAssignment]:
    """Clients below ``threshold`` capability (FLOP/s) go to group 0 (``weak``), others to 1."""
    out = []
    for cid in sorted(profiles):
        is_weak = profiles[cid].capability < threshold
        group, config = (0, weak) if is_weak else (1, strong)
        out.append(assignment(cid, group, config, profiles, workloads, threshold))
    return out


def assign(params: ThresholdParams, fleet: Fleet) -> list[ModeAssignment]:
    """The fleet split at ``params.threshold_flops``."""
    strong, weak = fleet.config(params.strong_mode), fleet.config(params.weak_mode)
    return assign_threshold(fleet.profiles, params.threshold_flops, strong, weak, fleet.workloads)


def modes(params: ThresholdParams) -> tuple[str, ...]:
    return (params.weak_mode, params.strong_mode)


def threshold(params: ThresholdParams) -> float | None:
    return params.threshold_flops


GROUPING = GroupingPolicy("threshold", ThresholdParams(), assign, modes, threshold)
