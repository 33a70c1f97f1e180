"""Top-k uploads on the client: a reply's trained tensors sent as their largest changes.

:func:`sparse_upload` wraps the ``split_backward`` and ``local`` handlers. When the
train message's plan asks for ``upload-topk`` below 1, it replaces the reply's
``arrays`` record by the ``sparse`` one of :func:`strategies.wire.sparsify.sparsify`: per
tensor, the top entries of (trained - received + residual). The residual stays in this
node's ``context.state``, which persists across rounds. It wraps the handler from
outside the device worker (the worker sees an empty ``context.state``, so it replies
dense and the ClientApp process that asked it sparsifies), and the residual belongs
to one run and one set of tensor shapes: another run, or a tensor of another shape,
starts from zero.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from flower_app.deploy.handoff import IN_WORKER_KEY
from strategies.wire import names as wire
from strategies.wire.records import from_record, to_record
from strategies.wire.sparsify import sparsify

Handler = Callable[[Message, Context], Message]
RESIDUAL = "upload.residual"  # context.state: each tensor's unsent part (ArrayRecord)
RESIDUAL_RUN = "upload.residual-run"  # context.state: the run it belongs to (ConfigRecord)
RUN_ID = "run-id"


def sparse_upload(handler: Handler) -> Handler:
    """``handler``'s reply with its tensors sparsified when the plan's ``upload-topk`` is below 1."""

    @functools.wraps(handler)
    def run(msg: Message, context: Context) -> Message:
        reply = handler(msg, context)
        if context.node_config.get(IN_WORKER_KEY):
            return reply
        fraction = wire.TrainPlan.from_config(msg.content.config_records[wire.CONFIG]).upload_topk
        if fraction >= 1.0 or reply.has_error() or wire.ARRAYS not in reply.content.array_records:
            return reply  # dense, or a failure reply that carries no tensors
        return sparse_reply(msg, reply, context, fraction)

    return run


def sparse_reply(msg: Message, reply: Message, context: Context, fraction: float) -> Message:
    """The reply with ``arrays`` replaced by their top-k entries; the residual kept in ``context.state``."""
    trained = from_record(reply.content.array_records[wire.ARRAYS])
    received = from_record(msg.content.array_records[wire.ARRAYS])
    sent, kept = sparsify(trained, received, residual(context), fraction)
    context.state[RESIDUAL] = to_record(kept)
    context.state[RESIDUAL_RUN] = ConfigRecord({RUN_ID: context.run_id})
    records = {name: record for name, record in reply.content.items() if name != wire.ARRAYS}
    return Message(RecordDict({wire.SPARSE: to_record(sent), **records}), reply_to=msg)


def residual(context: Context) -> dict[str, np.ndarray]:
    """This node's residual of the current run (empty when it has none yet)."""
    run = context.state.config_records.get(RESIDUAL_RUN)
    if run is None or run.get(RUN_ID) != context.run_id or RESIDUAL not in context.state.array_records:
        return {}
    return from_record(context.state.array_records[RESIDUAL])
