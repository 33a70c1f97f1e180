"""A fleet that comes and goes on the in-process grid: nodes connect and disconnect while the job runs."""

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.server.superlink.linkstate.utils import NODE_UNAVAILABLE_ERROR_REASON

from flower_app.apps.client_app import app as client_app
from flower_app.apps.runner import InProcessGrid
from flower_app.apps.server_app import run_server
from strategies.persist.rundir import RunDirectory
from strategies.wire import names as wire


def _echo_app():
    """A ClientApp that answers a query with its node's partition id."""
    app = ClientApp()

    @app.query()
    def query(msg, context):
        record = ConfigRecord({wire.PARTITION_ID: context.node_config["partition-id"]})
        return Message(RecordDict({wire.PROFILE: record}), reply_to=msg)

    return app


def _query(node):
    return Message(RecordDict(), node, wire.QUERY, group_id="1")


def test_in_process_grid_adds_and_removes_nodes_like_a_superlink():
    # Prepare: node 1000 answers, node 1001 holds its messages (no reply yet), node 1002 is added
    grid = InProcessGrid(_echo_app(), 2, {}, fault=lambda index, msg, call: None if index == 1 else call())
    added = grid.add_node({"partition-id": 7})
    held = list(grid.push_messages([_query(1001)]))

    # Execute
    grid.remove_node(1000)
    grid.remove_node(1001)
    replies = list(grid.send_and_receive([_query(1000), _query(1001), _query(added)]))
    late = list(grid.pull_messages(held))

    # Assert: the added node answers; for the removed ones, their held and later messages, Flower does
    assert added == 1002 and list(grid.get_node_ids()) == [1002]
    [answer] = [r for r in replies if not r.has_error()]
    assert answer.content.config_records[wire.PROFILE][wire.PARTITION_ID] == 7
    errors = [(r.error.code, r.metadata.src_node_id) for r in [*replies, *late] if r.has_error()]
    assert errors == [(ErrorCode.NODE_UNAVAILABLE, SUPERLINK_NODE_ID)] * 3


@pytest.mark.slow
def test_a_node_that_connects_trains_and_a_node_that_disconnects_is_dropped(tmp_path, caplog):
    # Prepare: 4 of 5 partitions connect at the start, partition 4 during round 1; in round 2 the
    # node of partition 2 holds its forward message and disconnects
    run_config = {"config": "test", "run.run-dir": str(tmp_path), "run.num-rounds": 3}

    def churn(index, message, call):
        key = (int(message.metadata.group_id), index, message.metadata.message_type)
        if key == (1, 0, wire.SPLIT_BACKWARD):
            grid.add_node({"partition-id": 4, "num-partitions": 5})
        if key == (2, 2, wire.SPLIT_FORWARD):
            return None
        if key == (2, 3, wire.SPLIT_FORWARD):
            grid.remove_node(1002)
        return call()

    grid = InProcessGrid(client_app, 5, run_config, fault=churn)
    grid.remove_node(1004)

    # Execute
    with caplog.at_level("INFO"):
        summary = run_server(grid, run_config)

    # Assert
    rounds = RunDirectory(tmp_path).rounds()
    assert summary["status"] == "completed"
    assert [sorted(map(int, r["clients"])) for r in rounds] == [[0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 3, 4]]
    assert "joined" not in rounds[0] and rounds[1]["joined"] == [4] and "joined" not in rounds[2]
    assert rounds[1]["dropped"] == {"2": f"node unavailable: {NODE_UNAVAILABLE_ERROR_REASON}"}
    assert rounds[1]["excluded"] == [2] and rounds[2]["left"] == [2]
    assert "round 2: client 4 joined (split mode; node 1005)" in caplog.text
    assert "round 3: client 2 left (node 1002 disconnected)" in caplog.text
