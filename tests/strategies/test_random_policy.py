"""Tests for the ``random`` grouping policy: modes drawn at random in given fractions."""

import pytest

from strategies.policy.allocation import allocate
from strategies.policy.grouping import Fleet
from strategies.policy.groupings import random as random_policy
from strategies.policy.groupings.random import RandomParams, counts
from strategies.policy.groupings.registry import grouping_params
from strategies.policy.policies import Policy, assign
from tests.strategies.test_grouping import WORKLOADS, _profile

# Keys u(c) = default_rng([0, c]).random() at seed 0, the draw's order:
#   c=2: 0.0808, c=0: 0.6370, c=4: 0.8831, c=1: 0.8897, c=3: 0.8950
FIVE = RandomParams((("local", 0.5), ("split", 0.3), ("centralized", 0.2)))


@pytest.mark.parametrize(
    ("fractions", "n", "expected"),
    [
        ([0.5, 0.3, 0.2], 5, [3, 1, 1]),  # quotas 2.5, 1.5, 1.0: the one left over to the earlier tie
        ([1.0, 1.0, 1.0], 4, [2, 1, 1]),  # weights are normalised: quotas 4/3 each
        ([0.25, 0.75], 10, [3, 7]),  # quotas 2.5, 7.5: tie, earlier mode
        ([0.2, 0.22, 0.58], 50, [10, 11, 29]),  # 50 x 0.58 is 28.999999999999996 in floats: still 29
        ([0.01, 0.07, 0.92], 20, [0, 2, 18]),  # remainders 0.2, 0.4, 0.4 tie on paper, not in floats
        ([0.2, 0.7, 0.1], 3, [1, 2, 0]),  # quotas 0.6, 2.1, 0.3: the one left over to 0.6
        ([0.0, 1.0, 0.0], 3, [0, 3, 0]),
        ([0.5, 0.5], 0, [0, 0]),
    ],
)
def test_counts_share_out_by_largest_remainder(fractions, n, expected):
    # Execute / Assert
    assert counts(fractions, n) == expected


def test_assign_draws_the_lowest_keys_into_the_first_mode():
    # Prepare
    fleet = Fleet({cid: _profile() for cid in range(5)}, seed=0, local_epochs=2, batch_size=8)

    # Execute
    assignments = random_policy.assign(FIVE, fleet)

    # Assert: 3 local (keys of 2, 0, 4), 1 split (1), 1 centralized (3); sorted by client id
    assert [(a.client_id, a.group, a.mode) for a in assignments] == [
        (0, 0, "local"),
        (1, 1, "split"),
        (2, 0, "local"),
        (3, 2, "centralized"),
        (4, 0, "local"),
    ]
    assert [a.local_epochs for a in assignments] == [2, 1, 2, 1, 2]  # only local mode takes epochs
    assert {a.batch_size for a in assignments} == {8}
    assert {a.threshold for a in assignments} == {None}


def test_the_draw_is_seeded_and_ignores_profiles():
    # Prepare: two fleets of the same ids, one all alike, one from weak to strong
    alike = {cid: _profile() for cid in range(20)}
    ranked = {cid: _profile(cpu_hz_max=1e8 * (cid + 1)) for cid in range(20)}

    def modes(profiles, seed):
        return [a.mode for a in random_policy.assign(RandomParams(), Fleet(profiles, seed=seed))]

    # Execute / Assert
    assert modes(alike, 7) == modes(alike, 7)
    assert modes(alike, 7) == modes(ranked, 7)
    assert modes(alike, 7) != modes(alike, 8)
    # 20/3 each: floors 6, 6, 6 and the two left over to the earlier modes, local and split
    assert sorted(modes(alike, 7)) == ["centralized"] * 6 + ["local"] * 7 + ["split"] * 7


def test_a_client_that_joins_moves_at_most_the_clients_at_the_boundaries():
    # Prepare
    params = RandomParams((("local", 0.3), ("split", 0.4), ("centralized", 0.3)))
    before = {a.client_id: a.mode for a in random_policy.assign(params, Fleet({c: _profile() for c in range(20)}))}

    # Execute
    after = {a.client_id: a.mode for a in random_policy.assign(params, Fleet({c: _profile() for c in range(21)}))}

    # Assert: keys are per client, so the order of the 20 is kept; only boundaries shift
    moved = [cid for cid in before if before[cid] != after[cid]]
    assert len(moved) <= 2


def test_assign_through_the_policy_attaches_each_mode_s_allocation():
    # Prepare
    profiles = {cid: _profile() for cid in range(6)}
    workloads = {cid: WORKLOADS for cid in profiles}
    policy = Policy("random", seed=3, params=grouping_params(random_fractions=(("split", 1.0), ("local", 1.0))))

    # Execute
    assignments = assign(policy, profiles, workloads)

    # Assert
    assert sorted(a.mode for a in assignments.values()) == ["local"] * 3 + ["split"] * 3
    for cid, a in assignments.items():
        assert a.group == (0 if a.mode == "split" else 1)  # the place in random_fractions
        assert a.allocation == allocate(profiles[cid], WORKLOADS[a.mode])


def test_modes_leave_out_a_mode_of_fraction_zero():
    # Prepare
    policy = Policy("random", params=grouping_params(random_fractions=(("centralized", 0.0), ("split", 1.0))))

    # Execute / Assert
    assert policy.modes == ("split",)
    assert Policy("random").modes == ("local", "split", "centralized")


@pytest.mark.parametrize(
    ("fractions", "match"),
    [
        ((("split", 0.5), ("federated", 0.5)), "mode 'federated'"),
        ((("split", 0.5), ("split", 0.5)), "each mode at most once"),
        ((("split", 1.5), ("local", -0.5)), "fractions must be >= 0"),
        ((("split", 0.0), ("local", 0.0)), "not all 0"),
        ((("split", float("nan")),), "fractions must be >= 0"),
    ],
)
def test_params_reject_bad_fractions(fractions, match):
    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        RandomParams(fractions)
