"""What enters a round's average, end to end: every client weighted by the volume it reported.

Tiny random BERT on the synthetic set, in process. A fault hook spies on the replies the
clients send; the checkpoint after round 1 must be their volume-weighted average, worked
out here with ``np.average``. Dirichlet partitions give the clients unequal volumes, so an
unweighted average (or a wrong weight) shows.
"""

import json

import numpy as np

from flower_app import task
from flower_app.config import load_config
from flower_app.runner import run_inprocess
from strategies import wire
from strategies.records import from_record

RTOL, ATOL = 1e-6, 1e-7  # float64 sums in another order, cast to float32


def _spy(replies):
    """Deliver every message; keep the good train replies as (index, message type, reply)."""
    def fault(index, message, call):
        reply = call()
        if message.metadata.message_type.startswith("train.") and reply is not None and not reply.has_error():
            replies.append((index, message.metadata.message_type, reply))
        return reply
    return fault


def _arrays(reply, record=wire.ARRAYS):
    return from_record(reply.content.array_records[record])


def _volume(reply):
    return int(reply.content.metric_records[wire.METRICS][wire.NUM_EXAMPLES])


def _run_one_round(tmp_path, num_nodes, **overrides):
    config = {"config": "test", "run.num-rounds": 1, "run.run-dir": str(tmp_path), **overrides}
    replies = []
    summary = run_inprocess(config, num_nodes=num_nodes, fault=_spy(replies))
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    with np.load(tmp_path / "checkpoint.npz") as saved:
        checkpoint = {k: saved[k] for k in saved.files}
    return config, summary, record, replies, checkpoint


def _sequential_server_half(config, forward_replies):
    """The server's tensors after stepping through the split clients' activations in partition order."""
    server = task.SplitServer(task.build(load_config(config)))
    state = {k: v for k, v in server.initial_state().items() if k in server.server_keys}
    steps = load_config(config).train.steps_per_round
    for _, reply in sorted(forward_replies, key=lambda item: item[0]):
        acts = _arrays(reply, wire.ACTIVATIONS)
        batches = [{"act": acts[wire.activation_key(i)], "mask": acts[wire.mask_key(i)],
                    "label": acts[wire.label_key(i)]} for i in range(steps)]
        state, _, _ = server.train_split(state, batches)
    return state


def test_client_prefixes_are_averaged_by_the_volume_each_client_reported(tmp_path):
    # Prepare: label-skewed partitions of 30, 137, 37 and 96 samples (a round's plan covers 160)
    overrides = {"data.partitioner": "dirichlet", "data.alpha": 0.3}

    # Execute
    _, summary, record, replies, checkpoint = _run_one_round(tmp_path, 4, **overrides)

    # Assert: a clean round, with the volumes as unequal as intended
    assert summary["status"] == "completed" and record["dropped"] == {}
    backward = sorted((i, r) for i, t, r in replies if t == wire.SPLIT_BACKWARD)
    volumes = [_volume(r) for _, r in backward]
    assert [i for i, _ in backward] == [0, 1, 2, 3] and volumes == [30, 137, 37, 96]
    # the lower prefix after the round is the volume-weighted average of the four replies
    client_keys = sorted(_arrays(backward[0][1]))
    assert client_keys == ["prefix.0", "prefix.1"]
    for key in client_keys:
        stacked = np.stack([_arrays(r)[key] for _, r in backward])
        expected = np.average(stacked, axis=0, weights=volumes)
        unweighted = stacked.mean(axis=0)
        assert np.abs(expected - unweighted).max() > 1000 * ATOL  # the weights matter here
        np.testing.assert_allclose(checkpoint[key], expected, rtol=RTOL, atol=ATOL, err_msg=key)


def test_the_servers_sequential_half_weighs_the_volume_of_the_split_clients(tmp_path):
    # Prepare: weak clients train locally (their reply holds the head), strong ones split; unequal volumes
    overrides = {"strategy.policy": "threshold", "strategy.weak-mode": "local", "data.partitioner": "dirichlet",
                 "data.alpha": 0.5}

    # Execute
    config, summary, record, replies, checkpoint = _run_one_round(tmp_path, 6, **overrides)

    # Assert: both modes took part, nothing was dropped
    assert summary["status"] == "completed" and record["dropped"] == {}
    forward = [(i, r) for i, t, r in replies if t == wire.SPLIT_FORWARD]
    split = sorted((i, r) for i, t, r in replies if t == wire.SPLIT_BACKWARD)
    local = sorted((i, r) for i, t, r in replies if t == wire.LOCAL)
    assert split and local and len(split) + len(local) == 6
    server_half = _sequential_server_half(config, forward)
    split_volume = sum(_volume(r) for _, r in split)
    # the upper prefix: only the server trains it (the local emulator's stays on the client)
    for key in ("prefix.2", "prefix.3"):
        assert all(key not in _arrays(r) for _, r in local)
        np.testing.assert_allclose(checkpoint[key], server_half[key], rtol=RTOL, atol=ATOL, err_msg=key)
    # the head: local clients' heads and the server's, which carries the split clients' volume
    heads = [k for k in checkpoint if k.startswith("head.")]
    assert heads
    for key in heads:
        stacked = np.stack([_arrays(r)[key] for _, r in local] + [server_half[key]])
        weights = [_volume(r) for _, r in local] + [split_volume]
        expected = np.average(stacked, axis=0, weights=weights)
        np.testing.assert_allclose(checkpoint[key], expected, rtol=RTOL, atol=ATOL, err_msg=key)
    # the lower prefix: split and local replies together, by volume
    both = split + local
    for key in ("prefix.0", "prefix.1"):
        expected = np.average(np.stack([_arrays(r)[key] for _, r in both]), axis=0,
                              weights=[_volume(r) for _, r in both])
        np.testing.assert_allclose(checkpoint[key], expected, rtol=RTOL, atol=ATOL, err_msg=key)
