"""Replies a broken or hostile client (or Flower, for a dead node) may send: bounded before use."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

from strategies.persist.rundir import RunDirectory
from strategies.round.messages import exchange
from strategies.settings import SplitSettings
from strategies.strategy import SplitPrefixStrategy
from strategies.wire import names as wire
from strategies.wire.records import to_record
from tests.strategies.fakes import FakeClient, FakeGrid, FakeServerModel, fleet, initial_state

SETTINGS = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7)


def _run(clients, tmp_path, settings=SETTINGS, num_rounds=1, grid=None, model=None):
    strategy = SplitPrefixStrategy(model or FakeServerModel(), settings, RunDirectory(tmp_path))
    result = strategy.start(
        grid=grid or fleet(clients), initial_arrays=to_record(initial_state()), num_rounds=num_rounds
    )
    return strategy, result, RunDirectory(tmp_path).rounds()


def _dead_node_reply(message):
    """What Flower's SuperLink answers for a node that stopped: an error reply from node 1."""
    reply = message.create_error_reply(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node went offline"))
    reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    return reply


def test_flowers_reply_for_a_dead_node_is_matched_to_that_node_once():
    # Prepare
    grid = FakeGrid({100: FakeClient(0, 1.0, 10), 101: _dead_node_reply})
    queries = [Message(RecordDict({wire.CONFIG: ConfigRecord({})}), n, wire.QUERY, group_id="0") for n in (100, 101)]

    # Execute
    result = exchange(grid, queries, timeout=5.0)

    # Assert: one failure, under the dead node, not under the SuperLink's id, and not also a timeout
    assert set(result.failures) == {101} and result.unavailable == {101}
    assert result.failures[101][1] == "node unavailable: node went offline"


def test_a_node_flower_reports_unavailable_is_excluded_at_once(tmp_path):
    # Prepare: client 2's node dies after the query
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 10), FakeClient(2, 3.0, 10)]
    grid = fleet(clients)
    grid.handlers[102] = lambda m: clients[2](m) if m.metadata.message_type == wire.QUERY else _dead_node_reply(m)

    # Execute
    _, _, rounds = _run(clients, tmp_path, num_rounds=2, grid=grid)

    # Assert
    assert rounds[0]["dropped"] == {"2": "node unavailable: node went offline"}
    assert rounds[0]["excluded"] == [2] and "2" not in rounds[1]["clients"]


@pytest.mark.parametrize(
    ("partition_ids", "kept"),
    [
        ((0, -1, 2), [0, 2]),  # a negative partition id
        ((0, 10, 2), [0, 2]),  # one past num-partitions
        ((0, 0, 2), [0, 2]),  # the same partition twice: the first node keeps it
    ],
)
def test_a_query_reply_with_a_bad_or_taken_partition_id_leaves_that_node_out(tmp_path, partition_ids, kept):
    # Prepare
    clients = [FakeClient(p, 1.0, 10) for p in partition_ids]

    # Execute
    strategy, _, rounds = _run(clients, tmp_path)

    # Assert
    assert sorted(c.partition_id for c in strategy.fleet.clients.values()) == kept
    assert sorted(map(int, rounds[0]["clients"])) == kept


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        (lambda c: setattr(c, "label", -100), "labels -100..-100 outside [0, 2)"),
        (lambda c: setattr(c, "forward_shape", (2, 50)), "sequence length 50, at most 8"),
        (lambda c: setattr(c, "forward_shape", (9, 3)), "9 rows, at most 4 were planned"),
        (lambda c: setattr(c, "value", 1e9), "activation magnitude 1e+09 above 1e+04"),
        (lambda c: setattr(c, "forward_volume", 10**9), "num-examples 1000000000 exceeds the 40"),
        (lambda c: setattr(c, "forward_volume", 0), "num-examples must be positive, got 0"),
        (lambda c: setattr(c, "forward_volume", -5), "num-examples must be positive, got -5"),
    ],
)
@pytest.mark.parametrize("server_side", ["sequential", "parallel"])
def test_a_forward_reply_outside_the_plan_is_dropped_before_the_server_trains_on_it(
    tmp_path, attack, reason, server_side
):
    # Prepare: client 1 of 3 misbehaves in its forward reply
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 20), FakeClient(2, 3.0, 30)]
    attack(clients[1])
    settings = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7, server_side=server_side)
    model = FakeServerModel()

    # Execute
    strategy, result, rounds = _run(clients, tmp_path, settings, model=model)

    # Assert: dropped with its reason, never trained on, out of the average
    assert set(rounds[0]["dropped"]) == {"1"} and reason in rounds[0]["dropped"]["1"], rounds[0]["dropped"]
    assert len(model.split_calls) == 2
    assert np.allclose(result.arrays["prefix.0"].numpy(), np.average([1.0, 3.0], weights=[10, 30]))


