"""A user's data file within bounds: long lines refused with file:line, texts clipped before tokenizing,
labels counted and mapped in one pass."""

import json

import numpy as np
import pytest

from flower_app.config.load import load_config
from flower_app.data import files
from flower_app.data.files import DataFileError, FileLimits, TextDataset, clip_text, encode, load_dataset, load_table
from flower_app.model.loading import tiny_tokenizer


def _jsonl(tmp_path, texts, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(texts)))
    return path


def test_a_jsonl_line_over_max_line_bytes_is_refused_with_file_and_line(tmp_path):
    # Prepare: the third line is the long one
    path = _jsonl(tmp_path, ["short", "short", "x" * 170])
    size = len(path.read_text().splitlines()[2])

    # Execute / Assert: one byte over refuses, the line's own size reads
    match = rf"data\.jsonl:3: this line is longer than data\.max-line-bytes={size - 1} bytes"
    with pytest.raises(DataFileError, match=match):
        load_table(path, "text", "label", limits=FileLimits(max_line_bytes=size - 1))
    assert len(load_table(path, "text", "label", limits=FileLimits(max_line_bytes=size))) == 3


def test_the_default_limit_refuses_a_multi_megabyte_line(tmp_path):
    # A 2 MB line (the was 200 MB): once tokenized whole, now refused before anything tokenizes it
    path = _jsonl(tmp_path, ["fine", "good " * 400_000, "bad"])
    with pytest.raises(DataFileError, match=r"data\.jsonl:2: .* data\.max-line-bytes=1000000 bytes"):
        load_dataset(str(path))


def test_a_csv_record_over_max_line_bytes_is_refused_even_when_quoted_over_several_lines(tmp_path):
    # Prepare: a record of 5 lines of 30 bytes each, starting on line 3
    path = tmp_path / "data.csv"
    text = "\n".join(["y" * 29] * 5)
    path.write_text(f'text,label\nok,0\n"{text}",1\nfine,0\n')

    # Execute / Assert: named by the line it starts on
    with pytest.raises(DataFileError, match=r"data\.csv:3: this record is longer than data\.max-line-bytes=100"):
        load_table(path, "text", "label", limits=FileLimits(max_line_bytes=100))
    assert len(load_table(path, "text", "label", limits=FileLimits(max_line_bytes=200))) == 3


def test_more_distinct_labels_than_max_classes_are_refused_naming_the_count_and_the_setting(tmp_path):
    # Prepare: 1,001 distinct labels, one row each (a text column taken for the labels, say)
    path = tmp_path / "data.csv"
    path.write_text("text,label\n" + "".join(f"t{i},label {i}\n" for i in range(1001)))

    # Execute / Assert: the default (1000) refuses, a raised limit reads it
    with pytest.raises(
        DataFileError, match=r"1,001 distinct labels in column 'label', more than data\.max-classes=1000"
    ):
        load_dataset(str(path))
    assert len(load_table(path, "text", "label", limits=FileLimits(max_classes=1001)).label_names) == 1001


def test_more_declared_classes_than_max_classes_are_refused(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\na,x\nb,y\n")
    with pytest.raises(DataFileError, match=r"data\.classes names 3 classes, more than data\.max-classes=2"):
        load_table(path, "text", "label", classes=("x", "y", "z"), limits=FileLimits(max_classes=2))


class _Label(str):
    """A label that counts how often it is compared for equality."""

    compared = 0

    def __eq__(self, other):
        _Label.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


@pytest.mark.parametrize("declared", [False, True])
def test_labels_are_mapped_to_ids_in_one_pass_over_the_rows(declared):
    # Prepare: 2,000 rows over 200 classes; a scan of the class list per row compares ~100 times a row
    rng = np.random.default_rng(0)
    raw = [_Label(f"c{int(i):03d}") for i in rng.integers(0, 200, 2000)]
    classes = tuple(sorted(set(raw))) if declared else None
    _Label.compared = 0

    # Execute
    names, ids = files._label_ids("data.csv", list(range(2, 2002)), raw, "label", classes, 1000)

    # Assert: right ids, and a few comparisons a row (set and dict lookups), not one per class
    assert [names[i] for i in ids] == raw
    assert _Label.compared < 5 * len(raw)


def test_texts_reach_the_tokenizer_clipped_and_encode_the_same(tmp_path):
    # Prepare: a 100,000-character text; the tokenizer records what it is given
    tokenizer, seen = tiny_tokenizer(64), []

    def recording(texts, **kwargs):
        seen.extend(texts)
        return tokenizer(texts, **kwargs)

    long = " ".join(["good", "film", "plot", "bad"] * 5000)
    data = TextDataset((long, "bad film"), np.array([1, 0]), ("negative", "positive"))

    # Execute
    encoded = encode(recording, data, max_length=8)

    # Assert: at most 2 x 32 x 8 characters (and a space) reach the tokenizer; the same first 8 tokens
    assert max(len(text) for text in seen) <= 2 * files.CHARS_PER_TOKEN * 8 + 1
    assert encoded.ids == tuple(
        tuple(x) for x in tokenizer([long, "bad film"], truncation=True, max_length=8)["input_ids"]
    )


def test_read_time_limits_clip_each_text_to_what_max_length_tokens_can_use(tmp_path):
    # Prepare
    path = _jsonl(tmp_path, ["a" * 5000 + "b" * 5000, "short"])
    config = load_config({"config": "test", "data.max-line-bytes": 20_000, "data.max-classes": 5})

    # Execute
    limits = FileLimits.of(config)
    data = load_table(path, "text", "label", limits=limits)

    # Assert: the job's settings; the text keeps its start and its end (model.max-length 16 in the test preset)
    assert limits == FileLimits(max_line_bytes=20_000, max_classes=5, max_length=16)
    assert data.texts[0] == clip_text("a" * 5000 + "b" * 5000, 16) == "a" * 512 + " " + "b" * 512
    assert data.texts[1] == "short"
