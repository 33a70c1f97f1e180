import numpy as np
import pytest

from strategies.aggregate.volume import Contribution, aggregate, volume_weights


def test_weights_are_data_volume_fractions():
    # Execute
    weights = volume_weights([10, 30, 60])

    # Assert: worked by hand, 10/100, 30/100, 60/100
    np.testing.assert_allclose(weights, [0.1, 0.3, 0.6])


def test_aggregate_matches_hand_computed_average():
    # Prepare
    fallback = {"prefix.0": np.zeros((2, 2), np.float32), "head.weight": np.ones(3, np.float32)}
    contributions = [
        Contribution({"prefix.0": np.full((2, 2), 1.0, np.float32)}, num_examples=100),
        Contribution({"prefix.0": np.full((2, 2), 4.0, np.float32)}, num_examples=300),
        Contribution({"head.weight": np.array([2.0, 4.0, 6.0], np.float32)}, num_examples=50),
    ]

    # Execute
    result = aggregate(contributions, fallback)

    # Assert: prefix.0 = (100*1 + 300*4) / 400 = 3.25; the head is held by one contribution only
    np.testing.assert_allclose(result["prefix.0"], np.full((2, 2), 3.25))
    np.testing.assert_allclose(result["head.weight"], [2.0, 4.0, 6.0])
    assert result["prefix.0"].dtype == np.float32


def test_names_without_contribution_keep_fallback():
    # Prepare
    fallback = {"prefix.5": np.arange(4, dtype=np.float32)}

    # Execute
    result = aggregate([Contribution({"prefix.0": np.ones(1, np.float32)}, 5)], fallback)

    # Assert
    np.testing.assert_array_equal(result["prefix.5"], fallback["prefix.5"])
    assert result["prefix.5"] is not fallback["prefix.5"]


@pytest.mark.parametrize("volumes", [[], [3, 0], [5, -1]])
def test_non_positive_volumes_are_rejected(volumes):
    with pytest.raises(ValueError, match="positive"):
        volume_weights(volumes)
