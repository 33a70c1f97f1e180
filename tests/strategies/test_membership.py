"""A fleet that comes and goes: who is admitted, who is refused, who left, whose profile changed."""

import re
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.server.superlink.linkstate.utils import (
    NODE_UNAVAILABLE_ERROR_REASON,
    create_message_error_unavailable_res_message,
)

from strategies.fleet.devices import to_config
from strategies.fleet.membership import admit, profile_updates, requery_due
from strategies.fleet.state import ClientInfo, client_info
from strategies.persist.rundir import RunDirectory
from strategies.policy.groupings.registry import grouping_params
from strategies.policy.policies import Policy
from strategies.policy.requirements import Failure, FailureCause, failure_to_config
from strategies.settings import SplitSettings
from strategies.strategy import SplitPrefixStrategy
from strategies.wire import names as wire
from strategies.wire.records import to_record
from tests.strategies.fakes import FakeClient, FakeServerModel, fleet, initial_state, profile

SETTINGS = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7)


def _info(node, partition_id, num_partitions=10, available=100):
    return ClientInfo(node, partition_id, available, profile(), num_partitions)


def _run(grid, tmp_path, settings=SETTINGS, num_rounds=3, between_rounds=None, strategy=None):
    """Run on ``grid``; ``between_rounds(r)`` runs after round r (where the fleet changes); the
    strategy, the per-round records and the client prefix after each round."""
    strategy = strategy or SplitPrefixStrategy(FakeServerModel(), settings, RunDirectory(tmp_path))
    prefixes = {}

    def evaluate_fn(server_round, arrays):
        prefixes[server_round] = float(arrays["prefix.0"].numpy()[0])
        if server_round and between_rounds is not None:
            between_rounds(server_round)

    strategy.start(grid=grid, initial_arrays=to_record(initial_state()), num_rounds=num_rounds, evaluate_fn=evaluate_fn)
    return strategy, RunDirectory(tmp_path).rounds(), prefixes


def _failing(client, causes):
    """``client``, but in the rounds of ``causes`` its train replies report that round's failure cause."""

    def handler(msg):
        if msg.metadata.message_type == wire.QUERY or int(msg.metadata.group_id) not in causes:
            return client(msg)
        client.received.append(msg)
        failure = failure_to_config(Failure(causes[int(msg.metadata.group_id)], detail="not today"))
        return Message(RecordDict({wire.CONFIG: ConfigRecord(failure)}), reply_to=msg)

    return handler


def _gone(msg):
    """What Flower's SuperLink answers for a node that stopped while still listed."""
    return create_message_error_unavailable_res_message(msg.metadata, "node_unavail")


# --- the query reply and the admission rules ----------------------------------------------


def _query_reply(partition_id, num_partitions):
    fleet([])  # a grid sets the task identity every Message reads
    query = Message(RecordDict(), 100, wire.QUERY, group_id="0")
    record = {wire.PARTITION_ID: partition_id, wire.NUM_PARTITIONS: num_partitions, wire.NUM_AVAILABLE: 5}
    return Message(RecordDict({wire.PROFILE: ConfigRecord({**record, **to_config(profile())})}), reply_to=query)


@pytest.mark.parametrize(
    ("partition_id", "num_partitions", "error"),
    [
        (3, 10, None),  # a partitioned node
        (0, 1, None),  # the one partition
        (7, 0, None),  # a device with its own data: its device id
        (12345, 0, None),  # any device id
        (10, 10, re.escape("outside [0, num-partitions=10)")),  # one past the partitions
        (-1, 10, "outside"),  # negative
        (-1, 0, "outside"),  # a negative device id
        (0, -1, "num-partitions -1 is negative"),
    ],
)
def test_client_info_accepts_own_data_devices_and_rejects_ids_out_of_range(partition_id, num_partitions, error):
    # Prepare
    reply = _query_reply(partition_id, num_partitions)

    # Execute / Assert
    if error is None:
        info = client_info(reply, 100)
        assert (info.partition_id, info.num_partitions, info.num_available) == (partition_id, num_partitions, 5)
    else:
        with pytest.raises(ValueError, match=error):
            client_info(reply, 100)


