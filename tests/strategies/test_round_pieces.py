"""The pieces of a round on small fakes: sampling, fleet state, the exchange, the simulated cost."""

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from strategies.cost.costmodel import EnergyLedger, uplink_rate
from strategies.fleet.state import ClientInfo, FleetState, round_seed, sample
from strategies.policy.policies import Policy, effective_allocation
from strategies.policy.requirements import Failure, FailureCause
from strategies.round.messages import exchange, plan_config
from strategies.round.record import round_record, simulate
from strategies.round.state import RoundState
from strategies.settings import SplitSettings
from strategies.wire import names as wire
from strategies.wire.records import content_bytes, to_record
from tests.strategies.fakes import FakeClient, FakeGrid, FakeServerModel, profile

SETTINGS = SplitSettings(steps=2, batch_size=4, seed=3)


def _fleet(n=4, available=100):
    state = FleetState()
    for i in range(n):
        state.clients[100 + i] = ClientInfo(100 + i, i, available, profile(strong=i % 2 == 0))
    state.plan(SETTINGS, FakeServerModel().shape())
    return state


def test_round_seed_depends_on_round_and_partition_only():
    assert round_seed(42, 3, 7) == round_seed(42, 3, 7)
    assert len({round_seed(42, r, p) for r in range(5) for p in range(5)}) == 25


def test_sampling_is_seeded_in_partition_order_and_never_below_min_clients():
    # Prepare
    clients = [ClientInfo(200 - i, i, 10, profile()) for i in range(10)]
    settings = SplitSettings(fraction_train=0.1, min_clients=3, seed=1)

    # Execute
    first, again, other_round = (
        sample(clients, 1, settings),
        sample(clients, 1, settings),
        sample(clients, 2, settings),
    )

    # Assert
    assert len(first) == 3 and first == again and first != other_round
    assert [c.partition_id for c in first] == sorted(c.partition_id for c in first)
    assert sample(clients, 1, SplitSettings()) == sorted(clients, key=lambda c: c.partition_id)


def test_fleet_state_dump_and_restore_keep_strikes_exclusions_and_mode_changes():
    # Prepare: client 1 excluded, client 2 moved to centralized, client 3 has a strike
    state = _fleet()
    state.excluded.add(1)
    state.move(2, "centralized", SETTINGS)
    state.strikes[3] = 1

    # Execute: through JSON-like keys, as a checkpoint stores them
    restored = FleetState(clients=dict(state.clients))
    restored.restore(json.loads(json.dumps(state.dump())), pool={})
    restored.plan(SETTINGS, FakeServerModel().shape())

    # Assert
    assert restored.excluded == {1} and restored.strikes == {3: 1}
    assert restored.assignments[2].mode == "centralized" and restored.assignments[0].mode == "split"
    assert [c.partition_id for c in restored.active()] == [0, 2, 3]


def test_react_excludes_after_max_strikes_and_moves_a_client_short_of_compute():
    # Prepare: a policy that offers every mode; client 0 keeps crashing, client 1 is too slow for split
    settings = SplitSettings(
        steps=2, batch_size=4, seed=3, max_strikes=2, policy=Policy(name="cost", batch_size=4, seed=3)
    )
    state = FleetState(clients={100 + i: ClientInfo(100 + i, i, 100, profile()) for i in range(3)})
    state.plan(settings, FakeServerModel().shape())
    state.move(1, "split", settings)
    crash = Failure(FailureCause.CLIENT_ERROR, detail="boom")
    slow = Failure(FailureCause.INSUFFICIENT_COMPUTE, needed=1.0, available=2.0)

    # Execute
    state.react({100: crash}, succeeded=[2], settings=settings)
    changed = state.react({100: crash, 101: slow}, succeeded=[2], settings=settings)

    # Assert
    assert state.excluded == {0}
    assert changed and state.assignments[1].mode == "centralized"


def test_exchange_sorts_replies_errors_and_silence_and_counts_the_bytes_sent():
    # Prepare: node 100 answers, 101 raises, 102 never answers
    good = FakeClient(0, 1.0, 10)

    def boom(msg):
        raise RuntimeError("device rebooted")

    grid = FakeGrid({100: good, 101: boom, 102: lambda msg: None})
    queries = [
        Message(RecordDict({wire.CONFIG: ConfigRecord({})}), node, wire.QUERY, group_id="0") for node in (100, 101, 102)
    ]

    # Execute
    result = exchange(grid, queries, timeout=5.0)

    # Assert
    assert sorted(result.replies) == [100]
    assert result.failures[101] == (FailureCause.CLIENT_ERROR, "error reply: RuntimeError: device rebooted")
    assert result.failures[102] == (FailureCause.TIMEOUT, "no reply within 5 s")
    assert result.bytes_down == {100: 0, 101: 0, 102: 0}  # a query carries no tensors


