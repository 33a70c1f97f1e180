"""What the server knows of its fleet across rounds: clients, modes, workloads, strikes, pool.

Clients are keyed by partition id wherever the state must survive a restart (Flower
node ids do not); :class:`FleetState` keeps the node id only to address messages.
Everything a resumed run needs is in :meth:`FleetState.dump`; the centralized pool is
saved beside it by the run directory (it is large).

The fleet comes and goes (:mod:`strategies.fleet.membership` decides who is admitted): a node
that disconnects is excluded at once as *unreachable*; a node that later claims its
partition id takes it over, and the partition's strikes and failure-policy mode continue
(an exclusion too, unless it was for being unreachable).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.common.logger import log

from strategies.cost.costmodel import Workload
from strategies.cost.workload import ModelShape
from strategies.fleet import channel
from strategies.fleet.channel import ChannelProcess
from strategies.fleet.devices import PROFILE_KEYS, DeviceProfile, from_config
from strategies.policy import policies as fleet
from strategies.policy.grouping import ModeAssignment
from strategies.policy.requirements import Failure, react_to_failures
from strategies.settings import SplitSettings
from strategies.wire import names as wire

Pool = dict[int, dict[str, np.ndarray]]  # centralized uploads by partition id


@dataclass(frozen=True)
class ClientInfo:
    """What a client told the server in its ``query`` reply."""

    node_id: int
    partition_id: int
    num_available: int
    profile: DeviceProfile
    num_partitions: int = 0  # 0: a device with its own data, whose partition id is its device id
    channel: ChannelProcess = channel.STATIC  # how the gain moves around the profile's by round


def client_info(reply: Message, node: int) -> ClientInfo:
    """The query reply of ``node`` as a :class:`ClientInfo`; raises, saying why, on a malformed reply.

    A partitioned node (``num-partitions`` >= 1) must report a partition id in
    ``[0, num-partitions)``; a device with its own data reports ``num-partitions`` 0 and its
    device id (>= 0) as partition id. The sample count must be non-negative.
    """
    profile = reply.content.config_records[wire.PROFILE]
    device = from_config({k: profile[k] for k in PROFILE_KEYS if k in profile})
    partition_id, partitions = wire.as_int(profile[wire.PARTITION_ID]), wire.as_int(profile[wire.NUM_PARTITIONS])
    if partitions < 0:
        raise ValueError(f"num-partitions {partitions} is negative")
    if partition_id < 0 or (partitions > 0 and partition_id >= partitions):
        raise ValueError(f"partition-id {partition_id} is outside [0, num-partitions={partitions})")
    available = wire.as_int(profile[wire.NUM_AVAILABLE])
    if available < 0:
        raise ValueError(f"num-available {available} is negative")
    return ClientInfo(node, partition_id, available, device, partitions, channel.from_config(profile))


def round_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed of one client's batch plan in one round, independent of node ids and reply order."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0] % (2**31))


def sample(clients: Sequence[ClientInfo], server_round: int, settings: SplitSettings) -> list[ClientInfo]:
    """This round's clients in partition order: all, or a seeded ``fraction_train`` of them."""
    known = sorted(clients, key=lambda c: c.partition_id)
    count = max(settings.min_clients, int(np.ceil(settings.fraction_train * len(known))))
    if count >= len(known):
        return known
    rng = np.random.default_rng([settings.seed, server_round])
    chosen = rng.choice(len(known), size=count, replace=False)
    return [known[i] for i in sorted(chosen)]