def test_admit_refuses_an_id_whose_holder_is_still_connected_naming_both_nodes():
    # Execute
    decision = admit({105: _info(105, 1)}, {100: _info(100, 0), 101: _info(101, 1)}, connected={100, 101, 105})

    # Assert
    assert decision.admitted == {} and decision.takeovers == {}
    assert decision.refused == {105: "node 105 (partition 1): partition-id 1 is held by node 101, still connected"}


def test_admit_lets_a_node_take_over_the_id_of_a_node_that_disconnected():
    # Execute
    decision = admit({105: _info(105, 1)}, {100: _info(100, 0), 101: _info(101, 1)}, connected={100, 105})

    # Assert
    assert list(decision.admitted) == [105] and decision.takeovers == {105: 101} and decision.refused == {}


def test_admit_refuses_a_partitioning_that_disagrees_with_the_first_admitted():
    # Prepare: node 100 was admitted first with 10 partitions; 105 reports 8, 106 is a device with its own data
    known = {100: _info(100, 0, num_partitions=10), 101: _info(101, 1, num_partitions=10)}
    claims = {105: _info(105, 2, num_partitions=8), 106: _info(106, 3, num_partitions=0)}

    # Execute
    decision = admit(claims, known, connected={100, 101, 105, 106})

    # Assert
    assert list(decision.admitted) == [106]
    assert decision.refused == {
        105: "node 105 (partition 2): num-partitions 8 disagrees with the 10 of node 100 (partition 0), admitted first"
    }


@pytest.mark.parametrize(
    ("claims", "admitted", "refused"),
    [
        ({3: (0, 10), 1: (0, 10)}, [1], [3]),  # one id claimed twice: the lower node id keeps it
        ({1: (0, 10), 2: (1, 8)}, [1], [2]),  # the first admitted in the same batch sets num-partitions
        ({1: (0, 0), 2: (1, 8)}, [1, 2], []),  # a device with its own data sets nothing
        ({1: (0, 10), 2: (1, 10, 0)}, [1], [2]),  # no samples
    ],
)
def test_admit_decides_new_nodes_in_node_order(claims, admitted, refused):
    # Prepare
    infos = {node: _info(node, *args) for node, args in claims.items()}

    # Execute
    decision = admit(infos, {}, connected=set(infos))

    # Assert
    assert sorted(decision.admitted) == admitted and sorted(decision.refused) == refused


def test_profile_updates_take_a_changed_profile_and_ignore_a_changed_id():
    # Prepare
    known = {100: _info(100, 0), 101: _info(101, 1), 102: _info(102, 2)}
    weaker = replace(known[100], profile=replace(profile(), channel_gain=1e-12))
    replies = {100: weaker, 101: _info(101, 1), 102: _info(102, 5)}

    # Execute
    changed, ignored = profile_updates(replies, known)

    # Assert
    assert changed == {100: weaker}
    assert list(ignored) == [102] and "now reports partition 5 of 10, was 2 of 10" in ignored[102]


@pytest.mark.parametrize(
    ("server_round", "first_round", "every", "due"),
    [
        (3, 1, 0, False),  # 0: never
        (1, 1, 1, False),  # the first round of a run has just asked everyone
        (2, 1, 1, True),
        (2, 1, 2, False),
        (3, 1, 2, True),  # after rounds 1 and 2
        (5, 1, 2, True),
        (5, 5, 2, False),  # the first round after a resume
        (7, 5, 2, True),
    ],
)
def test_requery_is_due_after_every_n_rounds(server_round, first_round, every, due):
    assert requery_due(server_round, first_round, every) is due


# --- the strategy on a changing fleet -------------------------------------------------------


