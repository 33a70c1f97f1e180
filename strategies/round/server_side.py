"""A round part on the server: every mode's step (:mod:`strategies.round.steps`), then the average.

:func:`train_part` runs a round's two exchanges through the modes' server steps
(:data:`strategies.round.steps.registry.SERVER_STEPS`); :func:`average_part` averages what
they yield, with the server's own contributions. Outside a round, :func:`aggregate_replies`
averages replies the way Flower's FedAvg would.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import WARNING

import numpy as np
from flwr.app import Message
from flwr.common.logger import log

from strategies.aggregate import dp, robust
from strategies.aggregate.volume import Contribution, aggregate
from strategies.fleet.state import FleetState, round_seed
from strategies.interfaces import ServerModel
from strategies.round import messages as msgs
from strategies.round.context import RoundContext
from strategies.round.state import RoundState, TrainedPart
from strategies.round.steps.base import Bounds, RoundWork, TensorKeys
from strategies.round.steps.registry import SERVER_STEPS
from strategies.settings import SplitSettings
from strategies.trust.fltrust import fltrust_contribution
from strategies.trust.state import TrustState
from strategies.trust.volume import cap_volumes, weigh_by_reputation
from strategies.wire import names as wire
from strategies.wire.records import from_record
from strategies.wire.validation import judge, spec_of

ROOT_SET_ID = 2**31 - 1  # the root set's stand-in for a partition id in its batch plan's seed (no client's)

__all__ = ["Bounds", "TensorKeys", "aggregate_replies", "average_part", "train_part"]


def aggregate_replies(
    replies: Iterable[Message], fleet_state: FleetState, state: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray] | None, int]:
    """Volume-weighted average of the prefixes in replies from known clients, and the total volume.

    Each reply is validated against the global tensors ``state`` (names, shapes,
    dtypes, finite values, ``num-examples`` within what the client holds); invalid
    ones are left out with a warning. None when no reply is valid.
    """
    contributions = []
    for reply in replies:
        info = fleet_state.clients.get(reply.metadata.src_node_id)
        if info is None or reply.has_error() or wire.ARRAYS not in reply.content.array_records:
            continue
        arrays = from_record(reply.content.array_records[wire.ARRAYS])
        metrics = reply.content.metric_records.get(wire.METRICS)
        volume = metrics.get(wire.NUM_EXAMPLES) if metrics is not None else None
        verdict = judge(arrays, spec_of({k: state[k] for k in arrays if k in state}), volume, info.num_available)
        if not verdict.ok:
            log(WARNING, "client %d: reply left out: %s", info.partition_id, "; ".join(verdict.reasons))
            continue
        contributions.append((info.partition_id, Contribution(arrays, wire.as_int(volume))))
    if not contributions:
        return None, 0
    ordered = [c for _, c in sorted(contributions, key=lambda item: item[0])]  # partition order: stable sums
    return aggregate(ordered, state), sum(c.num_examples for c in ordered)


def average_part(
    part: TrainedPart,
    state: dict[str, np.ndarray],
    rnd: RoundState,
    settings: SplitSettings,
    fleet_state: FleetState,
    trust: TrustState | None = None,
) -> dict[str, np.ndarray]:
    """The volume-weighted (or robust) average of a round part's contributions, from ``state``.

    Clients' contributions go in partition order (float sums must not depend on reply order).
    Each is weighted by its client's reputation (``trust=screen``), its volume capped at
    ``volume_cap`` x the median (``rnd.capped``), and its update bounded (``rnd.bounded``),
    against earlier rounds' norms with ``update_reference=history``; with a root update
    (``root_samples``), FLTrust merges them into one (:mod:`strategies.trust.fltrust`). Then
    the server's and the pool's contributions join them.

    With ``dp_clip`` > 0 none of that weighting applies: the clients' updates are clipped,
    averaged with equal weights and noised into one contribution (:mod:`strategies.aggregate.dp`).
    """
    trust = trust or TrustState()
    accepted = part.accepted
    nodes = sorted(accepted, key=lambda n: fleet_state.clients[n].partition_id)
    ordered = [accepted[n] for n in nodes]
    if settings.dp_clip > 0:
        rng = dp.noise_generator(settings.seed, rnd.server_round, [fleet_state.clients[n].partition_id for n in nodes])
        private = dp.private_contribution(ordered, state, settings.dp_clip, settings.dp_noise, rng)
        clients = [private] if private is not None else []
        return robust.robust_average(clients + _server_part(settings, part, rnd), state, "mean")
    if settings.trust == "screen":
        reputations = [trust.reputation_of(fleet_state.clients[n].partition_id) for n in nodes]
        ordered = [weigh_by_reputation(c, r) for c, r in zip(ordered, reputations, strict=True)]
    ordered, rnd.capped = cap_volumes(ordered, settings.volume_cap)
    references = trust.norm_references() if settings.update_reference == "history" else None
    ordered, rnd.bounded = robust.bound_updates(
        ordered, state, settings.update_check, settings.update_bound, references
    )
    rnd.norms = robust.group_norms(ordered, state)
    if part.root is not None and ordered:
        merged, distrusted = fltrust_contribution(ordered, state, part.root)
        rnd.bounded |= distrusted
        ordered = [merged] if merged is not None else []
    contributions = ordered + _server_part(settings, part, rnd)
    return robust.robust_average(contributions, state, settings.aggregation, settings.trim)


def _server_part(settings: SplitSettings, part: TrainedPart, rnd: RoundState) -> list[Contribution]:
    """The server's own contributions to a round part's average, every mode's step's in turn."""
    return [c for step in SERVER_STEPS.values() for c in step.server_part(settings, part, rnd)]


def train_part(
    ctx: RoundContext,
    model: ServerModel,
    keys: TensorKeys,
    bounds: Bounds,
    fleet_state: FleetState,
    state: dict[str, np.ndarray],
    rnd: RoundState,
    first: Iterable[Message],
    trust: TrustState | None = None,
) -> TrainedPart:
    """Both exchanges with ``rnd.sampled``, the server's side trained from ``state``, in ``ctx.settings``.

    ``first``: the first exchange's messages (the strategy's ``configure_train``); ``trust``:
    the strategy's trust state, read by the split step's screening. ``ctx.settings``
    are the round's (its lr, or a parallel probe half's mode), not necessarily the run's: a top-k
    half's sparse replies are read as top-k. Every mode's first step runs on its clients' first
    replies, then every mode's second step, each phase in :data:`SERVER_STEPS` order.
    """
    rnd.first = msgs.exchange_in_round(ctx.grid, first, ctx.timeout, rnd)
    work = RoundWork(ctx, model, keys, bounds, fleet_state, state, rnd, trust or TrustState())
    for step in SERVER_STEPS.values():
        step.first(work, {n: r for n, r in rnd.first.items() if fleet_state.mode_of(n) == step.mode})
    for step in SERVER_STEPS.values():
        if step.second is not None:
            step.second(work)
    root = None
    if ctx.settings.root_samples:
        s = ctx.settings
        root = model.root_update(
            state,
            s.root_samples,
            s.steps,
            round_seed(s.seed, rnd.server_round, ROOT_SET_ID),
            lr=s.lr,
            head_lr=s.head_lr,
        )
    return TrainedPart({m: work.prefixes.get(m, {}) for m in SERVER_STEPS}, work.pool, work.uploaded, root)
