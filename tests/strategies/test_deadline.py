"""The round deadline: who sits out, the min-clients floor, and predictions that match the clock."""

import pytest

from flower_app.apps.runner import run_inprocess
from strategies.fleet.devices import DeviceProfile
from strategies.fleet.state import ClientInfo
from strategies.persist.rundir import RunDirectory
from strategies.policy.policies import Policy, parse_schedule, stage_deadlines
from strategies.round.deadline import within_deadline


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


def test_a_stage_of_the_schedule_carries_its_own_deadline():
    text = "threshold:3@30, cost:1@0, split"

    schedule, deadlines = parse_schedule(text), stage_deadlines(text)
    policy = Policy(schedule=schedule, stage_deadlines=deadlines)

    assert schedule == (("threshold", 3), ("cost", 1), ("split", 0))
    assert deadlines == (30.0, 0.0, None)
    assert [(policy.at(r).name, policy.at(r).round_deadline_s) for r in (1, 3, 4, 5)] == [
        ("threshold", 30.0),
        ("threshold", 30.0),
        ("cost", 0.0),  # 0: no deadline in this stage, whatever the run's
        ("split", None),  # none given: the run's strategy.round-deadline-s
    ]
    with pytest.raises(ValueError, match="deadline after '@' must be seconds"):
        stage_deadlines("threshold:3@soon,split")
    with pytest.raises(ValueError, match="deadline after '@' must be seconds"):
        stage_deadlines("threshold:3@-1,split")


def test_the_deadline_binds_only_in_its_stage(tmp_path):
    # Arrange: the slowest clients' latency without a deadline
    _, free = _round_one(tmp_path, "free")
    observed = sorted(c["sim-latency-s"] for c in free[0]["clients"].values())
    deadline = observed[3] * 1.001

    # Execute: round 1 under the deadline, round 2 without, though the run's key sets one
    overrides = {"strategy.policy-schedule": f"split:1@{deadline},split@0", "strategy.round-deadline-s": 1e-9}
    summary, rounds = _round_one(tmp_path, "staged", **overrides)

    # Assert
    assert summary["status"] == "completed"
    assert len(rounds[0]["sat-out"]) == 2 and len(rounds[0]["clients"]) == 4
    assert "sat-out" not in rounds[1] and len(rounds[1]["clients"]) == 6
