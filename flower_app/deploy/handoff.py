"""Handing a message to this device's worker: the ClientApp's side of the socket, and the wire both sides speak.

The worker (:mod:`flower_app.deploy.device_worker`) keeps the model in memory and runs
the ClientApp's handlers; a ClientApp process sends it the message, the contexts and the
run's config, and returns its answer.

The wire, over a Unix socket (mode 0600, the key beside it, mode 0600): first a mutual
handshake, HMAC-SHA256 with the key, so that neither side talks to a peer without it::

    worker -> client   a 32-byte nonce W
    client -> worker   HMAC(key, "client" + W), a 32-byte nonce C    (a wrong one: the worker hangs up)
    worker -> client   HMAC(key, "worker" + C)

then one request and one reply, each a frame::

    header length, body length    two big-endian uint64 (16 bytes)
    header                        a UTF-8 JSON object (REQUEST_FIELDS; a reply's: {} or {"error": "..."})
    body                          Flower's protobuf RecordDict bytes (the message's content, the reply's)

The lengths come first so that the worker refuses a request over its limit before reading it.
No pickle crosses the socket: a request is data, and a malformed one is answered with an error.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import secrets
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

logger = logging.getLogger(__name__)

WORKER_KEY = "device-worker"  # the node config key that names the worker's socket
# Set in the node config of messages the worker runs: what needs the node's context.state
# (a top-k upload's residual, flower_app.modes.sparse_upload) is left to the ClientApp process.
IN_WORKER_KEY = "in-device-worker"

REQUEST_FIELDS: dict[str, type] = {"type": str, "run-id": int, "node-id": int, "run-config": dict, "node-config": dict}
FRAME = struct.Struct("!QQ")  # header length, body length
NONCE_BYTES = 32
MAC_BYTES = 32  # SHA-256


class WorkerError(RuntimeError):
    """The worker answered with an error (a handler failed, the request was refused), or not in time."""


class AuthenticationError(ConnectionError):
    """The peer does not hold the key beside the socket."""


class FrameTooLarge(ValueError):
    """A frame's lengths exceed the reader's limit; its body was not read."""


def key_path(socket: str | Path) -> Path:
    return Path(f"{socket}.key")


def encode(content: RecordDict) -> bytes:
    return bytes(recorddict_to_proto(content).SerializeToString())


def decode(data: bytes) -> RecordDict:
    proto = ProtoRecordDict()
    proto.ParseFromString(data)
    return recorddict_from_proto(proto)


def check_request(header: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``header`` has every field of a request, each of its type."""
    for name, kind in REQUEST_FIELDS.items():
        if not isinstance(header.get(name), kind):
            raise ValueError(f"request field {name!r} must be of type {kind.__name__}, got {header.get(name)!r:.80}")


def time_left(deadline: float) -> float:
    """Seconds until ``deadline`` (a ``time.monotonic()`` value); TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def recv_exact(connection: socket.socket, size: int, deadline: float) -> bytes:
    """``size`` bytes, all of them by ``deadline``: a slow trickle is cut off as surely as silence."""
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        connection.settimeout(time_left(deadline))
        count = connection.recv_into(view[got:])
        if count == 0:
            raise EOFError(f"connection closed after {got} of {size} bytes")
        got += count
    return bytes(data)


def send_all(connection: socket.socket, data: bytes, deadline: float) -> None:
    connection.settimeout(time_left(deadline))  # sendall's timeout bounds the whole call
    connection.sendall(data)


def send_frame(connection: socket.socket, header: Mapping[str, Any], body: bytes, deadline: float) -> None:
    head = json.dumps(header).encode()
    send_all(connection, FRAME.pack(len(head), len(body)) + head, deadline)
    if body:  # an empty one would only meet a peer that has read its frame and gone
        send_all(connection, body, deadline)


def recv_frame(
    connection: socket.socket, deadline: float, max_bytes: int | None = None
) -> tuple[dict[str, Any], bytes]:
    """A frame's header and body; FrameTooLarge, before reading either, when they exceed ``max_bytes``."""
    head_size, body_size = FRAME.unpack(recv_exact(connection, FRAME.size, deadline))
    if max_bytes is not None and head_size + body_size > max_bytes:
        raise FrameTooLarge(f"{head_size + body_size} bytes, over the limit of {max_bytes}")
    header = json.loads(recv_exact(connection, head_size, deadline))
    if not isinstance(header, dict):
        raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
    return header, recv_exact(connection, body_size, deadline)


