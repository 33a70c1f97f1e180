"""Bounded updates around a non-zero global state, and the robust rules at their edges (make mutate)."""

import numpy as np
import pytest

from strategies.aggregate.robust import bound_updates, robust_average, update_norm
from strategies.aggregate.volume import Contribution, aggregate

STATE = {"p": np.array([10.0, -4.0], np.float32)}


def _c(update, source):
    """A contribution whose tensor is the global one moved by ``update`` in both values."""
    return Contribution({"p": STATE["p"] + np.float32(update)}, 10, source)


def test_a_clip_shortens_the_update_not_the_tensor():
    # Prepare: updates of (1, 1.2, 0.8, -30) in both values from (10, -4)
    contributions = [_c(1.0, "a"), _c(1.2, "b"), _c(0.8, "c"), _c(-30.0, "attacker")]

    # Execute
    kept, notes = bound_updates(contributions, STATE, "clip", bound=3.0)

    # Assert: the median update is 1.1 per value, so the attacker moves 3 x 1.1 = 3.3 from the state
    assert np.allclose(kept[3].arrays["p"], [10.0 - 3.3, -4.0 - 3.3])
    assert update_norm(kept[3], STATE) == pytest.approx(3.0 * update_norm(_c(1.1, "median"), STATE), rel=1e-5)
    assert [c.arrays["p"] for c in kept[:3]] == [c.arrays["p"] for c in contributions[:3]]
    assert kept[3].arrays["p"].dtype == np.float32 and list(notes) == ["attacker"]


# --- what mutation testing (make mutate) found untested ---------------------------------------


def _zero(value, source, volume=10, name="p"):
    return Contribution({name: np.full(2, value, np.float32)}, volume, source)


ZEROS = {"p": np.zeros(2, np.float32), "q": np.zeros(2, np.float32)}


def test_three_comparable_updates_are_enough_to_bound_one():
    # Prepare: update norms sqrt(2) x (1.0, 1.2, 30): the median is 1.2
    contributions = [_zero(1.0, "a"), _zero(1.2, "b"), _zero(30.0, "x")]

    # Execute
    kept, notes = bound_updates(contributions, ZEROS, "clip", bound=3.0)

    # Assert: cut to 3 x 1.2, and the note names the median, not the bound times it
    assert np.allclose(kept[2].arrays["p"], 3.6)
    assert notes == {"x": f"update norm {30 * np.sqrt(2):.3g} > 3 x median {1.2 * np.sqrt(2):.3g}: clipped"}


def test_a_small_group_does_not_stop_the_bound_of_the_next_group():
    # Prepare: one contribution of tensor q (too few to bound), then three of tensor p
    contributions = [_zero(50.0, "q only", name="q"), _zero(1.0, "a"), _zero(1.1, "b"), _zero(40.0, "x")]

    # Execute
    kept, notes = bound_updates(contributions, ZEROS, "reject", bound=3.0)

    # Assert
    assert [c.source for c in kept] == ["q only", "a", "b"]
    assert notes == {"x": f"update norm {40 * np.sqrt(2):.3g} > 3 x median {1.1 * np.sqrt(2):.3g}: rejected"}


def test_the_update_norm_sums_over_every_tensor():
    contribution = Contribution({"p": np.full(2, 3.0, np.float32), "q": np.full(2, 4.0, np.float32)}, 10, "c")
    assert update_norm(contribution, ZEROS) == pytest.approx(np.sqrt(2 * 9.0 + 2 * 16.0))


@pytest.mark.parametrize(
    ("rule", "trim", "expected"),
    [
        ("trimmed", 0.2, 3.0),  # cuts 0 and 1000: the mean of 1, 2, 6 (the median would be 2)
        ("trimmed", 0.0, np.mean([0.0, 1.0, 2.0, 6.0, 1000.0])),  # nothing cut: the mean
        ("median", 0.2, 2.0),
    ],
)
def test_the_trimmed_rule_is_not_the_median(rule, trim, expected):
    contributions = [_zero(v, f"c{v}") for v in (0.0, 1.0, 2.0, 6.0, 1000.0)]
    assert np.allclose(robust_average(contributions, ZEROS, rule, trim=trim)["p"], expected)


def test_values_wholly_outside_the_trimmed_window_weigh_nothing():
    # Prepare: ten equal volumes; trim 0.2 cuts the two lowest and the two highest values whole
    contributions = [_zero(v, f"c{v}") for v in (-900.0, -500.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 700.0, 800.0)]

    # Execute / Assert
    assert np.allclose(robust_average(contributions, ZEROS, "trimmed", trim=0.2)["p"], 3.5)


def test_a_robust_rule_keeps_the_shape_of_a_matrix():
    state = {"w": np.zeros((2, 3), np.float32)}
    contributions = [Contribution({"w": np.full((2, 3), v, np.float32)}, 10, f"c{v}") for v in (1.0, 2.0, 9.0)]
    result = robust_average(contributions, state, "median")["w"]
    assert result.shape == (2, 3) and np.allclose(result, 2.0)


@pytest.mark.parametrize(
    ("rule", "trim", "message"),
    [
        ("trimmed", 0.5, r"trim=0.5 must be in \[0, 0.5\)"),  # half from each end leaves nothing
        ("trimmed", 0.7, r"trim=0.7 must be in \[0, 0.5\)"),
        ("mode", 0.2, r"aggregation rule 'mode' must be one of \['mean', 'median', 'trimmed'\]"),
    ],
)
def test_a_bad_rule_or_trim_is_refused_by_name(rule, trim, message):
    with pytest.raises(ValueError, match=message):
        robust_average([_zero(1.0, "a")], ZEROS, rule, trim=trim)


def test_a_name_nobody_holds_does_not_stop_the_average_of_the_next():
    # Prepare: the fallback lists q first; only p is held, with a volume of 1 (the smallest valid)
    fallback = {"q": np.ones(2, np.float32), "p": np.zeros(2, np.float32)}
    contributions = [_zero(1.0, "a", volume=1), _zero(4.0, "b", volume=3)]

    # Execute
    result = aggregate(contributions, fallback)

    # Assert
    assert np.allclose(result["q"], 1.0) and np.allclose(result["p"], np.average([1.0, 4.0], weights=[1, 3]))


@pytest.mark.parametrize("rule", ["median", "trimmed"])
def test_a_tensor_only_one_client_holds_takes_its_value(rule):
    assert np.allclose(robust_average([_zero(7.0, "only")], ZEROS, rule)["p"], 7.0)