@dataclass
class FleetState:
    """The fleet as the server sees it between rounds.

    ``clients`` by node id (connected or gone); ``assignments``, ``workloads``,
    ``upload_rows``, ``strikes``, ``excluded`` and ``pool`` by partition id.
    ``unreachable``: partitions excluded because their node went away (Flower reported it
    unavailable, or it left the grid), lifted when a node claims the partition again.
    ``moved_modes``: modes the failure policy gave (or a checkpoint restored); a new plan
    keeps them. ``gone`` and ``refused`` hold node ids seen leaving or refused at a query
    (not kept by a checkpoint: node ids do not survive a restart).
    """

    clients: dict[int, ClientInfo] = field(default_factory=dict)
    assignments: dict[int, ModeAssignment] = field(default_factory=dict)
    workloads: dict[int, dict[str, Workload]] = field(default_factory=dict)
    upload_rows: dict[int, int] = field(default_factory=dict)
    strikes: dict[int, int] = field(default_factory=dict)
    excluded: set[int] = field(default_factory=set)
    pool: Pool = field(default_factory=dict)
    moved_modes: dict[int, str] = field(default_factory=dict)
    unreachable: set[int] = field(default_factory=set)
    gone: set[int] = field(default_factory=set)
    refused: dict[int, str] = field(default_factory=dict)
    channel_round: int | None = None  # whose channel the plan used (None: the mean gains)
    seed: int = 0  # the run seed, which the channel draws hang on
    planned_steps: int = 0  # steps per round the workloads were planned for (a probe may train more)

    def dump(self) -> dict[str, Any]:
        """What a checkpoint keeps (JSON: int keys become strings)."""
        return {
            "strikes": self.strikes,
            "excluded": sorted(self.excluded),
            "unreachable": sorted(self.unreachable),
            "modes": {str(p): a.mode for p, a in self.assignments.items()},
            "moved": {str(p): m for p, m in sorted(self.moved_modes.items())},
        }

    def restore(self, state: Mapping[str, Any], pool: Pool) -> None:
        """The fleet state of a checkpoint, and the pool saved beside it.

        A checkpoint without ``moved`` (written before modes moved by failures were kept
        apart) keeps every mode it lists.
        """
        self.strikes = {int(k): int(v) for k, v in state.get("strikes", {}).items()}
        self.excluded = {int(p) for p in state.get("excluded", [])}
        self.unreachable = {int(p) for p in state.get("unreachable", [])} & self.excluded
        self.moved_modes = {int(k): str(v) for k, v in state.get("moved", state.get("modes", {})).items()}
        self.pool = pool

    def info(self, partition_id: int) -> ClientInfo:
        return next(c for c in self.clients.values() if c.partition_id == partition_id)

    def mode_of(self, node: int) -> str:
        return self.assignments[self.clients[node].partition_id].mode

    def active(self) -> list[ClientInfo]:
        """Known clients that are not excluded, in partition order."""
        return sorted(
            (c for c in self.clients.values() if c.partition_id not in self.excluded), key=lambda c: c.partition_id
        )

    def steps_of(self, info: ClientInfo, settings: SplitSettings) -> int:
        """Minibatches a client trains this round (a local group: times its local epochs)."""
        return settings.steps * self.assignments[info.partition_id].local_epochs

    def planned_profile(self, info: ClientInfo) -> DeviceProfile:
        """A client's profile as the plan sees it: with the channel gain of ``channel_round``."""
        return channel.profile_at(info.profile, info.channel, self.seed, info.partition_id, self.channel_round)

    def plan(self, settings: SplitSettings, shape: ModelShape, server_round: int = 1) -> None:
        """Group the fleet, give each client a mode, an allocation and an upload size.

        The plan of ``server_round`` sees each client's channel as the latest requery found it
        (:func:`strategies.fleet.channel.planning_round`).
        """
        self.seed, self.channel_round = settings.seed, channel.planning_round(server_round, settings.requery_every)
        self.planned_steps = settings.steps
        infos = {c.partition_id: c for c in self.clients.values()}
        profiles = {p: self.planned_profile(c) for p, c in infos.items()}
        policy = settings.fleet_policy
        self.workloads, self.upload_rows = fleet.fleet_workloads(
            policy,
            shape,
            profiles,
            {p: c.num_available for p, c in infos.items()},
            settings.steps,
            settings.emulator_layers,
            settings.activation_bytes,
            settings.upload_kind,
            settings.upload_rows,
        )
        self.assignments = fleet.assign(policy, profiles, self.workloads)
        for pid, mode in self.moved_modes.items():
            if pid in self.assignments and self.assignments[pid].mode != mode:
                self.move(pid, mode, settings)

    def move(self, partition_id: int, mode: str, settings: SplitSettings) -> None:
        """The client keeps its group in another mode, with that mode's allocation; later plans keep the mode."""
        self.moved_modes[partition_id] = mode
        self.assignments[partition_id] = fleet.reassign(
            self.assignments[partition_id],
            mode,
            settings.fleet_policy,
            self.planned_profile(self.info(partition_id)),
            self.workloads[partition_id],
        )

    def react(
        self,
        failures: Mapping[int, Failure],
        succeeded: Sequence[int],
        settings: SplitSettings,
        unavailable: Iterable[int] = (),
    ) -> bool:
        """Apply the failure policy to this round's failures (by node id); whether a mode changed.

        Insufficient compute moves a client to a cheaper mode, insufficient samples to
        centralized training; with no such mode left the client is excluded, and so is
        one whose transient faults reach ``max_strikes`` rounds in a row, and at once a
        node that Flower reported ``unavailable`` (by node id).
        """
        for node in unavailable:
            self.lose(node, "Flower reports its node unavailable")
        by_partition = {self.clients[n].partition_id: f for n, f in failures.items() if n in self.clients}
        modes = {p: self.assignments[p].mode for p in by_partition}
        reactions, self.strikes = react_to_failures(
            by_partition,
            modes,
            settings.fleet_policy.modes,
            self.strikes,
            succeeded=succeeded,
            max_strikes=settings.max_strikes,
        )
        changed = False
        for partition_id, reaction in sorted(reactions.items()):
            if reaction.excluded:
                self.excluded.add(partition_id)
                log(WARNING, "client %d excluded from later rounds (%s)", partition_id, reaction.cause)
            elif reaction.mode != modes[partition_id]:
                self.move(partition_id, reaction.mode, settings)
                changed = True
                log(
                    WARNING,
                    "client %d moves from %s to %s mode (%s)",
                    partition_id,
                    modes[partition_id],
                    reaction.mode,
                    reaction.cause,
                )
        return changed

    def lose(self, node: int, why: str) -> None:
        """Stop sampling a client whose node went away (until a node claims its partition again)."""
        if self._unreachable(node):
            log(WARNING, "client %d excluded from later rounds (%s)", self.clients[node].partition_id, why)

    def leave(self, connected: Iterable[int]) -> dict[int, int]:
        """Clients whose node is no longer connected, excluded at once: node id by partition id, first seen gone."""
        online = set(connected)
        left = {c.partition_id: n for n, c in self.clients.items() if n not in online and n not in self.gone}
        for node in left.values():
            self._unreachable(node)
            self.gone.add(node)
        return dict(sorted(left.items()))

    def come_back(self, connected: Iterable[int]) -> dict[int, int]:
        """Gone nodes that are connected again (same node id): sampled again, node id by partition id.

        Their exclusion for being unreachable ends; one for failures stays.
        """
        online = set(connected)
        back = {self.clients[n].partition_id: n for n in self.gone if n in online}
        for partition_id, node in back.items():
            self.gone.discard(node)
            self._reachable(partition_id)
        return dict(sorted(back.items()))

    def _unreachable(self, node: int) -> bool:
        if node not in self.clients or self.clients[node].partition_id in self.excluded:
            return False
        self.excluded.add(self.clients[node].partition_id)
        self.unreachable.add(self.clients[node].partition_id)
        return True

    def join(self, info: ClientInfo) -> None:
        """Admit a client; a node that claims a gone node's partition takes over its state.

        Strikes, a failure-policy mode and an exclusion for failures continue; an exclusion
        for being unreachable ends, as the client is back.
        """
        for node in [n for n, c in self.clients.items() if c.partition_id == info.partition_id]:
            del self.clients[node]
            self.gone.discard(node)
        self._reachable(info.partition_id)
        self.refused.pop(info.node_id, None)
        self.clients[info.node_id] = info

    def _reachable(self, partition_id: int) -> None:
        if partition_id in self.unreachable:
            self.unreachable.discard(partition_id)
            self.excluded.discard(partition_id)

    def groups(self, settings: SplitSettings) -> dict[str, Any]:
        """``groups.json``: the policy and, per client, group, mode, profile and allocation."""
        policy = settings.fleet_policy
        infos = {c.partition_id: c for c in self.clients.values()}
        return {
            "policy": policy.name,
            "modes": list(policy.modes),
            "threshold-flops": policy.threshold_flops,
            "clients": {
                str(p): fleet.describe(a, self.planned_profile(infos[p]), self.upload_rows[p])
                for p, a in sorted(self.assignments.items())
            },
        }

    def changing_channels(self) -> bool:
        """Whether some client still sampled has a channel that changes by round."""
        return any(not c.channel.static for c in self.active())

    def mode_counts(self, assignments: Mapping[int, ModeAssignment] | None = None) -> dict[str, int]:
        chosen = self.assignments if assignments is None else assignments
        return {m: sum(a.mode == m for a in chosen.values()) for m in wire.MODES}
