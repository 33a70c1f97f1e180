"""Flower's hooks are the loop's: a subclass that overrides one changes the run, as with FedAvg.

On the strategy's fakes: client ``i`` is node ``100 + i`` and sends back a prefix of constant
value; the fake server model adds one to its tensors per split minibatch (10 a client here).
"""

import numpy as np
from flwr.app import Message, MetricRecord

from strategies.probing.judge import ProbePlan
from strategies.settings import SplitSettings
from strategies.strategy import SplitPrefixStrategy
from strategies.wire import names as wire
from strategies.wire.records import from_record, to_record
from tests.strategies.fakes import FakeClient, FakeServerModel, fleet, initial_state

SETTINGS = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7)


def _clients():
    """Prefixes 1, 2, 3 behind 10, 20 and 30 samples."""
    return [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 20), FakeClient(2, 3.0, 30)]


def _start(strategy, clients, num_rounds=1, **kwargs):
    return strategy.start(fleet(clients), to_record(initial_state()), num_rounds, **kwargs)


class WithoutClient2(SplitPrefixStrategy):
    """Leaves node 102 out of every round's first exchange."""

    def configure_train(self, server_round, arrays, config, grid):
        messages = super().configure_train(server_round, arrays, config, grid)
        return [m for m in messages if m.metadata.dst_node_id != 102]


class Tagged(SplitPrefixStrategy):
    """Adds a key of its own to each first message's config, as FedProx adds its proximal term."""

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:
            message.content.config_records[wire.CONFIG]["my-hook"] = server_round
        return messages


class Doubled(SplitPrefixStrategy):
    """Doubles every averaged tensor."""

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        return to_record({k: 2.0 * v for k, v in from_record(arrays).items()}), metrics


class WithoutClient0(SplitPrefixStrategy):
    """Averages every reply but node 100's."""

    def aggregate_train(self, server_round, replies):
        return super().aggregate_train(server_round, [r for r in replies if r.metadata.src_node_id != 100])


def _train_messages(client):
    return [m for m in client.received if m.metadata.message_type.startswith("train.")]


def test_a_subclass_configure_train_decides_who_trains():
    # Prepare
    clients = _clients()

    # Execute: two rounds
    result = _start(WithoutClient2(FakeServerModel(), SETTINGS), clients, num_rounds=2)

    # Assert: client 2 got the query only, and its prefix never entered the average
    assert not _train_messages(clients[2]) and len(clients[2].received) == 1
    assert len(_train_messages(clients[0])) == 4  # forward and backward, two rounds
    expected = np.average([1.0, 2.0], weights=[10, 20])
    np.testing.assert_allclose(result.arrays["prefix.0"].numpy(), expected, rtol=1e-6)


def test_a_subclass_configure_train_adds_to_the_first_messages_config():
    # Prepare
    clients = _clients()

    # Execute
    _start(Tagged(FakeServerModel(), SETTINGS), clients, num_rounds=2)

    # Assert: every first message carries the key with its round; the backward ones do not
    for client in clients:
        sent = _train_messages(client)
        forward = [m for m in sent if m.metadata.message_type == wire.SPLIT_FORWARD]
        assert [m.content.config_records[wire.CONFIG]["my-hook"] for m in forward] == [1, 2]
        assert all("my-hook" not in m.content.config_records[wire.CONFIG] for m in sent if m not in forward)


def test_a_subclass_aggregate_train_sets_the_rounds_tensors_server_side_included():
    # Prepare
    evaluated = []

    def evaluate(server_round, arrays):
        evaluated.append(float(from_record(arrays)["prefix.0"].mean()))
        return MetricRecord({"loss": 1.0, "accuracy": 0.5})

    # Execute
    result = _start(Doubled(FakeServerModel(), SETTINGS), _clients(), evaluate_fn=evaluate)

    # Assert: the clients' prefixes by volume, and the server's sequential half (30), each doubled
    expected = 2.0 * np.average([1.0, 2.0, 3.0], weights=[10, 20, 30])
    np.testing.assert_allclose(result.arrays["prefix.0"].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(result.arrays["prefix.1"].numpy(), 60.0)
    np.testing.assert_allclose(evaluated[-1], expected, rtol=1e-6)  # the round evaluated what the hook returned


def test_aggregate_train_in_a_round_averages_the_replies_it_is_given():
    # Execute
    result = _start(WithoutClient0(FakeServerModel(), SETTINGS), _clients())

    # Assert: clients 1 and 2 by volume; the server trained on all three clients' activations
    expected = np.average([2.0, 3.0], weights=[20, 30])
    np.testing.assert_allclose(result.arrays["prefix.0"].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(result.arrays["prefix.1"].numpy(), 30.0)


def test_a_parallel_probe_builds_and_averages_each_half_through_the_hooks():
    # Prepare: a parallel stage at round 1 over four clients, a subclass counting its hooks' calls
    calls: list[tuple[str, int, int]] = []

    class Counting(SplitPrefixStrategy):
        def configure_train(self, server_round, arrays, config, grid):
            messages = list(super().configure_train(server_round, arrays, config, grid))
            calls.append(("configure", server_round, len(messages)))
            return messages

        def aggregate_train(self, server_round, replies: list[Message]):
            calls.append(("aggregate", server_round, len(replies)))
            return super().aggregate_train(server_round, replies)

    plan = ProbePlan(optimized="int8", rounds=(1,), variant="parallel", min_saving=0.0)
    settings = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7, probe=plan)
    clients = [*_clients(), FakeClient(3, 4.0, 40)]

    def evaluate(server_round, arrays):
        return MetricRecord({"loss": 1.0, "accuracy": 0.5})

    # Execute
    _start(Counting(FakeServerModel(), settings), clients, num_rounds=1, evaluate_fn=evaluate)

    # Assert: each half of two clients was configured and averaged on its own
    assert calls == [("configure", 1, 2), ("configure", 1, 2), ("aggregate", 1, 2), ("aggregate", 1, 2)]
