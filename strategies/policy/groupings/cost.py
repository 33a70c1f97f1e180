"""The ``cost`` policy: each client in the mode it finishes a round in soonest.

Per client, among ``strategy.cost-modes``, the mode with the least simulated round latency
(:mod:`strategies.cost.costmodel`, at the :func:`strategies.policy.allocation.allocate` optimum)
that fits its energy budget and memory. Groups are numbered by the order of the modes given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from strategies.cost.costmodel import Allocation, Workload, round_cost
from strategies.fleet.profile import DeviceProfile
from strategies.policy.allocation import allocate
from strategies.policy.grouping import Fleet, GroupConfig, GroupingPolicy, ModeAssignment, check_modes


@dataclass(frozen=True)
class CostParams:
    """Parameters of the cost policy.

    Attributes
    ----------
    cost_modes : tuple[str, ...] (default: ("local", "split", "centralized"))
        Modes a client may be given (``strategy.cost-modes``); group r is the r-th of them.
    """

    cost_modes: tuple[str, ...] = ("local", "split", "centralized")

    def __post_init__(self) -> None:
        check_modes(self.cost_modes)


def assign_cost(
    profiles: Mapping[int, DeviceProfile],
    workloads: Mapping[int, Mapping[str, Workload]],
    server_flops_per_s: float,
    group_configs: Mapping[str, GroupConfig],
) -> list[ModeAssignment]:
    """Per client, the mode with the least simulated round latency that fits its budget and memory.

    Candidate modes are the keys of ``group_configs`` a client has a workload for; group is the
    mode's index in ``group_configs``. Latency uses the ``allocate`` optimum for each mode.
    A client that no mode fits gets, among the modes that fit its memory (all modes if none
    does), the one with the least energy at full speed, with ``allocation=None`` as the mark:
    the strategy decides whether to skip it or let it try and report a failure.
    """
    modes = list(group_configs)
    for mode, config in group_configs.items():
        if config.mode != mode:
            raise ValueError(f"group_configs['{mode}'] has mode '{config.mode}'")
    out = []
    for cid in sorted(profiles):
        candidates = [m for m in modes if m in workloads[cid]]
        if not candidates:
            raise ValueError(f"client {cid} has no workload for any of the modes {modes}")
        mode, allocation = _fastest_fitting_mode(profiles[cid], workloads[cid], candidates, server_flops_per_s)
        config = group_configs[mode]
        out.append(ModeAssignment(cid, modes.index(mode), mode, config.local_epochs, config.batch_size, allocation))
    return out


def _fastest_fitting_mode(
    profile: DeviceProfile,
    workloads: Mapping[str, Workload],
    candidates: list[str],
    server_flops_per_s: float,
) -> tuple[str, Allocation | None]:
    fits = []
    for order, mode in enumerate(candidates):
        workload = workloads[mode]
        allocation = allocate(profile, workload)
        if allocation is not None and workload.client_memory_bytes <= profile.memory_bytes:
            latency = round_cost(profile, workload, allocation, server_flops_per_s).latency_s
            # The order breaks latency ties before the tuple comparison reaches Allocation.
            fits.append((latency, order, mode, allocation))
    if fits:
        _, _, mode, allocation = min(fits)
        return mode, allocation
    return _fallback_mode(profile, workloads, candidates), None


def _fallback_mode(profile: DeviceProfile, workloads: Mapping[str, Workload], candidates: list[str]) -> str:
    in_memory = [m for m in candidates if workloads[m].client_memory_bytes <= profile.memory_bytes]
    full_speed = Allocation(profile.max_tx_power_w, profile.cpu_hz_max, profile.energy_budget_j)
    # Server speed does not enter client energy, so any positive value will do here.
    return min(in_memory or candidates, key=lambda m: round_cost(profile, workloads[m], full_speed, 1.0).energy_j)


def assign(params: CostParams, fleet: Fleet) -> list[ModeAssignment]:
    """Each client of ``fleet`` in its fastest fitting mode among ``params.cost_modes``."""
    if fleet.workloads is None:
        raise ValueError("the cost policy prices each mode: it needs the fleet's workloads")
    configs = {m: fleet.config(m) for m in params.cost_modes}
    return assign_cost(fleet.profiles, fleet.workloads, fleet.server_flops, configs)


def modes(params: CostParams) -> tuple[str, ...]:
    return params.cost_modes


GROUPING = GroupingPolicy("cost", CostParams(), assign, modes)
