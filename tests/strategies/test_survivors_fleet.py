"""The fleet between rounds: a requery that reports no samples, a refused node that comes back."""

from dataclasses import replace

from strategies.fleet.membership import profile_updates
from strategies.fleet.state import ClientInfo
from strategies.persist.rundir import RunDirectory
from strategies.settings import SplitSettings
from strategies.strategy import SplitPrefixStrategy
from strategies.wire import names as wire
from strategies.wire.records import to_record
from tests.strategies.fakes import FakeClient, FakeServerModel, fleet, initial_state, profile

SETTINGS = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7)


def _info(node, partition_id, available=100):
    return ClientInfo(node, partition_id, available, profile(), 10)


def test_a_requery_reply_of_no_samples_is_ignored_and_the_earlier_profile_kept():
    # Prepare: client 1 now reports no samples (and a weaker channel); client 0 a smaller volume
    known = {100: _info(100, 0), 101: _info(101, 1)}
    emptied = replace(known[101], num_available=0, profile=replace(profile(), channel_gain=1e-12))
    replies = {100: _info(100, 0, available=40), 101: emptied}

    # Execute
    changed, ignored = profile_updates(replies, known)

    # Assert: the smaller volume is taken; the empty one changes nothing (see the module docstring)
    assert changed == {100: replies[100]}
    assert list(ignored) == [101] and "now reports no samples; its earlier profile is kept" in ignored[101]


def test_a_refused_node_that_reconnects_after_the_holder_left_is_queried_again(tmp_path):
    # Prepare: node 105 claims partition 1 while node 101 holds it (refused); after round 2 both
    # disconnect (clients 0 and 2 carry round 3); after round 3 node 105 connects again, now the
    # only claimant of partition 1; no requery is ever due
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 30), FakeClient(2, 4.0, 20)]
    successor = FakeClient(1, 3.0, 30)
    grid = fleet(clients)

    def churn(server_round):
        if server_round == 1:
            grid.handlers[105] = successor
        if server_round == 2:
            del grid.handlers[105], grid.handlers[101]
        if server_round == 3:
            grid.handlers[105] = successor

    def evaluate_fn(server_round, arrays):
        if server_round:
            churn(server_round)

    strategy = SplitPrefixStrategy(FakeServerModel(), SETTINGS, RunDirectory(tmp_path))

    # Execute
    strategy.start(grid=grid, initial_arrays=to_record(initial_state()), num_rounds=4, evaluate_fn=evaluate_fn)
    rounds = RunDirectory(tmp_path).rounds()

    # Assert: queried when it first connected and again when it came back; it trains in round 4
    assert grid.sent_of(wire.QUERY) == [100, 101, 102, 105, 105]
    assert rounds[3]["joined"] == [1] and sorted(rounds[3]["clients"]) == ["0", "1", "2"]
    assert strategy.fleet.clients[105].partition_id == 1 and 105 not in strategy.fleet.refused
