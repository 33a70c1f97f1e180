"""A heterogeneous fleet end to end: policies, modes, allocation, ledger, failures and resume.

Tiny random BERT on the synthetic set, in process; device profiles drawn from the
bimodal preset (phones below the 20 GFLOP/s threshold, base stations above it).
"""

import json
import re

import numpy as np
import pytest

from flower_app.apps.runner import run_inprocess
from strategies.persist.checkpoint import load_checkpoint
from strategies.persist.rundir import RunDirectory
from strategies.policy.groupings.threshold import ThresholdParams
from strategies.policy.requirements import TrainingRequirement, requirement_to_config
from strategies.wire import names as wire

NODES = 6
POLICY_MODES = {
    "split": {"split"},
    "local": {"local"},
    "centralized": {"centralized"},
    "threshold": {"centralized", "split"},
    "cost": {"local", "split", "centralized"},
    "kmeans": {"local", "split", "centralized"},
}


def _run(tmp_path, name, fault=None, **overrides):
    config = {"config": "test", "run.num-rounds": 2, "run.run-dir": str(tmp_path / name), **overrides}
    return run_inprocess(config, num_nodes=NODES, fault=fault), RunDirectory(tmp_path / name)


def _groups(run_dir):
    return json.loads((run_dir.path / "groups.json").read_text())


def _assert_fault_free(rounds):
    """A run without injected faults or unmeetable requirements: nothing dropped, failed or excluded."""
    for record in rounds:
        assert record["dropped"] == {}, (record["round"], record["dropped"])
        assert not any(record["failures"].values()), (record["round"], record["failures"])
        assert record["excluded"] == []


@pytest.mark.parametrize("policy", sorted(POLICY_MODES))
def test_each_policy_trains_and_records_groups_allocations_and_the_ledger(tmp_path, policy):
    # Execute: three rounds, as all-local learns the slowest
    summary, run_dir = _run(tmp_path, policy, **{"strategy.policy": policy, "run.num-rounds": 3})

    # Assert: the run learns
    assert summary["status"] == "completed"
    assert summary["final-accuracy"] > 0.6, summary
    _assert_fault_free(run_dir.rounds())
    # groups.json: every client with its group, mode and allocation
    clients = _groups(run_dir)["clients"]
    assert sorted(map(int, clients)) == list(range(NODES))
    assert {c["mode"] for c in clients.values()} <= POLICY_MODES[policy]
    for c in clients.values():
        assert c["tx-power-w"] > 0 and c["cpu-hz"] > 0 and c["energy-budget-j"] > 0
    # the ledger: a row per working client and round, its time and energy, a clock that only grows
    ledger, rounds = run_dir.ledger(), run_dir.rounds()
    first = [row for row in ledger if row["round"] == 1]
    assert sorted(row["client_id"] for row in first) == list(range(NODES))  # everyone works in round 1
    for row in first:
        assert row["mode"] == clients[str(row["client_id"])]["mode"]
        assert row["latency_s"] > 0 and row["energy_j"] >= 0
    assert 0 < rounds[0]["sim-clock-s"] <= rounds[1]["sim-clock-s"]
    assert rounds[0]["sim-latency-s"] >= max(row["latency_s"] for row in first) - 1e-9
    assert rounds[0]["energy-j"] == pytest.approx(sum(row["energy_j"] for row in first))


