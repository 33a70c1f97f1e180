"""Tests for the checks run on every client reply."""

import numpy as np
import pytest

from strategies.wire.validation import (
    ArraySpec,
    Verdict,
    judge,
    read_upload,
    spec_of,
    validate_arrays,
    validate_metrics,
    validate_num_examples,
)

EXPECTED = {"prefix.0": ArraySpec((2, 4, 8), "float32"), "head": ArraySpec((8,), "float32")}


def _good_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "prefix.0": rng.standard_normal((2, 4, 8)).astype(np.float32),
        "head": rng.standard_normal(8).astype(np.float32),
    }


def test_good_reply_passes() -> None:
    # Prepare
    arrays = _good_arrays()

    # Execute
    verdict = judge(arrays, EXPECTED, 50, 64, metrics={"loss": 0.7}, required_metrics=["loss"])

    # Assert
    assert verdict == Verdict(ok=True, reasons=())


def test_spec_of_describes_reference_arrays() -> None:
    # Execute
    spec = spec_of(_good_arrays())

    # Assert
    assert spec == EXPECTED


def test_wrong_shape_names_expected_and_got() -> None:
    # Prepare
    arrays = {**_good_arrays(), "head": np.zeros(9, dtype=np.float32)}

    # Execute
    problems = validate_arrays(arrays, EXPECTED)

    # Assert
    assert problems == ["'head' has shape (9,), expected (8,)"]


def test_nan_values_are_counted() -> None:
    # Prepare
    arrays = _good_arrays()
    arrays["prefix.0"][0, 0, :3] = np.nan

    # Execute
    problems = validate_arrays(arrays, EXPECTED)

    # Assert
    assert problems == ["'prefix.0' has 3 NaN and 0 Inf values"]


def test_inf_values_are_counted() -> None:
    # Prepare
    arrays = _good_arrays()
    arrays["head"][[1, 5]] = [np.inf, -np.inf]

    # Execute
    problems = validate_arrays(arrays, EXPECTED)

    # Assert
    assert problems == ["'head' has 0 NaN and 2 Inf values"]


def test_missing_array() -> None:
    # Prepare
    arrays = _good_arrays()
    del arrays["head"]

    # Execute
    problems = validate_arrays(arrays, EXPECTED)

    # Assert
    assert problems == ["missing array 'head'"]


def test_unexpected_array() -> None:
    # Prepare
    arrays = {**_good_arrays(), "embeddings": np.zeros((3, 8), dtype=np.float32)}

    # Execute
    problems = validate_arrays(arrays, EXPECTED)

    # Assert
    assert problems == ["unexpected array 'embeddings'"]


def test_wrong_dtype() -> None:
    # Prepare
    arrays = {**_good_arrays(), "head": np.zeros(8, dtype=np.float64)}

    # Execute
    problems = validate_arrays(arrays, EXPECTED)

    # Assert
    assert problems == ["'head' has dtype float64, expected float32"]


def test_not_an_array() -> None:
    # Prepare
    arrays = {**_good_arrays(), "head": [0.0] * 8}

    # Execute
    problems = validate_arrays(arrays, EXPECTED)

    # Assert
    assert problems == ["'head' is a list, not a numpy array"]


def test_array_spec_normalises_dtype_alias() -> None:
    # Execute
    spec = ArraySpec([2, 3], "f4")  # type: ignore[arg-type]

    # Assert
    assert spec == ArraySpec((2, 3), "float32")


def test_inflated_num_examples_names_both_numbers() -> None:
    # Execute
    problems = validate_num_examples(1_000_000_000, ceiling=500)

    # Assert
    assert len(problems) == 1
    assert "1000000000" in problems[0] and "500" in problems[0]


@pytest.mark.parametrize(
    ("value", "ceiling", "fragment"),
    [
        (0, 500, "positive"),  # zero would divide the average by zero
        (-3, None, "positive"),  # negative weight
        (12.5, None, "integer"),  # fractional count
        ("12", None, "integer"),  # wrong type
        (True, None, "integer"),  # bool is not a count
        (float("nan"), None, "integer"),  # not a number
    ],
)
def test_bad_num_examples(value: object, ceiling: int | None, fragment: str) -> None:
    # Execute
    problems = validate_num_examples(value, ceiling)

    # Assert
    assert len(problems) == 1
    assert fragment in problems[0]


@pytest.mark.parametrize(
    "value",
    [
        500,  # exactly the ceiling
        12.0,  # integral float, as some serialisers send counts
        np.int64(7),  # numpy integer
    ],
)
def test_acceptable_num_examples(value: object) -> None:
    # Execute
    problems = validate_num_examples(value, ceiling=500)

    # Assert
    assert problems == []


