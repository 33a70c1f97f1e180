"""Defences of the average: bounded updates and robust rules, on values worked out by hand."""

import numpy as np
import pytest

from strategies.aggregate.robust import bound_updates, robust_average, update_norm
from strategies.aggregate.volume import Contribution, aggregate

STATE = {"p": np.zeros(2, np.float32)}


def _c(value, volume=10, source=None):
    return Contribution({"p": np.full(2, value, np.float32)}, volume, source or f"client {value}")


def test_update_norm_is_the_distance_to_the_global_tensors():
    assert update_norm(_c(3.0), STATE) == pytest.approx(np.sqrt(18.0))


def test_an_outsized_update_is_clipped_to_the_bound_keeping_its_direction():
    # Prepare: update norms sqrt(2) x (1.0, 1.2, 0.8, 30)
    contributions = [_c(1.0), _c(1.2), _c(0.8), _c(-30.0, source="attacker")]

    # Execute
    kept, notes = bound_updates(contributions, STATE, "clip", bound=3.0)

    # Assert: median of |values| (0.8, 1.0, 1.2, 30) is 1.1; the attacker is cut to 3 x 1.1 = 3.3
    assert np.allclose(kept[3].arrays["p"], -3.3)
    assert [c.arrays["p"][0] for c in kept[:3]] == pytest.approx([1.0, 1.2, 0.8])
    assert list(notes) == ["attacker"] and "clipped" in notes["attacker"]


def test_reject_leaves_the_outsized_update_out_and_says_why():
    kept, notes = bound_updates([_c(1.0), _c(1.1), _c(0.9), _c(50.0, source="x")], STATE, "reject", 3.0)
    assert [c.source for c in kept] == ["client 1.0", "client 1.1", "client 0.9"]
    assert "rejected" in notes["x"]


def test_with_fewer_than_three_comparable_updates_nothing_is_changed():
    contributions = [_c(1.0), _c(100.0)]
    kept, notes = bound_updates(contributions, STATE, "clip", 3.0)
    assert kept == contributions and notes == {}


def test_off_changes_nothing_and_an_unknown_check_is_refused():
    contributions = [_c(1.0), _c(1.0), _c(100.0)]
    assert bound_updates(contributions, STATE, "off", 3.0) == (contributions, {})
    with pytest.raises(ValueError, match="update check"):
        bound_updates(contributions, STATE, "ignore", 3.0)


def test_the_mean_rule_is_the_volume_weighted_average():
    contributions = [_c(1.0, 10), _c(2.0, 30)]
    assert np.allclose(robust_average(contributions, STATE, "mean")["p"], aggregate(contributions, STATE)["p"])


@pytest.mark.parametrize(
    ("values", "volumes", "expected"),
    [
        ((1.0, 2.0, 100.0), (10, 10, 10), 2.0),  # the middle value, whatever the outlier
        ((1.0, 2.0, 100.0), (10, 10, 40), 100.0),  # more than half the volume is at 100
        ((1.0, 3.0), (10, 10), 2.0),  # half falls between two values: their mean
    ],
)
def test_the_median_rule_is_the_volume_weighted_median(values, volumes, expected):
    contributions = [_c(v, n) for v, n in zip(values, volumes, strict=True)]
    assert np.allclose(robust_average(contributions, STATE, "median")["p"], expected)


def test_the_trimmed_rule_cuts_a_share_of_the_volume_from_each_end():
    # Prepare: five equal volumes; trim 0.2 cuts the lowest and the highest fifth
    contributions = [_c(v) for v in (-50.0, 1.0, 2.0, 3.0, 90.0)]

    # Execute
    result = robust_average(contributions, STATE, "trimmed", trim=0.2)

    # Assert
    assert np.allclose(result["p"], 2.0)


def test_a_name_nobody_holds_keeps_its_global_value():
    state = {"p": np.zeros(2, np.float32), "q": np.ones(3, np.float32)}
    result = robust_average([_c(1.0), _c(2.0), _c(3.0)], state, "median")
    assert np.array_equal(result["q"], state["q"]) and result["p"].dtype == np.float32
