"""Tests for training requirements, failures and the server's reaction to them."""

import math

import pytest

from strategies.policy.requirements import (
    EXCLUDE,
    Failure,
    FailureCause,
    Reaction,
    TrainingRequirement,
    check_after_training,
    check_before_training,
    count_causes,
    failure_from_config,
    failure_to_config,
    is_failure_config,
    plan_volume,
    react_to_failures,
    requirement_from_config,
    requirement_to_config,
)

ALL_MODES = ("local", "split", "centralized")


def test_requirement_config_round_trip_with_every_field_set() -> None:
    # Prepare
    req = TrainingRequirement(
        train_layers=(0, 2),
        max_train_s=12.5,
        target_samples=64,
        min_samples=16,
        max_samples=128,
        threshold_metric="loss",
        threshold_value=2.3,
    )

    # Execute
    config = requirement_to_config(req)
    restored = requirement_from_config(config)

    # Assert
    assert config == {
        "req-train-layers": [0, 2],
        "req-max-train-s": 12.5,
        "req-target-samples": 64,
        "req-min-samples": 16,
        "req-max-samples": 128,
        "req-threshold-metric": "loss",
        "req-threshold-value": 2.3,
    }
    assert restored == req


def test_requirement_config_leaves_none_fields_out_and_restores_them() -> None:
    # Prepare
    req = TrainingRequirement(min_samples=4)

    # Execute
    config = requirement_to_config(req)
    restored = requirement_from_config({**config, "mode": "split"})  # foreign keys are ignored

    # Assert
    assert config == {"req-min-samples": 4, "req-threshold-metric": "accuracy"}
    assert None not in config.values()
    assert restored == req
    assert restored.train_layers is None and restored.max_train_s is None


def test_requirement_from_config_rejects_unknown_req_key() -> None:
    # Prepare
    config = {"req-min-samples": 4, "req-min-sample": 5}

    # Execute / Assert
    with pytest.raises(ValueError, match="req-min-sample'"):
        requirement_from_config(config)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_samples": 10, "target_samples": 5}, "target_samples"),  # target below min
        ({"target_samples": 50, "max_samples": 20}, "max_samples"),  # target above max
        ({"min_samples": 0}, "min_samples"),  # not positive
        ({"max_train_s": 0.0}, "max_train_s"),  # no time at all
        ({"threshold_metric": "f1"}, "threshold_metric"),  # unknown metric
        ({"threshold_value": 1.5}, "threshold_value"),  # accuracy above 1
        ({"train_layers": (1, 1)}, "train_layers"),  # duplicate layer
        ({"train_layers": ()}, "train_layers"),  # nothing to train
        ({"min_samples": True}, "min_samples"),  # bool is not a count
    ],
)
def test_requirement_rejects_invalid_field(kwargs: dict, field: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=field):
        TrainingRequirement(**kwargs)


def test_requirement_normalises_layer_list_to_tuple() -> None:
    # Execute
    req = TrainingRequirement(train_layers=[3, 1])  # type: ignore[arg-type]

    # Assert
    assert req.train_layers == (3, 1)


def test_failure_config_round_trip() -> None:
    # Prepare
    failure = Failure(FailureCause.INSUFFICIENT_COMPUTE, needed=40.0, available=30.0, detail="slow")

    # Execute
    config = failure_to_config(failure)
    restored = failure_from_config(config)

    # Assert
    assert config == {
        "failure-cause": "insufficient-compute",
        "failure-needed": 40.0,
        "failure-available": 30.0,
        "failure-detail": "slow",
    }
    assert restored == failure
    assert is_failure_config(config)
    assert not is_failure_config({"num-examples": 3})


def test_failure_config_without_numbers_round_trips_to_none() -> None:
    # Prepare
    failure = Failure(FailureCause.TIMEOUT)

    # Execute
    config = failure_to_config(failure)

    # Assert
    assert set(config) == {"failure-cause", "failure-detail"}
    assert failure_from_config(config) == failure


def test_failure_from_config_rejects_unknown_cause() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="out-of-memory"):
        failure_from_config({"failure-cause": "out-of-memory"})


def test_check_before_training_reports_too_few_samples() -> None:
    # Prepare
    req = TrainingRequirement(min_samples=32)

    # Execute
    failure = check_before_training(req, num_available_samples=20, est_step_s=0.1, steps_planned=5)

    # Assert
    assert failure is not None
    assert failure.cause == FailureCause.INSUFFICIENT_SAMPLES
    assert (failure.needed, failure.available) == (32.0, 20.0)


def test_check_before_training_reports_time_over_budget() -> None:
    # Prepare: 25 steps at 2 s each need 50 s against a 30 s budget
    req = TrainingRequirement(max_train_s=30.0)

    # Execute
    failure = check_before_training(req, 100, est_step_s=2.0, steps_planned=25)

    # Assert
    assert failure is not None
    assert failure.cause == FailureCause.INSUFFICIENT_COMPUTE
    assert (failure.needed, failure.available) == (50.0, 30.0)


def test_check_before_training_passes_exact_fit() -> None:
    # Prepare: 15 steps at 2 s each is exactly the 30 s budget
    req = TrainingRequirement(max_train_s=30.0, min_samples=100)

    # Execute
    failure = check_before_training(req, 100, est_step_s=2.0, steps_planned=15)

    # Assert
    assert failure is None