def test_a_node_added_after_round_1_is_queried_once_and_trains_from_round_2(tmp_path, caplog):
    # Prepare: clients 0 and 1 from the start; client 2 connects after round 1 (all within the update bound)
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30), FakeClient(2, 3.0, 20)]
    grid = fleet(clients[:2])

    def connect(server_round):
        if server_round == 1:
            grid.handlers[102] = clients[2]

    # Execute
    with caplog.at_level("INFO"):
        strategy, rounds, prefixes = _run(grid, tmp_path, between_rounds=connect)

    # Assert
    assert grid.sent_of(wire.QUERY) == [100, 101, 102]
    assert [sorted(r["clients"]) for r in rounds] == [["0", "1"], ["0", "1", "2"], ["0", "1", "2"]]
    assert "joined" not in rounds[0] and rounds[1]["joined"] == [2] and "joined" not in rounds[2]
    assert prefixes[1] == pytest.approx(np.average([1.0, 2.0], weights=[10, 30]))
    assert prefixes[2] == pytest.approx(np.average([1.0, 2.0, 3.0], weights=[10, 30, 20]))
    assert "round 2: client 2 joined (split mode; node 102)" in caplog.text
    assert strategy.status == "completed"


def test_no_new_node_means_no_query_after_the_start(tmp_path):
    # Prepare
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30), FakeClient(2, 5.0, 20)]
    grid = fleet(clients)

    # Execute
    _, rounds, _ = _run(grid, tmp_path)

    # Assert: three queries, all before the first train message, and no fleet entry in any record
    types = [m.metadata.message_type for m in grid.sent]
    assert types[:3] == [wire.QUERY] * 3 and wire.QUERY not in types[3:]
    assert len(types) == 3 + 3 * 2 * 3  # a forward and a backward for each client each round
    assert not any("joined" in r or "left" in r for r in rounds)


def test_a_removed_node_is_dropped_at_once_and_the_round_completes(tmp_path, caplog):
    # Prepare: client 2's node disconnects after round 1
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30), FakeClient(2, 5.0, 20)]
    grid = fleet(clients)

    def disconnect(server_round):
        if server_round == 1:
            del grid.handlers[102]

    # Execute
    with caplog.at_level("INFO"):
        strategy, rounds, prefixes = _run(grid, tmp_path, between_rounds=disconnect)

    # Assert: nothing sent to it after round 1, nothing dropped, no query
    assert len(clients[2].received) == 1 + 2
    assert rounds[1]["left"] == [2] and "left" not in rounds[2] and rounds[1]["excluded"] == [2]
    assert sorted(rounds[1]["clients"]) == ["0", "1"] and rounds[1]["dropped"] == {}
    assert prefixes[2] == pytest.approx(np.average([1.0, 2.0], weights=[10, 30]))
    assert grid.sent_of(wire.QUERY) == [100, 101, 102]
    assert "round 2: client 2 left (node 102 disconnected)" in caplog.text
    assert strategy.status == "completed"


def test_a_node_that_reconnects_under_its_node_id_is_sampled_again_without_a_query(tmp_path, caplog):
    # Prepare: client 2's node loses its link after round 1 and is back after round 2
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30), FakeClient(2, 3.0, 20)]
    grid = fleet(clients)

    def blip(server_round):
        if server_round == 1:
            del grid.handlers[102]
        if server_round == 2:
            grid.handlers[102] = clients[2]

    # Execute
    with caplog.at_level("INFO"):
        _, rounds, _ = _run(grid, tmp_path, between_rounds=blip)

    # Assert
    assert rounds[1]["left"] == [2] and rounds[1]["excluded"] == [2]
    assert rounds[2]["joined"] == [2] and rounds[2]["excluded"] == [] and "2" in rounds[2]["clients"]
    assert grid.sent_of(wire.QUERY) == [100, 101, 102]
    assert "round 3: client 2 joined (split mode; node 102 reconnected)" in caplog.text


