"""Tests for the grouping policies that assign a training mode to each client."""

import numpy as np
import pytest

from strategies.cost.costmodel import Allocation, Workload
from strategies.fleet.devices import DeviceProfile
from strategies.policy.allocation import allocate
from strategies.policy.grouping import GroupConfig
from strategies.policy.groupings.cost import assign_cost
from strategies.policy.groupings.kmeans import assign_kmeans, kmeans
from strategies.policy.groupings.single import assign_single
from strategies.policy.groupings.threshold import assign_threshold

LOCAL = GroupConfig("local", local_epochs=2, batch_size=8)
SPLIT = GroupConfig("split", local_epochs=1, batch_size=16)
CENTRAL = GroupConfig("centralized", local_epochs=1, batch_size=32)


def _profile(cpu_hz_max=1e9, cycles_per_flop=1.0, memory_bytes=1e9, energy_budget_j=100.0, channel_gain=1e-10):
    # At full power the SNR is 0.3 * 1e-10 / 1e-11 = 3: an uplink of 2e6 bit/s.
    return DeviceProfile(
        cpu_hz_max=cpu_hz_max,
        cycles_per_flop=cycles_per_flop,
        memory_bytes=memory_bytes,
        energy_budget_j=energy_budget_j,
        bandwidth_hz=1e6,
        channel_gain=channel_gain,
        noise_w=1e-11,
        max_tx_power_w=0.3,
        kappa=1e-28,
        downlink_bps=40e6,
    )


# Latencies at full speed on _profile(), server at 1e12 FLOP/s:
#   local:       4 s compute + 0.4 s up + 0.02 s down          = 4.42 s, 0.52 J, floor 0.055 J
#   split:       1 s compute + 4 s up + 0.2 s down + 1 s server = 6.2 s,  1.3 J,  floor 0.55 J
#   centralized: 1 s up + 6 s server                            = 7 s,    0.3 J,  floor 0.14 J
WORKLOADS = {
    "local": Workload("local", 4e9, 1e5, 1e5, 0.0, 5e8),
    "ushape": Workload("ushape", 1.1e9, 1.1e6, 1.1e6, 1.5e12, 2.1e8),
    "split": Workload("split", 1e9, 1e6, 1e6, 1e12, 2e8),
    "centralized": Workload("centralized", 0.0, 2.5e5, 0.0, 6e12, 0.0),
}


def test_assign_single_gives_everyone_the_same_config():
    # Prepare
    profiles = {4: _profile(), 1: _profile(energy_budget_j=0.01)}

    # Execute
    plain = assign_single(profiles, SPLIT)
    allocated = assign_single(profiles, SPLIT, workloads={cid: WORKLOADS for cid in profiles})

    # Assert: sorted by id; allocation only when workloads are given, None where unaffordable
    assert [(a.client_id, a.group, a.mode, a.batch_size) for a in plain] == [(1, 0, "split", 16), (4, 0, "split", 16)]
    assert all(a.allocation is None for a in plain)
    assert allocated[0].allocation is None
    assert allocated[1].allocation == Allocation(0.3, 1e9, 100.0)


def test_assign_threshold_splits_on_capability():
    # Prepare: capabilities 1e8, 5e8 and 2e9 FLOP/s
    profiles = {
        0: _profile(cycles_per_flop=10.0),
        1: _profile(cycles_per_flop=2.0),
        2: _profile(cycles_per_flop=0.5),
    }

    # Execute
    assignments = assign_threshold(profiles, threshold=5e8, strong=SPLIT, weak=CENTRAL)

    # Assert: exactly at the threshold counts as strong
    assert [(a.group, a.mode) for a in assignments] == [(0, "centralized"), (1, "split"), (1, "split")]
    assert {a.threshold for a in assignments} == {5e8}
    assert assignments[0].batch_size == 32


