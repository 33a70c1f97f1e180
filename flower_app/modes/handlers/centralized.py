"""Centralized mode on the client: upload samples or lower-layer activations once."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from flower_app.modes.node import declined, job_of, on_worker
from strategies.policy.requirements import plan_volume
from strategies.wire import names as wire
from strategies.wire.records import from_record, to_record


@on_worker
def upload(msg: Message, context: Context) -> Message:
    """Centralized mode: send samples (token ids) or lower-layer activations, once, within budget."""
    from flower_app.model.split_model import set_state
    from flower_app.modes.centralized import upload_activations, upload_samples
    from flower_app.modes.split import codec_tag
    from flower_app.modes.training import torch_threads

    job = job_of(msg, context)
    refusal = declined(msg, job)
    if refusal is not None:
        return refusal
    device, encoded = job.device, job.encoded
    rows = min(job.plan.upload_rows, plan_volume(job.requirement, len(encoded)))
    chosen = np.random.default_rng(job.plan.seed).permutation(len(encoded))[:rows]
    tag = ConfigRecord()
    if job.plan.upload_kind == wire.SAMPLES:
        uploaded = upload_samples(encoded, chosen, device.pad_id)
    else:
        set_state(device.client, from_record(msg.content.array_records[wire.ARRAYS]))
        with torch_threads(job.config.run.client_threads):
            uploaded = upload_activations(
                device.client,
                encoded,
                chosen,
                device.pad_id,
                job.plan.activation_dtype,
                guard=job.guard,
                noise_seed=job.noise_seed,
            )
        tag = codec_tag(job.plan.activation_dtype)  # the activations' wire codec: the server decodes by it
    metrics = MetricRecord({wire.NUM_EXAMPLES: len(chosen)})
    return Message(
        RecordDict({wire.UPLOAD_RECORD: to_record(uploaded), wire.METRICS: metrics, wire.CONFIG: tag}), reply_to=msg
    )


HANDLERS = {wire.UPLOAD: upload}
