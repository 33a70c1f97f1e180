"""U-shape mode on the client: activations up without labels, the head on the server's features, the replay."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from flower_app.modes.handlers.split import boundary_reply, replay_reply
from flower_app.modes.node import job_of, on_worker
from flower_app.modes.sparse_upload import sparse_upload
from strategies.wire import names as wire
from strategies.wire.codecs.registry import tagged_codec
from strategies.wire.records import from_record, to_record


@on_worker
def forward(msg: Message, context: Context) -> Message:
    """First exchange: the boundary activations of every planned minibatch, and no label."""
    return boundary_reply(msg, context, labels=False)


@on_worker
def top(msg: Message, context: Context) -> Message:
    """Second exchange: the head on the server's features; their loss gradients and the trained head."""
    from flower_app.modes.training import torch_threads
    from flower_app.modes.ushape import head_state, head_steps, set_head

    job = job_of(msg, context)
    device = job.device
    set_head(device.upper, from_record(msg.content.array_records[wire.ARRAYS]))
    plan = job.minibatches()
    tops = from_record(msg.content.array_records[wire.TOP])
    codec = tagged_codec(msg.content.config_records[wire.CONFIG], wire.CODEC, job.plan.activation_dtype)
    with torch_threads(job.config.run.client_threads):
        grads, loss = head_steps(
            device.upper,
            device.spec,
            device.verbalizer_ids,
            job.encoded,
            plan,
            [tops[wire.activation_key(i)] for i in range(len(plan))],
            job.plan.head_lr,
            device.pad_id,
            codec,
        )
    metrics = MetricRecord({wire.NUM_EXAMPLES: len(np.unique(np.concatenate(plan))), wire.TRAIN_LOSS: loss})
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        wire.ARRAYS: to_record(head_state(device.upper)),
        wire.GRADIENTS: to_record({wire.gradient_key(i): g for i, g in enumerate(grads)}),
        wire.METRICS: metrics,
        wire.CONFIG: ConfigRecord({wire.CODEC: codec.name}),
    }
    return Message(RecordDict(records), reply_to=msg)


@sparse_upload
@on_worker
def backward(msg: Message, context: Context) -> Message:
    """Third exchange: split's replay with the server's boundary gradients; the trained lower prefix."""
    return replay_reply(msg, context)


HANDLERS = {wire.USHAPE_FORWARD: forward, wire.USHAPE_TOP: top, wire.USHAPE_BACKWARD: backward}
