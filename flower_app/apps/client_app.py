"""ClientApp: one handler per message type; the work is in the mode modules (split_mode, local_mode,
centralized_mode).

What a node holds comes from its task family (:mod:`flower_app.tasks.registry`): its part of
the model and its encoded samples, kept on its disk (:mod:`flower_app.model.device_part`),
because a deployed SuperNode runs every message in a fresh process. The mode modules (and
with them torch) are imported by the handler that needs them: a ``query`` answers from the
data cache without touching the model.

A node's ``--node-config``: ``partition-id`` (and ``num-partitions``) for a node that
holds a partition of the run's dataset (simulation), or ``device-id`` and
``data-path`` for a device with its own CSV/JSONL file (columns and classes from the
run config); optionally ``cache-dir``, the device profile keys and the channel keys
(``channel-shadowing-db``, ``channel-shadowing-correlation``, ``channel-fading``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_app.config.load import load_config
from flower_app.config.schema import Config
from flower_app.data.device_cache import DataSource
from flower_app.data.files import Encoded, batch_plan
from flower_app.deploy.handoff import ask
from flower_app.model.cache import cache_root
from flower_app.model.device_part import DevicePart, tokenizer_of
from flower_app.modes.sparse_upload import sparse_upload
from flower_app.tasks.registry import family_of
from strategies.fleet import channel
from strategies.fleet.channel import ChannelProcess
from strategies.fleet.devices import (
    PROFILE_KEYS,
    DeviceProfile,
    from_config,
    load_fleet_spec,
    sample_channels,
    sample_fleet,
    to_config,
)
from strategies.policy.requirements import (
    Failure,
    TrainingRequirement,
    check_before_training,
    failure_to_config,
    plan_volume,
    requirement_from_config,
)
from strategies.wire import names as wire
from strategies.wire.codecs.registry import tagged_codec
from strategies.wire.records import from_record, to_record

app = ClientApp()

Handler = Callable[[Message, Context], Message]


def on_worker(handler: Handler) -> Handler:
    """Hand the message to the device worker named in the node config, if one answers.

    See :mod:`flower_app.deploy.device_worker`: a long-lived process that keeps the model in
    memory, so this process never imports torch. Without a worker (or when it cannot be
    reached) the handler runs here.
    """

    @functools.wraps(handler)
    def run(msg: Message, context: Context) -> Message:
        socket = context.node_config.get("device-worker")
        if socket:
            content = ask(str(socket), msg, context)
            if content is not None:
                return Message(content, reply_to=msg)
        return handler(msg, context)

    return run


@lru_cache(maxsize=8)
def _config(items: frozenset[tuple[str, Any]]) -> Config:
    return load_config(dict(items))


def data_source(config: Config, node: Mapping[str, Any]) -> DataSource:
    """Where this node's samples come from, and its stable client id, from its node config."""
    data_path = str(node.get("data-path", "") or "")
    if data_path:
        if "device-id" not in node and "partition-id" not in node:
            raise ValueError(
                'node config has data-path but no device-id: start the SuperNode with --node-config "device-id=3 '
                'data-path=..."'
            )
        client_id = _node_int(node, "device-id" if "device-id" in node else "partition-id")
        if client_id < 0:
            raise ValueError(f"device-id {client_id} must be >= 0")
        return DataSource(client_id, 0, data_path)
    if "device-id" in node:
        raise ValueError(
            "node config has device-id but no data-path: a device with its own data names its file (data-path=...)"
        )
    if "partition-id" not in node:
        raise ValueError(
            "node config has neither 'data-path' nor 'partition-id': start the SuperNode with "
            '--node-config "device-id=0 data-path=/path/to/data.csv" (own data) or '
            '"partition-id=0 num-partitions=10" (a partition of the run\'s dataset)'
        )
    partition_id = _node_int(node, "partition-id")
    num_partitions = _node_int({"num-partitions": config.data.num_partitions, **node}, "num-partitions")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside [0, num-partitions={num_partitions})")
    return DataSource(partition_id, num_partitions)


def _node_int(node: Mapping[str, Any], key: str) -> int:
    """An integer node-config value (``--node-config`` gives ints, or strings when quoted)."""
    value = node[key]
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    try:
        return wire.as_int(value)
    except (TypeError, ValueError):
        raise ValueError(f"node config {key}={value!r} is not an integer") from None


def _node(context: Context) -> tuple[Config, DataSource, Path]:
    """The run's config, where this node's samples come from, and its cache folder."""
    config = _config(frozenset(context.run_config.items()))
    return config, data_source(config, context.node_config), cache_root(context.node_config)


