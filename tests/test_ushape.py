"""U-shape mode: labels and targets stay on the device, the head trains there, and the server's
steps are split's steps fed the device's gradient."""

import json

import numpy as np
import pytest
import torch

from flower_app.apps.runner import run_inprocess
from flower_app.config.load import load_config
from flower_app.config.strategy_settings import split_settings
from flower_app.data import files as data_mod
from flower_app.data.setup import build
from flower_app.modes.server_model import SplitServer
from flower_app.modes.ushape import head_steps
from strategies.wire import names as wire
from strategies.wire.codecs.registry import wire_codec
from strategies.wire.records import content_bytes
from tests.replies import arrays, checkpoint_arrays, volume

LM = {
    "model.source": "random-gpt2",
    "model.head": "lm",
    "model.pooling": "last",
    "model.verbalizer": "bad,good",
    "data.objective": "causal-lm",
}
FAST = {"config": "test", "strategy.policy": "ushape", "run.num-rounds": 2, "train.steps-per-round": 3}


def _every_message(seen):
    """A fault hook keeping every train message and its reply."""

    def hook(index, message, call):
        reply = call()
        if message.metadata.message_type.startswith("train."):
            seen.append((message, reply))
        return reply

    return hook


def _array_keys(message):
    return {key for record in message.content.array_records.values() for key in record}


@pytest.mark.parametrize("objective", [{}, LM], ids=["classifier", "causal-lm"])
def test_no_message_of_a_ushape_run_carries_labels_or_targets(tmp_path, objective):
    # Prepare
    seen = []

    # Execute
    summary = run_inprocess(
        {**FAST, **objective, "run.run-dir": str(tmp_path)}, num_nodes=3, fault=_every_message(seen)
    )

    # Assert: all three exchanges ran, and neither direction of any of them held a label array
    assert summary["status"] == "completed"
    types = {m.metadata.message_type for m, _ in seen}
    assert types == {wire.USHAPE_FORWARD, wire.USHAPE_TOP, wire.USHAPE_BACKWARD}
    for message, reply in seen:
        keys = _array_keys(message) | (_array_keys(reply) if reply is not None and not reply.has_error() else set())
        assert not [k for k in keys if k.startswith("label.")], message.metadata.message_type


def test_the_wire_refuses_a_label_field_in_ushape_mode(tmp_path):
    # Prepare: the node answering first adds its labels to its forward reply
    def with_labels(index, message, call):
        reply = call()
        if message.metadata.message_type == wire.USHAPE_FORWARD and index == 0:
            record = reply.content.array_records[wire.ACTIVATIONS]
            record["label.0"] = record["mask.0"]
        return reply

    # Execute
    summary = run_inprocess({**FAST, "run.num-rounds": 1, "run.run-dir": str(tmp_path)}, num_nodes=3, fault=with_labels)

    # Assert: that client alone was dropped, with the reason
    assert summary["status"] == "completed"
    metrics = (tmp_path / "metrics.jsonl").read_text()
    assert "carries labels" in metrics and "refused, labels must stay on the device" in metrics


def test_a_parallel_server_averages_the_heads_the_devices_trained_by_volume(tmp_path):
    """And the round's bytes up are what the three exchanges' replies carried."""
    # Prepare
    seen = []
    config = {**FAST, "run.num-rounds": 1, "run.run-dir": str(tmp_path), "strategy.server-side": "parallel"}

    # Execute
    run_inprocess(config, num_nodes=3, fault=_every_message(seen))

    # Assert: the checkpoint's head is the average of the top replies' heads, by the volume behind each
    tops = [reply for message, reply in seen if message.metadata.message_type == wire.USHAPE_TOP]
    saved = checkpoint_arrays(tmp_path)
    head_keys = [k for k in saved if wire.is_head(k)]
    assert len(tops) == 3 and head_keys
    for key in head_keys:
        expected = np.average(np.stack([arrays(r)[key] for r in tops]), axis=0, weights=[volume(r) for r in tops])
        np.testing.assert_allclose(saved[key], expected, rtol=1e-6, atol=1e-7)
        assert not np.allclose(saved[key], arrays(tops[0])[key])  # the devices' heads differ: a real average
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["bytes-up"] == sum(content_bytes(reply) for _, reply in seen)


def test_a_sequential_server_hands_each_device_the_head_the_previous_one_trained(tmp_path):
    # Prepare
    seen = []

    # Execute
    run_inprocess({**FAST, "run.num-rounds": 1, "run.run-dir": str(tmp_path)}, num_nodes=3, fault=_every_message(seen))

    # Assert: top exchanges one at a time, each sent the head the one before sent back; the last is kept
    tops = [(m, r) for m, r in seen if m.metadata.message_type == wire.USHAPE_TOP]
    assert len(tops) == 3
    for (_, earlier), (later, _) in zip(tops, tops[1:], strict=False):
        for key, value in arrays(earlier).items():
            np.testing.assert_array_equal(arrays(later)[key], value)
    saved = checkpoint_arrays(tmp_path)
    for key, value in arrays(tops[-1][1]).items():
        np.testing.assert_allclose(saved[key], value, rtol=1e-6)


def test_one_minibatch_through_ushape_equals_split_with_the_head_on_the_server():
    # Prepare: the server half and the device's head on the same minibatch of boundary activations
    job = load_config({"config": "test", "train.head-lr": 0.0})
    setup = build(job)
    server = SplitServer(setup, split_settings(job))
    state = server.initial_state()
    encoded = setup.encode(setup.pool.subset(np.arange(8)))
    ids, mask, labels = data_mod.collate(encoded, np.arange(8), setup.pad_id)
    with torch.no_grad():
        boundary = setup.client(ids, mask).numpy()
    chunks = [wire.Chunk(boundary, mask.numpy(), labels.numpy())]
    codec = wire_codec("float32")
    server_state = {k: state[k] for k in server.server_keys}

    # Execute: split (the head on the server), then U-shape (the head's gradient from the device)
    split_state, split_grads, _ = server.train_split(server_state, chunks, lr=0.02, head_lr=0.0, codec=codec)
    tops = server.top_split(server_state, chunks)
    top_grads, _ = head_steps(
        setup.server, setup.spec, setup.verbalizer_ids, encoded, [np.arange(8)], tops, 0.0, setup.pad_id, codec
    )
    ushape_state, ushape_grads = server.train_top(server_state, chunks, top_grads, lr=0.02, codec=codec)

    # Assert: the same upper prefix after the step and the same boundary gradient
    for key in server.server_keys:
        np.testing.assert_allclose(ushape_state[key], split_state[key], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ushape_grads[0], split_grads[0], rtol=1e-4, atol=1e-8)
    assert np.abs(split_grads[0]).max() > 0
    assert any(not np.array_equal(split_state[k], server_state[k]) for k in server.server_keys)
