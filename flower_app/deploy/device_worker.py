"""A device worker: one long-lived process that answers a SuperNode's messages with its model kept in memory.

Flower 1.41 runs every message in a fresh ``flwr-clientapp`` process. Even with the
device part and data cached on disk (:mod:`flower_app.model.device_part`), such a process spends
about 3 s importing torch and transformers before it can train. A device that starts
this worker once::

    python -m flower_app.deploy.device_worker --socket /run/user/1000/hsp-worker.sock

and names it in its node config (``--node-config "... device-worker=/run/user/1000/hsp-worker.sock"``)
has each ClientApp process hand its message to the worker over that Unix socket
(:mod:`flower_app.deploy.handoff`) and return the worker's answer: the ClientApp process
then imports neither torch nor the model. The worker runs the very same ClientApp
(:data:`flower_app.apps.client_app.app`).

Security: the socket is created with mode 0600 and every connection is authenticated
with a random key kept beside it (``<socket>.key``, mode 0600), so only the device's
user can reach it. If the worker cannot be reached, the ClientApp does the work
itself and logs a warning; an error inside a handler comes back as that error.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from multiprocessing.connection import Listener
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from flower_app.apps.client_app import app
from flower_app.deploy.handoff import IN_WORKER_KEY, WORKER_KEY, decode, encode, key_path

logger = logging.getLogger(__name__)


def answer(request: Mapping[str, Any]) -> dict[str, Any]:
    """Run one request through the ClientApp, as a SuperNode would, in this process."""
    node_config = {k: v for k, v in request["node-config"].items() if k != WORKER_KEY}  # no hand-off from here
    node_config[IN_WORKER_KEY] = True
    context = Context(request["run-id"], request["node-id"], node_config, RecordDict(), request["run-config"])
    # A Message outside a Flower runtime needs the process task identity (see flower_app.apps.runner).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, request["run-id"], SUPERLINK_NODE_ID
    message = Message(decode(request["content"]), request["node-id"], request["type"], group_id="")
    message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    try:
        reply = app(message, context)
    except Exception as err:  # the ClientApp re-raises it: Flower sends the error reply
        return {"error": f"{type(err).__name__}: {err}"}
    if reply.has_error():
        return {"error": reply.error.reason}
    return {"content": encode(reply.content)}


def serve(socket: str | Path, stop: threading.Event | None = None, idle_exit_s: float = 0.0) -> int:
    """Answer requests at ``socket`` one at a time until ``stop`` is set (or idle for ``idle_exit_s``).

    Returns how many requests were answered.
    """
    socket = Path(socket)
    socket.parent.mkdir(parents=True, exist_ok=True)
    socket.unlink(missing_ok=True)
    key = secrets.token_bytes(32)
    key_file = key_path(socket)
    key_file.unlink(missing_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    served, last = 0, time.monotonic()
    with Listener(str(socket), family="AF_UNIX", authkey=key) as listener:
        os.chmod(socket, 0o600)
        listener._listener._socket.settimeout(0.5)  # type: ignore[attr-defined]  # wake up to check ``stop``
        logger.info("device worker listening on %s", socket)
        while not (stop is not None and stop.is_set()):
            if idle_exit_s and time.monotonic() - last > idle_exit_s:
                break
            try:
                connection = listener.accept()
            except TimeoutError:
                continue
            except Exception as err:  # a client without the key, or one that hung up
                logger.warning("device worker: refused a connection (%s)", err)
                continue
            with connection:
                try:
                    connection.send(answer(connection.recv()))
                except (EOFError, OSError) as err:  # the ClientApp process went away mid-request
                    logger.warning("device worker: lost a connection (%s)", err)
            served, last = served + 1, time.monotonic()
    socket.unlink(missing_ok=True)
    key_file.unlink(missing_ok=True)
    return served


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="Unix socket to listen on (node config device-worker)")
    parser.add_argument("--idle-exit-s", type=float, default=0.0, help="exit after this idle time (0: never)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        served = serve(args.socket, idle_exit_s=args.idle_exit_s)
    except KeyboardInterrupt:
        return 0
    logger.info("device worker stopped after %d messages", served)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
