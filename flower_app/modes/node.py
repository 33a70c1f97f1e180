"""What a node holds and what a train message asks of it: the ground every mode's client handler stands on.

What a node holds comes from its task family (:mod:`flower_app.tasks.registry`): its part of
the model and its encoded samples, kept on its disk (:mod:`flower_app.model.device_part`),
because a deployed SuperNode runs every message in a fresh process. Nothing here imports
torch: a ``query`` answers from the data cache without touching the model.

A node's ``--node-config``: ``partition-id`` (and ``num-partitions``) for a node that
holds a partition of the run's dataset (simulation), or ``device-id`` and
``data-path`` for a device with its own CSV/JSONL file (columns and classes from the
run config); optionally ``cache-dir``, the device profile keys, the channel keys
(``channel-shadowing-db``, ``channel-shadowing-correlation``, ``channel-fading``) and
``noise-secret``, a non-negative integer only the device knows, mixed into the seed of its
activation noise (:attr:`Job.noise_seed`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from flower_app.config.load import load_config
from flower_app.config.schema import Config
from flower_app.data.device_cache import DataSource
from flower_app.data.files import Encoded, batch_plan
from flower_app.deploy.handoff import ask
from flower_app.model.cache import cache_root
from flower_app.model.device_part import DevicePart
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

if TYPE_CHECKING:
    from flower_app.privacy.defences import ActivationGuard

Handler = Callable[[Message, Context], Message]
NOISE_SECRET = "noise-secret"  # node config key (see the module docstring)


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
            # The worker gets as long as the server waits for this exchange's replies.
            timeout_s = float(context.run_config.get("strategy.timeout-s", 600.0))
            content = ask(str(socket), msg, context, timeout_s=timeout_s)
            if content is not None:
                return Message(content, reply_to=msg)
        return handler(msg, context)

    return run


@lru_cache(maxsize=8)
def run_config(items: frozenset[tuple[str, Any]]) -> Config:
    """The run's config from its run-config items (cached: every message of a run carries the same)."""
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


def node_of(context: Context) -> tuple[Config, DataSource, Path]:
    """The run's config, where this node's samples come from, and its cache folder."""
    config = run_config(frozenset(context.run_config.items()))
    return config, data_source(config, context.node_config), cache_root(context.node_config)


@dataclass(frozen=True)
class Job:
    """One train message as this node sees it: its config, model part, data, plan and requirement.

    ``noise_secret``: the node's ``noise-secret`` (0: none), see :attr:`noise_seed`.
    """

    config: Config
    device: DevicePart
    encoded: Encoded
    plan: wire.TrainPlan
    requirement: TrainingRequirement
    noise_secret: int = 0

    @property
    def guard(self) -> ActivationGuard:
        """What the device does to its boundary activations (:mod:`flower_app.privacy.guard`)."""
        from flower_app.privacy.guard import activation_guard  # torch: only when a model runs

        return activation_guard(self.config, self.device.noise_basis)

    @property
    def noise_seed(self) -> int:
        """Seed of this round's activation noise: the plan's seed and round, and the node's secret.

        The server knows the plan's seed: without a ``noise-secret`` it can draw the same noise
        (reproducible simulations); with one, only the device can.
        """
        entropy = [self.plan.seed, self.plan.server_round, self.noise_secret]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def minibatches(self, num_samples: int | None = None) -> list[np.ndarray]:
        """The round's minibatches, drawn from the data volume the requirement allows."""
        volume = plan_volume(self.requirement, len(self.encoded) if num_samples is None else num_samples)
        return batch_plan(volume, self.plan.steps, self.plan.batch_size, self.plan.seed)


def job_of(msg: Message, context: Context) -> Job:
    """The train message ``msg`` on this node: its device part prepared for the round's plan."""
    config, source, root = node_of(context)
    family, cfg = family_of(config), msg.content.config_records[wire.CONFIG]
    job = Job(
        config,
        family.device_part(config, root),
        family.node_data(config, source, root),
        wire.TrainPlan.from_config(cfg),
        requirement_from_config(cfg),
        noise_secret(context.node_config),
    )
    fleet_size = source.num_partitions or max(config.data.num_partitions, source.client_id + 1)
    profile = node_profile(config, context.node_config, source.client_id, fleet_size)
    family.prepare_device(config, job.device, profile, job.plan.seed)
    return job


def noise_secret(node: Mapping[str, Any]) -> int:
    """The node's ``noise-secret`` (0 when it has none)."""
    secret = _node_int(node, NOISE_SECRET) if NOISE_SECRET in node else 0
    if secret < 0:
        raise ValueError(f"node config {NOISE_SECRET} must be >= 0")
    return secret


def declined(msg: Message, job: Job) -> Message | None:
    """The ``insufficient-samples`` reply to send instead of training, if the data falls short."""
    if len(job.encoded) >= job.requirement.min_samples:
        return None
    failure = check_before_training(job.requirement, len(job.encoded), 0.0, 0)
    return failure_reply(msg, failure) if failure is not None else None


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


def failure_reply(msg: Message, failure: Failure) -> Message:
    """A reply that says why the client did not train (not an error: the server re-plans)."""
    config = ConfigRecord({k: v for k, v in failure_to_config(failure).items()})
    return Message(RecordDict({wire.CONFIG: config, wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 0})}), reply_to=msg)
