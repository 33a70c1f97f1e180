"""A device worker: one long-lived process that answers a SuperNode's messages with its model kept in memory.

Flower 1.41 runs every message in a fresh ``flwr-clientapp`` process. Even with the
device part and data cached on disk (:mod:`flower_app.model.device_part`), such a process spends
about 3 s importing torch and transformers before it can train. A device that starts
this worker once::

    python -m flower_app.deploy.device_worker --socket /run/user/1000/hsp-worker.sock

and names it in its node config (``--node-config "... device-worker=/run/user/1000/hsp-worker.sock"``)
has each ClientApp process hand its message to the worker over that Unix socket
(:mod:`flower_app.deploy.handoff`, which also describes the wire) and return the worker's
answer: the ClientApp process then imports neither torch nor the model. The worker runs
the very same ClientApp (:data:`flower_app.apps.client_app.app`).

Security: the socket is created with mode 0600 and every connection is authenticated
with a random key kept beside it (``<socket>.key``, mode 0600, written anew at each start),
so only the device's user can reach it. If the worker cannot be reached, the ClientApp does the work
itself and logs a warning; an error inside a handler comes back as that error.

Abuse: each connection has :attr:`WorkerLimits.io_timeout_s` to complete the handshake and
send its request, and a request over :attr:`WorkerLimits.max_request_bytes` is refused unread.
A malformed, oversized, truncated or late request is answered with an error, and the worker
goes on serving.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from flower_app.apps.client_app import app
from flower_app.deploy.handoff import (
    IN_WORKER_KEY,
    WORKER_KEY,
    authenticate_client,
    check_request,
    decode,
    encode,
    key_path,
    recv_frame,
    send_frame,
)

logger = logging.getLogger(__name__)

MIB = 2**20


@dataclass(frozen=True)
class WorkerLimits:
    """What one connection may take of the worker.

    max_request_bytes : int (default: 64 MiB)
        Largest request, header and content together; its length comes first, so a larger
        one is refused before it is read. The bench's requests are about 2 MB.
    io_timeout_s : float (default: 10.0)
        Seconds a connection has, from being accepted, for the handshake and its whole
        request; as long again for the worker to write its reply. On a local socket a
        real client needs milliseconds: a silent or trickling one is cut off.
    max_connections : int (default: 8)
        Connections served at once; one more is closed at once (its ClientApp then handles
        the message itself). Bounds the memory of requests being read to
        ``max_connections * max_request_bytes``.
    """

    max_request_bytes: int = 64 * MIB
    io_timeout_s: float = 10.0
    max_connections: int = 8


def answer(request: Mapping[str, Any], content: bytes) -> tuple[dict[str, str], bytes]:
    """Run one request through the ClientApp, as a SuperNode would, in this process.

    Returns the reply's header and content: ``({}, content)``, or ``({"error": ...}, b"")``
    for a malformed request or a handler's error.
    """
    try:
        check_request(request)
        node_config = {k: v for k, v in request["node-config"].items() if k != WORKER_KEY}  # no hand-off from here
        node_config[IN_WORKER_KEY] = True
        context = Context(request["run-id"], request["node-id"], node_config, RecordDict(), request["run-config"])
        # A Message outside a Flower runtime needs the process task identity (see flower_app.apps.runner).
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, request["run-id"], SUPERLINK_NODE_ID
        message = Message(decode(content), request["node-id"], request["type"], group_id="")
        message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        reply = app(message, context)
    except Exception as err:  # a malformed request, or the ClientApp re-raising a handler's error
        return {"error": f"{type(err).__name__}: {err}"}, b""
    if reply.has_error():
        return {"error": reply.error.reason or f"error code {reply.error.code}"}, b""
    return {}, encode(reply.content)


class _Connections:
    """The connections being served, each in its own thread, and what they have answered.

    A thread per connection, at most ``max_connections`` at once, rather than a queue in
    front of a pool: a connection is read from the moment it is accepted, so a silent or
    slow one holds only its own thread (until ``io_timeout_s``), never the next client; and
    one over the cap is closed at once, so its ClientApp falls back to its own process
    instead of waiting its deadline out in a queue. The ClientApp itself runs one request
    at a time (``_run``): the model, torch's random state and Flower's ``TaskIdentity``
    belong to the process, and a device's SuperNode sends one message at a time anyway.
    """

    def __init__(self, key: bytes, limits: WorkerLimits) -> None:
        self._key, self._limits = key, limits
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._run = threading.Lock()
        self._books = threading.Lock()  # guards the counts below
        self._threads: list[threading.Thread] = []
        self._busy, self.served, self._last = 0, 0, time.monotonic()

    def idle_s(self) -> float:
        """Seconds since the last connection ended; 0 while one is open."""
        with self._books:
            return 0.0 if self._busy else time.monotonic() - self._last

    def admit(self, connection: socket.socket) -> None:
        if not self._slots.acquire(blocking=False):
            logger.warning("device worker: %d connections open, closed one more", self._limits.max_connections)
            connection.close()
            return
        with self._books:
            self._busy += 1
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        thread = threading.Thread(target=self._serve, args=(connection,), name="worker-connection", daemon=True)
        self._threads.append(thread)
        thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def _serve(self, connection: socket.socket) -> None:
        answered = False
        try:
            with connection:
                answered = self._exchange(connection)
        except Exception:  # a bug here must not go unnoticed, nor stop the worker
            logger.exception("device worker: a connection failed")
        finally:
            self._slots.release()
            with self._books:
                self._busy, self.served, self._last = self._busy - 1, self.served + answered, time.monotonic()

    def _exchange(self, connection: socket.socket) -> bool:
        """Authenticate, read the request, run it, reply; whether a reply went out."""
        deadline = time.monotonic() + self._limits.io_timeout_s
        try:
            authenticate_client(connection, self._key, deadline)
        except (OSError, EOFError) as err:  # a client without the key, or a silent one
            logger.warning("device worker: refused a connection (%s)", err)
            return False
        try:
            request, content = recv_frame(connection, deadline, self._limits.max_request_bytes)
        except Exception as err:  # oversized, truncated, late or not JSON: say so and carry on
            logger.warning("device worker: bad request (%s: %s)", type(err).__name__, err)
            reply: tuple[dict[str, str], bytes] = ({"error": f"bad request: {type(err).__name__}: {err}"}, b"")
        else:
            with self._run:
                reply = answer(request, content)
        try:
            send_frame(connection, *reply, time.monotonic() + self._limits.io_timeout_s)
        except OSError as err:  # the ClientApp process went away (or gave up) mid-request
            logger.warning("device worker: lost a connection (%s)", err)
            return False
        return True


def _write_key(socket_path: Path) -> tuple[bytes, Path]:
    """A fresh random key, written mode 0600 beside the socket under a temporary name."""
    key = secrets.token_bytes(32)
    draft = Path(f"{key_path(socket_path)}.new")
    draft.unlink(missing_ok=True)
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key, draft


def serve(
    path: str | Path,
    stop: threading.Event | None = None,
    idle_exit_s: float = 0.0,
    limits: WorkerLimits = WorkerLimits(),
) -> int:
    """Answer requests at ``path`` until ``stop`` is set (or idle for ``idle_exit_s``).

    The key file appears once the socket listens: a launcher may wait for it. Returns how
    many requests were answered (error replies included).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    key_path(path).unlink(missing_ok=True)  # the key file appears again once the socket listens
    key, draft = _write_key(path)
    connections = _Connections(key, limits)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen()
        listener.settimeout(0.5)  # wake up to check ``stop``
        os.replace(draft, key_path(path))
        logger.info("device worker listening on %s", path)
        while not (stop is not None and stop.is_set()):
            if idle_exit_s and connections.idle_s() > idle_exit_s:
                break
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connections.admit(connection)
    finally:
        listener.close()
        path.unlink(missing_ok=True)
        draft.unlink(missing_ok=True)
        key_path(path).unlink(missing_ok=True)
        connections.join()
    return connections.served


def main(argv: list[str] | None = None) -> int:
    defaults = WorkerLimits()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="Unix socket to listen on (node config device-worker)")
    parser.add_argument("--idle-exit-s", type=float, default=0.0, help="exit after this idle time (0: never)")
    parser.add_argument(
        "--max-request-mib",
        type=float,
        default=defaults.max_request_bytes / MIB,
        help="largest request, MiB; a larger one is refused unread (default: %(default)g)",
    )
    parser.add_argument(
        "--io-timeout-s",
        type=float,
        default=defaults.io_timeout_s,
        help="seconds a connection has to send its request (default: %(default)g)",
    )
    args = parser.parse_args(argv)
    limits = WorkerLimits(max_request_bytes=int(args.max_request_mib * MIB), io_timeout_s=args.io_timeout_s)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())  # leave no socket or key file behind
    try:
        served = serve(args.socket, stop, idle_exit_s=args.idle_exit_s, limits=limits)
    except KeyboardInterrupt:
        return 0
    logger.info("device worker stopped after %d messages", served)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
