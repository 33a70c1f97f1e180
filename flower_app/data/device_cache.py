"""A device's samples: its own file or a partition of the run's dataset, encoded once and cached on its disk.

``data/<data key>.npz`` under the device cache (:func:`flower_app.model.cache.cache_root`) holds
the encoded samples, keyed by the data file (path, size, modification time) or the
partition, and by the tokenizer. A cache hit loads neither torch nor the model: a
``query`` answers from it alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from flower_app.config.schema import Config
from flower_app.data import files as data_mod
from flower_app.model.device_part import (
    CACHE_VERSION,
    atomic_write,
    digest,
    file_identity,
    model_key,
    private_dirs,
    run_label_names,
    tokenizer_of,
)
from flower_app.tasks.lm import encode_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSource:
    """Where a node's samples come from: its own file, or a partition of the run's dataset.

    ``client_id`` is the node's stable id (``device-id``, else ``partition-id``);
    ``num_partitions`` is 0 for a node with its own file.
    """

    client_id: int
    num_partitions: int
    data_path: str = ""


def node_data(config: Config, source: DataSource, root: Path) -> data_mod.Encoded:
    """The node's encoded samples: from the cache, else read, checked, encoded and cached (``task.family=text``)."""
    labels = run_label_names(config)  # not the part itself: a cache hit must not load the model
    key = _data_key(config, source, model_key(config, labels))
    entry = root / "data" / f"{key}.npz"
    cached = _read_encoded(entry)
    if cached is not None:
        return cached
    tokenizer = tokenizer_of(config, root)
    if source.data_path:
        d = config.data
        own = Path(source.data_path).expanduser()
        dataset = data_mod.load_device_table(
            own, d.text_column, d.label_column, labels, limits=data_mod.FileLimits.of(config)
        )
    else:
        dataset = partition_of(config, source.client_id, source.num_partitions)
    encoded = encode_for(tokenizer, dataset, config)
    private_dirs(entry.parent)
    atomic_write(entry, lambda handle: _write_encoded(handle, encoded))
    return encoded


def partition_of(config: Config, partition_id: int, num_partitions: int) -> data_mod.TextDataset:
    """Partition ``partition_id`` of the run's training pool (seeded: the same on every machine)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    return _pool(config).subset(_partitions(config, num_partitions)[partition_id])


# Once per process: a Ray actor serves hundreds of simulated nodes, each of which would
# otherwise load, split and partition the whole dataset on its first message.
@lru_cache(maxsize=2)
def _pool(config: Config) -> data_mod.TextDataset:
    d = config.data
    dataset = data_mod.load_dataset(
        d.source,
        d.text_column,
        d.label_column,
        seed=config.run.seed,
        classes=d.classes,
        limits=data_mod.FileLimits.of(config),
    )
    return data_mod.train_test_split(dataset, d.test_size, config.run.seed)[0]


@lru_cache(maxsize=4)
def _partitions(config: Config, num_partitions: int) -> tuple[np.ndarray, ...]:
    d = config.data
    return tuple(data_mod.partition(_pool(config).labels, num_partitions, d.partitioner, d.alpha, config.run.seed))


def _data_key(config: Config, source: DataSource, model: str) -> str:
    d = config.data
    if source.data_path:
        path = Path(source.data_path).expanduser()
        if not path.is_file():
            raise data_mod.DataFileError(f"data-path '{source.data_path}' is not a file on this device")
        origin: Any = {"file": file_identity(path), "columns": [d.text_column, d.label_column]}
    else:
        dataset = file_identity(Path(d.source).expanduser()) if Path(d.source).expanduser().is_file() else d.source
        origin = {
            "dataset": dataset,
            "columns": [d.text_column, d.label_column, d.classes],
            "split": [d.test_size, d.partitioner, d.alpha, config.run.seed],
            "partition": [source.client_id, source.num_partitions],
        }
    task = [d.objective, d.prompt, d.target, config.model.verbalizer] if d.objective != "classify" else []
    tokens = {"model": model, "max-length": config.model.max_length, **({"task": task} if task else {})}
    return digest({"version": CACHE_VERSION, "origin": origin, **tokens})


def _write_encoded(handle: Any, encoded: data_mod.Encoded) -> None:
    lengths = np.array([len(ids) for ids in encoded.ids], dtype=np.int64)
    flat = np.fromiter((t for ids in encoded.ids for t in ids), dtype=np.int64, count=int(lengths.sum()))
    arrays: dict[str, np.ndarray] = {"flat": flat, "lengths": lengths, "labels": encoded.labels}
    if encoded.prompt_lengths is not None:
        arrays["prompt_lengths"] = encoded.prompt_lengths
    np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle


def _read_encoded(path: Path) -> data_mod.Encoded | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            flat, lengths, labels = stored["flat"], stored["lengths"], stored["labels"]
            starts = stored["prompt_lengths"] if "prompt_lengths" in stored.files else None
        if int(lengths.sum()) != len(flat) or len(lengths) != len(labels):
            raise ValueError("lengths do not match the stored tokens")
        if starts is not None and (len(starts) != len(lengths) or (starts > lengths).any()):
            raise ValueError("prompt lengths do not match the stored tokens")
    except Exception as err:
        logger.warning("data cache %s is unreadable (%s: %s); rebuilding it", path, type(err).__name__, err)
        return None
    rows = np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
    prompt_lengths = None if starts is None else starts.astype(np.int64)
    return data_mod.Encoded(tuple(tuple(r.tolist()) for r in rows), labels.astype(np.int64), prompt_lengths)
