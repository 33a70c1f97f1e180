"""U-shape mode on the server: the layers between a device's lower layers and its head.

No label crosses the wire in this mode, so the server can neither compute a loss nor screen a
client by one (``trust=screen`` applies to split clients only). A round:

- first: :func:`read_activations` reads each client's boundary activations, refusing a reply
  that carries a label (:func:`strategies.round.steps.split.read_forward` with ``labels=False``);
- second: :func:`train_server_side` runs the top exchanges (``train.ushape_top``): the server
  sends a client the features of its minibatches (what the head reads) and the head; the
  device runs the head on its own labels and sends back its gradient at each feature, its
  trained head and its loss (:func:`read_top_reply`); the server backpropagates those gradients
  through the upper layers and keeps one boundary gradient per minibatch (:func:`top_pass`).
  ``sequential`` (the default): one client after another in partition order, each sent the
  features and head the previous client's steps left, so the upper prefix and the head go
  through the clients as split's server half does; ``parallel``: one exchange with all of them,
  each from the round's start, their results averaged. Split's backward message
  (``train.ushape_backward``) then returns the boundary gradients, and each client's trained
  lower prefix comes back.

Staleness: the device's gradient for minibatch ``i`` was computed at features of the start of
its exchange, while the server's copy has taken the steps before it since: bounded staleness, as
in split's replay. The first version sent every client its features at the round's start and
went through them one after another: on the default job the last of ten clients' gradients
were 108 server steps stale and training diverged (held-out accuracy 0.678 after round 1,
0.568 after round 5, training loss 3.17). Sequential top exchanges cost a message round trip
per client in wall time, not in bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Message

from strategies.aggregate.volume import Contribution
from strategies.fleet.state import ClientInfo
from strategies.modes import ushape
from strategies.policy.requirements import FailureCause
from strategies.round import messages as msgs
from strategies.round.messages import answers, reason
from strategies.round.state import RoundState, TrainedPart
from strategies.round.steps.base import RoundWork, ServerStep, finite
from strategies.round.steps.prefixes import collect_prefixes
from strategies.round.steps.split import backward_messages, read_forward, server_contributions
from strategies.settings import SplitSettings
from strategies.wire import names as wire
from strategies.wire.codecs.registry import tagged_codec, wire_codec
from strategies.wire.records import content_bytes, from_record, to_record
from strategies.wire.validation import judge, spec_of


def head_of(state: Mapping[str, np.ndarray], server_keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The global head's tensors (empty for a frozen head, e.g. a tied LM head)."""
    return {k: state[k] for k in server_keys if wire.is_head(k)}


def read_activations(work: RoundWork, replies: Mapping[int, Message]) -> None:
    """First step: each U-shape client's boundary activations, read and checked, without labels."""
    out = work.rnd.ushape
    for info, reply in answers(replies, work.fleet_state, work.rnd):
        try:
            r = read_forward(info, reply, work.settings, work.bounds, work.fleet_state, labels=False)
        except Exception as err:  # one client's bad activations must not end the round
            work.rnd.drop(info.node_id, FailureCause.INVALID_REPLY, f"forward reply rejected: {reason(err)}")
            continue
        out.chunks[info.node_id], out.volumes[info.node_id], out.codecs[info.node_id] = r.chunks, r.volume, r.codec


def top_messages(
    work: RoundWork, tops: Mapping[int, list[np.ndarray]], head: Mapping[str, np.ndarray]
) -> list[Message]:
    """``train.ushape_top`` for each client: the features of its minibatches and ``head``."""
    ctx, settings = work.ctx, work.settings
    codec = wire_codec(settings.activation_dtype)
    head_record = to_record(dict(head))
    messages = []
    for node, hidden in tops.items():
        info = work.fleet_state.clients[node]
        plan = msgs.plan_config(
            settings, work.fleet_state, info, work.rnd.server_round, ctx.train_config, ctx.seed_round
        )
        plan[wire.CODEC] = codec.name  # the features' wire codec, and the one the gradients come back in
        records = {
            wire.ARRAYS: head_record,
            wire.TOP: to_record({wire.activation_key(i): codec.encode(h) for i, h in enumerate(hidden)}),
            wire.CONFIG: plan,
        }
        messages.append(msgs.message(info, wire.USHAPE_TOP, work.rnd.server_round, records))
    return messages


def read_top_reply(
    reply: Message, sent: list[np.ndarray], head: Mapping[str, np.ndarray], settings: SplitSettings, available: int
) -> tuple[list[np.ndarray], dict[str, np.ndarray], float, int]:
    """A top reply's gradients (one per features array sent, its shape, finite, bounded), trained head,
    loss and volume. Raises ValueError naming what is wrong."""
    content = reply.content
    codec = tagged_codec(content.config_records.get(wire.CONFIG), wire.CODEC, settings.activation_dtype)
    arrays = from_record(content.array_records[wire.GRADIENTS])
    expected = {wire.gradient_key(i) for i in range(len(sent))}
    if set(arrays) != expected:
        raise ValueError(f"gradients {sorted(arrays)[:3]}..., expected grad.0..{len(sent) - 1}")
    grads = []
    for i, hidden in enumerate(sent):
        grad = codec.decode(arrays[wire.gradient_key(i)])
        if grad.shape != hidden.shape:
            raise ValueError(f"gradient {i} has shape {grad.shape}, the features sent {hidden.shape}")
        if not np.isfinite(grad).all() or np.abs(grad).max(initial=0.0) > settings.max_activation:
            raise ValueError(f"gradient {i} is non-finite or above {settings.max_activation:g} in magnitude")
        grads.append(grad)
    trained = from_record(content.array_records[wire.ARRAYS]) if head else {}
    metrics = content.metric_records[wire.METRICS]
    volume, loss = metrics[wire.NUM_EXAMPLES], float(metrics[wire.TRAIN_LOSS])  # type: ignore[arg-type]
    verdict = judge(trained, spec_of(head), volume, available)
    if not verdict.ok or not np.isfinite(loss):
        raise ValueError("; ".join(verdict.reasons) or f"non-finite loss {loss}")
    return grads, trained, loss, wire.as_int(volume)


