"""Tests for the registry of grouping policies: every policy listed once, each one assigns."""

import pytest

from strategies.policy.grouping import Fleet
from strategies.policy.groupings.registry import GROUPING_POLICIES, grouping_params
from strategies.policy.policies import POLICIES, Policy
from tests.strategies.test_grouping import WORKLOADS, _profile

EXPECTED = ("local", "ushape", "split", "centralized", "threshold", "cost", "kmeans", "random")


def test_the_registry_lists_every_policy_in_order():
    # Execute / Assert: a policy whose registration line goes missing fails here
    assert tuple(GROUPING_POLICIES) == EXPECTED
    assert POLICIES == EXPECTED  # what the config's strategy.policy accepts
    assert all(entry.name == name for name, entry in GROUPING_POLICIES.items())


@pytest.mark.parametrize("name", EXPECTED)
def test_every_policy_assigns_a_tiny_fleet_within_its_modes(name):
    # Prepare: three clients of capability 1e9, 1e10 and 1e11 FLOP/s (k-means needs one per cluster)
    profiles = {3: _profile(), 5: _profile(cycles_per_flop=0.1), 8: _profile(cycles_per_flop=0.01)}
    entry = GROUPING_POLICIES[name]
    fleet = Fleet(profiles, {cid: WORKLOADS for cid in profiles}, seed=1, server_flops=1e12)

    # Execute
    assignments = entry.assign(entry.defaults, fleet)

    # Assert
    assert [a.client_id for a in assignments] == [3, 5, 8]
    assert {a.mode for a in assignments} <= set(entry.modes(entry.defaults))
    assert all(a.allocation is not None for a in assignments)  # all fit every mode's budget


def test_the_threshold_policy_alone_reports_a_threshold():
    # Execute
    thresholds = {name: Policy(name).threshold_flops for name in EXPECTED}

    # Assert
    assert thresholds == {name: 20e9 if name == "threshold" else None for name in EXPECTED}


def test_grouping_params_set_fields_of_their_own_policy_only():
    # Execute
    params = grouping_params(threshold_flops=5e8, cost_modes=("split",))

    # Assert
    assert set(params) == set(EXPECTED)
    assert params["threshold"].threshold_flops == 5e8
    assert params["cost"].cost_modes == ("split",)
    assert params["kmeans"] == GROUPING_POLICIES["kmeans"].defaults
