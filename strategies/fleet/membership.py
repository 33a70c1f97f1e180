"""Who is in the fleet: which nodes are admitted, which refused, when profiles are asked again.

Client ids are partition ids. A node reports its id in its ``query`` reply:

=========================================  ====================  ===========================
node                                       ``num-partitions``    ``partition-id``
=========================================  ====================  ===========================
partitioned (simulated, or given a slice)  n >= 1                in ``[0, n)``
deployed device with its own data file     0                     its ``device-id``, >= 0
=========================================  ====================  ===========================

A new node whose reply is well formed (:func:`strategies.fleet.state.client_info`) is
admitted, unless, in this order:

1. it holds no samples;
2. its id is held by another node that is still connected (a node whose holder has
   disconnected takes the id over: a device that restarted gets a new Flower node id);
3. it is partitioned and its ``num-partitions`` differs from that of the partitioned nodes
   admitted before it (the first one admitted sets it).

Nodes are decided in node id order, so of two new nodes that claim one id the lower keeps it.
A client whose node disconnects is not sampled; if the same node id connects again, it is
sampled again without a query (the node only lost its link for a while).
Every ``requery_every`` rounds the known clients are asked again (:func:`requery_due`); a
changed profile or data volume re-plans the fleet (:func:`profile_updates`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from logging import INFO

from flwr.common.logger import log

from strategies.fleet.state import ClientInfo
from strategies.policy.grouping import ModeAssignment


@dataclass(frozen=True)
class Admission:
    """What :func:`admit` decided, by node id.

    ``takeovers``: for an admitted node that takes over an id, the node that held it.
    ``refused``: one line for the log that names the node, the id and why.
    """

    admitted: dict[int, ClientInfo]
    takeovers: dict[int, int]
    refused: dict[int, str]


def admit(claims: Mapping[int, ClientInfo], known: Mapping[int, ClientInfo], connected: Collection[int]) -> Admission:
    """Decide on new nodes' query replies (``claims``) against the ``known`` clients (see the module docstring).

    ``known`` is in admission order (its first partitioned client set ``num-partitions``);
    ``connected`` holds the node ids the grid lists now.
    """
    holders = {c.partition_id: c for c in known.values()}
    first = next((c for c in known.values() if c.num_partitions), None)
    admitted: dict[int, ClientInfo] = {}
    takeovers: dict[int, int] = {}
    refused: dict[int, str] = {}
    for node, info in sorted(claims.items()):
        holder, me = holders.get(info.partition_id), f"node {node} (partition {info.partition_id})"
        if info.num_available == 0:
            refused[node] = f"{me}: holds no samples"
        elif holder is not None and holder.node_id in connected:
            refused[node] = f"{me}: partition-id {info.partition_id} is held by node {holder.node_id}, still connected"
        elif info.num_partitions and first is not None and info.num_partitions != first.num_partitions:
            refused[node] = (
                f"{me}: num-partitions {info.num_partitions} disagrees with the {first.num_partitions} of "
                f"node {first.node_id} (partition {first.partition_id}), admitted first"
            )
        else:
            if holder is not None:
                takeovers[node] = holder.node_id
            admitted[node] = holders[info.partition_id] = info
            first = first or (info if info.num_partitions else None)
    return Admission(admitted, takeovers, refused)


def profile_updates(
    replies: Mapping[int, ClientInfo], known: Mapping[int, ClientInfo]
) -> tuple[dict[int, ClientInfo], dict[int, str]]:
    """Known clients' new query replies: those whose profile or data volume changed, and those ignored, with why.

    A reply that names another id or partitioning, or no samples, is ignored: the client
    keeps what it reported before.
    """
    changed: dict[int, ClientInfo] = {}
    ignored: dict[int, str] = {}
    for node, info in sorted(replies.items()):
        old = known[node]
        me = f"node {node} (partition {old.partition_id})"
        if (info.partition_id, info.num_partitions) != (old.partition_id, old.num_partitions):
            ignored[node] = (
                f"{me}: now reports partition {info.partition_id} of {info.num_partitions}, "
                f"was {old.partition_id} of {old.num_partitions}; its earlier profile is kept"
            )
        elif info.num_available == 0:
            ignored[node] = f"{me}: now reports no samples; its earlier profile is kept"
        elif info != old:
            changed[node] = info
    return changed, ignored


def requery_due(server_round: int, first_round: int, every: int) -> bool:
    """Whether known clients are asked for their profile again at the start of ``server_round``.

    After every ``every`` rounds (rounds ``every + 1``, ``2 * every + 1``, ...; 0: never),
    and never in the first round of a run, which starts by asking everyone.
    """
    return every > 0 and server_round > first_round and (server_round - 1) % every == 0


def plan_changes(
    before: Mapping[int, ModeAssignment], after: Mapping[int, ModeAssignment]
) -> dict[int, tuple[ModeAssignment, ModeAssignment]]:
    """Clients in both plans whose group or mode changed: (before, after) by partition id."""
    return {
        p: (before[p], a)
        for p, a in sorted(after.items())
        if p in before and (before[p].group, before[p].mode) != (a.group, a.mode)
    }


def log_changes(
    server_round: int,
    admission: Admission,
    left: Mapping[int, int],
    back: Mapping[int, int],
    before: Mapping[int, ModeAssignment],
    after: Mapping[int, ModeAssignment],
) -> None:
    """One line per client that left, came back (``left``, ``back``: node id by partition id), joined,
    or changed group or mode."""
    for pid, node in left.items():
        log(INFO, "round %d: client %d left (node %d disconnected)", server_round, pid, node)
    for pid, node in back.items():
        log(INFO, "round %d: client %d joined (%s mode; node %d reconnected)", server_round, pid, after[pid].mode, node)
    joined = {info.partition_id for info in admission.admitted.values()}
    for node, info in admission.admitted.items():
        held = admission.takeovers.get(node)
        how = f"node {node}" + (f", taking over from node {held}" if held is not None else "")
        log(
            INFO,
            "round %d: client %d joined (%s mode; %s)",
            server_round,
            info.partition_id,
            after[info.partition_id].mode,
            how,
        )
    for pid, (old, new) in plan_changes({p: a for p, a in before.items() if p not in joined}, after).items():
        log(
            INFO,
            "round %d: client %d moves from group %d (%s) to group %d (%s)",
            server_round,
            pid,
            old.group,
            old.mode,
            new.group,
            new.mode,
        )