@pytest.mark.parametrize(
    ("kwargs", "available", "expected"),
    [
        ({}, 70, 70),  # no caps: everything available
        ({"target_samples": 50}, 70, 50),  # target caps
        ({"target_samples": 50}, 30, 30),  # fewer than the target
        ({"target_samples": 50, "max_samples": 60}, 70, 50),  # target below max
        ({"max_samples": 40}, 70, 40),  # max caps when there is no target
    ],
)
def test_plan_volume(kwargs: dict, available: int, expected: int) -> None:
    # Execute
    volume = plan_volume(TrainingRequirement(**kwargs), available)

    # Assert
    assert volume == expected


@pytest.mark.parametrize(
    ("metric", "threshold", "value", "fails"),
    [
        ("accuracy", 0.6, 0.55, True),  # accuracy below
        ("accuracy", 0.6, 0.6, False),  # accuracy at the threshold passes
        ("accuracy", 0.6, math.nan, True),  # NaN is never good enough
        ("loss", 1.0, 1.2, True),  # loss above
        ("loss", 1.0, 0.8, False),  # loss below
        ("loss", None, 99.0, False),  # no threshold
    ],
)
def test_check_after_training(metric: str, threshold: float | None, value: float, fails: bool) -> None:
    # Prepare
    req = TrainingRequirement(threshold_metric=metric, threshold_value=threshold)

    # Execute
    failure = check_after_training(req, value)

    # Assert
    assert (failure is not None) == fails
    if fails:
        assert failure.cause == FailureCause.PERFORMANCE_BELOW_THRESHOLD
        assert failure.needed == threshold


@pytest.mark.parametrize(
    ("cause", "mode", "available", "expected"),
    [
        ("insufficient-compute", "local", ALL_MODES, "split"),  # one step cheaper
        ("insufficient-compute", "local", ("local", "centralized"), "centralized"),  # skips split
        ("insufficient-compute", "centralized", ALL_MODES, EXCLUDE),  # nothing cheaper
        ("insufficient-samples", "split", ALL_MODES, "centralized"),  # pool at the server
        ("insufficient-samples", "split", ("local", "split"), EXCLUDE),  # no centralized mode
        ("insufficient-samples", "centralized", ALL_MODES, EXCLUDE),  # already pooled
        ("performance-below-threshold", "split", ALL_MODES, "split"),  # keep the mode
        ("timeout", "local", ALL_MODES, "local"),  # first strike: retry
    ],
)
def test_react_to_failures_policy_table(cause: str, mode: str, available: tuple[str, ...], expected: str) -> None:
    # Prepare
    failures = {7: Failure(FailureCause(cause))}

    # Execute
    reactions, _ = react_to_failures(failures, {7: mode}, available, strikes={})

    # Assert
    assert reactions == {7: Reaction(mode=expected, cause=FailureCause(cause))}
    assert reactions[7].excluded == (expected == EXCLUDE)


def test_react_to_failures_excludes_after_consecutive_strikes() -> None:
    # Prepare
    failure = {1: Failure(FailureCause.CLIENT_ERROR)}
    strikes: dict[int, int] = {}
    modes = []

    # Execute: three transient failures in a row with max_strikes=3
    for _ in range(3):
        reactions, strikes = react_to_failures(failure, {1: "split"}, ALL_MODES, strikes)
        modes.append(reactions[1].mode)

    # Assert
    assert modes == ["split", "split", EXCLUDE]
    assert strikes == {}  # excluded clients start afresh if let back in


def test_react_to_failures_success_resets_strikes() -> None:
    # Prepare: client 1 has two strikes, client 2 one; both succeed or report a sane failure
    strikes = {1: 2, 2: 1, 3: 2}
    failures = {2: Failure(FailureCause.INSUFFICIENT_COMPUTE), 3: Failure(FailureCause.TIMEOUT)}
    modes = {2: "local", 3: "split"}

    # Execute
    reactions, new_strikes = react_to_failures(failures, modes, ALL_MODES, strikes, succeeded=[1], max_strikes=3)

    # Assert
    assert new_strikes == {}  # 1 succeeded, 2 reported compute, 3 hit its third strike
    assert reactions[3].excluded
    assert reactions[2].mode == "split"
    assert strikes == {1: 2, 2: 1, 3: 2}  # input untouched


def test_react_to_failures_rejects_unknown_mode() -> None:
    # Prepare
    failures = {1: Failure(FailureCause.TIMEOUT)}

    # Execute / Assert
    with pytest.raises(ValueError, match="teleport"):
        react_to_failures(failures, {1: "split"}, ("split", "teleport"), strikes={})


def test_count_causes_includes_zero_counts() -> None:
    # Prepare
    failures = {
        1: Failure(FailureCause.TIMEOUT),
        2: Failure(FailureCause.TIMEOUT),
        3: Failure(FailureCause.INSUFFICIENT_SAMPLES),
    }

    # Execute
    counts = count_causes(failures)

    # Assert
    assert counts == {
        "insufficient-samples": 1,
        "insufficient-compute": 0,
        "performance-below-threshold": 0,
        "client-error": 0,
        "invalid-reply": 0,
        "timeout": 2,
    }
