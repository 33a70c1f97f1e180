"""Fault injection and resume on the in-process grid (tiny model, synthetic data)."""

import json
import time

import numpy as np
import pytest
from flwr.app import MetricRecord, RecordDict

from flower_app.apps.runner import run_inprocess
from strategies.wire import names as wire
from strategies.wire.records import from_record, to_record
from tests.replies import arrays, checkpoint_arrays, sequential_server_half, spy, weighted_average

NODES = 10
TIMEOUT_S = 1.5


def _bad_reply(kind):
    """Replace the tensors or the volume of a good backward reply."""

    def corrupt(reply):
        arrays = from_record(reply.content.array_records[wire.ARRAYS])
        volume = reply.content.metric_records[wire.METRICS][wire.NUM_EXAMPLES]
        name = sorted(arrays)[0]
        if kind == "nan":
            arrays[name] = np.full_like(arrays[name], np.nan)
        elif kind == "shape":
            arrays[name] = arrays[name][..., :1]
        elif kind == "missing":
            del arrays[name]
        elif kind == "inflated":
            volume = 1_000_000_000
        reply.content = RecordDict(
            {wire.ARRAYS: to_record(arrays), wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: volume})}
        )
        return reply

    return corrupt


FAULTS = ["crash", "timeout", "vanish", "nan", "shape", "missing", "inflated"]


def faulty_fleet(log):
    """30% of the nodes misbehave each round, each in one of the ways above."""

    def fault(index, message, call):
        server_round = int(message.metadata.group_id)
        if message.metadata.message_type == wire.QUERY or server_round == 0:
            return call()
        bad = {(server_round * 3 + k) % NODES: FAULTS[(server_round + k) % len(FAULTS)] for k in range(3)}
        kind = bad.get(index)
        if kind is None:
            return call()
        backward = message.metadata.message_type == wire.SPLIT_BACKWARD
        if kind in ("crash", "timeout", "vanish") or backward:
            log.append((server_round, index, kind))
        if kind == "crash":
            raise RuntimeError("device rebooted")
        if kind == "timeout":
            time.sleep(TIMEOUT_S + 0.1)
            return call()
        if kind == "vanish":
            return None
        return _bad_reply(kind)(call()) if backward else call()

    return fault