@dataclass(frozen=True)
class Job:
    """One train message as this node sees it: its config, model part, data, plan and requirement."""

    config: Config
    device: DevicePart
    encoded: Encoded
    plan: wire.TrainPlan
    requirement: TrainingRequirement

    def minibatches(self, num_samples: int | None = None) -> list[np.ndarray]:
        """The round's minibatches, drawn from the data volume the requirement allows."""
        volume = plan_volume(self.requirement, len(self.encoded) if num_samples is None else num_samples)
        return batch_plan(volume, self.plan.steps, self.plan.batch_size, self.plan.seed)


def _job(msg: Message, context: Context) -> Job:
    config, source, root = _node(context)
    family, cfg = family_of(config), msg.content.config_records[wire.CONFIG]
    job = Job(
        config,
        family.device_part(config, root),
        family.node_data(config, source, root),
        wire.TrainPlan.from_config(cfg),
        requirement_from_config(cfg),
    )
    fleet_size = source.num_partitions or max(config.data.num_partitions, source.client_id + 1)
    profile = node_profile(config, context.node_config, source.client_id, fleet_size)
    family.prepare_device(config, job.device, profile, job.plan.seed)
    return job


def _declined(msg: Message, job: Job) -> Message | None:
    """The ``insufficient-samples`` reply to send instead of training, if the data falls short."""
    if len(job.encoded) >= job.requirement.min_samples:
        return None
    failure = check_before_training(job.requirement, len(job.encoded), 0.0, 0)
    return _failure(msg, failure) if failure is not None else None


@lru_cache(maxsize=8)
def _fleet(preset: str, num_clients: int, seed: int) -> tuple[DeviceProfile, ...]:
    return tuple(sample_fleet(load_fleet_spec(preset), num_clients, seed))


def node_profile(
    config: Config, node_config: Mapping[str, Any], partition_id: int, num_partitions: int
) -> DeviceProfile:
    """This device's profile: from ``--node-config`` when given there, else drawn from the fleet preset.

    A deployed SuperNode states its own resources (``PROFILE_KEYS``, e.g.
    ``cpu-hz-max=1.5e9``); a simulated one takes entry ``partition-id`` of a
    fleet of ``num-partitions`` drawn with the run's seed, the same on every machine.
    """
    given = {k: v for k, v in node_config.items() if k in PROFILE_KEYS}
    if given:
        return from_config(given)
    return _fleet(config.fleet.preset, num_partitions, config.run.seed)[partition_id]


@lru_cache(maxsize=8)
def _channels(preset: str, num_clients: int, seed: int) -> tuple[ChannelProcess, ...]:
    return tuple(sample_channels(load_fleet_spec(preset), num_clients, seed))


def node_channel(
    config: Config, node_config: Mapping[str, Any], partition_id: int, num_partitions: int
) -> ChannelProcess:
    """How this device's channel gain changes by round (:mod:`strategies.fleet.channel`).

    A deployed SuperNode may state it (``channel-shadowing-db=8 channel-fading=rayleigh``);
    one that states its profile but no channel keeps a static channel; a simulated one takes
    its entry of the fleet preset, like its profile.
    """
    if any(k in node_config for k in channel.CONFIG_KEYS.values()):
        return channel.from_config(node_config)
    if any(k in node_config for k in PROFILE_KEYS):
        return channel.STATIC
    return _channels(config.fleet.preset, num_partitions, config.run.seed)[partition_id]


@app.query()
@on_worker
def query(msg: Message, context: Context) -> Message:
    """Who this node is: its client id, where its data comes from, how much it holds, its device profile."""
    config, source, root = _node(context)
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


@app.train("split_forward")
@on_worker
def split_forward(msg: Message, context: Context) -> Message:
    """Split mode, first exchange: the boundary activations of every planned minibatch."""
    from flower_app.model.split_model import set_state
    from flower_app.modes.split import codec_tag, forward_plan
    from flower_app.modes.training import torch_threads

    job = _job(msg, context)
    declined = _declined(msg, job)
    if declined is not None:
        return declined
    device, encoded = job.device, job.encoded
    set_state(device.client, from_record(msg.content.array_records[wire.ARRAYS]))
    plan, dtype = job.minibatches(), job.plan.activation_dtype
    with torch_threads(job.config.run.client_threads):
        tick = time.perf_counter()
        first = forward_plan(device.client, encoded, plan[:1], device.pad_id, dtype)
        # A split step costs about a forward now and a forward plus backward at replay.
        failure = check_before_training(job.requirement, len(encoded), 3 * (time.perf_counter() - tick), len(plan))
        if failure is not None:
            return _failure(msg, failure)
        activations = {**first, **forward_plan(device.client, encoded, plan[1:], device.pad_id, dtype, first_index=1)}
    metrics = MetricRecord({wire.NUM_EXAMPLES: len(np.unique(np.concatenate(plan)))})
    tag = codec_tag(dtype)  # the activations' wire codec: the server decodes by it
    return Message(
        RecordDict({wire.ACTIVATIONS: to_record(activations), wire.METRICS: metrics, wire.CONFIG: tag}), reply_to=msg
    )


