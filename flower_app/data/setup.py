"""Setting up a job: the split model and the data for a config, cached per process.

:func:`build` loads the model (verified offline weights, a local folder, or a random
tiny model), splits it, and loads and splits the dataset; :func:`client_data` is the
encoded partition one client holds, :func:`test_data` the server's held-out split.
Ray actors and the in-process grid serve many nodes from one process, hence the caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from flower_app.config.schema import Config
from flower_app.data import files as data_mod
from flower_app.model.loading import load, set_offline_env
from flower_app.model.split_model import (
    ClientPart,
    ServerPart,
    SplitSpec,
    detect_family,
    get_state,
    initial_prefix,
    split,
)
from flower_app.tasks.lm import encode_for, label_words, reads_classes


@dataclass
class Setup:
    """Everything one process needs for a config."""

    config: Config
    spec: SplitSpec
    client: ClientPart
    server: ServerPart
    tokenizer: Any
    pad_id: int
    verbalizer_ids: tuple[int, ...] | None
    pool: Any  # data_mod.TextDataset (an ImageSet for the image task)
    test: Any
    initial_state: dict[str, np.ndarray]


@lru_cache(maxsize=2)
def build(config: Config) -> Setup:
    if config.task.family == "image":
        from flower_app.tasks.image.task import build_setup

        return build_setup(config)
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
    )
    spec = SplitSpec(m.split_layer, m.prefix_length, m.head, m.pooling, num_labels=len(dataset.label_names))
    family = detect_family(model.config)
    prefix = initial_prefix(model, family, m.prefix_length, config.run.seed, model.config.vocab_size)
    client, server = split(model, spec, prefix, seed=config.run.seed)
    pool, test = data_mod.train_test_split(dataset, config.data.test_size, config.run.seed)
    verbalizer = job_verbalizer(tokenizer, config, dataset.label_names)
    state = {**get_state(client), **get_state(server)}
    return Setup(config, spec, client, server, tokenizer, tokenizer.pad_token_id, verbalizer, pool, test, state)


def job_verbalizer(tokenizer: Any, config: Config, label_names: Sequence[str]) -> tuple[int, ...] | None:
    """The verbalizer token ids when an LM head reads classes, else None.

    A causal-LM job reads classes only when its target is the class word of two or more
    classes (sentiment as an instruction); otherwise its accuracy is next-token accuracy.
    """
    if config.model.head != "lm" or not reads_classes(config, len(label_names)):
        return None
    return verbalizer_ids(tokenizer, config.model.verbalizer, label_names)


def verbalizer_ids(tokenizer: Any, words: str, label_names: Sequence[str]) -> tuple[int, ...]:
    """First token of each label word: the LM logits that act as class scores."""
    chosen = label_words(words, label_names)
    ids = tuple(tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in chosen)
    if len(set(ids)) != len(ids):
        raise ValueError(f"model.verbalizer words {chosen} share a first token; choose distinct words")
    return ids


@lru_cache(maxsize=4)
def partitions(config: Config, num_partitions: int) -> tuple[np.ndarray, ...]:
    """Sample indices of every partition of the pool (seeded: same on every machine).

    Computed once per process: a Ray actor or the in-process grid serves hundreds of
    nodes, and each would otherwise repeat the O(pool) permutation.
    """
    setup = build(config)
    return tuple(
        data_mod.partition(
            setup.pool.labels, num_partitions, config.data.partitioner, config.data.alpha, config.run.seed
        )
    )


# One entry per node a process serves. The partitions are disjoint, so all the entries of
# one config together hold at most its pool; the bound only has to exceed the nodes per
# process (a Ray actor may serve every node of a 1000-node simulation).
@lru_cache(maxsize=4096)
def client_data(config: Config, partition_id: int, num_partitions: int) -> data_mod.Encoded:
    """The encoded partition a client holds (seeded: same on every machine)."""
    if config.task.family == "image":
        from flower_app.tasks.image.task import partition_encoded

        return partition_encoded(config, partition_id, num_partitions)
    setup, parts = build(config), partitions(config, num_partitions)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    return encode_for(setup.tokenizer, setup.pool.subset(parts[partition_id]), config)


@lru_cache(maxsize=2)
def test_data(config: Config) -> data_mod.Encoded:
    setup = build(config)
    if config.task.family == "image":
        from flower_app.tasks.image.task import encode_images

        return encode_images(setup.test)
    return encode_for(setup.tokenizer, setup.test, config)
