"""Small fakes for unit tests of the strategy: a numpy server model, numpy clients, a grid.

No torch, no Flower runtime: the fake grid calls a handler per node and message type.
Tensors are constant arrays, so averages can be worked out by hand.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from strategies.cost.workload import ModelShape
from strategies.fleet.devices import DeviceProfile, to_config
from strategies.wire import names as wire
from strategies.wire.codecs.registry import wire_codec
from strategies.wire.records import from_record, to_record

HIDDEN = 4
CLIENT_KEYS = ("prefix.0",)
SERVER_KEYS = ("prefix.1", "head.weight")


def initial_state() -> dict[str, np.ndarray]:
    return {k: np.zeros(3, np.float32) for k in CLIENT_KEYS + SERVER_KEYS}


class FakeServerModel:
    """The server's half: each split minibatch adds 1 to every server tensor; gradients are 2 x activations."""

    client_keys = CLIENT_KEYS
    server_keys = SERVER_KEYS

    def __init__(self) -> None:
        self.split_calls: list[dict[str, np.ndarray]] = []

    def train_split(self, state, batches, *, lr=None, head_lr=None, codec):
        self.split_calls.append({k: np.array(v) for k, v in state.items()})
        trained = {k: np.asarray(state[k]) + len(batches) for k in SERVER_KEYS}
        return trained, [codec.encode(2.0 * np.asarray(b.inputs, np.float32)) for b in batches], 0.5

    def score_split(self, state, batches):
        """Every client scores alike: screening never finds one out of line by its loss."""
        return 0.5

    def shape(self) -> ModelShape:
        return ModelShape(
            layer_params=1000,
            client_layers=1,
            server_layers=1,
            hidden=HIDDEN,
            embedding_params=100,
            client_state_bytes=12,
            layer_prefix_bytes=12,
            head_bytes=12,
            mean_tokens=5.0,
        )

    def emulator_keys(self, layers: int) -> tuple[str, ...]:
        return SERVER_KEYS

    def limits(self) -> wire.ChunkLimits:
        return wire.ChunkLimits(max_tokens=8, num_labels=2, vocab_size=100)

    def train_pool(self, state, chunks, steps, seed, *, lr=None, head_lr=None):
        rows = sum(len(c.label) for c in chunks)
        return {k: np.asarray(state[k]) - 1.0 for k in SERVER_KEYS}, 0.25, rows


def profile(strong: bool = True) -> DeviceProfile:
    return DeviceProfile(
        cpu_hz_max=2e9 if strong else 1e8, memory_bytes=4e9, energy_budget_j=1e3, bandwidth_hz=1e6, channel_gain=1e-8
    )


Handler = Callable[[Message], Message | None]


