"""Building the messages of a round, exchanging them, and sorting the replies.

A round has at most two exchanges. The first sends each sampled client the first message of
its mode (:attr:`strategies.modes.base.TrainingMode.first_message`); a mode with a second
exchange sends it in its server step (:mod:`strategies.round.steps`). Every train message
carries the same plan config: the
round's seed for that client, the training settings, the requirement, and the
client's group, mode and allocation.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid

from strategies.fleet.state import ClientInfo, FleetState, client_info, round_seed
from strategies.modes.registry import training_mode
from strategies.policy import policies as fleet
from strategies.policy.requirements import FailureCause, failure_from_config, is_failure_config, requirement_to_config
from strategies.round.state import RoundState
from strategies.settings import SplitSettings
from strategies.wire import names as wire
from strategies.wire.records import content_bytes


def plan_config(
    settings: SplitSettings,
    fleet_state: FleetState,
    info: ClientInfo,
    server_round: int,
    extra: ConfigRecord,
    seed_round: int | None = None,
) -> ConfigRecord:
    """The config of one client's train message this round (``extra``: the caller's own keys).

    ``seed_round``: the round whose batch plans to draw (a probe's second trial repeats the first's).
    """
    assignment = fleet_state.assignments[info.partition_id]
    plan = wire.TrainPlan(
        server_round=server_round,
        seed=round_seed(settings.seed, seed_round or server_round, info.partition_id),
        steps=fleet_state.steps_of(info, settings),
        batch_size=settings.batch_size,
        lr=settings.lr,
        head_lr=settings.head_lr,
        activation_dtype=settings.activation_dtype,
        emulator_layers=settings.emulator_layers,
        local_eval_size=settings.local_eval_size,
        upload_kind=settings.upload_kind,
        upload_rows=fleet_state.upload_rows.get(info.partition_id, 0),
        upload_topk=settings.upload_topk,
        replay_lr_scale=settings.replay_lr_scale,
    )
    return ConfigRecord(
        {
            **dict(extra),
            **requirement_to_config(settings.requirement),
            **plan.to_config(),
            **fleet.assignment_config(assignment, settings.fleet_policy, info.profile),
        }
    )


def message(info: ClientInfo, message_type: str, server_round: int, records: Mapping[str, Any]) -> Message:
    return Message(RecordDict(dict(records)), info.node_id, message_type, group_id=str(server_round))


def first_messages(
    settings: SplitSettings,
    fleet_state: FleetState,
    sampled: Sequence[ClientInfo],
    server_round: int,
    arrays: ArrayRecord,
    config: ConfigRecord,
    keys_by_mode: Mapping[str, Sequence[str]],
    seed_round: int | None = None,
) -> list[Message]:
    """The first message of each sampled client's round, by its mode.

    ``split``: ``train.split_forward`` with the lower prefix; ``local``: ``train.local``
    with the lower prefix and the emulator's tensors; ``centralized``: ``train.upload``
    until the client has uploaded, then nothing (the server trains on its upload).
    ``keys_by_mode`` names the tensors each mode's message carries.
    """
    messages = []
    for info in sampled:
        mode = training_mode(fleet_state.assignments[info.partition_id].mode)
        if mode.uploads_once and info.partition_id in fleet_state.pool:
            continue
        records = {
            wire.ARRAYS: ArrayRecord({k: arrays[k] for k in keys_by_mode[mode.name]}),
            wire.CONFIG: plan_config(settings, fleet_state, info, server_round, config, seed_round),
        }
        messages.append(message(info, mode.first_message, server_round, records))
    return messages


@dataclass
class Exchange:
    """What came back from one exchange, by node id: good replies, failures, bytes sent.

    ``unavailable``: nodes that Flower itself reported unreachable (its error reply, not
    the client's); the strategy stops sampling them at once.
    """

    replies: dict[int, Message] = field(default_factory=dict)
    failures: dict[int, tuple[FailureCause, str]] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    unavailable: set[int] = field(default_factory=set)


# Error codes Flower's SuperLink uses when a node or its reply is gone (not the ClientApp's own errors).
FLOWER_UNAVAILABLE = frozenset({ErrorCode.NODE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE})


def exchange(grid: Grid, messages: Iterable[Message], timeout: float) -> Exchange:
    """Send, wait up to ``timeout`` seconds, and sort the replies.

    Replies are matched to the messages sent by ``reply_to_message_id`` (an error reply for
    a dead node comes from the SuperLink, not from the node). An error reply is a
    ``client-error``; a node that did not answer in time a ``timeout``; a reply to no
    message of this exchange, or a second reply to one, is ignored with a warning.
    """
    outgoing = list(messages)
    result = Exchange(bytes_down={m.metadata.dst_node_id: content_bytes(m) for m in outgoing})
    if not outgoing:
        return result
    replies = list(grid.send_and_receive(outgoing, timeout=timeout))
    node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in outgoing}  # ids are set when pushed
    for reply in replies:
        node = node_of.get(reply.metadata.reply_to_message_id)
        if node is None or node in result.replies or node in result.failures:
            log(WARNING, "ignored a reply from node %d to no open message of this exchange", reply.metadata.src_node_id)
            continue
        if not from_addressee(reply, node):
            log(
                WARNING,
                "ignored a reply from node %d to the message sent to node %d: a node answers only its own messages",
                reply.metadata.src_node_id,
                node,
            )
            continue
        if reply.has_error():
            why = f"error reply: {reply.error.reason}"
            if reply.error.code in FLOWER_UNAVAILABLE:
                result.unavailable.add(node)
                why = f"node unavailable: {reply.error.reason}"
            result.failures[node] = (FailureCause.CLIENT_ERROR, why)
        else:
            result.replies[node] = reply
    for node in result.bytes_down:
        if node not in result.replies and node not in result.failures:
            result.failures[node] = (FailureCause.TIMEOUT, f"no reply within {timeout:.0f} s")
    return result


def from_addressee(reply: Message, node: int) -> bool:
    """Whether ``reply`` comes from ``node``, the node its message went to.

    Flower's SuperLink checks this in deployment; the strategy checks it too, so that an
    in-process grid (or a grid of the user's) cannot credit one node's work to another.
    The one exception: Flower's own error reply for a node that is gone, sent by the
    SuperLink in the node's name.
    """
    src = reply.metadata.src_node_id
    if src == node:
        return True
    return reply.has_error() and reply.error.code in FLOWER_UNAVAILABLE and src == SUPERLINK_NODE_ID


def exchange_in_round(grid: Grid, messages: Iterable[Message], timeout: float, rnd: RoundState) -> dict[int, Message]:
    """:func:`exchange`, with its failures and bytes entered into the round; the good replies."""
    result = exchange(grid, messages, timeout)
    for node, (cause, why) in result.failures.items():
        rnd.drop(node, cause, why)
    rnd.unavailable |= result.unavailable
    for node, sent in result.bytes_down.items():
        rnd.bytes_down[node] = rnd.bytes_down.get(node, 0) + sent
    return result.replies


def answers(
    replies: Mapping[int, Message], fleet_state: FleetState, rnd: RoundState
) -> Iterator[tuple[ClientInfo, Message]]:
    """Replies that carry work, in partition order; a failure reply is recorded, not yielded."""
    for info in sorted((fleet_state.clients[n] for n in replies), key=lambda c: c.partition_id):
        reply = replies[info.node_id]
        config = reply.content.config_records.get(wire.CONFIG)
        if config is None or not is_failure_config(config):
            yield info, reply
            continue
        try:
            rnd.report(info.node_id, failure_from_config(dict(config)))
        except ValueError as err:
            rnd.drop(info.node_id, FailureCause.INVALID_REPLY, f"unreadable failure reply: {err}")


def reason(err: Exception) -> str:
    """An exception as one line for the log and the record."""
    return f"{type(err).__name__}: {err}"


def wait_for_nodes(grid: Grid, settings: SplitSettings) -> list[int]:
    """The connected nodes, once ``min_clients`` are: waits up to ``wait_for_nodes_s``, then raises."""
    wait_s, need = settings.wait_for_nodes_s, settings.min_clients
    deadline = time.time() + wait_s
    nodes = list(grid.get_node_ids())
    while len(nodes) < need and time.time() < deadline:
        time.sleep(1.0)
        nodes = list(grid.get_node_ids())
    if len(nodes) < need:
        raise RuntimeError(f"only {len(nodes)} nodes connected after {wait_s:.0f} s; strategy.min-clients is {need}")
    return nodes


# Queries go out this many at a time: Flower's simulation engine scans every message in flight for
# each node it serves, so 1000 queries at once cost 1000 x 1000 checks a sweep (measured: the
# 1000-node start-up fell from 54 s to 27 s in batches of 100).
QUERY_BATCH = 100


def query(
    grid: Grid, nodes: Iterable[int], timeout: float, server_round: int = 0
) -> tuple[dict[int, ClientInfo], Exchange]:
    """Ask ``nodes`` who they are (partition id, data volume, device profile).

    Returns the well-formed replies by node id, and the exchange: its failures also hold
    each malformed reply (``invalid-reply``). Every failure is logged with its node and why.
    """
    queries = [
        Message(RecordDict({wire.CONFIG: ConfigRecord({})}), node, wire.QUERY, group_id=str(server_round))
        for node in nodes
    ]
    answered = Exchange()
    for start in range(0, len(queries), QUERY_BATCH):
        batch = exchange(grid, queries[start : start + QUERY_BATCH], timeout)
        answered.replies |= batch.replies
        answered.failures |= batch.failures
        answered.bytes_down |= batch.bytes_down
        answered.unavailable |= batch.unavailable
    for node, (cause, why) in answered.failures.items():
        log(WARNING, "node %d: no query reply (%s: %s)", node, cause, why)
    infos: dict[int, ClientInfo] = {}
    for node, reply in sorted(answered.replies.items()):
        try:
            infos[node] = client_info(reply, node)
        except Exception as err:  # a malformed query reply: leave the node out, say why
            log(WARNING, "node %d: unusable query reply (%s)", node, reason(err))
            answered.failures[node] = (FailureCause.INVALID_REPLY, f"unusable query reply: {reason(err)}")
    return infos, answered