def test_requery_every_2_rounds_moves_a_client_whose_channel_changed_to_another_group(tmp_path, caplog):
    # Prepare: weak clients under the cost policy train in split mode over a good channel and
    # locally over a bad one; client 1's channel turns bad after round 1
    policy = Policy(name="cost", params=grouping_params(cost_modes=("local", "split")))
    settings = replace(SETTINGS, requery_every=2, policy=policy)
    clients = [FakeClient(p, 1.0, 10, strong=False) for p in range(3)]
    grid = fleet(clients)

    def fade(server_round):
        if server_round == 1:
            clients[1].profile = replace(clients[1].profile, channel_gain=1e-12)

    # Execute
    with caplog.at_level("INFO"):
        strategy, rounds, _ = _run(grid, tmp_path, settings, num_rounds=4, between_rounds=fade)

    # Assert: asked again at the start of round 3 (after rounds 1 and 2), not in rounds 2 and 4
    assert grid.sent_of(wire.QUERY) == [100, 101, 102] * 2
    assert [m.metadata.group_id for m in grid.sent if m.metadata.message_type == wire.QUERY][3:] == ["3"] * 3
    modes = [(r["clients"]["1"]["group"], r["clients"]["1"]["mode"]) for r in rounds]
    assert modes == [(1, "split"), (1, "split"), (0, "local"), (0, "local")]
    assert all(r["clients"]["0"]["mode"] == "split" for r in rounds)
    assert "round 3: client 1 moves from group 1 (split) to group 0 (local)" in caplog.text
    assert strategy.status == "completed"


def test_a_duplicate_id_is_refused_while_its_holder_is_connected_and_not_asked_again(tmp_path, caplog):
    # Prepare: a second node claims partition 1 after round 1
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30)]
    impostor = FakeClient(1, 100.0, 30)
    grid = fleet(clients)

    def connect(server_round):
        if server_round == 1:
            grid.handlers[105] = impostor

    # Execute
    with caplog.at_level("WARNING"):
        _, rounds, prefixes = _run(grid, tmp_path, between_rounds=connect)

    # Assert: one query, one warning naming both nodes and the id, never trained
    assert grid.sent_of(wire.QUERY) == [100, 101, 105]
    assert caplog.text.count("node 105 (partition 1): partition-id 1 is held by node 101, still connected") == 1
    assert [m.metadata.message_type for m in impostor.received] == [wire.QUERY]
    assert not any("joined" in r for r in rounds)
    assert prefixes[3] == pytest.approx(np.average([1.0, 2.0], weights=[10, 30]))


def test_a_refused_node_is_asked_again_when_a_requery_is_due(tmp_path):
    # Prepare: node 105 claims partition 1 while node 101 holds it; node 101 leaves after round 2
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30)]
    successor = FakeClient(1, 3.0, 30)
    grid = fleet(clients)

    def churn(server_round):
        if server_round == 1:
            grid.handlers[105] = successor
        if server_round == 2:
            del grid.handlers[101]

    # Execute
    _, rounds, _ = _run(grid, tmp_path, replace(SETTINGS, requery_every=2), num_rounds=3, between_rounds=churn)

    # Assert: refused in round 2, admitted at round 3's requery, when its id's holder has left
    assert grid.sent_of(wire.QUERY) == [100, 101, 105, 105, 100]
    assert rounds[2]["left"] == [1] and rounds[2]["joined"] == [1] and rounds[2]["excluded"] == []
    assert sorted(rounds[2]["clients"]) == ["0", "1"]


