"""What a grouping policy is: the fleet it reads, the assignments it returns, its registry entry.

A grouping policy decides which training mode and config each client gets. Every policy maps
client profiles to a list of ``ModeAssignment`` sorted by client id. Groups are numbered from
the weakest clients up where the policy has an order (threshold, k-means), otherwise by the
order of the modes it is given (cost, random). The policies themselves are modules of
:mod:`strategies.policy.groupings`, one each, listed once in
:mod:`strategies.policy.groupings.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from strategies.cost.costmodel import Allocation, Workload
from strategies.fleet.profile import DeviceProfile
from strategies.modes.registry import training_mode
from strategies.policy.allocation import allocate
from strategies.wire.names import MODES

P = TypeVar("P")


@dataclass(frozen=True)
class GroupConfig:
    """Training config shared by a group: mode (one of ``MODES``), local epochs, batch size."""

    mode: str
    local_epochs: int = 1
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode '{self.mode}'; valid modes: {list(MODES)}")


@dataclass(frozen=True)
class ModeAssignment:
    """A client's group, mode, training config and resources for the coming rounds.

    Attributes
    ----------
    client_id : int
        The client (Flower node id).
    group : int
        Index of the client's group.
    mode : str
        Training mode, one of ``MODES``.
    local_epochs : int
        Local epochs per round.
    batch_size : int
        Minibatch size.
    allocation : Allocation | None
        CPU frequency and transmit power for the mode; ``None`` when no workloads were given or
        the mode does not fit the client's energy budget (and memory, for the cost policy).
    threshold : float | None
        Capability threshold (FLOP/s) the policy used, if any.
    """

    client_id: int
    group: int
    mode: str
    local_epochs: int
    batch_size: int
    allocation: Allocation | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class Fleet:
    """The fleet as a grouping policy reads it, and the run's settings every policy shares.

    Attributes
    ----------
    profiles : Mapping[int, DeviceProfile]
        Each client's device profile, by client id.
    workloads : Mapping[int, Mapping[str, Workload]] | None
        Each client's workload per mode; ``None``: assign without allocations.
    local_epochs : int (default: 1)
        Local epochs a round of a local-mode group.
    batch_size : int (default: 16)
        Minibatch size of every group.
    seed : int (default: 0)
        The run's seed: a policy that draws at random draws from it alone.
    server_flops : float (default: 10e12)
        The server's compute, FLOP/s, for policies that price a round.
    """

    profiles: Mapping[int, DeviceProfile]
    workloads: Mapping[int, Mapping[str, Workload]] | None = None
    local_epochs: int = 1
    batch_size: int = 16
    seed: int = 0
    server_flops: float = 10e12

    def config(self, mode: str) -> GroupConfig:
        """A group's training config: local-mode groups take ``local_epochs`` passes a round."""
        return group_config(mode, self.local_epochs, self.batch_size)


def group_config(mode: str, local_epochs: int, batch_size: int) -> GroupConfig:
    """The training config of a group in ``mode``: only a mode that takes local epochs passes several times."""
    return GroupConfig(mode, training_mode(mode).epochs(local_epochs), batch_size)


def _no_threshold(params: object) -> float | None:
    return None


@dataclass(frozen=True)
class GroupingPolicy(Generic[P]):
    """A grouping policy as the registry holds it: a name, its parameters and what it does.

    Attributes
    ----------
    name : str
        Its name in ``strategy.policy`` and in the stages of ``strategy.policy-schedule``.
    defaults : P
        Its own parameters dataclass with every field at its default; a run's config replaces
        fields by name (:func:`strategies.policy.groupings.registry.grouping_params`).
    assign : Callable[[P, Fleet], list[ModeAssignment]]
        Pure: every client's assignment under these parameters, sorted by client id.
    modes : Callable[[P], tuple[str, ...]]
        The modes it may give a client under these parameters (a failed client may move among
        them).
    threshold : Callable[[P], float | None] (default: none)
        The capability threshold (FLOP/s) it splits the fleet at, if it has one: what a client's
        train message and ``groups.json`` report as ``threshold-flops``.
    """

    name: str
    defaults: P
    assign: Callable[[P, Fleet], list[ModeAssignment]]
    modes: Callable[[P], tuple[str, ...]]
    threshold: Callable[[P], float | None] = _no_threshold


def assignment(
    cid: int,
    group: int,
    config: GroupConfig,
    profiles: Mapping[int, DeviceProfile],
    workloads: Mapping[int, Mapping[str, Workload]] | None,
    threshold: float | None = None,
) -> ModeAssignment:
    """Client ``cid`` in ``group`` with ``config``, allocated for its mode when it has a workload."""
    allocation = None
    if workloads is not None and config.mode in workloads.get(cid, {}):
        allocation = allocate(profiles[cid], workloads[cid][config.mode])
    return ModeAssignment(cid, group, config.mode, config.local_epochs, config.batch_size, allocation, threshold)


def check_modes(modes: tuple[str, ...]) -> None:
    """ValueError unless every name in ``modes`` is a training mode."""
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode '{mode}' must be one of {list(MODES)}")
