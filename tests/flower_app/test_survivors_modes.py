"""Client-side training pieces: the top-k residual is kept between replies; the causal-LM loss by hand."""

import uuid

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from flower_app.model.split_model import SplitSpec
from flower_app.modes.sparse_upload import residual, sparse_upload
from flower_app.modes.training import EvalTally, task_loss
from strategies.wire import names as wire
from strategies.wire.records import from_record, to_record
from strategies.wire.sparsify import rebuild

IGNORE = wire.IGNORE_TARGET
PLAN = wire.TrainPlan(1, 0, 2, 4, 0.01, 0.01, "float32", 1, 0, "activations", 0, upload_topk=0.25)


def _train_message(received, server_round):
    plan = ConfigRecord({**PLAN.to_config(), "server-round": server_round})
    content = RecordDict({wire.ARRAYS: to_record(received), wire.CONFIG: plan})
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID  # as a ServerApp's
    message = Message(content, 1, wire.LOCAL, group_id=str(server_round))
    message.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # a reply needs the id of what it answers
    return message


def test_what_two_sparse_replies_sent_plus_the_residual_equals_both_updates():
    # Prepare: a handler that moves every received value by this round's update (8 values, top 2 sent)
    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 1, 8).astype(np.float32) for _ in range(2)]

    def train(msg, context):
        received = from_record(msg.content.array_records[wire.ARRAYS])
        update = updates[int(msg.metadata.group_id) - 1]
        arrays = to_record({"prefix.0": received["prefix.0"] + update})
        return Message(
            RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 8})}), reply_to=msg
        )

    handler = sparse_upload(train)
    context = Context(7, 1, {}, RecordDict(), {})
    start = {"prefix.0": np.zeros(8, np.float32)}

    # Execute: two rounds from the same global tensor
    sent = []
    for server_round in (1, 2):
        reply = handler(_train_message(start, server_round), context)
        dense, problems = rebuild(from_record(reply.content.array_records[wire.SPARSE]), start, 0.25)
        assert problems == [] and wire.ARRAYS not in reply.content.array_records
        sent.append(dense["prefix.0"])

    # Assert: error feedback loses nothing, it only delays
    unsent = residual(context).get("prefix.0", np.zeros(8, np.float32))
    assert np.allclose(sent[0] + sent[1] + unsent, updates[0] + updates[1], atol=1e-6)
    assert np.count_nonzero(unsent) == 8 - 2  # what the second reply left unsent


def _hand_cross_entropy(logits, targets):
    """Mean of -log softmax(logits[b, t])[targets[b, t]] over the scored positions, one by one."""
    losses = []
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            if targets[b, t] != IGNORE:
                row = logits[b, t].double()
                losses.append(float(torch.logsumexp(row, 0) - row[targets[b, t]]))
    return sum(losses) / len(losses)


def test_the_causal_lm_loss_is_the_cross_entropy_at_each_scored_position():
    # Prepare: (B=2, T=5, V=7) logits; position t of a row is scored on its own target (already shifted)
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    targets = torch.tensor([[IGNORE, 3, 6, 1, IGNORE], [IGNORE, IGNORE, 2, IGNORE, IGNORE]])
    spec = SplitSpec(split_layer=1, prefix_length=0, head="lm", pooling="last")
    mask = torch.ones(2, 5, dtype=torch.long)

    # Execute
    loss = task_loss(spec, logits, mask, targets, None)
    tally = EvalTally(spec, None)
    tally.add(logits, mask, targets)

    # Assert
    expected = _hand_cross_entropy(logits, targets)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert tally.metrics()[wire.LOSS] == pytest.approx(expected, rel=1e-6)