def _rounds(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_thirty_percent_faulty_clients_lose_no_round(tmp_path):
    # Prepare
    config = {"config": "test", "run.num-rounds": 10, "strategy.timeout-s": TIMEOUT_S}
    injected = []

    starts, replies = {}, []  # the lower prefix each round starts from; the replies the server got
    fault = faulty_fleet(injected)

    def watch(index, message, call):
        if message.metadata.message_type == wire.SPLIT_FORWARD:
            starts.setdefault(int(message.metadata.group_id), arrays(message))
        return fault(index, message, call)

    # Execute
    clean = run_inprocess({**config, "run.run-dir": str(tmp_path / "clean")}, num_nodes=NODES)
    faulty = run_inprocess(
        {**config, "run.run-dir": str(tmp_path / "faulty")}, num_nodes=NODES, fault=spy(replies, watch)
    )

    # Assert: every round completed, with exactly the injected clients dropped, for a reason
    rounds = _rounds(tmp_path / "faulty")
    assert faulty["status"] == "completed" and [r["round"] for r in rounds] == list(range(1, 11))
    for record in rounds:
        expected = {str(i) for r, i, _ in injected if r == record["round"]}
        assert set(record["dropped"]) == expected, record["dropped"]
    reasons = " | ".join(why for r in rounds for why in r["dropped"].values())
    for needle in ("device rebooted", "no reply within", "NaN", "shape", "missing", "1000000000"):
        assert needle in reasons
    assert np.isfinite([r["eval-loss"] for r in rounds]).all()
    for record in _rounds(tmp_path / "clean"):  # the fault-free run: nothing dropped, failed or excluded
        assert record["dropped"] == {} and not any(record["failures"].values()) and record["excluded"] == []
    assert abs(faulty["final-accuracy"] - clean["final-accuracy"]) <= 0.02
    # every round's lower prefix is the volume-weighted average of exactly the accepted replies
    # (both runs reach accuracy 1.00 on this task: the line above cannot tell)
    after = {r: starts[r + 1] for r in range(1, 10)} | {10: checkpoint_arrays(tmp_path / "faulty")}
    for record in rounds:
        accepted = [
            reply
            for r, i, t, reply in replies
            if r == record["round"] and t == wire.SPLIT_BACKWARD and str(i) not in record["dropped"]
        ]
        assert len(accepted) == NODES - len(record["dropped"])
        for key in ("prefix.0", "prefix.1"):
            np.testing.assert_allclose(
                after[record["round"]][key],
                weighted_average(accepted, key),
                rtol=1e-6,
                atol=1e-7,
                err_msg=f"round {record['round']} {key}",
            )


def test_a_round_with_dropped_clients_averages_exactly_the_accepted_replies(tmp_path):
    # Prepare: of 5 clients with unequal data, client 1 crashes at its backward step and
    # client 3 claims a volume it does not hold (its tensors are genuine)
    config = {
        "config": "test",
        "run.num-rounds": 1,
        "run.run-dir": str(tmp_path),
        "data.partitioner": "dirichlet",
        "data.alpha": 0.5,
    }

    def faults(index, message, call):
        if message.metadata.message_type == wire.SPLIT_BACKWARD and index == 1:
            raise RuntimeError("device rebooted")
        if message.metadata.message_type == wire.SPLIT_BACKWARD and index == 3:
            return _bad_reply("inflated")(call())
        return call()

    replies = []

    # Execute
    summary = run_inprocess(config, num_nodes=5, fault=spy(replies, faults))

    # Assert: the round completed without the two
    record = _rounds(tmp_path)[0]
    assert summary["status"] == "completed" and sorted(record["dropped"]) == ["1", "3"]
    backward = {i: reply for _, i, t, reply in replies if t == wire.SPLIT_BACKWARD}
    assert sorted(backward) == [0, 2, 3, 4]
    checkpoint = checkpoint_arrays(tmp_path)
    # the lower prefix: the volume-weighted average of clients 0, 2 and 4, nobody else's
    for key in ("prefix.0", "prefix.1"):
        np.testing.assert_allclose(
            checkpoint[key], weighted_average([backward[i] for i in (0, 2, 4)], key), rtol=1e-6, atol=1e-7, err_msg=key
        )
    # the upper prefix and head: the server's steps on all five clients' activations stand
    forward = sorted((i, reply) for _, i, t, reply in replies if t == wire.SPLIT_FORWARD)
    assert [i for i, _ in forward] == [0, 1, 2, 3, 4]
    server_half = sequential_server_half(config, [reply for _, reply in forward])
    for key, value in server_half.items():
        np.testing.assert_allclose(checkpoint[key], value, rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.slow
def test_resume_after_a_kill_ends_with_the_same_metrics(tmp_path):
    # Prepare
    config = {"config": "test", "run.num-rounds": 5}
    killed_at = 3

    def kill(index, message, call):
        if int(message.metadata.group_id) == killed_at and index == 2:
            raise KeyboardInterrupt  # the process dies mid-round: not an Exception, nothing catches it
        return call()

    # Execute
    whole = run_inprocess({**config, "run.run-dir": str(tmp_path / "whole")}, num_nodes=4)
    with pytest.raises(KeyboardInterrupt):
        run_inprocess({**config, "run.run-dir": str(tmp_path / "resumed")}, num_nodes=4, fault=kill)
    assert [r["round"] for r in _rounds(tmp_path / "resumed")] == [1, 2]
    resumed = run_inprocess({**config, "run.run-dir": str(tmp_path / "resumed"), "run.resume": True}, num_nodes=4)

    # Assert
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall-s"} for r in rs]  # noqa: E731
    assert strip(_rounds(tmp_path / "resumed")) == strip(_rounds(tmp_path / "whole"))
    for record in _rounds(tmp_path / "whole"):  # fault-free: nothing dropped, failed or excluded
        assert record["dropped"] == {} and not any(record["failures"].values()) and record["excluded"] == []
    assert resumed["final-accuracy"] == whole["final-accuracy"]
    assert resumed["rounds"] == 5