def test_a_node_takes_over_the_id_of_a_node_that_disconnected_with_its_strikes_and_mode(tmp_path, caplog):
    # Prepare: under the cost policy client 1 starts in local mode; it reports insufficient compute
    # in round 1 (the failure policy moves it to split) and an error in round 2 (a strike); its
    # node then restarts under a new node id and fails again in round 3 (a second strike: out)
    settings = replace(
        SETTINGS, max_strikes=2, policy=Policy(name="cost", params=grouping_params(cost_modes=("local", "split")))
    )
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30), FakeClient(2, 3.0, 30)]
    grid = fleet(clients)
    grid.handlers[101] = _failing(clients[1], {1: FailureCause.INSUFFICIENT_COMPUTE, 2: FailureCause.CLIENT_ERROR})
    restarted = FakeClient(1, 4.0, 30)

    def restart(server_round):
        if server_round == 2:
            del grid.handlers[101]
            grid.handlers[107] = _failing(restarted, {3: FailureCause.CLIENT_ERROR})

    # Execute
    with caplog.at_level("INFO"):
        strategy, rounds, _ = _run(grid, tmp_path, settings, num_rounds=4, between_rounds=restart)

    # Assert
    assert [r["clients"].get("1", {}).get("mode") for r in rounds] == ["local", "split", "split", None]
    assert rounds[2]["left"] == [1] and rounds[2]["joined"] == [1]
    assert "round 3: client 1 joined (split mode; node 107, taking over from node 101)" in caplog.text
    assert [m.metadata.message_type for m in restarted.received] == [wire.QUERY, wire.SPLIT_FORWARD]
    assert rounds[1]["excluded"] == [] and rounds[2]["excluded"] == [1]  # the second strike, not a fresh first
    assert 101 not in strategy.fleet.clients and strategy.fleet.clients[107].partition_id == 1


def test_an_exclusion_for_failures_survives_a_takeover(tmp_path):
    # Prepare: client 1 crashes in round 1 (max one strike: excluded), then its node restarts
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30), FakeClient(2, 3.0, 30)]
    grid = fleet(clients)
    grid.handlers[101] = _failing(clients[1], {1: FailureCause.CLIENT_ERROR})
    restarted = FakeClient(1, 4.0, 30)

    def restart(server_round):
        if server_round == 1:
            del grid.handlers[101]
            grid.handlers[107] = restarted

    # Execute
    strategy, rounds, _ = _run(grid, tmp_path, replace(SETTINGS, max_strikes=1), between_rounds=restart)

    # Assert: the new node holds id 1 but, like the node it replaced, trains no more
    assert rounds[1]["joined"] == [1] and rounds[1]["excluded"] == [1]
    assert [m.metadata.message_type for m in restarted.received] == [wire.QUERY]
    assert strategy.fleet.clients[107].partition_id == 1


def test_a_node_flower_reported_unavailable_is_taken_over_and_trains_again(tmp_path):
    # Prepare: client 2's node dies in round 2 (Flower says so, and still lists it), then leaves the
    # list and restarts under a new node id
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30), FakeClient(2, 3.0, 30)]
    grid = fleet(clients)
    restarted = FakeClient(2, 2.5, 30)

    def die_then_restart(server_round):
        if server_round == 1:
            grid.handlers[102] = _gone
        if server_round == 2:
            del grid.handlers[102]
            grid.handlers[107] = restarted

    # Execute
    _, rounds, prefixes = _run(grid, tmp_path, between_rounds=die_then_restart)

    # Assert: round 2 lost it, round 3 has it back under the new node (an exclusion for being
    # unreachable ends when the id returns)
    assert rounds[1]["dropped"] == {"2": f"node unavailable: {NODE_UNAVAILABLE_ERROR_REASON}"}
    assert rounds[1]["excluded"] == [2] and "left" not in rounds[1]
    assert rounds[2]["left"] == [2] and rounds[2]["joined"] == [2] and rounds[2]["excluded"] == []
    assert grid.sent_of(wire.SPLIT_FORWARD).count(107) == 1
    assert prefixes[3] == pytest.approx(np.average([1.0, 2.0, 2.5], weights=[10, 30, 30]))


def test_a_partitioning_that_disagrees_is_refused_and_an_own_data_device_is_admitted(tmp_path, caplog):
    # Prepare: after round 1 a node of another partitioning and a device with its own data connect
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30)]
    stranger, device = FakeClient(2, 50.0, 10, num_partitions=8), FakeClient(7, 3.0, 20, num_partitions=0)
    grid = fleet(clients)

    def connect(server_round):
        if server_round == 1:
            grid.handlers[105], grid.handlers[106] = stranger, device

    # Execute
    with caplog.at_level("WARNING"):
        _, rounds, prefixes = _run(grid, tmp_path, between_rounds=connect)

    # Assert
    assert "node 105 (partition 2): num-partitions 8 disagrees with the 10 of node 100 (partition 0)" in caplog.text
    assert rounds[1]["joined"] == [7] and sorted(rounds[1]["clients"]) == ["0", "1", "7"]
    assert [m.metadata.message_type for m in stranger.received] == [wire.QUERY]
    assert prefixes[2] == pytest.approx(np.average([1.0, 2.0, 3.0], weights=[10, 30, 20]))