def test_metrics_missing_and_non_finite() -> None:
    # Prepare
    metrics = {"loss": float("nan"), "per-class": [0.5, float("inf")], "steps": 10}

    # Execute
    problems = validate_metrics(metrics, required=["loss", "accuracy"])

    # Assert
    assert problems == [
        "missing metric 'accuracy'",
        "metric 'loss' is not a finite number: nan",
        "metric 'per-class' is not a finite number: [0.5, inf]",
    ]


def test_required_metric_must_be_a_scalar() -> None:
    # Execute
    problems = validate_metrics({"loss": [0.1, 0.2]}, required=["loss"])

    # Assert
    assert problems == ["metric 'loss' is not a finite number: [0.1, 0.2]"]


def test_judge_collects_every_reason() -> None:
    # Prepare
    arrays = _good_arrays()
    arrays["head"][0] = np.nan

    # Execute
    verdict = judge(arrays, EXPECTED, 0, ceiling=64, metrics=None, required_metrics=["loss"])

    # Assert
    assert not verdict.ok
    assert verdict.reasons == (
        "'head' has 1 NaN and 0 Inf values",
        "num-examples must be positive, got 0",
        "missing metric 'loss'",
    )


def test_verdict_must_be_consistent() -> None:
    # Execute / Assert
    with pytest.raises(ValueError):
        Verdict(ok=True, reasons=("shape",))


HIDDEN = 8


def _samples_upload(chunk_rows=(3, 2), tokens=5) -> dict[str, np.ndarray]:
    """Token-id chunks ids/mask/label.0..n-1 of ``chunk_rows`` rows each."""
    rng = np.random.default_rng(1)
    arrays = {}
    for i, rows in enumerate(chunk_rows):
        arrays[f"ids.{i}"] = rng.integers(0, 1000, (rows, tokens)).astype(np.int32)
        arrays[f"mask.{i}"] = np.ones((rows, tokens), dtype=np.int8)
        arrays[f"label.{i}"] = rng.integers(0, 2, rows).astype(np.int64)
    return arrays


def _activations_upload(chunk_rows=(3, 2), tokens=5) -> dict[str, np.ndarray]:
    """Activation chunks act/mask/label.0..n-1 of shape (rows, tokens, HIDDEN)."""
    rng = np.random.default_rng(2)
    arrays = {}
    for i, rows in enumerate(chunk_rows):
        arrays[f"act.{i}"] = rng.standard_normal((rows, tokens, HIDDEN)).astype(np.float32)
        arrays[f"mask.{i}"] = np.ones((rows, tokens), dtype=np.int8)
        arrays[f"label.{i}"] = rng.integers(0, 2, rows).astype(np.int64)
    return arrays


@pytest.mark.parametrize(
    ("kind", "arrays"),
    [
        ("samples", _samples_upload()),
        ("samples", _samples_upload(chunk_rows=(5,))),
        ("activations", _activations_upload()),
        ("activations", _activations_upload(chunk_rows=(1, 1, 3))),
    ],
)
def test_good_upload_passes(kind: str, arrays: dict[str, np.ndarray]) -> None:
    # Execute: 5 rows, exactly what was asked for and claimed
    problems = read_upload(arrays, kind, HIDDEN, max_rows=5, num_examples=5)[1]

    # Assert
    assert problems == []


def test_good_upload_passes_below_max_rows_with_integral_float_count() -> None:
    # Execute
    problems = read_upload(_samples_upload(), "samples", HIDDEN, max_rows=100, num_examples=5.0)[1]

    # Assert
    assert problems == []


def _drop(arrays: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k != name}


def _renumber(arrays: dict[str, np.ndarray], old: int, new: int) -> dict[str, np.ndarray]:
    return {k.replace(f".{old}", f".{new}"): v for k, v in arrays.items()}


@pytest.mark.parametrize(
    ("kind", "arrays"),
    [
        ("samples", _drop(_samples_upload(), "mask.1")),  # a chunk without its mask
        ("samples", _drop(_samples_upload(), "ids.0")),  # a chunk without its inputs
        ("samples", _renumber(_samples_upload(), 1, 2)),  # chunks 0 and 2: a gap
        ("samples", _renumber(_samples_upload(chunk_rows=(5,)), 0, 1)),  # numbering starts at 1
        ("samples", _activations_upload()),  # activations where token ids were asked for
        ("activations", _samples_upload()),  # and the other way round
        ("samples", {**_samples_upload(), "extra.0": np.zeros(3)}),  # an array nobody asked for
        ("samples", {}),  # nothing at all
    ],
)
def test_upload_with_bad_chunk_layout_is_rejected(kind: str, arrays: dict[str, np.ndarray]) -> None:
    # Execute
    problems = read_upload(arrays, kind, HIDDEN, max_rows=5, num_examples=5)[1]

    # Assert
    assert len(problems) == 1
    assert "are not chunks" in problems[0]


