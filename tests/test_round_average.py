"""What enters a round's average, end to end: every client weighted by the volume it reported.

Tiny random BERT on the synthetic set, in process. A fault hook spies on the replies the
clients send; the checkpoint after round 1 must be their volume-weighted average, worked
out here with ``np.average``. Dirichlet partitions give the clients unequal volumes, so an
unweighted average (or a wrong weight) shows.
"""

import json

import numpy as np

from flower_app.apps.runner import run_inprocess
from strategies.wire import names as wire
from tests.replies import arrays, checkpoint_arrays, sequential_server_half, spy, volume, weighted_average

RTOL, ATOL = 1e-6, 1e-7  # float64 sums in another order, cast to float32


def _run_one_round(tmp_path, num_nodes, **overrides):
    config = {"config": "test", "run.num-rounds": 1, "run.run-dir": str(tmp_path), **overrides}
    replies = []
    summary = run_inprocess(config, num_nodes=num_nodes, fault=spy(replies))
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    by_type = {}
    for _, index, message_type, reply in sorted(replies, key=lambda item: item[1]):  # partition order
        by_type.setdefault(message_type, []).append((index, reply))
    return config, summary, record, by_type, checkpoint_arrays(tmp_path)


def test_client_prefixes_are_averaged_by_the_volume_each_client_reported(tmp_path):
    # Prepare: label-skewed partitions of 30, 137, 37 and 96 samples (a round's plan covers 160)
    overrides = {"data.partitioner": "dirichlet", "data.alpha": 0.3}

    # Execute
    _, summary, record, replies, checkpoint = _run_one_round(tmp_path, 4, **overrides)

    # Assert: a clean round, with the volumes as unequal as intended
    assert summary["status"] == "completed" and record["dropped"] == {}
    backward = [r for _, r in replies[wire.SPLIT_BACKWARD]]
    assert [i for i, _ in replies[wire.SPLIT_BACKWARD]] == [0, 1, 2, 3]
    assert [volume(r) for r in backward] == [30, 137, 37, 96]
    # the lower prefix after the round is the volume-weighted average of the four replies
    assert sorted(arrays(backward[0])) == ["prefix.0", "prefix.1"]
    for key in ("prefix.0", "prefix.1"):
        expected = weighted_average(backward, key)
        unweighted = np.mean([arrays(r)[key] for r in backward], axis=0)
        assert np.abs(expected - unweighted).max() > 1000 * ATOL  # the weights matter here
        np.testing.assert_allclose(checkpoint[key], expected, rtol=RTOL, atol=ATOL, err_msg=key)


def test_the_servers_sequential_half_weighs_the_volume_of_the_split_clients(tmp_path):
    # Prepare: weak clients train locally (their reply holds the head), strong ones split; unequal volumes
    overrides = {
        "strategy.policy": "threshold",
        "strategy.weak-mode": "local",
        "data.partitioner": "dirichlet",
        "data.alpha": 0.5,
    }

    # Execute
    config, summary, record, replies, checkpoint = _run_one_round(tmp_path, 6, **overrides)

    # Assert: both modes took part, nothing was dropped
    assert summary["status"] == "completed" and record["dropped"] == {}
    split = [r for _, r in replies[wire.SPLIT_BACKWARD]]
    local = [r for _, r in replies[wire.LOCAL]]
    assert split and local and len(split) + len(local) == 6
    server_half = sequential_server_half(config, [r for _, r in replies[wire.SPLIT_FORWARD]])
    split_volume = sum(volume(r) for r in split)
    # the upper prefix: only the server trains it (the local emulator's stays on the client)
    for key in ("prefix.2", "prefix.3"):
        assert all(key not in arrays(r) for r in local)
        np.testing.assert_allclose(checkpoint[key], server_half[key], rtol=RTOL, atol=ATOL, err_msg=key)
    # the head: local clients' heads and the server's, which carries the split clients' volume
    heads = [k for k in checkpoint if k.startswith("head.")]
    assert heads
    for key in heads:
        stacked = np.stack([arrays(r)[key] for r in local] + [server_half[key]])
        expected = np.average(stacked, axis=0, weights=[volume(r) for r in local] + [split_volume])
        np.testing.assert_allclose(checkpoint[key], expected, rtol=RTOL, atol=ATOL, err_msg=key)
    # the lower prefix: split and local replies together, by volume
    for key in ("prefix.0", "prefix.1"):
        np.testing.assert_allclose(
            checkpoint[key], weighted_average(split + local, key), rtol=RTOL, atol=ATOL, err_msg=key
        )
