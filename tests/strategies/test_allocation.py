"""Tests for latency-minimising CPU frequency and transmit power under an energy budget."""

import math
from dataclasses import replace

import numpy as np
import pytest

from strategies.cost.costmodel import Allocation, Workload, round_cost
from strategies.fleet.devices import DeviceProfile
from strategies.policy.allocation import allocate

# a = h / noise_w = 10 per watt; B = 1 MHz; kappa = 1e-28; f_max = 2 GHz; p_max = 1 W.
A_PER_W, BANDWIDTH = 10.0, 1e6


def _profile(energy_budget_j):
    return DeviceProfile(
        cpu_hz_max=2e9,
        cycles_per_flop=1.0,
        memory_bytes=1e9,
        energy_budget_j=energy_budget_j,
        bandwidth_hz=BANDWIDTH,
        channel_gain=1e-10,
        noise_w=1e-11,
        max_tx_power_w=1.0,
        kappa=1e-28,
    )


def _workload(flops, uplink_bytes):
    return Workload("split", flops, uplink_bytes, 0.0, 0.0, 0.0)


def _grid_best_latency(cycles, bits, budget, n=2000):
    """Least latency over an n x n grid of (f, p) that respects the budget."""
    f = np.linspace(2e9 / n, 2e9, n)[:, None]
    p = np.linspace(1.0 / n, 1.0, n)[None, :]
    uplink_s = bits / (BANDWIDTH * np.log2(1.0 + A_PER_W * p)) if bits else 0.0 * p
    latency = cycles / f + uplink_s
    energy = 1e-28 * cycles * f**2 + p * uplink_s
    return latency[energy <= budget].min()


def _latency_spending_rest_on_compute(profile, workload, tx_power_w):
    """Latency at ``tx_power_w`` with the fastest CPU the remaining budget affords."""
    probe = Allocation(tx_power_w=tx_power_w, cpu_hz=profile.cpu_hz_max, energy_budget_j=0.0)
    uplink_j = round_cost(profile, workload, probe, 1e12).uplink_j
    cycles = workload.client_flops * profile.cycles_per_flop
    f = min(profile.cpu_hz_max, math.sqrt((profile.energy_budget_j - uplink_j) / (1e-28 * cycles)))
    return round_cost(profile, workload, replace(probe, cpu_hz=f), 1e12).latency_s


def test_generous_budget_runs_at_full_speed():
    # Prepare: full speed spends 1e-28 * 1e10 * 4e18 = 4 J computing + 8 / log2(11) = 2.31 J sending
    profile = _profile(energy_budget_j=6.4)

    # Execute
    allocation = allocate(profile, _workload(flops=1e10, uplink_bytes=1e6))

    # Assert
    assert allocation.cpu_hz == 2e9
    assert allocation.tx_power_w == 1.0
    assert allocation.energy_budget_j == 6.4


def test_pure_compute_binding_budget_solves_for_frequency():
    # Prepare: 4 J needed at full speed, 1 J allowed
    profile = _profile(energy_budget_j=1.0)

    # Execute
    allocation = allocate(profile, _workload(flops=1e10, uplink_bytes=0.0))

    # Assert: f = sqrt(E / (kappa * cycles)) = sqrt(1 / 1e-18) = 1e9
    assert allocation.cpu_hz == pytest.approx(1e9, rel=1e-9)
    assert allocation.tx_power_w == 1.0  # unused, so free to be the maximum


def test_pure_uplink_binding_budget_spends_exactly_the_budget():
    # Prepare: 8e6 bits; full power costs 2.31 J; floor is 8 ln2 / 10 = 0.5545 J
    profile, workload = _profile(energy_budget_j=1.0), _workload(flops=0.0, uplink_bytes=1e6)

    # Execute
    allocation = allocate(profile, workload)
    cost = round_cost(profile, workload, allocation, server_flops_per_s=1e12)

    # Assert: p solves p * bits / (B log2(1 + a p)) = E, and no power on a grid does better
    assert allocation.cpu_hz == 2e9
    assert cost.energy_j == pytest.approx(1.0, rel=1e-6)
    assert cost.energy_j <= 1.0
    p = np.linspace(1e-5, 1.0, 100_000)
    uplink_s = 8e6 / (BANDWIDTH * np.log2(1.0 + A_PER_W * p))
    best = uplink_s[p * uplink_s <= 1.0].min()
    assert best * (1 - 1e-3) <= cost.latency_s <= best * (1 + 1e-12)


@pytest.mark.parametrize(
    ("budget", "feasible"),
    [
        (0.5, False),  # below the 0.5545 J floor: no power moves 8e6 bits
        (0.56, True),  # just above it: a very low power does
    ],
)
def test_infeasible_budget_gives_none(budget, feasible):
    # Prepare
    profile = _profile(energy_budget_j=budget)

    # Execute
    allocation = allocate(profile, _workload(flops=1e9, uplink_bytes=1e6))

    # Assert
    assert (allocation is not None) == feasible


@pytest.mark.parametrize(
    ("flops", "uplink_bytes", "budget"),
    [
        (1e10, 1e6, 3.0),  # both resources throttled
        (1e9, 1e6, 1.0),  # compute cheap (0.4 J at 2 GHz), the uplink takes the rest
        (4e10, 2e5, 5.0),  # compute dominated
    ],
)
def test_mixed_workload_matches_grid_search(flops, uplink_bytes, budget):
    # Prepare
    profile, workload = _profile(budget), _workload(flops, uplink_bytes)

    # Execute
    allocation = allocate(profile, workload)
    cost = round_cost(profile, workload, allocation, server_flops_per_s=1e12)

    # Assert: within budget, binding it, and no grid point beats it (the grid comes within 0.5%)
    best = _grid_best_latency(flops, 8.0 * uplink_bytes, budget)
    assert cost.energy_j <= budget
    assert cost.energy_j == pytest.approx(budget, rel=1e-9)
    assert best * (1 - 5e-3) <= cost.latency_s <= best * (1 + 1e-12)
    # and moving 0.1% of power either way, the rest of the budget to compute, does no better
    for scale in (0.999, 1.001):
        nearby = _latency_spending_rest_on_compute(profile, workload, allocation.tx_power_w * scale)
        assert nearby >= cost.latency_s * (1 - 1e-12)