def test_a_mode_the_failure_policy_changed_survives_a_re_plan(tmp_path, caplog):
    # Prepare: under the cost policy strong clients train locally; client 1 reports insufficient
    # compute in round 1 and moves to split; client 3 joins after round 1 (a re-plan)
    policy = Policy(name="cost", params=grouping_params(cost_modes=("local", "split", "centralized")))
    settings = replace(SETTINGS, policy=policy)
    clients = [FakeClient(p, 1.0 + p / 2, 10 * (p + 1)) for p in range(4)]
    grid = fleet(clients[:3])
    grid.handlers[101] = _failing(clients[1], {1: FailureCause.INSUFFICIENT_COMPUTE})

    def connect(server_round):
        if server_round == 1:
            grid.handlers[103] = clients[3]

    # Execute
    with caplog.at_level("INFO"):
        _, rounds, _ = _run(grid, tmp_path, settings, between_rounds=connect)

    # Assert
    assert rounds[1]["joined"] == [3] and rounds[1]["clients"]["3"]["mode"] == "local"
    assert [r["clients"]["1"]["mode"] for r in rounds] == ["local", "split", "split"]
    assert "client 1 moves from local to split mode" in caplog.text and "client 1 moves from group" not in caplog.text


def test_a_checkpoint_keeps_who_was_unreachable_and_the_moved_modes(tmp_path):
    # Prepare: client 2's node left in round 2; client 1 was moved to split by the failure policy
    policy = Policy(name="cost", params=grouping_params(cost_modes=("local", "split")))
    settings = replace(SETTINGS, policy=policy)
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30), FakeClient(2, 3.0, 30)]
    grid = fleet(clients)
    grid.handlers[101] = _failing(clients[1], {1: FailureCause.INSUFFICIENT_COMPUTE})

    def disconnect(server_round):
        if server_round == 1:
            del grid.handlers[102]

    _run(grid, tmp_path, settings, num_rounds=2, between_rounds=disconnect)
    checkpoint = RunDirectory(tmp_path).load()
    assert checkpoint is not None

    # Execute: the run restarts (new node ids) with all three nodes back
    strategy = SplitPrefixStrategy(FakeServerModel(), settings, RunDirectory(tmp_path))
    strategy.resume(checkpoint)
    _, rounds, _ = _run(fleet(clients), tmp_path, settings, num_rounds=3, strategy=strategy)

    # Assert: client 2 is back in round 3; client 1 keeps the mode the failure policy gave it
    assert checkpoint.state["unreachable"] == [2] and checkpoint.state["moved"] == {"1": "split"}
    assert rounds[-1]["round"] == 3 and rounds[-1]["excluded"] == []
    assert {p: c["mode"] for p, c in rounds[-1]["clients"].items()} == {"0": "local", "1": "split", "2": "local"}


def test_queries_go_out_in_batches_and_every_node_is_admitted(monkeypatch):
    # Prepare: 250 nodes, batches of 100 (Flower's simulation engine slows with messages in flight)
    from strategies.round import messages

    grid = fleet([FakeClient(i, 1.0, 10, num_partitions=250) for i in range(250)])
    exchanges = []
    send = grid.send_and_receive

    def counting(messages_, *, timeout=None):
        batch = list(messages_)
        exchanges.append(len(batch))
        return send(batch, timeout=timeout)

    monkeypatch.setattr(grid, "send_and_receive", counting)

    # Execute
    infos, answered = messages.query(grid, grid.get_node_ids(), timeout=5)

    # Assert
    assert exchanges == [100, 100, 50]
    assert sorted(i.partition_id for i in infos.values()) == list(range(250)) and not answered.failures
