"""What each mode asks of the server in a round, and the contributions it yields.

- ``split``: :func:`train_split_side` trains the server's tensors on each client's
  boundary activations and keeps one boundary gradient per minibatch;
  :func:`server_contributions` turns what it trained into contributions.
- ``split`` and ``local``: :func:`collect_prefixes` validates the prefixes clients send back.
- ``centralized``: :func:`receive_uploads` checks uploads into the pool, and
  :func:`train_pool` trains on the pool of this round's centralized clients.

:func:`train_part` runs a round's two exchanges through them; :func:`average_part` averages
what they yield.

Every function records a dropped reply in the round state with its reason and goes on:
one client's bad reply never ends the round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from logging import WARNING

import numpy as np
from flwr.app import Message
from flwr.common.logger import log

from strategies.aggregate import robust
from strategies.aggregate.volume import Contribution, aggregate
from strategies.cost.workload import ModelShape
from strategies.fleet.state import FleetState, round_seed
from strategies.interfaces import ServerModel
from strategies.policy.requirements import FailureCause
from strategies.round import messages as msgs
from strategies.round.context import RoundContext
from strategies.round.messages import answers, reason
from strategies.round.state import RoundState, SplitOutcome, TrainedPart
from strategies.settings import SplitSettings
from strategies.wire import names as wire
from strategies.wire import sparsify
from strategies.wire.codecs.registry import tagged_codec
from strategies.wire.records import from_record
from strategies.wire.validation import judge, read_upload, spec_of, validate_num_examples

POOL_ID = 2**31 - 1  # seeds the server's pool training apart from every partition


@dataclass(frozen=True)
class Bounds:
    """What replies are checked against: the boundary width and the model's chunk limits."""

    hidden: int
    limits: wire.ChunkLimits


@dataclass(frozen=True)
class TensorKeys:
    """Which tensors travel: down in each mode's first message, and back in a local reply."""

    by_mode: dict[str, tuple[str, ...]]
    local_reply: tuple[str, ...]

    @classmethod
    def of(cls, model: ServerModel, emulator_layers: int, shape: ModelShape) -> TensorKeys:
        emulator = tuple(model.emulator_keys(emulator_layers))
        client = tuple(model.client_keys)
        # A local client sends back its lower prefix and the head, and the upper prefix
        # too when the emulator dropped nothing (then it is the real model).
        full = emulator_layers in (0, shape.server_layers)
        by_mode = {wire.SPLIT_MODE: client, wire.LOCAL_MODE: client + emulator, wire.CENTRALIZED_MODE: client}
        return cls(by_mode, tuple(k for k in emulator if wire.is_head(k) or full))


def train_split_side(
    model: ServerModel,
    settings: SplitSettings,
    shape: Bounds,
    state: Mapping[str, np.ndarray],
    fleet_state: FleetState,
    forward: Mapping[int, Message],
    rnd: RoundState,
) -> SplitOutcome:
    """Step through each split client's minibatches in partition order.

    ``sequential``: one copy of the server's tensors goes through every client in turn;
    ``parallel``: each client's steps start from the round's global tensors. A reply is
    trained on only within what was planned: one chunk per minibatch of at most the batch
    size, the model's hidden size, sequence length and labels, bounded magnitudes, a
    ``num-examples`` the client can hold. A client whose steps leave the server's tensors
    non-finite is dropped and its steps undone.
    """
    limits = replace(shape.limits, max_rows=settings.batch_size, max_abs=settings.max_activation)
    outcome = SplitOutcome(sequential={k: state[k] for k in model.server_keys})
    for info, reply in answers(forward, fleet_state, rnd):
        start = outcome.sequential if settings.server_side == "sequential" else {k: state[k] for k in model.server_keys}
        try:
            arrays = from_record(reply.content.array_records[wire.ACTIVATIONS])
            codec = tagged_codec(reply.content.config_records.get(wire.CONFIG), wire.CODEC, settings.activation_dtype)
            planned = fleet_state.steps_of(info, settings)
            chunks, problems = wire.decode_chunks(
                arrays, wire.ACTIVATIONS_KIND, count=planned, hidden=shape.hidden, limits=limits, codec=codec
            )
            claimed = reply.content.metric_records[wire.METRICS][wire.NUM_EXAMPLES]
            problems += validate_num_examples(claimed, min(info.num_available, planned * settings.batch_size))
            if problems:
                raise ValueError("; ".join(problems))
            volume = wire.as_int(claimed)
            trained, grads, loss = model.train_split(
                start, chunks, lr=settings.lr, head_lr=settings.head_lr, codec=codec
            )
            if not _finite(trained, grads, loss):
                raise ValueError("the server's steps on these activations left non-finite tensors (undone)")
        except Exception as err:  # one client's bad activations must not end the round
            rnd.drop(info.node_id, FailureCause.INVALID_REPLY, f"forward reply rejected: {reason(err)}")
            continue
        outcome.gradients[info.node_id] = grads  # encoded by the round's codec, the one the client was asked for
        outcome.server_parts[info.node_id] = Contribution(trained, volume, f"server half of client {info.partition_id}")
        outcome.losses[info.node_id] = loss
        if settings.server_side == "sequential":
            outcome.sequential = trained
    return outcome