def top_pass(work: RoundWork, nodes: list[int], server: Mapping[str, np.ndarray]) -> None:
    """One top exchange with ``nodes`` from the server's tensors ``server`` (its head included), and
    the server's steps on each good reply: ``out.gradients`` and ``out.server_parts`` (the upper
    prefix after the client's steps with the head the device trained)."""
    out, rnd, model = work.rnd.ushape, work.rnd, work.model
    tops = {}
    for node in nodes:
        try:
            tops[node] = model.top_split(server, out.chunks[node])
        except Exception as err:  # activations the model cannot even run: that client only is dropped
            rnd.drop(node, FailureCause.INVALID_REPLY, f"forward reply rejected: {reason(err)}")
    head = head_of(server, model.server_keys)
    replies = msgs.exchange_in_round(work.ctx.grid, top_messages(work, tops, head), work.ctx.timeout, rnd)
    for info, reply in answers(replies, work.fleet_state, rnd):
        node = info.node_id
        rnd.more_up[node] = rnd.more_up.get(node, 0) + content_bytes(reply)
        try:
            grads, trained_head, loss, volume = read_top_reply(
                reply, tops[node], head, work.settings, _available(info, work)
            )
            trained, boundary_grads = model.train_top(
                server, out.chunks[node], grads, lr=work.settings.lr, codec=out.codecs[node]
            )
            if not finite(trained, boundary_grads, loss):
                raise ValueError("the server's steps on these gradients left non-finite tensors (undone)")
        except Exception as err:  # one client's bad reply must not end the round
            rnd.drop(node, FailureCause.INVALID_REPLY, f"top reply rejected: {reason(err)}")
            continue
        out.volumes[node] = min(out.volumes[node], volume)
        out.gradients[node], out.losses[node] = boundary_grads, loss
        upper = {k: v for k, v in trained.items() if not wire.is_head(k)}
        out.server_parts[node] = Contribution(
            {**upper, **trained_head}, out.volumes[node], f"server half and head of client {info.partition_id}"
        )


def train_server_side(work: RoundWork) -> None:
    """Every client's top exchange and the server's steps on it.

    ``sequential``: one client after another in partition order, each from the tensors the
    previous one left (upper prefix and head), as split's server goes through its clients;
    ``parallel``: one exchange with every client, each from the round's start.
    """
    out, state, keys = work.rnd.ushape, work.state, work.model.server_keys
    nodes = sorted(out.chunks, key=lambda n: work.fleet_state.clients[n].partition_id)
    out.sequential = {k: state[k] for k in keys}
    if work.settings.server_side == "parallel":
        top_pass(work, nodes, out.sequential)
        return
    for node in nodes:
        top_pass(work, [node], out.sequential)
        if node in out.server_parts:
            out.sequential = {**out.sequential, **out.server_parts[node].arrays}


def _available(info: ClientInfo, work: RoundWork) -> int:
    return min(info.num_available, work.fleet_state.steps_of(info, work.settings) * work.settings.batch_size)


def second(work: RoundWork) -> None:
    """Second step: the top exchanges and the server's steps, the backward exchange, the prefixes."""
    ctx, rnd, out = work.ctx, work.rnd, work.rnd.ushape
    if not out.chunks:
        return
    train_server_side(work)
    client_part = work.client_part()
    backward = backward_messages(
        ctx.settings,
        work.fleet_state,
        client_part,
        out.gradients,
        rnd.server_round,
        ctx.train_config,
        ctx.seed_round,
        message_type=wire.USHAPE_BACKWARD,
    )
    replies = msgs.exchange_in_round(ctx.grid, backward, ctx.timeout, rnd)
    for node, reply in replies.items():
        rnd.more_up[node] = rnd.more_up.get(node, 0) + content_bytes(reply)
    accepted = collect_prefixes(replies, ushape.MODE.name, client_part, work.fleet_state, ctx.settings, rnd)
    work.prefixes[ushape.MODE.name] = accepted


def server_part(settings: SplitSettings, part: TrainedPart, rnd: RoundState) -> list[Contribution]:
    """The server's upper prefix with the devices' head: one sequential result, or one per client
    (:func:`strategies.round.steps.split.server_contributions`, whose rules apply unchanged)."""
    return server_contributions(settings, part.prefixes.get(ushape.MODE.name, {}), rnd.ushape)


STEP = ServerStep(mode=ushape.MODE.name, first=read_activations, second=second, server_part=server_part)
