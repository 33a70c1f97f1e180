"""ClientApp: one handler per message type; each training mode's handlers are its module of
:mod:`flower_app.modes.handlers`, registered from :data:`flower_app.modes.registry.CLIENT_HANDLERS`.

What a node holds and how a train message is read is :mod:`flower_app.modes.node`. The model
(and with it torch) is imported by the handler that needs it: a ``query`` answers from the
data cache without touching the model.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from flower_app.model.cache import cache_root
from flower_app.model.device_part import tokenizer_of
from flower_app.modes.node import data_source, node_channel, node_of, node_profile, on_worker, run_config
from flower_app.modes.registry import CLIENT_HANDLERS
from flower_app.tasks.registry import family_of
from strategies.fleet import channel
from strategies.fleet.devices import to_config
from strategies.wire import names as wire

__all__ = ["app", "data_source", "node_channel", "node_profile"]

app = ClientApp()

# Flower routes "<category>.<action>" to the function registered with @app.<category>(action).
for message_type, handler in CLIENT_HANDLERS.items():
    category, _, action = message_type.partition(".")
    getattr(app, category)(action)(handler)


@app.query()
@on_worker
def query(msg: Message, context: Context) -> Message:
    """Who this node is: its client id, where its data comes from, how much it holds, its device profile."""
    config, source, root = node_of(context)
    encoded = family_of(config).node_data(config, source, root)
    # A device with its own file and no stated profile takes a preset entry like a partition would.
    fleet_size = source.num_partitions or max(config.data.num_partitions, source.client_id + 1)
    profile = node_profile(config, context.node_config, source.client_id, fleet_size)
    process = node_channel(config, context.node_config, source.client_id, fleet_size)
    record = ConfigRecord(
        {
            wire.PARTITION_ID: source.client_id,
            wire.NUM_PARTITIONS: source.num_partitions,
            wire.NUM_AVAILABLE: len(encoded),
            **to_config(profile),
            # The mean gain above, and how it moves by round (nothing for a static channel).
            **channel.to_config(process),
        }
    )
    return Message(RecordDict({wire.PROFILE: record}), reply_to=msg)


@app.query("generate")
def generate(msg: Message, context: Context) -> Message:
    """Split generation, device side: embed the prompt or one chosen token, run the lower layers.

    Not handed to a device worker: the worker gets an empty ``context.state``, and the
    session's cache lives there between messages (see :mod:`flower_app.apps.generate_app`).
    """
    from flower_app.apps.generate_app import device_reply
    from flower_app.modes.training import torch_threads
    from flower_app.privacy.guard import boundary_clip

    config, root = run_config(frozenset(context.run_config.items())), cache_root(context.node_config)
    with torch_threads(config.run.client_threads):
        client = family_of(config).device_part(config, root).client
        tokenizer, dtype = tokenizer_of(config, root), config.train.activation_dtype
        return device_reply(msg, context, client, tokenizer, dtype, boundary_clip(config))
