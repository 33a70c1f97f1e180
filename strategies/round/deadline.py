"""A round deadline: clients the cost model expects to miss it sit the round out.

In a synchronous round everyone waits for the slowest client. With
``strategy.round-deadline-s`` the strategy predicts each sampled client's latency in
its mode before the round (the same cost model that prices the round afterwards:
:func:`strategies.cost.costmodel.round_cost` on the client's planned profile, workload and
allocation) and leaves out those over the deadline, as deadline-based client selection
does (FedCS, Nishio and Yonetani 2019). A centralized client whose upload is already in
the server's pool costs nothing and is always in.

A client left out is not excluded: it stays in the fleet and is weighed again every
round, so a channel that improves, or a regrouping that gives it a cheaper mode, brings
it back. Its data is missing from the rounds it sits out, so a fleet whose slow clients
hold data no one else has trades that data for time; the record of each round lists
who sat out (``sat-out``). If fewer than ``min_clients`` clients would remain, the
fastest ``min_clients`` train, deadline or not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from logging import INFO

from flwr.common.logger import log

from strategies.cost.costmodel import round_cost
from strategies.fleet.state import ClientInfo, FleetState, sample
from strategies.modes.registry import training_mode
from strategies.policy import policies as fleet
from strategies.settings import SplitSettings


def predicted_latency(fleet_state: FleetState, info: ClientInfo, server_flops: float) -> float:
    """Simulated seconds the client's coming round should take in its assigned mode."""
    assignment = fleet_state.assignments[info.partition_id]
    if training_mode(assignment.mode).uploads_once and info.partition_id in fleet_state.pool:
        return 0.0  # uploaded already: the server trains on its rows, nothing is sent
    profile = fleet_state.planned_profile(info)
    allocation, _ = fleet.effective_allocation(assignment, profile)
    workload = fleet_state.workloads[info.partition_id][assignment.mode]
    return round_cost(profile, workload, allocation, server_flops).latency_s


def within_deadline(
    sampled: Sequence[ClientInfo], latency: Mapping[int, float], deadline_s: float, min_clients: int
) -> tuple[list[ClientInfo], list[ClientInfo]]:
    """``(train, sit_out)``: the sampled clients whose predicted latency (by partition id) meets
    the deadline, topped up with the fastest others to ``min_clients``; and the rest.

    ``deadline_s`` 0 means no deadline. Both lists keep the partition order of ``sampled``.
    """
    if deadline_s <= 0:
        return list(sampled), []
    fastest = sorted(sampled, key=lambda c: (latency[c.partition_id], c.partition_id))
    meets = sum(latency[c.partition_id] <= deadline_s for c in fastest)
    keep = {c.partition_id for c in fastest[: max(meets, min_clients)]}
    return [c for c in sampled if c.partition_id in keep], [c for c in sampled if c.partition_id not in keep]


def sample_in_time(
    fleet_state: FleetState, server_round: int, settings: SplitSettings
) -> tuple[list[ClientInfo], list[ClientInfo]]:
    """This round's sample (:func:`strategies.fleet.state.sample`) split by the round's deadline."""
    sampled = sample(fleet_state.active(), server_round, settings)
    policy = settings.fleet_policy
    # A stage of the policy schedule may carry its own deadline (``threshold:3@30``).
    deadline = policy.round_deadline_s if policy.round_deadline_s is not None else settings.round_deadline_s
    if deadline <= 0:
        return sampled, []
    latency = {c.partition_id: predicted_latency(fleet_state, c, policy.server_flops) for c in sampled}
    train, sit_out = within_deadline(sampled, latency, deadline, settings.min_clients)
    if sit_out:
        late = ", ".join(f"{c.partition_id} ({latency[c.partition_id]:.1f} s)" for c in sit_out)
        log(INFO, "round %d: over the %.1f s deadline, clients sit out: %s", server_round, deadline, late)
    return train, sit_out
