"""Helpers for tests that spy on the wire of an in-process run (fault hook, replies, averages)."""

import numpy as np

from flower_app.config.load import load_config
from flower_app.config.strategy_settings import split_settings
from flower_app.data.setup import build
from flower_app.modes.server_model import SplitServer
from strategies.wire import names as wire
from strategies.wire.codecs.registry import wire_codec
from strategies.wire.records import from_record


def spy(replies, fault=None):
    """A fault hook that keeps every good train reply as ``(round, index, message type, reply)``.

    ``fault`` (optional) is another hook that decides the delivery; the spy sees what it returns.
    """

    def hook(index, message, call):
        reply = fault(index, message, call) if fault else call()
        if message.metadata.message_type.startswith("train.") and reply is not None and not reply.has_error():
            replies.append((int(message.metadata.group_id), index, message.metadata.message_type, reply))
        return reply

    return hook


def arrays(message, record=wire.ARRAYS):
    return from_record(message.content.array_records[record])


def volume(reply):
    return int(reply.content.metric_records[wire.METRICS][wire.NUM_EXAMPLES])


def weighted_average(replies, key):
    """``key`` averaged over the replies, weighted by the volume each reported (worked out with np.average)."""
    return np.average(np.stack([arrays(r)[key] for r in replies]), axis=0, weights=[volume(r) for r in replies])


def sequential_server_half(run_config, forward_replies):
    """The server's tensors after stepping through split clients' activations in the order given."""
    config = load_config(run_config)
    server = SplitServer(build(config), split_settings(config))
    state = {k: v for k, v in server.initial_state().items() if k in server.server_keys}
    for reply in forward_replies:
        batches, problems = wire.decode_chunks(arrays(reply, wire.ACTIVATIONS), wire.ACTIVATIONS_KIND)
        assert problems == [], problems
        state, _, _ = server.train_split(state, batches, codec=wire_codec("float32"))
    return state


def checkpoint_arrays(run_dir):
    with np.load(run_dir / "checkpoint.npz") as saved:
        return {k: saved[k] for k in saved.files}