def _finite(trained: Mapping[str, np.ndarray], grads: Sequence[np.ndarray], loss: float) -> bool:
    return bool(np.isfinite(loss)) and all(np.isfinite(a).all() for a in [*trained.values(), *grads])


def server_contributions(
    settings: SplitSettings, accepted: Mapping[int, Contribution], outcome: SplitOutcome
) -> list[Contribution]:
    """The server's tensors of split training as contributions: one sequential result, or one per client.

    A sequential server has already taken the steps of a client whose backward reply
    was then rejected; its activations had passed validation, so the steps stand, and
    the result carries the volume of the accepted clients.
    """
    if not accepted:
        return []
    if settings.server_side == "parallel":
        return [outcome.server_parts[node] for node in accepted]
    volume = sum(c.num_examples for c in accepted.values())
    return [Contribution(outcome.sequential, volume, "server (sequential split)")]


def collect_prefixes(
    replies: Mapping[int, Message],
    mode: str,
    start: Mapping[str, np.ndarray],
    fleet_state: FleetState,
    settings: SplitSettings,
    rnd: RoundState,
) -> dict[int, Contribution]:
    """Validated prefix contributions of split (backward) or local replies, by node id.

    ``start``: the global tensors the clients were sent, those they must send back. With
    ``upload_topk`` below 1 a reply carries their top-k entries (:mod:`strategies.wire.sparsify`),
    rebuilt onto ``start`` before every other check.
    """
    contributions, expected = {}, spec_of(start)
    for info, reply in answers(replies, fleet_state, rnd):
        planned = fleet_state.steps_of(info, settings)
        try:
            arrays = _uploaded(reply, start, settings.upload_topk)
            metrics = reply.content.metric_records[wire.METRICS]
            volume = metrics[wire.NUM_EXAMPLES]
            rnd.steps_done[info.node_id] = wire.as_int(metrics.get(wire.STEPS_DONE, planned))
        except Exception as err:
            rnd.drop(info.node_id, FailureCause.INVALID_REPLY, f"{mode} reply rejected: {reason(err)}")
            continue
        verdict = judge(arrays, expected, volume, min(info.num_available, planned * settings.batch_size))
        if not verdict.ok:
            rnd.drop(info.node_id, FailureCause.INVALID_REPLY, f"{mode} reply rejected: " + "; ".join(verdict.reasons))
            continue
        contributions[info.node_id] = Contribution(arrays, wire.as_int(volume), f"client {info.partition_id} ({mode})")
        loss = metrics.get(wire.TRAIN_LOSS)
        if mode == wire.LOCAL_MODE and isinstance(loss, (int, float)) and np.isfinite(loss):
            rnd.local_losses[info.node_id] = float(loss)
    return contributions


def _uploaded(reply: Message, start: Mapping[str, np.ndarray], fraction: float) -> dict[str, np.ndarray]:
    """A reply's tensors: dense, or rebuilt from their top-k entries; ValueError naming what is wrong."""
    if fraction >= 1.0:
        return from_record(reply.content.array_records[wire.ARRAYS])
    if wire.SPARSE not in reply.content.array_records:
        raise ValueError(f"no {wire.SPARSE!r} record: top-{fraction:g} uploads were asked for")
    arrays, problems = sparsify.rebuild(from_record(reply.content.array_records[wire.SPARSE]), start, fraction)
    if problems:
        raise ValueError("; ".join(problems))
    return arrays


def receive_uploads(
    replies: Mapping[int, Message], fleet_state: FleetState, settings: SplitSettings, shape: Bounds, rnd: RoundState
) -> bool:
    """Validate centralized clients' uploads into the pool; whether any arrived.

    Uploaded activations enter the pool decoded (float32): a later round may use another codec.
    """
    arrived = False
    for info, reply in answers(replies, fleet_state, rnd):
        chunks: list[wire.Chunk] = []
        try:
            arrays = from_record(reply.content.array_records[wire.UPLOAD_RECORD])
            claimed = reply.content.metric_records[wire.METRICS][wire.NUM_EXAMPLES]
            codec = None
            if settings.upload_kind == wire.ACTIVATIONS_KIND:
                tag = reply.content.config_records.get(wire.CONFIG)
                codec = tagged_codec(tag, wire.CODEC, settings.activation_dtype)
            chunks, problems = read_upload(
                arrays,
                settings.upload_kind,
                shape.hidden,
                fleet_state.upload_rows[info.partition_id],
                claimed,
                replace(shape.limits, max_abs=settings.max_activation),
                codec,
            )
        except Exception as err:
            problems = [reason(err)]
        if problems:
            rnd.drop(info.node_id, FailureCause.INVALID_REPLY, "upload rejected: " + "; ".join(problems))
            continue
        fleet_state.pool[info.partition_id] = wire.encode_chunks(chunks, settings.upload_kind)
        arrived = True
    return arrived


