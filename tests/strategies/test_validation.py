"""Tests for the checks run on every client reply."""

import numpy as np
import pytest

from strategies.validation import (
    ArraySpec,
    Verdict,
    judge,
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