class FakeClient:
    """A client in numpy: replies with ``value`` as its prefix and ``volume`` as its data volume.

    Its query reply names partition ``partition_id`` of ``num_partitions`` (0: a device with its
    own data) and its ``profile``, which a test may change between rounds.
    """

    def __init__(
        self,
        partition_id: int,
        value: float,
        volume: int,
        available: int = 1000,
        strong: bool = True,
        num_partitions: int = 10,
    ) -> None:
        self.partition_id, self.value, self.volume, self.available = partition_id, value, volume, available
        self.num_partitions = num_partitions
        self.profile = profile(strong)
        self.received: list[Message] = []
        # What the forward reply carries: (rows, tokens) per minibatch (rows None: the plan's batch
        # size, as a real client holding enough samples sends), the label, the claimed volume.
        self.forward_shape: tuple[int | None, int] = (None, 3)
        self.label, self.forward_volume = 0, None

    def __call__(self, msg: Message) -> Message | None:
        self.received.append(msg)
        kind = msg.metadata.message_type
        if kind == wire.QUERY:
            record = ConfigRecord(
                {
                    wire.PARTITION_ID: self.partition_id,
                    wire.NUM_PARTITIONS: self.num_partitions,
                    wire.NUM_AVAILABLE: self.available,
                    **to_config(self.profile),
                }
            )
            return Message(RecordDict({wire.PROFILE: record}), reply_to=msg)
        plan = wire.TrainPlan.from_config(msg.content.config_records[wire.CONFIG])
        codec = wire_codec(plan.activation_dtype)
        tag = ConfigRecord({wire.CODEC: codec.name})  # boundary tensors in the codec the plan asks for
        if kind == wire.SPLIT_FORWARD:
            rows, tokens = self.forward_shape
            rows = plan.batch_size if rows is None else rows
            chunks = [
                wire.Chunk(
                    codec.encode(np.full((rows, tokens, HIDDEN), self.value, np.float32)),
                    np.ones((rows, tokens), np.int8),
                    np.full(rows, self.label, np.int64),
                )
                for _ in range(plan.steps)
            ]
            arrays = to_record(wire.encode_chunks(chunks, "activations"))
            volume = self.volume if self.forward_volume is None else self.forward_volume
            return Message(
                RecordDict(
                    {
                        wire.ACTIVATIONS: arrays,
                        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: volume}),
                        wire.CONFIG: tag,
                    }
                ),
                reply_to=msg,
            )
        if kind in (wire.SPLIT_BACKWARD, wire.LOCAL):
            arrays = from_record(msg.content.array_records[wire.ARRAYS])
            # Local mode: the fake emulator keeps every upper layer, so everything goes back.
            keys = CLIENT_KEYS if kind == wire.SPLIT_BACKWARD else tuple(arrays)
            mine = {k: np.full_like(arrays[k], self.value) for k in keys}
            return self._reply(msg, {wire.ARRAYS: to_record(mine)})
        if kind == wire.UPLOAD:
            chunk = wire.Chunk(
                codec.encode(np.full((plan.upload_rows, 3, HIDDEN), self.value, np.float32)),
                np.ones((plan.upload_rows, 3), np.int8),
                np.zeros(plan.upload_rows, np.int64),
            )
            upload = to_record(wire.encode_chunks([chunk], "activations"))
            return Message(
                RecordDict(
                    {
                        wire.UPLOAD_RECORD: upload,
                        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: plan.upload_rows}),
                        wire.CONFIG: tag,
                    }
                ),
                reply_to=msg,
            )
        raise AssertionError(f"unexpected message {kind}")

    def _reply(self, msg: Message, records: dict) -> Message:
        return Message(
            RecordDict({**records, wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: self.volume})}), reply_to=msg
        )


class FakeGrid(Grid):
    """Delivers each message to the handler of its node; a handler may raise (error reply) or return None.

    ``handlers`` are the connected nodes: a test adds or removes one to connect or disconnect a
    node; a message to a node without a handler gets the SuperLink's ``NODE_UNAVAILABLE`` reply.
    ``sent`` keeps every message sent.
    """

    def __init__(self, handlers: Mapping[int, Handler]) -> None:
        self.handlers = dict(handlers)
        self._run = Run.create_empty(run_id=1)
        self.sent: list[Message] = []
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID

    @property
    def run(self) -> Run:
        return self._run

    def set_run(self, run: Run) -> None:
        self._run = run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.handlers)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.sent.append(message)
            handler = self.handlers.get(message.metadata.dst_node_id)
            if handler is None:
                replies.append(create_message_error_unavailable_res_message(message.metadata, "node_unavail"))
                continue
            try:
                reply = handler(message)
            except Exception as err:
                reply = message.create_error_reply(Error(code=0, reason=f"{type(err).__name__}: {err}"))
            if reply is not None:
                replies.append(reply)
        return replies

    def sent_of(self, message_type: str) -> list[int]:
        """The node ids of the messages of ``message_type`` sent so far, in order."""
        return [m.metadata.dst_node_id for m in self.sent if m.metadata.message_type == message_type]


def fleet(clients: Sequence[FakeClient]) -> FakeGrid:
    """A grid whose node ``100 + i`` is client ``i``."""
    return FakeGrid({100 + i: c for i, c in enumerate(clients)})
