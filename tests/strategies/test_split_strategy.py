"""The strategy class on fakes: a numpy server model, numpy clients, a grid that calls them."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from strategies.persist.checkpoint import Checkpoint
from strategies.persist.rundir import RunDirectory
from strategies.settings import SplitSettings
from strategies.strategy import SplitPrefixStrategy
from strategies.wire import names as wire
from strategies.wire.records import to_record
from tests.strategies.fakes import FakeClient, FakeServerModel, fleet, initial_state

SETTINGS = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7)  # a client may claim up to 40


def _start(clients, settings=SETTINGS, num_rounds=1, run_dir=None, **kwargs):
    model = FakeServerModel()
    strategy = SplitPrefixStrategy(model, settings, run_dir)
    result = strategy.start(
        grid=fleet(clients), initial_arrays=to_record(initial_state()), num_rounds=num_rounds, **kwargs
    )
    return strategy, result, model


def test_client_prefixes_are_averaged_by_their_data_volume():
    # Prepare: three split clients send prefixes of 1, 2, 3 behind 10, 20 and 30 samples
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 20), FakeClient(2, 3.0, 30)]

    # Execute
    strategy, result, _ = _start(clients)

    # Assert
    expected = np.average([1.0, 2.0, 3.0], weights=[10, 20, 30])
    assert np.allclose(result.arrays["prefix.0"].numpy(), expected)
    # sequential server side: one copy trained through all three clients (10 steps each)
    assert np.allclose(result.arrays["prefix.1"].numpy(), 30.0)
    assert strategy.status == "completed"


def test_parallel_server_side_averages_one_copy_per_client_by_volume():
    # Prepare: each fake server copy ends 10 above its start; the clients' volumes differ
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30)]
    settings = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, server_side="parallel")

    # Execute
    _, result, model = _start(clients, settings)

    # Assert: every copy started from the global tensors, and their average is 10
    assert all(np.allclose(call["prefix.1"], 0.0) for call in model.split_calls)
    assert np.allclose(result.arrays["prefix.1"].numpy(), 10.0)


def test_the_sequential_server_half_weighs_the_volume_of_every_accepted_client():
    # Prepare: two split clients (volumes 10 + 30) and one local client whose head is 100 behind 20 samples
    local = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7)
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30), FakeClient(2, 100.0, 20)]
    strategy = SplitPrefixStrategy(FakeServerModel(), local)
    strategy.fleet.moved_modes = {2: "local"}  # as if a failure had moved it there

    # Execute
    result = strategy.start(grid=fleet(clients), initial_arrays=to_record(initial_state()), num_rounds=1)

    # Assert: server tensors = (server half 20 x volume 40 + local client's 100 x volume 20) / 60
    for key in ("prefix.1", "head.weight"):
        assert np.allclose(result.arrays[key].numpy(), (20.0 * 40 + 100.0 * 20) / 60)
    assert np.allclose(result.arrays["prefix.0"].numpy(), np.average([1.0, 2.0, 100.0], weights=[10, 30, 20]))


def test_a_bad_reply_is_dropped_with_its_reason_and_stays_out_of_the_average():
    # Prepare: client 1 sends NaN prefixes
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, np.nan, 20), FakeClient(2, 3.0, 30)]

    # Execute
    strategy, result, _ = _start(clients)

    # Assert
    assert np.allclose(result.arrays["prefix.0"].numpy(), np.average([1.0, 3.0], weights=[10, 30]))
    metrics = result.train_metrics_clientapp[1]
    assert metrics["bytes-up"] > 0 and "accuracy" not in metrics


def test_a_round_with_too_few_contributions_stops_the_run_and_keeps_the_tensors():
    # Prepare: two of three clients crash
    def crash(msg):
        raise RuntimeError("device rebooted")

    good = FakeClient(0, 1.0, 10)
    clients = [good, FakeClient(1, 2.0, 20), FakeClient(2, 3.0, 30)]
    grid = fleet(clients)
    grid.handlers[101] = lambda m: clients[1](m) if m.metadata.message_type == "query" else crash(m)
    grid.handlers[102] = lambda m: clients[2](m) if m.metadata.message_type == "query" else crash(m)
    strategy = SplitPrefixStrategy(FakeServerModel(), SETTINGS)

    # Execute
    result = strategy.start(grid=grid, initial_arrays=to_record(initial_state()), num_rounds=2)

    # Assert
    assert strategy.status.startswith("stopped at round 1")
    assert np.allclose(result.arrays["prefix.0"].numpy(), 0.0)
    assert result.train_metrics_clientapp == {}


def test_start_returns_flowers_result_with_evaluate_fn_called_like_fedavg(tmp_path):
    # Prepare
    seen = []

    def evaluate_fn(server_round, arrays):
        seen.append((server_round, float(arrays["prefix.0"].numpy()[0])))
        return MetricRecord({"accuracy": 0.5 + server_round / 10})

    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 10)]

    # Execute
    strategy, result, _ = _start(clients, num_rounds=2, run_dir=RunDirectory(tmp_path), evaluate_fn=evaluate_fn)

    # Assert: before the first round and after each, on the aggregated tensors
    assert seen == [(0, 0.0), (1, 1.5), (2, 1.5)]
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2]
    assert result.evaluate_metrics_serverapp[2]["accuracy"] == pytest.approx(0.7)
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    assert [r["accuracy"] for r in RunDirectory(tmp_path).rounds()] == pytest.approx([0.6, 0.7])
    assert strategy.summary_record["final-accuracy"] == pytest.approx(0.7)


def test_train_config_reaches_every_train_message():
    # Prepare
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 10)]

    # Execute
    _start(clients, train_config=ConfigRecord({"my-key": 3}))

    # Assert
    train = [m for c in clients for m in c.received if m.metadata.message_type.startswith("train.")]
    assert len(train) == 4 and all(m.content.config_records["config"]["my-key"] == 3 for m in train)


def test_resume_continues_after_the_checkpoints_round_with_its_fleet_state(tmp_path):
    # Prepare: a checkpoint after round 2 that excluded client 1 and moved client 2 to local mode
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 10), FakeClient(2, 3.0, 10)]
    strategy = SplitPrefixStrategy(FakeServerModel(), SETTINGS, RunDirectory(tmp_path))
    strategy.resume(Checkpoint(2, initial_state(), {"excluded": [1], "modes": {"2": "local"}, "clock-s": 5.0}))

    # Execute
    strategy.start(grid=fleet(clients), initial_arrays=to_record(initial_state()), num_rounds=3)

    # Assert: only round 3 ran, without client 1, with client 2 in local mode
    [record] = RunDirectory(tmp_path).rounds()
    assert record["round"] == 3 and record["excluded"] == [1]
    assert set(record["clients"]) == {"0", "2"} and record["clients"]["2"]["mode"] == "local"
    assert not clients[1].received[1:]  # the query only
    assert record["sim-clock-s"] > 5.0


def test_aggregate_train_averages_valid_replies_by_volume_and_leaves_out_bad_ones():
    # Prepare: the fleet is known from a first round; then three replies, one with Inf values
    strategy, _, _ = _start([FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30), FakeClient(2, 5.0, 10)])
    before = dict(strategy.state)

    def reply(node, value, volume):
        msg = Message(RecordDict(), node, "train.local", group_id="2")
        msg.metadata.__dict__["_message_id"] = f"m{node}"
        arrays = {"prefix.0": np.full(3, value, np.float32)}
        out = Message(
            RecordDict({wire.ARRAYS: to_record(arrays), wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: volume})}),
            reply_to=msg,
        )
        out.metadata.__dict__["_src_node_id"] = node
        return out

    replies = [reply(100, 1.0, 10), reply(101, 2.0, 30), reply(102, np.inf, 30)]

    # Execute
    arrays, metrics = strategy.aggregate_train(2, replies)

    # Assert
    assert np.allclose(arrays["prefix.0"].numpy(), np.average([1.0, 2.0], weights=[10, 30]))
    assert np.array_equal(arrays["head.weight"].numpy(), before["head.weight"])  # nobody sent it
    assert metrics[wire.NUM_EXAMPLES] == 40
