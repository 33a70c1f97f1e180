"""ClientApp: one handler per message type; the work is in flower_app.task."""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_app import task
from flower_app.config import Config, load_config
from flower_app.data import batch_plan
from flower_app.model import get_state, set_state
from strategies import wire
from strategies.records import from_record, to_record
from strategies.requirements import check_before_training, failure_to_config, plan_volume, requirement_from_config

app = ClientApp()


@lru_cache(maxsize=8)
def _config(items: frozenset) -> Config:
    return load_config(dict(items))


def _node(context: Context) -> tuple[Config, int, int]:
    """The run's config and this node's partition (simulation or ``--node-config``)."""
    config = _config(frozenset(context.run_config.items()))
    node = context.node_config
    if "partition-id" not in node:
        raise KeyError("node config has no 'partition-id': start the SuperNode with "
                       "--node-config \"partition-id=0 num-partitions=10\"")
    return config, int(node["partition-id"]), int(node.get("num-partitions", config.data.num_partitions))


def _plan(msg: Message, num_samples: int) -> list[np.ndarray]:
    """The round's minibatches, drawn from the data volume the requirement allows."""
    cfg = msg.content.config_records[wire.CONFIG]
    volume = plan_volume(requirement_from_config(cfg), num_samples)
    return batch_plan(volume, int(cfg[wire.STEPS]), int(cfg[wire.BATCH_SIZE]), int(cfg[wire.SEED]))


@app.query()
def query(msg: Message, context: Context) -> Message:
    config, partition_id, num_partitions = _node(context)
    encoded = task.client_data(config, partition_id, num_partitions)
    profile = ConfigRecord({wire.PARTITION_ID: partition_id, wire.NUM_PARTITIONS: num_partitions,
                            wire.NUM_AVAILABLE: len(encoded)})
    return Message(RecordDict({wire.PROFILE: profile}), reply_to=msg)


@app.train("split_forward")
def split_forward(msg: Message, context: Context) -> Message:
    config, partition_id, num_partitions = _node(context)
    setup, encoded = task.build(config), task.client_data(config, partition_id, num_partitions)
    set_state(setup.client, from_record(msg.content.array_records[wire.ARRAYS]))
    cfg = msg.content.config_records[wire.CONFIG]
    requirement = requirement_from_config(cfg)
    if len(encoded) < requirement.min_samples:
        return _failure(msg, check_before_training(requirement, len(encoded), 0.0, 0))
    plan, dtype = _plan(msg, len(encoded)), str(cfg[wire.ACTIVATION_DTYPE])
    with task.torch_threads(config.run.client_threads):
        tick = time.perf_counter()
        first = task.forward_plan(setup.client, encoded, plan[:1], setup.pad_id, dtype)
        # A split step costs about a forward now and a forward plus backward at replay.
        failure = check_before_training(requirement, len(encoded), 3 * (time.perf_counter() - tick), len(plan))
        if failure is not None:
            return _failure(msg, failure)
        activations = {**first, **task.forward_plan(setup.client, encoded, plan[1:], setup.pad_id, dtype,
                                                    first_index=1)}
    metrics = MetricRecord({wire.NUM_EXAMPLES: len(np.unique(np.concatenate(plan)))})
    return Message(RecordDict({wire.ACTIVATIONS: to_record(activations), wire.METRICS: metrics}), reply_to=msg)


def _failure(msg: Message, failure) -> Message:
    """A reply that says why the client did not train (not an error: the server re-plans)."""
    return Message(RecordDict({wire.CONFIG: ConfigRecord(failure_to_config(failure)),
                               wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 0})}), reply_to=msg)


@app.train("split_backward")
def split_backward(msg: Message, context: Context) -> Message:
    config, partition_id, num_partitions = _node(context)
    setup, encoded = task.build(config), task.client_data(config, partition_id, num_partitions)
    set_state(setup.client, from_record(msg.content.array_records[wire.ARRAYS]))
    plan = _plan(msg, len(encoded))
    grads = from_record(msg.content.array_records[wire.GRADIENTS])
    lr = float(msg.content.config_records[wire.CONFIG][wire.LR])
    with task.torch_threads(config.run.client_threads):
        task.replay_plan(setup.client, encoded, plan, [grads[wire.gradient_key(i)] for i in range(len(plan))],
                         lr, setup.pad_id)
    metrics = MetricRecord({wire.NUM_EXAMPLES: len(np.unique(np.concatenate(plan)))})
    return Message(RecordDict({wire.ARRAYS: to_record(get_state(setup.client)), wire.METRICS: metrics}),
                   reply_to=msg)
