"""A parallel probe stage: one round, half the clients in the optimized mode, half in the basic one.

The sequential stage (:mod:`strategies.probing.stage`) spends two rounds; this one spends
one. The round's sampled clients are split into two halves (:func:`split_halves`):
seeded, balanced by data volume, and within each mode group, so that each half sees a
like share of the fleet. Both halves start from the same global tensors; the server
trains each half's side (its split activations, its centralized pool) from those
tensors too, so nothing one half trained reaches the other. Each half's contributions
are averaged on their own, by the same volume-weighted rule as a round, into a
candidate; each candidate is evaluated on the held-out set, and each half's duration
is the simulated latency of a round of that half alone (slowest client, or the
server's work for it). :func:`strategies.probing.judge.judge` decides, and the winner's
candidate and mode are kept: the next round runs everyone in the winner's mode.

The halves' messages are exchanged one half after the other (the wall time of the
in-process grid); the simulated clock counts them as concurrent: the round lasts as
long as its slower half. No optimizer state lives across rounds (every server and
client step builds a fresh Adam from the tensors it is given), so the global tensors
are the whole trained state a switch has to keep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from logging import INFO

import numpy as np
from flwr.common.logger import log

from strategies.cost.costmodel import EnergyLedger
from strategies.fleet.state import ClientInfo
from strategies.policy.grouping import ModeAssignment
from strategies.probing import judge as probing
from strategies.probing.judge import Decision, Settled
from strategies.probing.stage import probe_stage
from strategies.round import record as records
from strategies.round.context import Outcome, RoundContext, State
from strategies.round.deadline import sample_in_time
from strategies.round.host import RoundHost
from strategies.round.state import RoundState, SplitOutcome, TrainedPart
from strategies.wire.records import to_record

HALVES_ID = 2**31 - 2  # seeds the split into halves apart from every partition and the pool


def split_halves(
    clients: Sequence[ClientInfo], assignments: Mapping[int, ModeAssignment], seed: int, server_round: int
) -> tuple[list[ClientInfo], list[ClientInfo]]:
    """(optimized half, basic half), each in partition order.

    Group by group (a mode and its group number), the largest data volume first,
    each client goes to the half that holds less of that group's volume; equal volumes go
    to the half lighter over all groups so far, then to the one with fewer clients, then
    to a seeded coin. Clients of equal volume are visited in a seeded order.
    """
    rng = np.random.default_rng([seed, server_round, HALVES_ID])
    known = sorted(clients, key=_pid)  # the halves do not depend on the order the clients came in
    by_group: dict[tuple[str, int], list[ClientInfo]] = {}
    for i in rng.permutation(len(known)):
        info = known[int(i)]
        a = assignments[info.partition_id]
        by_group.setdefault((a.mode, a.group), []).append(info)
    halves: tuple[list[ClientInfo], list[ClientInfo]] = ([], [])
    total = [0, 0]
    for key in sorted(by_group):
        in_group, coin = [0, 0], int(rng.integers(2))
        for info in sorted(by_group[key], key=lambda c: -c.num_available):  # stable: the seeded order among equals
            side = min((0, 1), key=lambda h: (in_group[h], total[h], len(halves[h]), h != coin))
            halves[side].append(info)
            in_group[side] += info.num_available
            total[side] += info.num_available
    return sorted(halves[0], key=_pid), sorted(halves[1], key=_pid)


def _pid(info: ClientInfo) -> int:
    return info.partition_id


def merge_halves(rnd: RoundState, halves: Sequence[RoundState]) -> None:
    """The halves' replies, failures, bytes, losses and pool into the round's state (node ids are disjoint)."""
    split = SplitOutcome()
    pool_losses = []
    for half in halves:
        rnd.first |= half.first
        rnd.backward |= half.backward
        rnd.failures |= half.failures
        rnd.reported |= half.reported
        rnd.unavailable |= half.unavailable
        rnd.bytes_down |= half.bytes_down
        rnd.steps_done |= half.steps_done
        rnd.local_losses |= half.local_losses
        rnd.more_up |= half.more_up
        rnd.ushape.losses |= half.ushape.losses
        rnd.bounded |= half.bounded
        rnd.screened |= half.screened
        rnd.in_line |= half.in_line
        rnd.capped |= half.capped
        for group, norms in half.norms.items():
            rnd.norms[group] = rnd.norms.get(group, []) + norms
        rnd.references = rnd.references or half.references
        split.gradients |= half.split.gradients
        split.server_parts |= half.split.server_parts
        split.losses |= half.split.losses
        rnd.pool_members += half.pool_members
        rnd.pool_samples += half.pool_samples
        if half.pool_loss is not None and half.pool_samples:
            pool_losses.append((half.pool_loss, half.pool_samples))
    rnd.split = split
    if pool_losses:  # the pool's loss over both halves, weighted by the samples each drew
        rnd.pool_loss = float(np.average([x for x, _ in pool_losses], weights=[n for _, n in pool_losses]))


def parallel_stage(host: RoundHost, ctx: RoundContext, start: Mapping[str, float]) -> list[Outcome]:
    """One round on two halves; sequential instead when fewer than 2 clients would be sampled."""
    if len(sample_in_time(host.fleet, ctx.server_round, host.probes.settings)[0]) < 2:
        why = "fewer than 2 participants to split into halves"
        if ctx.server_round < ctx.num_rounds:
            log(INFO, "probe at round %d: %s; probing sequentially", ctx.server_round, why)
            return probe_stage(host, ctx, start)
        log(INFO, "probe at round %d: %s and no round left for a sequential stage; not probing", ctx.server_round, why)
        return [host.run_round(ctx, host.state)]
    return [parallel_round(host, ctx, start)]


@dataclass(frozen=True)
class Half:
    """One half of a parallel stage: its mode, context (the mode's settings), round state, contributions, candidate."""

    mode: str
    ctx: RoundContext
    rnd: RoundState
    part: TrainedPart
    candidate: State


def parallel_round(host: RoundHost, ctx: RoundContext, start: Mapping[str, float]) -> Outcome:
    """The round: each half trained from the global tensors and averaged on its own; the winner kept."""
    probes, origin, server_round = host.probes, host.state, ctx.server_round
    modes = (ctx.settings.probe.optimized, probes.basic_mode)
    # each half in its mode (a dtype, topk:F or plan:M) at the round's learning rates
    contexts = [replace(ctx, settings=probes.round_settings(server_round, ctx.num_rounds, m)) for m in modes]
    probes.begin_stage()
    rnd = host.begin_round(ctx)
    clients = split_halves(rnd.sampled, rnd.assignments, ctx.settings.seed, server_round)
    halves = [RoundState(server_round, ctx.num_rounds, list(c), rnd.assignments) for c in clients]
    parts = [host.train_part(c, h, origin) for c, h in zip(contexts, halves, strict=True)]
    candidates = [host.average_part(c, h, p, origin) for c, h, p in zip(contexts, halves, parts, strict=True)]
    merge_halves(rnd, halves)
    if not host.enough_contributions(ctx, rnd, {n: c for part in parts for n, c in part.accepted.items()}):
        return None
    ran = [Half(*half) for half in zip(modes, contexts, halves, parts, candidates, strict=True)]
    return keep_the_winner(host, ctx, rnd, ran, start)


def keep_the_winner(
    host: RoundHost, ctx: RoundContext, rnd: RoundState, halves: Sequence[Half], start: Mapping[str, float]
) -> Outcome:
    """Evaluate and time each half, judge, and close the round with the winner's candidate and mode."""
    server_round, (optimized, basic) = rnd.server_round, (h.mode for h in halves)
    evaluate_fn = ctx.evaluate_fn
    evaluations = [evaluate_fn(server_round, to_record(h.candidate)) if evaluate_fn else None for h in halves]
    trials = [
        {**probing.figures_of(dict(e or {})), "sim-latency-s": seconds(host, h)}
        for e, h in zip(evaluations, halves, strict=True)
    ]
    if all(h.part.accepted or h.part.pool is not None for h in halves):
        chosen, figures = probing.judge(start, trials[0], trials[1], optimized, basic, ctx.settings.probe)
    else:
        chosen, figures = basic, {"chosen": basic, "reason": "a half had no valid contributions"}
    won = 0 if chosen == optimized and chosen != basic else 1
    log(INFO, "probe at round %d (parallel halves): %s", server_round, probing.describe(figures))
    names = {h.mode: [c.partition_id for c in h.rnd.sampled] for h in halves}
    entry = {"probe": {"variant": "parallel", "halves": names, **figures}}
    decision = Decision(server_round, halves[won].mode, {"variant": "parallel", **figures})
    kept = evaluations[won]
    # Priced in the winner's settings; evaluated above, so the round's evaluation is the winner's.
    closing = replace(halves[won].ctx, evaluate_fn=None if evaluate_fn is None else lambda _round, _arrays: kept)
    uploaded = any(h.part.uploaded for h in halves)
    record, state = host.close_round(
        closing, rnd, halves[won].candidate, uploaded, lambda r, st: Settled(entry, st, decision)
    )
    return state, record


def seconds(host: RoundHost, half: Half) -> float:
    """A half's duration: the simulated latency of a round of that half alone (on a ledger of its own)."""
    figures, _ = records.simulate(half.rnd, host.fleet, half.ctx.settings, host.shape, EnergyLedger())
    return float(figures["sim-latency-s"])
