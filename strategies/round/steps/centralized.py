"""Centralized mode on the server: check uploads into the pool, train on the pool.

:func:`receive_uploads` checks uploads into the pool, and :func:`train_pool` trains on the
pool of this round's centralized clients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from logging import WARNING

import numpy as np
from flwr.app import Message
from flwr.common.logger import log

from strategies.aggregate.volume import Contribution
from strategies.fleet.state import FleetState, round_seed
from strategies.interfaces import ServerModel
from strategies.modes import centralized
from strategies.policy.requirements import FailureCause
from strategies.round.messages import answers, reason
from strategies.round.state import RoundState, TrainedPart
from strategies.round.steps.base import Bounds, RoundWork, ServerStep, finite
from strategies.settings import SplitSettings
from strategies.wire import names as wire
from strategies.wire.codecs.registry import tagged_codec
from strategies.wire.records import from_record
from strategies.wire.validation import read_upload

POOL_ID = 2**31 - 1  # seeds the server's pool training apart from every partition


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
        and fleet_state.assignments[c.partition_id].mode == centralized.MODE.name
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
    if not finite(tensors, [], loss):  # uploads are bounded on arrival; this is the last guard
        log(WARNING, "round %d: training on the pool left non-finite tensors; its result is left out", rnd.server_round)
        return None
    rnd.pool_samples, rnd.pool_loss = steps * settings.batch_size, loss
    return Contribution(tensors, volume, f"server (centralized pool of {len(rnd.pool_members)})")


def _chunks(upload: Mapping[str, np.ndarray], kind: str) -> Sequence[wire.Chunk]:
    chunks, problems = wire.decode_chunks(upload, kind)
    if problems:  # checked on arrival (or saved after that check): a broken pool file
        raise ValueError("; ".join(problems))
    return chunks


def upload_and_train(work: RoundWork, replies: Mapping[int, Message]) -> None:
    """First (and only) step: this round's uploads into the pool, then the server's training on it."""
    work.uploaded = receive_uploads(replies, work.fleet_state, work.settings, work.bounds, work.rnd)
    work.pool = train_pool(work.model, work.settings, work.state, work.fleet_state, work.rnd)


def pool_part(settings: SplitSettings, part: TrainedPart, rnd: RoundState) -> list[Contribution]:
    """The server's result on the pool, when it trained one."""
    return [part.pool] if part.pool is not None else []


STEP = ServerStep(mode=centralized.MODE.name, first=upload_and_train, server_part=pool_part)
