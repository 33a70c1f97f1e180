"""Fault injection and resume on the in-process grid (tiny model, synthetic data)."""

import json
import time

import numpy as np
import pytest
from flwr.app import MetricRecord, RecordDict

from flower_app.runner import run_inprocess
from strategies import wire
from strategies.records import from_record, to_record

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

    # Execute
    clean = run_inprocess({**config, "run.run-dir": str(tmp_path / "clean")}, num_nodes=NODES)
    faulty = run_inprocess(
        {**config, "run.run-dir": str(tmp_path / "faulty")}, num_nodes=NODES, fault=faulty_fleet(injected)
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
    assert abs(faulty["final-accuracy"] - clean["final-accuracy"]) <= 0.02


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
    assert resumed["final-accuracy"] == whole["final-accuracy"]
    assert resumed["rounds"] == 5