def test_plan_config_carries_the_plan_the_requirement_and_the_assignment():
    # Prepare
    state = _fleet()
    info = state.clients[101]

    # Execute
    config = plan_config(SETTINGS, state, info, 4, ConfigRecord({"mine": 1}))

    # Assert
    plan = wire.TrainPlan.from_config(config)
    assert plan.server_round == 4 and plan.seed == round_seed(3, 4, 1) and plan.steps == 2
    assert config[wire.MODE] == "split" and config["mine"] == 1 and "req-min-samples" in config


def test_train_plan_names_a_missing_or_mistyped_key():
    config = wire.TrainPlan(1, 2, 3, 4, 0.1, 0.1, "float32", 1, 0, "activations", 0).to_config()
    assert wire.TrainPlan.from_config(config).steps == 3
    with pytest.raises(KeyError, match="'steps'"):
        wire.TrainPlan.from_config({k: v for k, v in config.items() if k != "steps"})
    with pytest.raises(ValueError, match="'steps'"):
        wire.TrainPlan.from_config({**config, "steps": 2.5})


def _split_round(state):
    """A finished split round of clients 0 and 1 with real messages, for the cost model."""
    rnd = RoundState(1, 1, [state.clients[100], state.clients[101]], dict(state.assignments))
    for node, size in ((100, 1000), (101, 3000)):
        request = Message(RecordDict(), node, wire.SPLIT_FORWARD, group_id="1")
        request.metadata.__dict__["_message_id"] = f"m{node}"
        payload = {"act.0": np.zeros(size // 4, np.float32)}
        rnd.first[node] = Message(RecordDict({wire.ACTIVATIONS: to_record(payload)}), reply_to=request)
        rnd.bytes_down[node] = 500
    return rnd


def test_simulated_uplink_time_is_eight_times_the_measured_bytes_over_the_rate():
    # Prepare
    state = _fleet()
    rnd = _split_round(state)
    ledger = EnergyLedger()

    # Execute
    figures, costs = simulate(rnd, state, SETTINGS, FakeServerModel().shape(), ledger)

    # Assert: every client's uplink seconds come from what its messages really carried
    for node in (100, 101):
        info = state.clients[node]
        allocation, _ = effective_allocation(rnd.assignments[info.partition_id], info.profile)
        rate = uplink_rate(
            info.profile.bandwidth_hz, allocation.tx_power_w, info.profile.channel_gain, info.profile.noise_w
        )
        assert costs[info.partition_id].uplink_s == pytest.approx(8 * content_bytes(rnd.first[node]) / rate)
    assert figures["sim-clock-s"] == ledger.clock_s > 0
    assert figures["energy-j"] == pytest.approx(sum(c.energy_j for c in costs.values()))


def test_a_declined_client_is_charged_no_compute():
    # Prepare
    state = _fleet()
    rnd = _split_round(state)
    rnd.drop(101, FailureCause.INSUFFICIENT_SAMPLES, "3 samples, needs 8")

    # Execute
    _, costs = simulate(rnd, state, SETTINGS, FakeServerModel().shape(), EnergyLedger())

    # Assert
    assert costs[1].compute_s == 0.0 and costs[0].compute_s > 0.0


def test_the_round_record_names_each_drop_once_with_its_cause():
    # Prepare
    state = _fleet()
    rnd = _split_round(state)
    rnd.drop(101, FailureCause.INVALID_REPLY, "forward reply rejected: chunk 0: 3 non-finite values")
    figures, costs = simulate(rnd, state, SETTINGS, FakeServerModel().shape(), EnergyLedger())

    # Execute
    record = round_record(rnd, state, figures, costs, {"loss": 0.5, "accuracy": 0.75})

    # Assert
    assert record["dropped"] == {"1": "forward reply rejected: chunk 0: 3 non-finite values"}
    assert record["failures"]["invalid-reply"] == 1 and sum(record["failures"].values()) == 1
    assert record["bytes-up"] == sum(c["bytes-up"] for c in record["clients"].values()) == 4000 + 2 * 128
    assert record["accuracy"] == 0.75 and record["eval-loss"] == 0.5


def test_a_loss_of_exactly_zero_is_logged_as_zero(caplog):
    # Prepare
    from strategies.round.record import log_round

    record = {
        "round": 1,
        "train-loss": 0.0,
        "dropped": {},
        "bytes-up": 0,
        "bytes-down": 0,
        "wall-s": 0.1,
        "sim-latency-s": 0.0,
        "energy-j": 0.0,
    }

    # Execute
    with caplog.at_level("INFO"):
        log_round(record, num_rounds=1)

    # Assert
    assert "train-loss 0.0000" in caplog.text
