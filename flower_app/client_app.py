"""ClientApp: one handler per message type; the work is in the mode modules (split_mode, local_mode,
centralized_mode)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_app.centralized_mode import upload_activations, upload_samples
from flower_app.config import Config, load_config
from flower_app.data import Encoded, batch_plan
from flower_app.local_mode import hold_back, train_local_round
from flower_app.model import get_state, set_state
from flower_app.setup import Setup, build, client_data
from flower_app.split_mode import forward_plan, replay_plan
from flower_app.training import torch_threads
from strategies import wire
from strategies.devices import PROFILE_KEYS, DeviceProfile, from_config, load_fleet_spec, sample_fleet, to_config
from strategies.records import from_record, to_record
from strategies.requirements import (
    Failure,
    TrainingRequirement,
    check_before_training,
    failure_to_config,
    plan_volume,
    requirement_from_config,
)

app = ClientApp()


@lru_cache(maxsize=8)
def _config(items: frozenset[tuple[str, Any]]) -> Config:
    return load_config(dict(items))


def _node(context: Context) -> tuple[Config, int, int]:
    """The run's config and this node's partition (simulation or ``--node-config``)."""
    config = _config(frozenset(context.run_config.items()))
    node = context.node_config
    if "partition-id" not in node:
        raise KeyError(
            "node config has no 'partition-id': start the SuperNode with "
            '--node-config "partition-id=0 num-partitions=10"'
        )
    return (
        config,
        wire.as_int(node["partition-id"]),
        wire.as_int(node.get("num-partitions", config.data.num_partitions)),
    )


@dataclass(frozen=True)
class Job:
    """One train message as this node sees it: its config, model, data, plan and requirement."""

    config: Config
    setup: Setup
    encoded: Encoded
    plan: wire.TrainPlan
    requirement: TrainingRequirement

    def minibatches(self, num_samples: int | None = None) -> list[np.ndarray]:
        """The round's minibatches, drawn from the data volume the requirement allows."""
        volume = plan_volume(self.requirement, len(self.encoded) if num_samples is None else num_samples)
        return batch_plan(volume, self.plan.steps, self.plan.batch_size, self.plan.seed)


def _job(msg: Message, context: Context) -> Job:
    config, partition_id, num_partitions = _node(context)
    cfg = msg.content.config_records[wire.CONFIG]
    return Job(
        config,
        build(config),
        client_data(config, partition_id, num_partitions),
        wire.TrainPlan.from_config(cfg),
        requirement_from_config(cfg),
    )


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


@app.query()
def query(msg: Message, context: Context) -> Message:
    config, partition_id, num_partitions = _node(context)
    encoded = client_data(config, partition_id, num_partitions)
    profile = node_profile(config, context.node_config, partition_id, num_partitions)
    record = ConfigRecord(
        {
            wire.PARTITION_ID: partition_id,
            wire.NUM_PARTITIONS: num_partitions,
            wire.NUM_AVAILABLE: len(encoded),
            **to_config(profile),
        }
    )
    return Message(RecordDict({wire.PROFILE: record}), reply_to=msg)


@app.train("split_forward")
def split_forward(msg: Message, context: Context) -> Message:
    """Split mode, first exchange: the boundary activations of every planned minibatch."""
    job = _job(msg, context)
    declined = _declined(msg, job)
    if declined is not None:
        return declined
    setup, encoded = job.setup, job.encoded
    set_state(setup.client, from_record(msg.content.array_records[wire.ARRAYS]))
    plan, dtype = job.minibatches(), job.plan.activation_dtype
    with torch_threads(job.config.run.client_threads):
        tick = time.perf_counter()
        first = forward_plan(setup.client, encoded, plan[:1], setup.pad_id, dtype)
        # A split step costs about a forward now and a forward plus backward at replay.
        failure = check_before_training(job.requirement, len(encoded), 3 * (time.perf_counter() - tick), len(plan))
        if failure is not None:
            return _failure(msg, failure)
        activations = {**first, **forward_plan(setup.client, encoded, plan[1:], setup.pad_id, dtype, first_index=1)}
    metrics = MetricRecord({wire.NUM_EXAMPLES: len(np.unique(np.concatenate(plan)))})
    return Message(RecordDict({wire.ACTIVATIONS: to_record(activations), wire.METRICS: metrics}), reply_to=msg)


def _failure(msg: Message, failure: Failure) -> Message:
    """A reply that says why the client did not train (not an error: the server re-plans)."""
    config = ConfigRecord({k: v for k, v in failure_to_config(failure).items()})
    return Message(RecordDict({wire.CONFIG: config, wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 0})}), reply_to=msg)


@app.train("split_backward")
def split_backward(msg: Message, context: Context) -> Message:
    """Split mode, second exchange: replay the forwards, apply the server's gradients in order."""
    job = _job(msg, context)
    setup = job.setup
    set_state(setup.client, from_record(msg.content.array_records[wire.ARRAYS]))
    plan = job.minibatches()
    grads = from_record(msg.content.array_records[wire.GRADIENTS])
    with torch_threads(job.config.run.client_threads):
        done = replay_plan(
            setup.client,
            job.encoded,
            plan,
            [grads[wire.gradient_key(i)] for i in range(len(plan))],
            job.plan.lr,
            setup.pad_id,
            max_s=job.requirement.max_train_s,
        )
    # The volume behind the update is what was replayed before the time limit.
    metrics = MetricRecord({wire.NUM_EXAMPLES: len(np.unique(np.concatenate(plan[:done]))), wire.STEPS_DONE: done})
    return Message(RecordDict({wire.ARRAYS: to_record(get_state(setup.client)), wire.METRICS: metrics}), reply_to=msg)


@app.train("local")
def local(msg: Message, context: Context) -> Message:
    """Local mode: train the lower prefix through an emulator of the upper layers, send the prefix."""
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
            job.setup,
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
def upload(msg: Message, context: Context) -> Message:
    """Centralized mode: send samples (token ids) or lower-layer activations, once, within budget."""
    job = _job(msg, context)
    declined = _declined(msg, job)
    if declined is not None:
        return declined
    setup, encoded = job.setup, job.encoded
    rows = min(job.plan.upload_rows, plan_volume(job.requirement, len(encoded)))
    chosen = np.random.default_rng(job.plan.seed).permutation(len(encoded))[:rows]
    if job.plan.upload_kind == wire.SAMPLES:
        uploaded = upload_samples(encoded, chosen, setup.pad_id)
    else:
        set_state(setup.client, from_record(msg.content.array_records[wire.ARRAYS]))
        with torch_threads(job.config.run.client_threads):
            uploaded = upload_activations(setup.client, encoded, chosen, setup.pad_id, job.plan.activation_dtype)
    metrics = MetricRecord({wire.NUM_EXAMPLES: len(chosen)})
    return Message(RecordDict({wire.UPLOAD_RECORD: to_record(uploaded), wire.METRICS: metrics}), reply_to=msg)
