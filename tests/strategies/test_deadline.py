"""The round deadline: who sits out, the min-clients floor, and predictions that match the clock."""

import pytest

from flower_app.runner import run_inprocess
from strategies.deadline import within_deadline
from strategies.devices import DeviceProfile
from strategies.fleet_state import ClientInfo
from strategies.rundir import RunDirectory


def _clients(n):
    profile = DeviceProfile(
        cpu_hz_max=1e9, memory_bytes=1e9, energy_budget_j=10.0, bandwidth_hz=1e6, channel_gain=1e-10
    )
    return [ClientInfo(node_id=100 + p, partition_id=p, num_available=50, profile=profile) for p in range(n)]


def test_clients_over_the_deadline_sit_out_in_partition_order():
    clients = _clients(5)
    latency = {0: 3.0, 1: 12.0, 2: 0.0, 3: 10.0, 4: 40.0}

    train, sit_out = within_deadline(clients, latency, deadline_s=10.0, min_clients=2)

    assert [c.partition_id for c in train] == [0, 2, 3]  # 10.0 meets a 10 s deadline
    assert [c.partition_id for c in sit_out] == [1, 4]


def test_the_fastest_clients_make_up_min_clients_and_no_deadline_keeps_everyone():
    clients = _clients(4)
    latency = {0: 50.0, 1: 20.0, 2: 30.0, 3: 20.0}

    train, sit_out = within_deadline(clients, latency, deadline_s=5.0, min_clients=2)
    everyone, nobody = within_deadline(clients, latency, deadline_s=0.0, min_clients=2)

    assert [c.partition_id for c in train] == [1, 3] and [c.partition_id for c in sit_out] == [0, 2]
    assert everyone == clients and nobody == []


def _round_one(tmp_path, name, **overrides):
    config = {
        "config": "test",
        "run.num-rounds": 2,
        "strategy.policy": "split",
        "run.run-dir": str(tmp_path / name),
        **overrides,
    }
    summary = run_inprocess(config, num_nodes=6)
    return summary, RunDirectory(tmp_path / name).rounds()


def test_the_predicted_latency_matches_the_clock_and_the_slow_clients_sit_out(tmp_path):
    # Arrange: the same fleet without a deadline, to see each client's simulated latency
    _, free = _round_one(tmp_path, "free")
    observed = {int(p): c["sim-latency-s"] for p, c in free[0]["clients"].items()}
    deadline = sorted(observed.values())[3] * 1.001  # the four fastest meet it
    slow = sorted(p for p, s in observed.items() if s > deadline)

    # Execute
    summary, rounds = _round_one(tmp_path, "deadline", **{"strategy.round-deadline-s": deadline})

    # Assert: the cost model's prediction before the round picked the same two clients
    assert summary["status"] == "completed"
    assert len(slow) == 2
    for record in rounds:
        assert record["sat-out"] == slow
        assert sorted(map(int, record["clients"])) == sorted(set(observed) - set(slow))
        assert record["sim-latency-s"] <= deadline
    assert rounds[0]["sim-latency-s"] == pytest.approx(sorted(observed.values())[3], rel=1e-6)
    assert free[0]["sim-latency-s"] > deadline and "sat-out" not in free[0]