def _failure(msg: Message, failure: Failure) -> Message:
    """A reply that says why the client did not train (not an error: the server re-plans)."""
    config = ConfigRecord({k: v for k, v in failure_to_config(failure).items()})
    return Message(RecordDict({wire.CONFIG: config, wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 0})}), reply_to=msg)


@app.train("split_backward")
@sparse_upload
@on_worker
def split_backward(msg: Message, context: Context) -> Message:
    """Split mode, second exchange: replay the forwards, apply the server's gradients in order."""
    from flower_app.model.split_model import get_state, set_state
    from flower_app.modes.split import replay_plan
    from flower_app.modes.training import torch_threads

    job = _job(msg, context)
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
        )
    # The volume behind the update is what was replayed before the time limit.
    metrics = MetricRecord({wire.NUM_EXAMPLES: len(np.unique(np.concatenate(plan[:done]))), wire.STEPS_DONE: done})
    return Message(RecordDict({wire.ARRAYS: to_record(get_state(device.client)), wire.METRICS: metrics}), reply_to=msg)


@app.train("local")
@sparse_upload
@on_worker
def local(msg: Message, context: Context) -> Message:
    """Local mode: train the lower prefix through an emulator of the upper layers, send the prefix."""
    from flower_app.modes.local import hold_back, train_local_round
    from flower_app.modes.training import torch_threads

    job = _job(msg, context)
    declined = _declined(msg, job)
    if declined is not None:
        return declined
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
        )
    if result.failure is not None:
        return _failure(msg, result.failure)
    metrics = MetricRecord(
        {
            wire.NUM_EXAMPLES: len(np.unique(np.concatenate(plan[: result.steps]))),
            wire.STEPS_DONE: result.steps,
            wire.TRAIN_LOSS: result.loss,
            **{wire.LOCAL_PREFIX + k: v for k, v in result.evaluation.items()},
        }
    )
    return Message(RecordDict({wire.ARRAYS: to_record(result.arrays), wire.METRICS: metrics}), reply_to=msg)


@app.train("upload")
@on_worker
def upload(msg: Message, context: Context) -> Message:
    """Centralized mode: send samples (token ids) or lower-layer activations, once, within budget."""
    from flower_app.model.split_model import set_state
    from flower_app.modes.centralized import upload_activations, upload_samples
    from flower_app.modes.split import codec_tag
    from flower_app.modes.training import torch_threads

    job = _job(msg, context)
    declined = _declined(msg, job)
    if declined is not None:
        return declined
    device, encoded = job.device, job.encoded
    rows = min(job.plan.upload_rows, plan_volume(job.requirement, len(encoded)))
    chosen = np.random.default_rng(job.plan.seed).permutation(len(encoded))[:rows]
    tag = ConfigRecord()
    if job.plan.upload_kind == wire.SAMPLES:
        uploaded = upload_samples(encoded, chosen, device.pad_id)
    else:
        set_state(device.client, from_record(msg.content.array_records[wire.ARRAYS]))
        with torch_threads(job.config.run.client_threads):
            uploaded = upload_activations(device.client, encoded, chosen, device.pad_id, job.plan.activation_dtype)
        tag = codec_tag(job.plan.activation_dtype)  # the activations' wire codec: the server decodes by it
    metrics = MetricRecord({wire.NUM_EXAMPLES: len(chosen)})
    return Message(
        RecordDict({wire.UPLOAD_RECORD: to_record(uploaded), wire.METRICS: metrics, wire.CONFIG: tag}), reply_to=msg
    )


@app.query("generate")
def generate(msg: Message, context: Context) -> Message:
    """Split generation, device side: embed the prompt or one chosen token, run the lower layers.

    Not handed to a device worker: the worker gets an empty ``context.state``, and the
    session's cache lives there between messages (see :mod:`flower_app.apps.generate_app`).
    """
    from flower_app.apps.generate_app import device_reply
    from flower_app.modes.training import torch_threads

    config, root = _config(frozenset(context.run_config.items())), cache_root(context.node_config)
    with torch_threads(config.run.client_threads):
        client = family_of(config).device_part(config, root).client
        return device_reply(msg, context, client, tokenizer_of(config, root), config.train.activation_dtype)
