"""Split mode on the client: the boundary activations up, then the replay with the server's gradients."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict

from flower_app.modes.node import declined, failure_reply, job_of, on_worker
from flower_app.modes.sparse_upload import sparse_upload
from strategies.policy.requirements import check_before_training
from strategies.wire import names as wire
from strategies.wire.codecs.registry import tagged_codec
from strategies.wire.records import from_record, to_record


@on_worker
def forward(msg: Message, context: Context) -> Message:
    """Split mode, first exchange: the boundary activations of every planned minibatch."""
    return boundary_reply(msg, context, labels=True)


def boundary_reply(msg: Message, context: Context, *, labels: bool) -> Message:
    """The boundary activations of every planned minibatch, with their labels or (U-shape) without."""
    from flower_app.model.split_model import set_state
    from flower_app.modes.split import codec_tag, forward_plan
    from flower_app.modes.training import torch_threads

    job = job_of(msg, context)
    refusal = declined(msg, job)
    if refusal is not None:
        return refusal
    device, encoded = job.device, job.encoded
    set_state(device.client, from_record(msg.content.array_records[wire.ARRAYS]))
    plan, dtype = job.minibatches(), job.plan.activation_dtype
    guard, seed = job.guard, job.noise_seed  # clipped and noised as privacy.* says
    with torch_threads(job.config.run.client_threads):
        tick = time.perf_counter()
        first = forward_plan(
            device.client, encoded, plan[:1], device.pad_id, dtype, labels=labels, guard=guard, noise_seed=seed
        )
        # A split step costs about a forward now and a forward plus backward at replay.
        failure = check_before_training(job.requirement, len(encoded), 3 * (time.perf_counter() - tick), len(plan))
        if failure is not None:
            return failure_reply(msg, failure)
        rest = forward_plan(
            device.client,
            encoded,
            plan[1:],
            device.pad_id,
            dtype,
            first_index=1,
            labels=labels,
            guard=guard,
            noise_seed=seed,
        )
        activations = {**first, **rest}
    metrics = MetricRecord({wire.NUM_EXAMPLES: len(np.unique(np.concatenate(plan)))})
    tag = codec_tag(dtype)  # the activations' wire codec: the server decodes by it
    return Message(
        RecordDict({wire.ACTIVATIONS: to_record(activations), wire.METRICS: metrics, wire.CONFIG: tag}), reply_to=msg
    )


@sparse_upload
@on_worker
def backward(msg: Message, context: Context) -> Message:
    """Split mode, second exchange: replay the forwards, apply the server's gradients in order."""
    return replay_reply(msg, context)


def replay_reply(msg: Message, context: Context) -> Message:
    """Replay the forwards, apply the server's boundary gradients in order; the trained lower prefix."""
    from flower_app.model.split_model import get_state, set_state
    from flower_app.modes.split import replay_plan
    from flower_app.modes.training import torch_threads

    job = job_of(msg, context)
    device = job.device
    set_state(device.client, from_record(msg.content.array_records[wire.ARRAYS]))
    plan = job.minibatches()
    grads = from_record(msg.content.array_records[wire.GRADIENTS])
    codec = tagged_codec(msg.content.config_records[wire.CONFIG], wire.CODEC, job.plan.activation_dtype)
    with torch_threads(job.config.run.client_threads):
        done = replay_plan(
            device.client,
            job.encoded,
            plan,
            [grads[wire.gradient_key(i)] for i in range(len(plan))],
            job.plan.lr * job.plan.replay_lr_scale,
            device.pad_id,
            max_s=job.requirement.max_train_s,
            codec=codec,
            guard=job.guard,
        )
    # The volume behind the update is what was replayed before the time limit.
    metrics = MetricRecord({wire.NUM_EXAMPLES: len(np.unique(np.concatenate(plan[:done]))), wire.STEPS_DONE: done})
    return Message(RecordDict({wire.ARRAYS: to_record(get_state(device.client)), wire.METRICS: metrics}), reply_to=msg)


HANDLERS = {wire.SPLIT_FORWARD: forward, wire.SPLIT_BACKWARD: backward}