def test_assign_cost_picks_fastest_mode_that_fits():
    # Prepare
    profiles = {
        0: _profile(),  # everything fits: local is fastest (4.42 s)
        1: _profile(memory_bytes=3e8),  # local needs 5e8 B: split (6.2 s)
        2: _profile(energy_budget_j=0.05),  # below every mode's floor: fallback
        3: _profile(memory_bytes=3e8, energy_budget_j=0.35),  # no local; split under its floor
    }
    group_configs = {"local": LOCAL, "split": SPLIT, "centralized": CENTRAL}

    # Execute
    assignments = assign_cost(profiles, {cid: WORKLOADS for cid in profiles}, 1e12, group_configs)

    # Assert: client 2 gets the mode cheapest at full speed (centralized, 0.3 J), unallocated
    assert [(a.client_id, a.group, a.mode) for a in assignments] == [
        (0, 0, "local"),
        (1, 1, "split"),
        (2, 2, "centralized"),
        (3, 2, "centralized"),
    ]
    assert assignments[0].allocation == Allocation(0.3, 1e9, 100.0)
    assert assignments[0].local_epochs == 2
    assert assignments[2].allocation is None
    assert assignments[3].allocation == Allocation(0.3, 1e9, 0.35)  # 0.3 J at full speed fits


def test_assign_cost_rejects_config_under_wrong_mode():
    # Prepare
    group_configs = {"local": SPLIT}

    # Execute / Assert
    with pytest.raises(ValueError, match="local"):
        assign_cost({0: _profile()}, {0: WORKLOADS}, 1e12, group_configs)


def test_kmeans_separates_two_blobs():
    # Prepare
    points = np.array([[10.0, 10.0], [0.0, 0.0], [10.0, 11.0], [0.0, 1.0]])

    # Execute
    labels, centroids = kmeans(points, k=2, seed=0)

    # Assert
    assert labels[0] == labels[2] and labels[1] == labels[3] and labels[0] != labels[1]
    assert centroids[labels[0]] == pytest.approx([10.0, 10.5])
    assert centroids[labels[1]] == pytest.approx([0.0, 0.5])


def _tiered_fleet():
    weak = dict(cpu_hz_max=5e8, cycles_per_flop=4.0, memory_bytes=5e8, energy_budget_j=5.0, channel_gain=1e-12)
    mid = dict(cpu_hz_max=1.5e9, cycles_per_flop=0.5, memory_bytes=4e9, energy_budget_j=200.0, channel_gain=1e-10)
    strong = dict(cpu_hz_max=3e9, cycles_per_flop=0.01, memory_bytes=3e10, energy_budget_j=5e3, channel_gain=1e-8)
    # Interleaved ids with small jitter, so neither order nor ties decide the clustering.
    tiers = [strong, weak, mid, weak, strong, mid, weak, mid, strong]
    return {cid: _profile(**dict(t, cpu_hz_max=t["cpu_hz_max"] * (1 + 0.01 * cid))) for cid, t in enumerate(tiers)}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_assign_kmeans_ranks_clusters_weakest_first(seed):
    # Prepare
    profiles = _tiered_fleet()

    # Execute
    assignments = assign_kmeans(profiles, k=3, seed=seed, group_configs_by_rank=[CENTRAL, SPLIT, LOCAL])

    # Assert: weak -> centralized, mid -> split, strong -> local, whatever the seed
    assert [a.mode for a in assignments] == [
        "local",
        "centralized",
        "split",
        "centralized",
        "local",
        "split",
        "centralized",
        "split",
        "local",
    ]
    assert [a.group for a in assignments][:3] == [2, 0, 1]


def test_assign_kmeans_is_deterministic_and_attaches_allocations():
    # Prepare
    profiles = _tiered_fleet()
    workloads = {cid: WORKLOADS for cid in profiles}

    # Execute
    first = assign_kmeans(profiles, 2, 3, [CENTRAL, LOCAL], workloads=workloads)
    again = assign_kmeans(profiles, 2, 3, [CENTRAL, LOCAL], workloads=workloads)

    # Assert
    assert first == again
    assert first[0].mode == "local" and first[1].mode == "centralized"
    assert first[0].allocation == allocate(profiles[0], WORKLOADS["local"])


@pytest.mark.parametrize(
    ("k", "configs", "match"),
    [
        (2, [CENTRAL], "one group config per cluster"),
        (10, [CENTRAL] * 10, "k must be"),
    ],
)
def test_assign_kmeans_rejects_bad_k(k, configs, match):
    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        assign_kmeans(_tiered_fleet(), k, 0, configs)