class DivergingServer(FakeServerModel):
    """Its steps on activations of 13 come out NaN (what huge-but-bounded inputs can do)."""

    def train_split(self, state, batches, *, lr=None, head_lr=None, codec):
        trained, grads, loss = super().train_split(state, batches, lr=lr, head_lr=head_lr, codec=codec)
        if float(np.asarray(batches[0].inputs).flat[0]) == 13.0:
            trained = {k: np.full_like(v, np.nan) for k, v in trained.items()}
        return trained, grads, loss


def test_server_steps_that_diverge_on_one_clients_activations_are_undone(tmp_path):
    # Prepare
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 13.0, 20), FakeClient(2, 3.0, 30)]

    # Execute
    _, result, rounds = _run(clients, tmp_path, model=DivergingServer())

    # Assert: the sequential half went through clients 0 and 2 only, and is finite
    assert "non-finite" in rounds[0]["dropped"]["1"]
    assert all(np.isfinite(result.arrays[k].numpy()).all() for k in result.arrays)
    assert np.allclose(result.arrays["prefix.1"].numpy(), 20.0)


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        ("off", np.average([1.0, 1.1, 0.9, 30.0], weights=[10, 10, 10, 10])),  # the attacker moves the average
        ("clip", np.average([1.0, 1.1, 0.9, 3.0 * 1.05], weights=[10, 10, 10, 10])),  # cut to 3 x median 1.05
        ("reject", np.average([1.0, 1.1, 0.9], weights=[10, 10, 10])),
    ],
)
def test_a_scaled_prefix_with_an_honest_volume_is_bounded_before_the_average(tmp_path, check, expected):
    # Prepare: client 3 sends its prefix scaled x30 and claims the same volume as the others
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 1.1, 10), FakeClient(2, 0.9, 10), FakeClient(3, 30.0, 10)]
    settings = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7, update_check=check)

    # Execute
    _, result, rounds = _run(clients, tmp_path, settings)

    # Assert
    assert np.allclose(result.arrays["prefix.0"].numpy(), expected)
    assert ("bounded" in rounds[0]) == (check != "off")


def test_every_query_failure_is_logged_with_the_node_and_why(tmp_path, caplog):
    # Prepare: node 101 raises on the query, node 102 holds no data
    def boom(msg):
        raise RuntimeError("no data partition on this device")

    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 1.0, 10), FakeClient(2, 1.0, 10, available=0)]
    grid = fleet(clients)
    grid.handlers[101] = boom

    # Execute
    with caplog.at_level("WARNING"):
        strategy, _, _ = _run(clients, tmp_path, SplitSettings(wait_for_nodes_s=0, min_clients=1), grid=grid)

    # Assert
    assert "node 101: no query reply (client-error: error reply: RuntimeError: no data partition" in caplog.text
    assert "node 102 (partition 2): holds no samples" in caplog.text
    assert [c.partition_id for c in strategy.fleet.clients.values()] == [0]