def test_the_ledger_prices_the_bytes_each_client_really_sent_and_received(tmp_path):
    # Prepare: a fleet in all three modes (kmeans: split 1, centralized 3, local 2)
    from flower_app.apps.client_app import node_profile
    from flower_app.config.load import load_config
    from strategies.cost.costmodel import uplink_rate

    overrides = {"strategy.policy": "kmeans", "run.num-rounds": 2}

    # Execute
    _, run_dir = _run(tmp_path, "kmeans", **overrides)

    # Assert: a row for every client that sent or received anything, in each round
    rounds, ledger, clients = run_dir.rounds(), run_dir.ledger(), _groups(run_dir)["clients"]
    assert {c["mode"] for c in clients.values()} == {"split", "centralized", "local"}
    assert sorted((row["round"], row["client_id"]) for row in ledger) == sorted(
        (r["round"], int(p)) for r in rounds for p in r["clients"]
    )
    config = load_config({"config": "test", **overrides})
    for row in ledger:
        measured = rounds[row["round"] - 1]["clients"][str(row["client_id"])]
        profile = node_profile(config, {}, row["client_id"], NODES)  # the seeded fleet the clients report
        power = clients[str(row["client_id"])]["tx-power-w"]
        rate = uplink_rate(profile.bandwidth_hz, power, profile.channel_gain, profile.noise_w)
        where = (row["round"], row["client_id"], row["mode"])
        assert row["mode"] == measured["mode"], where
        assert measured["bytes-up"] > 0 and measured["bytes-down"] > 0, where
        # time and energy of the bytes measured on this round's messages, at the allocated power
        assert row["uplink_s"] == pytest.approx(8 * measured["bytes-up"] / rate, rel=1e-12), where
        assert row["uplink_j"] == pytest.approx(power * row["uplink_s"], rel=1e-12), where
        assert row["downlink_s"] == pytest.approx(8 * measured["bytes-down"] / profile.downlink_bps, rel=1e-12), where
        assert row["latency_s"] == pytest.approx(
            row["compute_s"] + row["uplink_s"] + row["downlink_s"] + row["server_s"], rel=1e-12
        ), where
    _assert_fault_free(rounds)


def test_threshold_policy_trains_weak_clients_centrally():
    # Prepare: capabilities of the fleet the clients report
    from flower_app.modes.node import _fleet

    profiles = _fleet("bimodal", NODES, 0)
    weak = {i for i, p in enumerate(profiles) if p.capability < ThresholdParams().threshold_flops}
    assert 0 < len(weak) < NODES  # the fleet has both kinds, or the test proves nothing

    # Execute
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        _, run_dir = _run(Path(tmp), "threshold", **{"strategy.policy": "threshold"})
        clients = _groups(run_dir)["clients"]
        rounds = run_dir.rounds()

    # Assert
    assert {int(p) for p, c in clients.items() if c["mode"] == "centralized"} == weak
    assert all(c["group"] == (0 if int(p) in weak else 1) for p, c in clients.items())
    _assert_fault_free(rounds)


def test_every_train_message_tells_group_mode_threshold_and_allocation(tmp_path):
    # Prepare: record the config of every train message the clients receive
    seen = []

    def spy(index, message, call):
        if message.metadata.message_type.startswith("train."):
            seen.append((index, message.metadata.message_type, dict(message.content.config_records[wire.CONFIG])))
        return call()

    # Execute
    _, run_dir = _run(tmp_path, "spy", fault=spy, **{"strategy.policy": "threshold", "run.num-rounds": 1})

    # Assert
    assert {t for _, t, _ in seen} == {wire.SPLIT_FORWARD, wire.SPLIT_BACKWARD, wire.UPLOAD}
    for _, message_type, config in seen:
        assert config[wire.POLICY] == "threshold" and config[wire.THRESHOLD_FLOPS] == ThresholdParams().threshold_flops
        assert config[wire.MODE] == {wire.UPLOAD: "centralized"}.get(message_type, "split")
        for key in ("tx-power-w", "cpu-hz", "energy-budget-j"):
            assert config[wire.ALLOC_PREFIX + key] > 0
        assert config[wire.GROUP] in (0, 1)
    _assert_fault_free(run_dir.rounds())