def test_upload_with_wrong_hidden_size_names_both_sizes() -> None:
    # Prepare
    arrays = _activations_upload()
    arrays["act.1"] = np.zeros((2, 5, HIDDEN + 4), dtype=np.float32)

    # Execute
    problems = read_upload(arrays, "activations", HIDDEN, max_rows=5, num_examples=5)[1]

    # Assert
    assert problems == ["chunk 1: hidden size 12, expected 8"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_upload_with_non_finite_activations_is_rejected(bad: float) -> None:
    # Prepare
    arrays = _activations_upload()
    arrays["act.0"][1, 2, :3] = bad

    # Execute
    problems = read_upload(arrays, "activations", HIDDEN, max_rows=5, num_examples=5)[1]

    # Assert
    assert problems == ["chunk 0: 3 non-finite values"]


def test_upload_with_more_rows_than_asked_is_rejected() -> None:
    # Execute: 5 rows where 4 were asked for
    problems = read_upload(_samples_upload(), "samples", HIDDEN, max_rows=4, num_examples=5)[1]

    # Assert
    assert problems == ["5 rows uploaded, at most 4 were asked for"]


@pytest.mark.parametrize(
    ("num_examples", "fragment"),
    [
        (10**9, "exceeds the 5"),  # an inflated claim to outweigh the pool
        (6, "exceeds the 5"),
        (4, "num-examples 4 != 5 rows"),  # fewer than uploaded
        (0, "positive"),
        (2.5, "integer"),
        (True, "integer"),
    ],
)
def test_upload_with_num_examples_disagreeing_with_rows_is_rejected(num_examples: object, fragment: str) -> None:
    # Execute
    problems = read_upload(_samples_upload(), "samples", HIDDEN, max_rows=100, num_examples=num_examples)[1]

    # Assert
    assert len(problems) == 1
    assert fragment in problems[0]


@pytest.mark.parametrize(
    ("kind", "name", "array"),
    [
        ("samples", "ids.0", np.zeros((3, 5, 1), dtype=np.int32)),  # ids need (rows, T)
        ("samples", "ids.0", np.zeros(3, dtype=np.int32)),
        ("activations", "act.0", np.zeros((3, 5), dtype=np.float32)),  # acts need (rows, T, hidden)
        ("activations", "act.0", np.zeros((3, 5, HIDDEN, 1), dtype=np.float32)),
        ("samples", "mask.0", np.ones((3, 4), dtype=np.int8)),  # mask not the shape of the ids
        ("samples", "label.0", np.zeros((3, 1), dtype=np.int64)),  # label not one per row
    ],
)
def test_upload_with_wrong_shape_is_rejected(kind: str, name: str, array: np.ndarray) -> None:
    # Prepare
    arrays = _samples_upload() if kind == "samples" else _activations_upload()
    arrays[name] = array

    # Execute
    problems = read_upload(arrays, kind, HIDDEN, max_rows=5, num_examples=5)[1]

    # Assert
    assert len(problems) == 1
    assert problems[0].startswith("chunk 0: shapes")


def test_upload_collects_problems_of_every_chunk() -> None:
    # Prepare
    arrays = _activations_upload(chunk_rows=(3, 2, 2))
    arrays["act.0"][0, 0, 0] = np.nan
    arrays["act.2"] = np.zeros((2, 5, 3), dtype=np.float32)

    # Execute
    problems = read_upload(arrays, "activations", HIDDEN, max_rows=5, num_examples=7)[1]

    # Assert
    assert problems == [
        "chunk 0: 1 non-finite values",
        "chunk 2: hidden size 3, expected 8",
        "7 rows uploaded, at most 5 were asked for",
    ]


@pytest.mark.parametrize(
    "arrays",
    [
        {"label": np.zeros(3, np.int64)},  # no chunk index
        {"label.²": np.zeros(3, np.int64)},  # not an ASCII digit
        {
            "ids.0": np.zeros((3, 5), np.float32),
            "mask.0": np.ones((3, 5), np.int8),
            "label.0": np.zeros(3, np.int64),
        },  # token ids as floats
    ],
)
def test_upload_with_odd_names_or_dtypes_is_rejected_not_raised(arrays):
    # Execute
    problems = read_upload(arrays, "samples", 8, 10, 3)[1]

    # Assert
    assert problems
