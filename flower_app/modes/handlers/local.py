"""Local mode on the client: train the lower prefix through an emulator, send it back."""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict

from flower_app.modes.node import declined, failure_reply, job_of, on_worker
from flower_app.modes.sparse_upload import sparse_upload
from strategies.wire import names as wire
from strategies.wire.records import from_record, to_record


@sparse_upload
@on_worker
def train(msg: Message, context: Context) -> Message:
    """Local mode: train the lower prefix through an emulator of the upper layers, send the prefix."""
    from flower_app.modes.local import hold_back, train_local_round
    from flower_app.modes.training import torch_threads

    job = job_of(msg, context)
    refusal = declined(msg, job)
    if refusal is not None:
        return refusal
    # The threshold check needs samples the client did not train on: hold some back.
    held_back = job.plan.local_eval_size if job.requirement.threshold_value is not None else 0
    train_idx, eval_idx = hold_back(len(job.encoded), held_back, job.plan.seed)
    plan = [train_idx[b] for b in job.minibatches(len(train_idx))]
    with torch_threads(job.config.run.client_threads):
        result = train_local_round(
            job.device,
            from_record(msg.content.array_records[wire.ARRAYS]),
            job.plan.emulator_layers,
            job.encoded,
            plan,
            eval_idx,
            job.plan.lr,
            job.plan.head_lr,
            job.requirement,
            job.guard,
        )
    if result.failure is not None:
        return failure_reply(msg, result.failure)
    metrics = MetricRecord(
        {
            wire.NUM_EXAMPLES: len(np.unique(np.concatenate(plan[: result.steps]))),
            wire.STEPS_DONE: result.steps,
            wire.TRAIN_LOSS: result.loss,
            **{wire.LOCAL_PREFIX + k: v for k, v in result.evaluation.items()},
        }
    )
    return Message(RecordDict({wire.ARRAYS: to_record(result.arrays), wire.METRICS: metrics}), reply_to=msg)


HANDLERS = {wire.LOCAL: train}
