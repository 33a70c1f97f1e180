"""The text family (``task.family=text``): prefix tuning of a transformer to classify text or continue it.

Both objectives of ``data.objective`` are this family: classes through a classifier head
or a verbalizer, and the causal-LM objective of :mod:`flower_app.tasks.lm`. Samples are
token ids; a device caches its part and its encoded samples on disk
(:mod:`flower_app.model.device_part`, :mod:`flower_app.data.device_cache`).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from flower_app.config.schema import Config
from flower_app.data import files as data_mod
from flower_app.data.device_cache import node_data
from flower_app.model.device_part import DevicePart, device_part
from flower_app.model.loading import load, set_offline_env
from flower_app.tasks.family import ServerHalf, Setup, TaskFamily
from flower_app.tasks.lm import encode_for, job_verbalizer
from strategies.fleet.profile import DeviceProfile
from strategies.settings import SplitSettings
from strategies.wire import names as wire


def build_setup(config: Config) -> Setup:
    """Load the model (verified offline weights, a local folder, or a random tiny one), split it, split the data."""
    from flower_app.model.split_model import SplitSpec, detect_family, get_state, initial_prefix, split

    set_offline_env()
    m = config.model
    model, tokenizer = load(
        m.source, seed=config.run.seed, gguf_file=m.gguf_file or None, allow_download=m.allow_download
    )
    dataset = data_mod.load_dataset(
        config.data.source,
        config.data.text_column,
        config.data.label_column,
        seed=config.run.seed,
        classes=config.data.classes,
        limits=data_mod.FileLimits.of(config),
    )
    spec = SplitSpec(m.split_layer, m.prefix_length, m.head, m.pooling, num_labels=len(dataset.label_names))
    architecture = detect_family(model.config)
    prefix = initial_prefix(model, architecture, m.prefix_length, config.run.seed, model.config.vocab_size)
    client, server = split(model, spec, prefix, seed=config.run.seed)
    pool, test = data_mod.train_test_split(dataset, config.data.test_size, config.run.seed)
    verbalizer = job_verbalizer(tokenizer, config, dataset.label_names)
    state = {**get_state(client), **get_state(server)}
    encode = partial(encode_for, tokenizer, config=config)
    return Setup(config, spec, client, server, tokenizer, tokenizer.pad_token_id, verbalizer, pool, test, state, encode)


def server_model(setup: Setup, settings: SplitSettings) -> ServerHalf:
    from flower_app.modes.server_model import SplitServer  # torch: the server's side only

    return SplitServer(setup, settings)


def partition_data(setup: Setup, indices: np.ndarray, partition_id: int) -> data_mod.Encoded:
    """The partition's samples, tokenized for the job's objective."""
    return setup.encode(setup.pool.subset(indices))


def prepare_device(config: Config, device: DevicePart, profile: DeviceProfile, seed: int) -> None:
    """Nothing: a text device's forwards do not depend on its profile."""


def metrics(config: Config) -> tuple[str, ...]:
    """Loss and accuracy; causal-LM adds perplexity (as :class:`~flower_app.modes.training.EvalTally` reports)."""
    lm = ("perplexity",) if config.data.objective == "causal-lm" else ()
    return (wire.LOSS, wire.ACCURACY, *lm)


TEXT = TaskFamily(
    name="text",
    setup=build_setup,
    device_part=device_part,
    server_model=server_model,
    partition_data=partition_data,
    node_data=node_data,
    prepare_device=prepare_device,
    metrics=metrics,
)