def test_a_local_result_below_the_threshold_stays_out_of_the_average(tmp_path):
    # Prepare: strong clients train locally and must reach a loss no model reaches
    overrides = {
        "strategy.policy": "threshold",
        "strategy.strong-mode": "local",
        "run.num-rounds": 1,
        "requirement.threshold-metric": "loss",
        "requirement.threshold-value": 1e-6,
    }

    # Execute
    summary, run_dir = _run(tmp_path, "below", **overrides)

    # Assert: every local client failed with its figures, the round went on with the pool
    local = [p for p, c in _groups(run_dir)["clients"].items() if c["mode"] == "local"]
    record = run_dir.rounds()[0]
    assert summary["status"] == "completed"
    assert record["failures"]["performance-below-threshold"] == len(local) > 0
    assert all("performance-below-threshold" in record["dropped"][p] for p in local)
    # Only local clients train the lower prefix here (the pool holds fixed activations): it must not move
    initial = np.load(run_dir.path / "checkpoint.npz")  # round 1's checkpoint
    from flower_app.config.load import load_config
    from flower_app.data.setup import build

    start = build(load_config({"config": "test"})).initial_state
    for key in [k for k in start if k in ("prefix.0", "prefix.1")]:
        assert np.array_equal(initial[key], start[key]), key


def test_a_client_over_the_time_limit_moves_to_a_cheaper_mode(tmp_path):
    # Prepare: no local plan fits in a nanosecond
    overrides = {
        "strategy.policy": "threshold",
        "strategy.strong-mode": "local",
        "run.num-rounds": 2,
        "requirement.max-train-s": 1e-9,
    }

    # Execute
    summary, run_dir = _run(tmp_path, "slow", **overrides)

    # Assert: round 1 reports insufficient compute, the clients upload in round 2 instead
    rounds = run_dir.rounds()
    assert summary["status"] == "completed"
    moved = [p for p, c in rounds[0]["clients"].items() if c["mode"] == "local"]
    assert rounds[0]["failures"]["insufficient-compute"] == len(moved) > 0
    assert all(_groups(run_dir)["clients"][p]["mode"] == "centralized" for p in moved)
    assert all(rounds[1]["clients"][p]["mode"] == "centralized" for p in moved)
    assert rounds[1]["failures"]["insufficient-compute"] == 0


def test_split_replay_stops_at_the_time_limit():
    # Prepare
    from flower_app.config.load import load_config
    from flower_app.data.files import batch_plan
    from flower_app.data.setup import build, client_data
    from flower_app.modes.split import replay_plan
    from strategies.wire.codecs.registry import wire_codec

    config = load_config({"config": "test"})
    setup, encoded = build(config), client_data(config, 0, 4)
    plan = batch_plan(len(encoded), 5, 8, seed=0)
    grads = [np.zeros((8, max(len(encoded.ids[i]) for i in p), 64), np.float32) for p in plan]

    # Execute
    done = replay_plan(setup.client, encoded, plan, grads, 0.01, setup.pad_id, max_s=1e-9, codec=wire_codec("float32"))

    # Assert: the first step always runs, none starts after the limit
    assert done == 1


@pytest.mark.slow
def test_resume_with_a_centralized_pool_ends_with_the_same_metrics(tmp_path):
    # Prepare
    overrides = {"strategy.policy": "threshold", "run.num-rounds": 4}

    def kill(index, message, call):
        if int(message.metadata.group_id) == 3:
            raise KeyboardInterrupt  # the process dies in round 3
        return call()

    # Execute
    _, whole = _run(tmp_path, "whole", **overrides)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", fault=kill, **overrides)
    assert load_checkpoint(tmp_path / "resumed").round == 2
    _, resumed = _run(tmp_path, "resumed", **overrides, **{"run.resume": True})

    # Assert: the pool came back from the run directory, so nothing differs
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall-s"} for r in rs]  # noqa: E731
    assert strip(resumed.rounds()) == strip(whole.rounds())
    assert resumed.ledger() == whole.ledger()
    _assert_fault_free(whole.rounds())


