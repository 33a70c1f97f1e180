"""An in-process, Ray-free grid: the ClientApp is called directly, one Context per node.

For tests and notebooks: 10 nodes of a tiny model run in seconds, and the same
seed gives the same metrics as ``flwr run`` (the strategy never depends on
node ids or reply order). Nodes can connect and disconnect while it runs
(:meth:`InProcessGrid.add_node`, :meth:`InProcessGrid.remove_node`). It leans on
Flower internals (message metadata, the process task identity, the SuperLink's
error reply for a node that is gone), so flwr is pinned exactly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

# A fault hook sees (node index, message, the call that answers it) and returns the reply to deliver,
# or None to drop it. A node's index is its place in the order nodes were created, added ones last.
Fault = Callable[[int, Message, Callable[[], Message]], Message | None]


class InProcessGrid(Grid):
    """Delivers each message by calling the ClientApp in this process.

    Parameters
    ----------
    client_app : ClientApp
        The app whose handlers answer the messages.
    num_nodes : int
        Simulated nodes at the start; node ``i`` gets ``partition-id = i`` of ``num-partitions = num_nodes``.
    run_config : Mapping
        What ``context.run_config`` holds on every node.
    fault : Fault | None
        Optional hook to inject crashes, delays and bad replies (tests).
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: Mapping[str, Any],
        fault: Fault | None = None,
        run_id: int = 1,
    ):
        self.client_app, self.fault, self.run_config = client_app, fault, dict(run_config)
        self._run = Run.create_empty(run_id=run_id)
        self.node_ids: list[int] = []  # connected now
        self.contexts: dict[int, Context] = {}  # every node ever added, by node id
        self._replies: dict[str, Message] = {}
        self._pending: dict[str, Message] = {}  # pushed, not answered (yet): by message id
        self.elapsed: dict[str, float] = {}
        for i in range(num_nodes):
            self.add_node({"partition-id": i, "num-partitions": num_nodes})
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def add_node(self, node_config: Mapping[str, Any]) -> int:
        """Connect a new node with this ``node_config`` (what ``--node-config`` gives a SuperNode); its id.

        Its index for the fault hook is the number of nodes created before it.
        """
        node = 1000 + len(self.contexts)
        self.contexts[node] = Context(self._run.run_id, node, dict(node_config), RecordDict(), dict(self.run_config))
        self.node_ids.append(node)
        return node

    def remove_node(self, node: int) -> None:
        """Disconnect ``node``: it leaves ``get_node_ids``, and every message to it still unanswered (and
        every later one) gets the SuperLink's ``NODE_UNAVAILABLE`` error reply."""
        self.node_ids.remove(node)
        for message_id, message in list(self._pending.items()):
            if message.metadata.dst_node_id == node:
                self._replies[message_id] = _node_unavailable(self._pending.pop(message_id))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = uuid.uuid4().hex
            message.metadata.__dict__["_message_id"] = message_id
            node = message.metadata.dst_node_id
            tick = time.perf_counter()
            reply = self._deliver(node, message)
            self.elapsed[message_id] = time.perf_counter() - tick
            if reply is None and node in self.contexts:
                self._pending[message_id] = message
                if node not in self.node_ids:  # it was removed while it held the message
                    reply = _node_unavailable(self._pending.pop(message_id))
            if reply is not None:
                self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def _deliver(self, node: int, message: Message) -> Message | None:
        if node not in self.contexts:
            return None
        if node not in self.node_ids:
            return _node_unavailable(message)
        call = lambda: self.client_app(message, self.contexts[node])  # noqa: E731
        try:
            return self.fault(list(self.contexts).index(node), message, call) if self.fault else call()
        except Exception as err:  # what a SuperNode does with a raising ClientApp
            return message.create_error_reply(Error(code=0, reason=f"{type(err).__name__}: {err}"))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        # A reply that took longer than the timeout would not have arrived in time.
        late = {i for i in ids if timeout is not None and self.elapsed.get(i, 0.0) > timeout}
        return [r for r in self.pull_messages(ids) if r.metadata.reply_to_message_id not in late]


def _node_unavailable(message: Message) -> Message:
    """What Flower's SuperLink answers for a message to a node that is gone."""
    return create_message_error_unavailable_res_message(message.metadata, "node_unavail")


def run_inprocess(run_config: Mapping[str, Any], num_nodes: int = 10, fault: Fault | None = None) -> dict:
    """Run a whole job in this process; return the summary.

    Its ``num_nodes`` nodes are all there at the start: a ``strategy.min-clients`` above them is
    refused before anything is built (:func:`~flower_app.apps.server_app.check_nodes`).
    """
    from flower_app.apps.client_app import app as client_app
    from flower_app.apps.server_app import run_server

    return run_server(InProcessGrid(client_app, num_nodes, run_config, fault), run_config, num_nodes=num_nodes)


def main(argv: list[str] | None = None) -> int:
    """``python -m flower_app.apps.runner [--nodes N] [--debug] [key=value ...]``: a job without Ray.

    Exits 0 when the run completed, 1 when it stopped early or failed (a full disk
    among the causes), 2 on a bad config, data file or run directory (one in use by
    another run too), 128 + the signal's number after SIGTERM; always with one line that
    names the problem (``--debug`` shows the traceback).
    """
    import argparse
    import json
    import sys

    from flower_app.apps.server_app import Interrupted
    from flower_app.config.overrides import overrides_of
    from strategies.persist.checkpoint import CheckpointError
    from strategies.persist.rundir import RunDirectoryError, RunDirectoryFull

    parser = argparse.ArgumentParser(description=(main.__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10, help="simulated nodes (default: 10)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. config=test train.lr=0.02")
    args = parser.parse_args(argv)
    overrides = overrides_of(parser, args.overrides)
    try:
        summary = run_inprocess(overrides, num_nodes=args.nodes)
    except Interrupted as stop:
        print(f"error: run interrupted: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except RunDirectoryFull as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, OSError, CheckpointError, RunDirectoryError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    if summary["status"] != "completed":
        print(f"error: run {summary['status']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
