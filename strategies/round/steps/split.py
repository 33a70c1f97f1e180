"""Split mode on the server: train the upper layers on each client's activations, send the gradients back.

- first: :func:`train_split_side` reads each client's boundary activations, screens the
  clients against each other (``trust=screen``), trains the server's tensors on the ones
  kept and keeps one boundary gradient per minibatch;
- second: :func:`backward_messages` sends them (``train.split_backward``) with the lower
  prefix to replay, and the clients' trained prefixes come back;
- :func:`server_contributions` turns what the server trained into contributions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from flwr.app import ConfigRecord, Message

from strategies.aggregate.volume import Contribution
from strategies.fleet.state import ClientInfo, FleetState
from strategies.interfaces import ServerModel
from strategies.modes import split
from strategies.policy.requirements import FailureCause
from strategies.round import messages as msgs
from strategies.round.messages import answers, reason
from strategies.round.state import RoundState, SplitOutcome, TrainedPart
from strategies.round.steps.base import Bounds, RoundWork, ServerStep, finite
from strategies.round.steps.prefixes import collect_prefixes
from strategies.settings import SplitSettings
from strategies.trust.screen import ClientScore, activation_spread, out_of_line, round_references
from strategies.trust.state import TrustState
from strategies.wire import names as wire
from strategies.wire.codecs.base import WireCodec
from strategies.wire.codecs.registry import tagged_codec
from strategies.wire.names import Chunk
from strategies.wire.records import from_record, to_record
from strategies.wire.validation import validate_num_examples


@dataclass(frozen=True)
class ForwardReply:
    """A split client's forward reply, read and checked: its minibatches, volume and wire codec."""

    info: ClientInfo
    chunks: list[Chunk]
    volume: int
    codec: WireCodec


def read_forward(
    info: ClientInfo,
    reply: Message,
    settings: SplitSettings,
    shape: Bounds,
    fleet_state: FleetState,
    *,
    labels: bool = True,
) -> ForwardReply:
    """A forward reply's minibatches, within what was planned: one chunk per minibatch of at most the
    batch size, the model's hidden size, sequence length and labels, bounded magnitudes, and a
    ``num-examples`` the client holds, was planned, and sent rows for. Raises ValueError.

    ``labels=False`` (U-shape): a reply that carries any label is refused."""
    limits = replace(shape.limits, max_rows=settings.batch_size, max_abs=settings.max_activation)
    arrays = from_record(reply.content.array_records[wire.ACTIVATIONS])
    codec = tagged_codec(reply.content.config_records.get(wire.CONFIG), wire.CODEC, settings.activation_dtype)
    planned = fleet_state.steps_of(info, settings)
    chunks, problems = wire.decode_chunks(
        arrays, wire.ACTIVATIONS_KIND, count=planned, hidden=shape.hidden, limits=limits, codec=codec, labels=labels
    )
    claimed = reply.content.metric_records[wire.METRICS][wire.NUM_EXAMPLES]
    sent = sum(len(c.label) for c in chunks)  # a client demonstrably trained on no more rows than it sent
    problems += validate_num_examples(claimed, min(info.num_available, planned * settings.batch_size, sent or 1))
    if problems:
        raise ValueError("; ".join(problems))
    return ForwardReply(info, chunks, wire.as_int(claimed), codec)


def screen_clients(
    model: ServerModel,
    start: Mapping[str, np.ndarray],
    replies: Sequence[ForwardReply],
    settings: SplitSettings,
    trust: TrustState,
    rnd: RoundState,
) -> list[ForwardReply]:
    """The replies the server trains on: each scored at the round's start (:mod:`strategies.trust.screen`);
    one out of line with its peers, or of a reputation below ``trust_exclude``, is left out
    (``rnd.screened``). Every verdict goes into ``rnd.in_line`` for the client's reputation."""
    scores, scored = {}, []
    for r in replies:
        try:
            scores[r.info.node_id] = ClientScore(model.score_split(start, r.chunks), activation_spread(r.chunks))
            scored.append(r)
        except Exception as err:  # activations the model cannot even score: that client only is dropped
            rnd.drop(r.info.node_id, FailureCause.INVALID_REPLY, f"forward reply rejected: {reason(err)}")
    replies = scored
    refs = round_references(scores, trust.references)
    rnd.references = refs
    kept = []
    for r in replies:
        why = out_of_line(scores[r.info.node_id], refs, settings.trust_z)
        rnd.in_line[r.info.partition_id] = why is None
        reputation = trust.reputation_of(r.info.partition_id)
        if why is None and reputation < settings.trust_exclude:
            why = f"reputation {reputation:.2f} < trust-exclude {settings.trust_exclude:g}"
        if why is None:
            kept.append(r)
        else:
            rnd.screened[r.info.node_id] = why
    return kept