def train_pool(
    model: ServerModel,
    settings: SplitSettings,
    state: Mapping[str, np.ndarray],
    fleet_state: FleetState,
    rnd: RoundState,
) -> Contribution | None:
    """Train on the uploads of the sampled centralized clients: ``steps`` minibatches each."""
    rnd.pool_members = [
        c.partition_id
        for c in rnd.sampled
        if c.partition_id in fleet_state.pool
        and fleet_state.assignments[c.partition_id].mode == wire.CENTRALIZED_MODE
        and c.node_id not in rnd.failures
    ]
    if not rnd.pool_members:
        return None
    steps = settings.steps * len(rnd.pool_members)
    uploads = [_chunks(fleet_state.pool[p], settings.upload_kind) for p in rnd.pool_members]
    tensors, loss, volume = model.train_pool(
        state,
        [c for chunks in uploads for c in chunks],
        steps,
        round_seed(settings.seed, rnd.server_round, POOL_ID),
        lr=settings.lr,
        head_lr=settings.head_lr,
    )
    if not _finite(tensors, [], loss):  # uploads are bounded on arrival; this is the last guard
        log(WARNING, "round %d: training on the pool left non-finite tensors; its result is left out", rnd.server_round)
        return None
    rnd.pool_samples, rnd.pool_loss = steps * settings.batch_size, loss
    return Contribution(tensors, volume, f"server (centralized pool of {len(rnd.pool_members)})")


def _chunks(upload: Mapping[str, np.ndarray], kind: str) -> Sequence[wire.Chunk]:
    chunks, problems = wire.decode_chunks(upload, kind)
    if problems:  # checked on arrival (or saved after that check): a broken pool file
        raise ValueError("; ".join(problems))
    return chunks


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
    part: TrainedPart, state: dict[str, np.ndarray], rnd: RoundState, settings: SplitSettings, fleet_state: FleetState
) -> dict[str, np.ndarray]:
    """The volume-weighted (or robust) average of a round part's contributions, from ``state``.

    Clients' contributions go in partition order (float sums must not depend on reply order),
    bounded first (``rnd.bounded`` says what a defence did); then the server's and the pool's.
    """
    accepted = part.accepted
    ordered = [accepted[n] for n in sorted(accepted, key=lambda n: fleet_state.clients[n].partition_id)]
    ordered, rnd.bounded = robust.bound_updates(ordered, state, settings.update_check, settings.update_bound)
    contributions = ordered + server_contributions(settings, part.split, rnd.split)
    contributions += [part.pool] if part.pool is not None else []
    return robust.robust_average(contributions, state, settings.aggregation, settings.trim)


def train_part(
    ctx: RoundContext,
    model: ServerModel,
    keys: TensorKeys,
    bounds: Bounds,
    fleet_state: FleetState,
    state: dict[str, np.ndarray],
    rnd: RoundState,
    first: Iterable[Message],
) -> TrainedPart:
    """Both exchanges with ``rnd.sampled``, the server's side trained from ``state``, in ``ctx.settings``.

    ``first``: the first exchange's messages (the strategy's ``configure_train``). ``ctx.settings``
    are the round's (its lr, or a parallel probe half's mode), not necessarily the run's: a top-k
    half's sparse replies are read as top-k.
    """
    grid, settings, timeout, config, seed_round = ctx.grid, ctx.settings, ctx.timeout, ctx.train_config, ctx.seed_round
    rnd.first = msgs.exchange_in_round(grid, first, timeout, rnd)
    by_mode = {m: {n: r for n, r in rnd.first.items() if fleet_state.mode_of(n) == m} for m in wire.MODES}
    rnd.split = train_split_side(model, settings, bounds, state, fleet_state, by_mode[wire.SPLIT_MODE], rnd)
    client_part = {k: state[k] for k in model.client_keys}
    local_start = {**client_part, **{k: state[k] for k in keys.local_reply}}
    local = collect_prefixes(by_mode[wire.LOCAL_MODE], wire.LOCAL_MODE, local_start, fleet_state, settings, rnd)
    uploaded = receive_uploads(by_mode[wire.CENTRALIZED_MODE], fleet_state, settings, bounds, rnd)
    pool_part = train_pool(model, settings, state, fleet_state, rnd)
    if rnd.split.gradients:
        backward = msgs.backward_messages(
            settings, fleet_state, client_part, rnd.split.gradients, rnd.server_round, config, seed_round
        )
        rnd.backward = msgs.exchange_in_round(grid, backward, timeout, rnd)
    split = collect_prefixes(rnd.backward, wire.SPLIT_MODE, client_part, fleet_state, settings, rnd)
    return TrainedPart(split, local, pool_part, uploaded)