def test_resume_keeps_exclusions_and_mode_changes(tmp_path):
    # Prepare: threshold fleet (0, 4, 5 split; 1, 2, 3 centralized). In round 1 client 0 is told a
    # time limit no device meets (insufficient compute: split -> centralized); client 4 crashes in
    # every round (excluded after 3 strikes); the process dies in round 4, where only client 5 works.
    overrides = {"strategy.policy": "threshold", "run.num-rounds": 4}
    impossible = requirement_to_config(TrainingRequirement(max_train_s=1e-9))

    def fleet_faults(kill_at=None):
        def fault(index, message, call):
            server_round = int(message.metadata.group_id)
            if server_round == kill_at:
                raise KeyboardInterrupt  # the process dies: not an Exception, nothing catches it
            if index == 0 and server_round == 1:
                for key, value in impossible.items():
                    message.content.config_records[wire.CONFIG][key] = value
            if index == 4 and server_round >= 1:
                raise RuntimeError("device rebooted")
            return call()

        return fault

    # Execute
    _, whole = _run(tmp_path, "whole", fault=fleet_faults(), **overrides)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", fault=fleet_faults(kill_at=4), **overrides)
    assert load_checkpoint(tmp_path / "resumed").round == 3
    _, resumed = _run(tmp_path, "resumed", fault=fleet_faults(), **overrides, **{"run.resume": True})

    # Assert: the uninterrupted run did what the faults ask for ...
    rounds = whole.rounds()
    assert rounds[0]["failures"]["insufficient-compute"] == 1 and rounds[0]["clients"]["0"]["mode"] == "split"
    assert [r["failures"]["client-error"] for r in rounds] == [1, 1, 1, 0]
    assert [r["excluded"] for r in rounds] == [[], [], [4], [4]]
    # client 0 moved; 4 keeps its mode
    assert rounds[3]["modes"] == {"centralized": 4, "local": 0, "split": 2, "ushape": 0}
    assert sorted(rounds[3]["clients"]) == ["5"] and rounds[3]["dropped"] == {}
    assert _groups(whole)["clients"]["0"]["mode"] == "centralized"

    # ... and the resumed run took up round 4 with client 4 still excluded and client 0 still centralized
    # (apart from wall times, and the measured pace a failure reply states: "10 steps need ~0.08 s")
    def strip(records):
        return [
            {
                **{k: v for k, v in r.items() if k != "wall-s"},
                "dropped": {p: re.sub(r"~\S+ s", "~? s", why) for p, why in r["dropped"].items()},
            }
            for r in records
        ]

    assert strip(resumed.rounds()) == strip(rounds)
    assert resumed.ledger() == whole.ledger()
    assert _groups(resumed) == _groups(whole)


def test_a_policy_schedule_regroups_the_fleet_at_its_stages_and_after_a_resume(tmp_path):
    # Prepare: everyone uploads in round 1, threshold groups in round 2, everyone splits after
    overrides = {"strategy.policy-schedule": "centralized:1,threshold:1,split", "run.num-rounds": 4}

    def kill(index, message, call):
        if int(message.metadata.group_id) == 3:
            raise KeyboardInterrupt  # the process dies in round 3, the last stage's first
        return call()

    # Execute
    summary, whole = _run(tmp_path, "whole", **overrides)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", fault=kill, **overrides)
    _, resumed = _run(tmp_path, "resumed", **overrides, **{"run.resume": True})

    # Assert: each round ran in its stage's modes, and the run learned
    rounds = whole.rounds()
    assert [r["modes"] for r in rounds] == [
        {"centralized": NODES, "local": 0, "split": 0, "ushape": 0},
        {"centralized": 3, "local": 0, "split": 3, "ushape": 0},  # the bimodal fleet's phones and base stations
        {"centralized": 0, "local": 0, "split": NODES, "ushape": 0},
        {"centralized": 0, "local": 0, "split": NODES, "ushape": 0},
    ]
    assert summary["status"] == "completed" and summary["final-accuracy"] > 0.6
    _assert_fault_free(rounds)
    assert {c["mode"] for c in _groups(whole)["clients"].values()} == {"split"}
    # The resumed run picked the stage of round 3 from the round alone
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall-s"} for r in rs]  # noqa: E731
    assert strip(resumed.rounds()) == strip(rounds)
