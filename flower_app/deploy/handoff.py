"""Handing a message to this device's worker: the ClientApp's side of the socket.

The worker (:mod:`flower_app.deploy.device_worker`) keeps the model in memory and runs
the ClientApp's handlers; a ClientApp process sends it the message, the contexts and the
run's config, and returns its answer. Requests and replies are Flower's protobuf
``RecordDict`` bytes over an authenticated Unix socket (key beside it, mode 0600).
"""

from __future__ import annotations

import logging
from multiprocessing.connection import Client
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

logger = logging.getLogger(__name__)

WORKER_KEY = "device-worker"  # the node config key that names the worker's socket
# Set in the node config of messages the worker runs: what needs the node's context.state
# (a top-k upload's residual, flower_app.modes.sparse_upload) is left to the ClientApp process.
IN_WORKER_KEY = "in-device-worker"


class WorkerError(RuntimeError):
    """A handler failed inside the worker; the message says how."""


def key_path(socket: str | Path) -> Path:
    return Path(f"{socket}.key")


def encode(content: RecordDict) -> bytes:
    return bytes(recorddict_to_proto(content).SerializeToString())


def decode(data: bytes) -> RecordDict:
    proto = ProtoRecordDict()
    proto.ParseFromString(data)
    return recorddict_from_proto(proto)


def ask(socket: str, message: Message, context: Context, timeout_s: float = 5.0) -> RecordDict | None:
    """The worker's reply content for ``message``, or None when no worker answers at ``socket``.

    A handler error inside the worker raises :class:`WorkerError` (the message is not
    retried locally: it would fail the same way, only slower).
    """
    try:
        key = key_path(socket).read_bytes()
        connection = Client(socket, family="AF_UNIX", authkey=key)
    except (OSError, EOFError, ValueError) as err:
        logger.warning("device worker %s unreachable (%s); handling the message in this process", socket, err)
        return None
    with connection:
        request = {
            "type": message.metadata.message_type,
            "content": encode(message.content),
            "run-config": dict(context.run_config),
            "node-config": dict(context.node_config),
            "run-id": context.run_id,
            "node-id": context.node_id,
        }
        connection.send(request)
        reply = connection.recv()
    if "error" in reply:
        raise WorkerError(reply["error"])
    return decode(reply["content"])
