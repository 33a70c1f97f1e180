"""The chunked record layout: one encoder, one decoder and validator for every reader."""

import numpy as np
import pytest

from strategies.wire import names as wire


def _chunks(steps=2, batch=3, length=5, hidden=4):
    return [
        wire.Chunk(
            np.zeros((batch, length, hidden), np.float32), np.ones((batch, length), np.int8), np.zeros(batch, np.int64)
        )
        for _ in range(steps)
    ]


def test_encode_then_decode_gives_the_chunks_back():
    # Prepare
    chunks = _chunks()
    chunks[1].inputs[0, 0, 0] = 7.0

    # Execute
    arrays = wire.encode_chunks(chunks, "activations")
    decoded, problems = wire.decode_chunks(arrays, "activations", count=2, hidden=4)

    # Assert
    assert sorted(arrays) == ["act.0", "act.1", "label.0", "label.1", "mask.0", "mask.1"]
    assert problems == []
    assert decoded[1].inputs[0, 0, 0] == 7.0 and wire.chunk_rows(decoded) == 6


def test_samples_chunks_use_token_ids():
    chunks = [wire.Chunk(np.zeros((2, 5), np.int32), np.ones((2, 5), np.int8), np.zeros(2, np.int64))]
    arrays = wire.encode_chunks(chunks, "samples", first_index=3)
    assert sorted(arrays) == ["ids.3", "label.3", "mask.3"]


@pytest.mark.parametrize(
    ("mutate", "count", "fragment"),
    [
        (lambda a: a.pop("label.1"), 2, "missing ['label.1']"),  # a minibatch without its labels
        (lambda a: a.update({"act.2": a["act.0"]}), 2, "unexpected ['act.2']"),  # one too many
        (lambda a: None, 3, "missing ['act.2'"),  # fewer minibatches than planned
        (lambda a: a.__setitem__("act.0", np.full((3, 5, 4), np.nan, np.float32)), 2, "chunk 0: 60 non-finite"),
        (lambda a: a.__setitem__("mask.1", np.ones((3, 6), np.int8)), 2, "chunk 1: shapes"),  # mask too long
        (lambda a: a.__setitem__("label.0", np.zeros(3, np.float32)), 2, "chunk 0: dtypes"),  # float labels
        (lambda a: a.__setitem__("act.1", np.zeros((3, 5, 8), np.float32)), 2, "chunk 1: hidden size 8"),
    ],
)
def test_a_bad_record_is_named_with_what_is_wrong(mutate, count, fragment):
    # Prepare
    arrays = wire.encode_chunks(_chunks(), "activations")
    mutate(arrays)

    # Execute
    _, problems = wire.decode_chunks(arrays, "activations", count=count, hidden=4)

    # Assert
    assert len(problems) == 1 and fragment in problems[0], problems


def test_without_an_expected_hidden_size_chunks_must_agree():
    arrays = wire.encode_chunks(_chunks(), "activations")
    arrays["act.1"] = np.zeros((3, 5, 8), np.float32)
    _, problems = wire.decode_chunks(arrays, "activations")
    assert problems == ["chunk 1: hidden size 8, expected 4"]


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="gradients"):
        wire.decode_chunks({}, "gradients")