def train_split_side(
    model: ServerModel,
    settings: SplitSettings,
    shape: Bounds,
    state: Mapping[str, np.ndarray],
    fleet_state: FleetState,
    forward: Mapping[int, Message],
    rnd: RoundState,
    trust: TrustState | None = None,
) -> SplitOutcome:
    """Step through each split client's minibatches in partition order.

    ``sequential``: one copy of the server's tensors goes through every client in turn;
    ``parallel``: each client's steps start from the round's global tensors. A reply is
    trained on only once read and checked (:func:`read_forward`), and, with
    ``trust=screen``, screened against its peers first (:func:`screen_clients`). A client
    whose steps leave the server's tensors non-finite is dropped and its steps undone.
    """
    outcome = SplitOutcome(sequential={k: state[k] for k in model.server_keys})
    replies = []
    for info, reply in answers(forward, fleet_state, rnd):
        try:
            replies.append(read_forward(info, reply, settings, shape, fleet_state))
        except Exception as err:  # one client's bad activations must not end the round
            rnd.drop(info.node_id, FailureCause.INVALID_REPLY, f"forward reply rejected: {reason(err)}")
    if settings.trust == "screen" and trust is not None and replies:
        replies = screen_clients(model, outcome.sequential, replies, settings, trust, rnd)
    for r in replies:
        info = r.info
        start = outcome.sequential if settings.server_side == "sequential" else {k: state[k] for k in model.server_keys}
        try:
            trained, grads, loss = model.train_split(
                start, r.chunks, lr=settings.lr, head_lr=settings.head_lr, codec=r.codec
            )
            if not finite(trained, grads, loss):
                raise ValueError("the server's steps on these activations left non-finite tensors (undone)")
        except Exception as err:  # one client's bad activations must not end the round
            rnd.drop(info.node_id, FailureCause.INVALID_REPLY, f"forward reply rejected: {reason(err)}")
            continue
        outcome.gradients[info.node_id] = grads  # encoded by the round's codec, the one the client was asked for
        outcome.server_parts[info.node_id] = Contribution(
            trained, r.volume, f"server half of client {info.partition_id}"
        )
        outcome.losses[info.node_id] = loss
        if settings.server_side == "sequential":
            outcome.sequential = trained
    return outcome


def backward_messages(
    settings: SplitSettings,
    fleet_state: FleetState,
    client_part: Mapping[str, np.ndarray],
    gradients: Mapping[int, Sequence[np.ndarray]],
    server_round: int,
    config: ConfigRecord,
    seed_round: int | None = None,
    message_type: str = wire.SPLIT_BACKWARD,
) -> list[Message]:
    """``train.split_backward`` (or ``message_type``) for each client: its gradients and the lower prefix to replay."""
    client_record = to_record(client_part)
    messages = []
    for node, grads in gradients.items():
        info = fleet_state.clients[node]
        plan = msgs.plan_config(settings, fleet_state, info, server_round, config, seed_round)
        plan[wire.CODEC] = settings.activation_dtype  # the gradients' wire codec: the client decodes by it
        records = {
            wire.ARRAYS: client_record,
            wire.GRADIENTS: to_record({wire.gradient_key(i): g for i, g in enumerate(grads)}),
            wire.CONFIG: plan,
        }
        messages.append(msgs.message(info, message_type, server_round, records))
    return messages


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


def forward(work: RoundWork, replies: Mapping[int, Message]) -> None:
    """First step: train the server's half on the activations (``rnd.split``)."""
    work.rnd.split = train_split_side(
        work.model, work.settings, work.bounds, work.state, work.fleet_state, replies, work.rnd, work.trust
    )


def backward(work: RoundWork) -> None:
    """Second step: send the gradients, and take the trained prefixes that come back."""
    ctx, rnd, client_part = work.ctx, work.rnd, work.client_part()
    if rnd.split.gradients:
        backward = backward_messages(
            ctx.settings,
            work.fleet_state,
            client_part,
            rnd.split.gradients,
            rnd.server_round,
            ctx.train_config,
            ctx.seed_round,
        )
        rnd.backward = msgs.exchange_in_round(ctx.grid, backward, ctx.timeout, rnd)
    accepted = collect_prefixes(rnd.backward, split.MODE.name, client_part, work.fleet_state, ctx.settings, rnd)
    work.prefixes[split.MODE.name] = accepted


def server_part(settings: SplitSettings, part: TrainedPart, rnd: RoundState) -> list[Contribution]:
    """What the server trained on the accepted split clients (:func:`server_contributions`)."""
    return server_contributions(settings, part.prefixes.get(split.MODE.name, {}), rnd.split)


STEP = ServerStep(mode=split.MODE.name, first=forward, second=backward, server_part=server_part)
