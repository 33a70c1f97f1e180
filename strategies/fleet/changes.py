"""The fleet between rounds: who is new, who left, who came back, whose profile changed.

At the start of every round the strategy calls :func:`refresh`: one ``get_node_ids()``,
and a query only for nodes not seen before (or for every known node when a requery is
due, ``SplitSettings.requery_every``). The decisions themselves are the pure functions of
:mod:`strategies.fleet.membership`; this module sends the queries and applies the decisions
to the :class:`~strategies.fleet.state.FleetState`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from logging import INFO, WARNING

from flwr.common.logger import log
from flwr.serverapp import Grid

from strategies.aggregate.volume import Contribution
from strategies.cost.workload import ModelShape
from strategies.fleet import membership
from strategies.fleet.state import FleetState
from strategies.persist.rundir import RunDirectory
from strategies.round import messages as msgs
from strategies.round import record as records
from strategies.round.state import RoundState
from strategies.settings import SplitSettings


def discover(
    grid: Grid, fleet: FleetState, settings: SplitSettings, shape: ModelShape, first_round: int, timeout: float
) -> None:
    """At the run's start: wait for the nodes, ask each who it is, admit them and plan the fleet."""
    nodes = msgs.wait_for_nodes(grid, settings)
    admit_nodes(grid, fleet, nodes, nodes, timeout, 0)
    log(INFO, "%d of %d nodes answered the query", len(fleet.clients), len(nodes))
    fleet.plan(settings, shape, first_round)


def report_groups(fleet: FleetState, settings: SplitSettings, run_dir: RunDirectory | None) -> None:
    """The fleet's groups and modes to ``groups.json`` (with a run directory) and the log."""
    if run_dir is not None:
        run_dir.write_groups(fleet.groups(settings))
    counts = fleet.mode_counts()
    log(INFO, "policy %s: %s", settings.fleet_policy.name, ", ".join(f"{n} {m}" for m, n in counts.items() if n))


def stage_of(settings: SplitSettings, server_round: int) -> SplitSettings | None:
    """The settings under the policy schedule's stage of ``server_round``; None when it is the current one."""
    due = settings.fleet_policy.at(server_round)
    if due == settings.fleet_policy:
        return None
    log(INFO, "round %d: policy %s from now on (policy schedule)", server_round, due.name)
    return replace(settings, policy=due)


def refresh(
    grid: Grid,
    fleet: FleetState,
    settings: SplitSettings,
    shape: ModelShape,
    first_round: int,
    server_round: int,
    timeout: float,
    replan: bool = False,
) -> tuple[list[int], list[int], bool]:
    """At a round's start: who left, who came back, who is new, and when a requery is due, whose
    profile changed.

    Re-plans the fleet if ``replan`` says so (a new stage of the policy schedule), if a client
    joined or changed, or at a requery when some client's channel changes by round (the plan
    then takes this round's gains). Returns the partition ids that joined
    (or came back), those that left, and whether the fleet was re-planned. No message is
    sent when no node is new and no requery is due.
    """
    connected = set(grid.get_node_ids())
    left, back = fleet.leave(connected), fleet.come_back(connected)
    requery = membership.requery_due(server_round, first_round, settings.requery_every)
    fleet.refused = {n: why for n, why in fleet.refused.items() if n in connected}
    new = sorted(n for n in connected if n not in fleet.clients and (requery or n not in fleet.refused))
    known = [c.node_id for c in fleet.active()] if requery else []
    before = dict(fleet.assignments)
    admission, changed = admit_nodes(grid, fleet, new, connected, timeout, server_round, known)
    # A requery also finds every changing channel where this round took it (strategies.fleet.channel).
    replanned = bool(replan or admission.admitted or changed or (requery and fleet.changing_channels()))
    if replanned:
        fleet.plan(settings, shape, server_round)
    membership.log_changes(server_round, admission, left, back, before, fleet.assignments)
    joined = sorted([*back, *(i.partition_id for i in admission.admitted.values())])
    return joined, list(left), replanned


def admit_nodes(
    grid: Grid,
    fleet: FleetState,
    new: Sequence[int],
    connected: Collection[int],
    timeout: float,
    server_round: int,
    known: Sequence[int] = (),
) -> tuple[membership.Admission, list[int]]:
    """Query the ``new`` and ``known`` nodes; admit new ones, take known ones' changed profiles.

    Returns what was decided on the new nodes and the partition ids whose profile changed.
    """
    if not new and not known:
        return membership.Admission({}, {}, {}), []
    infos, answered = msgs.query(grid, [*new, *known], timeout, server_round)
    for node in sorted(answered.unavailable & set(known)):
        fleet.lose(node, "Flower reports its node unavailable")
    changed, ignored = membership.profile_updates({n: infos[n] for n in known if n in infos}, fleet.clients)
    admission = membership.admit({n: infos[n] for n in new if n in infos}, fleet.clients, connected)
    for why in ignored.values():
        log(WARNING, "%s", why)
    for why in admission.refused.values():
        log(WARNING, "%s; node left out", why)
    fleet.refused |= {n: why for n, (_, why) in answered.failures.items() if n in new} | admission.refused
    fleet.clients |= changed
    for info in admission.admitted.values():
        fleet.join(info)
    return admission, sorted(i.partition_id for i in changed.values())


def enough_contributions(
    fleet: FleetState,
    rnd: RoundState,
    accepted: Mapping[int, Contribution],
    settings: SplitSettings,
    run_dir: RunDirectory | None,
) -> bool:
    """Apply the failure policy to the round; whether ``min_clients`` contributions were valid."""
    succeeded = [fleet.clients[n].partition_id for n in accepted] + rnd.pool_members
    if fleet.react(rnd.failures, succeeded, settings, rnd.unavailable):
        report_groups(fleet, settings, run_dir)
    if len(accepted) + len(rnd.pool_members) < settings.min_clients:
        records.log_dropped(rnd.server_round, {records.client_name(n, fleet): w for n, w in rnd.dropped().items()})
        return False
    return True
