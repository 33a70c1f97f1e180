"""Top-k prefix uploads in a whole in-process run: it learns, sends the expected bytes, refuses bad entries."""

import json

import numpy as np
import pytest

from flower_app.apps.runner import run_inprocess
from strategies.wire import names as wire
from strategies.wire.records import content_bytes, to_record
from strategies.wire.sparsify import sparse_bytes
from tests.replies import arrays, spy, volume

FRACTION = 0.1


def test_a_top_tenth_run_learns_sends_a_tenth_of_the_entries_and_drops_a_bad_sparse_reply(tmp_path):
    # Prepare: 3 split clients, 3 rounds; client 1's round-2 upload repeats an index
    config = {
        "config": "test",
        "run.num-rounds": 3,
        "run.run-dir": str(tmp_path),
        "strategy.policy": "split",
        "train.steps-per-round": 5,
        "train.upload-topk": FRACTION,
    }
    replies, starts = [], {}

    def repeat_an_index(index, message, call):
        if message.metadata.message_type == wire.SPLIT_BACKWARD:
            starts[(int(message.metadata.group_id), index)] = arrays(message)
        reply = call()
        if message.metadata.group_id == "2" and index == 1 and message.metadata.message_type == wire.SPLIT_BACKWARD:
            sparse = arrays(reply, wire.SPARSE)
            sparse["prefix.0:idx"][1] = sparse["prefix.0:idx"][0]
            reply.content.array_records[wire.SPARSE] = to_record(sparse)
        return reply

    # Execute
    summary = run_inprocess(config, num_nodes=3, fault=spy(replies, repeat_an_index))
    rounds = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]

    # Assert: the held-out loss falls round after round
    assert summary["status"] == "completed"
    losses = [r["eval-loss"] for r in rounds]
    assert losses[2] < losses[0], losses
    # the bad upload is dropped with its reason, the others enter the average
    assert rounds[1]["dropped"] == {"1": "split reply rejected: ValueError: 'prefix.0': 1 repeated sparse indices"}
    assert rounds[0]["dropped"] == {} and rounds[2]["dropped"] == {}
    # every prefix upload is indices + values of the top tenth: 12 bytes an entry, 0.3 of float32's bytes
    backward = [(r, i, reply) for r, i, t, reply in replies if t == wire.SPLIT_BACKWARD]
    assert len(backward) == 9
    for r, i, reply in backward:
        assert wire.ARRAYS not in reply.content.array_records
        sizes = {k: v.size for k, v in starts[(r, i)].items()}
        payload = sum(a.nbytes for a in arrays(reply, wire.SPARSE).values())
        assert payload == sparse_bytes(sizes, FRACTION)
        assert payload / (4 * sum(sizes.values())) == pytest.approx(0.3, abs=0.01)
    # ... and the round's record counts them: each client's bytes-up is its activations plus that
    for r, i, reply in backward:
        forward = next(f for rr, ii, t, f in replies if (rr, ii, t) == (r, i, wire.SPLIT_FORWARD))
        assert rounds[r - 1]["clients"][str(i)]["bytes-up"] == content_bytes(forward) + content_bytes(reply)
    # round 1's average is of the rebuilt uploads: global + sent entries, weighted by volume
    assert "bounded" not in rounds[0]
    first = [(i, reply) for r, i, reply in backward if r == 1]
    for key in ("prefix.0", "prefix.1"):
        rebuilt = []
        for i, reply in first:
            dense = starts[(1, i)][key].ravel().copy()
            sparse = arrays(reply, wire.SPARSE)
            dense[sparse[key + ":idx"]] += sparse[key + ":val"]
            rebuilt.append(dense.reshape(starts[(1, i)][key].shape))
        expected = np.average(np.stack(rebuilt), axis=0, weights=[volume(reply) for _, reply in first])
        np.testing.assert_allclose(starts[(2, 0)][key], expected, rtol=1e-6, atol=1e-7)


def test_a_parallel_probe_reads_its_top_k_halfs_sparse_replies(tmp_path):
    # Prepare: 4 split clients; round 2 probes top-k uploads against dense ones on two halves
    config = {
        "config": "test",
        "run.num-rounds": 3,
        "run.run-dir": str(tmp_path),
        "strategy.policy": "split",
        "strategy.probe-mode": f"topk:{FRACTION}",
        "strategy.probe-rounds": "2",
        "strategy.probe-variant": "parallel",
    }

    # Execute
    run_inprocess(config, num_nodes=4)

    # Assert: the top-k half's replies were rebuilt like the dense half's, none dropped, and the
    # probe judged both halves on their figures
    rounds = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    probe = next(r for r in rounds if r.get("round") == 2)
    assert not probe.get("dropped"), probe.get("dropped")
    halves = probe["probe"]["halves"]
    assert sorted(halves) == ["float32", f"topk:{FRACTION}"] and all(halves.values())
    assert "no valid contributions" not in json.dumps(probe["probe"])