def _mac(key: bytes, role: bytes, nonce: bytes) -> bytes:
    return hmac.digest(key, role + nonce, "sha256")


def authenticate_client(connection: socket.socket, key: bytes, deadline: float) -> None:
    """The worker's side of the handshake: AuthenticationError for a client without ``key``."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    send_all(connection, nonce, deadline)
    answer = recv_exact(connection, MAC_BYTES + NONCE_BYTES, deadline)
    if not hmac.compare_digest(answer[:MAC_BYTES], _mac(key, b"client", nonce)):
        raise AuthenticationError("the client does not hold the key")
    send_all(connection, _mac(key, b"worker", answer[MAC_BYTES:]), deadline)


def authenticate_worker(connection: socket.socket, key: bytes, deadline: float) -> None:
    """The client's side of the handshake: AuthenticationError for a worker without ``key``."""
    challenge = recv_exact(connection, NONCE_BYTES, deadline)
    nonce = secrets.token_bytes(NONCE_BYTES)
    send_all(connection, _mac(key, b"client", challenge) + nonce, deadline)
    try:
        proof = recv_exact(connection, MAC_BYTES, deadline)
    except EOFError as err:
        raise AuthenticationError("the worker hung up on our proof: it holds another key") from err
    if not hmac.compare_digest(proof, _mac(key, b"worker", nonce)):
        raise AuthenticationError("the worker does not hold the key")


def connect(path: str | Path, key: bytes, deadline: float) -> socket.socket:
    """An authenticated connection to the worker at ``path``."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(time_left(deadline))
        connection.connect(str(path))
        authenticate_worker(connection, key, deadline)
    except BaseException:
        connection.close()
        raise
    return connection


def ask(path: str, message: Message, context: Context, timeout_s: float | None = None) -> RecordDict | None:
    """The worker's reply content for ``message``, or None when no worker answers at ``path``.

    ``timeout_s`` bounds the whole exchange (connecting, the handshake, sending, the worker's
    work, receiving); None: the message's TTL, after which Flower drops the reply anyway.
    A worker that does not answer in time, an error inside it (a handler's, or its refusal
    of the request) raises :class:`WorkerError`: the message is not retried here, it would
    fail the same way, only slower. A worker that is not there, or that refuses the
    connection, leaves the message to this process (None).
    """
    timeout_s = float(message.metadata.ttl) if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    header = {
        "type": message.metadata.message_type,
        "run-id": context.run_id,
        "node-id": context.node_id,
        "run-config": dict(context.run_config),
        "node-config": dict(context.node_config),
    }
    body = encode(message.content)
    try:
        connection = connect(path, key_path(path).read_bytes(), deadline)
    except TimeoutError as err:
        raise WorkerError(f"device worker {path} did not answer within {timeout_s:g} s") from err
    except (OSError, EOFError) as err:
        logger.warning("device worker %s unreachable (%s); handling the message in this process", path, err)
        return None
    with connection:
        try:
            # A worker that stops reading (a request over its limit) has replied why.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                send_frame(connection, header, body, deadline)
            reply, content = recv_frame(connection, deadline)
        except TimeoutError as err:
            raise WorkerError(f"device worker {path} did not answer within {timeout_s:g} s") from err
        except (OSError, EOFError, ValueError) as err:
            raise WorkerError(f"device worker {path} lost the request ({err})") from err
    if "error" in reply:
        raise WorkerError(str(reply["error"]))
    return decode(content)
