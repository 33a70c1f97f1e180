"""Tests for the simulated time and energy cost model."""

import json

import pytest

from strategies.cost.costmodel import (
    Allocation,
    EnergyLedger,
    RoundCost,
    Workload,
    ledger_rows,
    round_cost,
    round_latency,
    uplink_rate,
)
from strategies.fleet.devices import DeviceProfile


def _profile():
    # SNR at 0.3 W: 0.3 * 1e-10 / 1e-11 = 3, so the rate is 1e6 * log2(4) = 2e6 bit/s.
    return DeviceProfile(
        cpu_hz_max=1e9,
        cycles_per_flop=2.0,
        memory_bytes=1e9,
        energy_budget_j=10.0,
        bandwidth_hz=1e6,
        channel_gain=1e-10,
        noise_w=1e-11,
        max_tx_power_w=0.5,
        kappa=1e-28,
        downlink_bps=40e6,
    )


def _cost(latency_s, server_s=0.0, energy_j=1.0):
    return RoundCost(
        compute_s=latency_s - server_s,
        uplink_s=0.0,
        downlink_s=0.0,
        server_s=server_s,
        latency_s=latency_s,
        compute_j=energy_j,
        uplink_j=0.0,
        energy_j=energy_j,
    )


def test_uplink_rate_shannon():
    # Prepare: SNR 3 -> log2(1 + 3) = 2 bit/s/Hz
    # Execute
    rate = uplink_rate(bandwidth_hz=1e6, tx_power_w=0.3, channel_gain=1e-10, noise_w=1e-11)

    # Assert
    assert rate == pytest.approx(2e6)


def test_round_cost_hand_worked():
    # Prepare
    workload = Workload(
        mode="split",
        client_flops=1e9,
        uplink_bytes=1e6,
        downlink_bytes=5e6,
        server_flops=3e12,
        client_memory_bytes=1e8,
    )
    allocation = Allocation(tx_power_w=0.3, cpu_hz=1e9, energy_budget_j=10.0)

    # Execute
    cost = round_cost(_profile(), workload, allocation, server_flops_per_s=1e12)

    # Assert
    assert cost.compute_s == pytest.approx(2.0)  # 2e9 cycles / 1e9 Hz
    assert cost.compute_j == pytest.approx(0.2)  # 1e-28 * 2e9 * (1e9)^2
    assert cost.uplink_s == pytest.approx(4.0)  # 8e6 bit / 2e6 bit/s
    assert cost.uplink_j == pytest.approx(1.2)  # 0.3 W * 4 s
    assert cost.downlink_s == pytest.approx(1.0)  # 4e7 bit / 4e7 bit/s
    assert cost.server_s == pytest.approx(3.0)  # 3e12 / 1e12
    assert cost.latency_s == pytest.approx(10.0)
    assert cost.energy_j == pytest.approx(1.4)


def test_round_cost_without_uplink_spends_no_radio_energy():
    # Prepare
    workload = Workload("local", 5e8, 0.0, 0.0, 0.0, 1e8)
    allocation = Allocation(tx_power_w=0.5, cpu_hz=5e8, energy_budget_j=10.0)

    # Execute
    cost = round_cost(_profile(), workload, allocation, server_flops_per_s=1e12)

    # Assert: 1e9 cycles at 0.5 GHz; 1e-28 * 1e9 * 2.5e17 J
    assert cost.uplink_s == 0.0 and cost.uplink_j == 0.0
    assert cost.compute_s == pytest.approx(2.0)
    assert cost.energy_j == pytest.approx(0.025)


@pytest.mark.parametrize(
    "allocation",
    [
        Allocation(tx_power_w=0.3, cpu_hz=2e9, energy_budget_j=1.0),  # above cpu_hz_max
        Allocation(tx_power_w=0.6, cpu_hz=1e9, energy_budget_j=1.0),  # above max_tx_power_w
        Allocation(tx_power_w=0.3, cpu_hz=0.0, energy_budget_j=1.0),  # no frequency
    ],
)
def test_round_cost_rejects_allocation_beyond_device(allocation):
    # Prepare
    workload = Workload("local", 1e9, 1e3, 0.0, 0.0, 0.0)

    # Execute / Assert
    with pytest.raises(ValueError):
        round_cost(_profile(), workload, allocation, server_flops_per_s=1e12)


def test_workload_rejects_unknown_mode_and_negative_volume():
    # Execute / Assert
    with pytest.raises(ValueError, match="federated"):
        Workload("federated", 1.0, 1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="uplink_bytes"):
        Workload("local", 1.0, -1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("costs", "server_s", "expected"),
    [
        ([_cost(10.0, 3.0), _cost(4.0)], 2.0, 12.0),  # slowest client 10 s, plus 2 s after
        ([_cost(5.0, 4.0), _cost(5.0, 4.0)], 0.0, 8.0),  # shared server busy 4 + 4 s
        ([], 1.5, 1.5),  # nobody took part: only the server's own time
    ],
)
def test_round_latency(costs, server_s, expected):
    # Execute
    latency = round_latency(costs, server_s)

    # Assert
    assert latency == pytest.approx(expected)


def test_ledger_rows_are_json_rows_per_client():
    # Prepare
    costs = {7: _cost(3.0), 2: _cost(5.0, energy_j=2.0)}

    # Execute
    rows = ledger_rows(4, costs)

    # Assert: sorted by client id, every RoundCost field present
    assert [row["client_id"] for row in rows] == [2, 7]
    assert rows[0]["round"] == 4 and rows[0]["energy_j"] == 2.0
    assert json.loads(json.dumps(rows)) == rows


def test_energy_ledger_accumulates_clock_and_totals():
    # Prepare
    ledger = EnergyLedger()

    # Execute
    first = ledger.record(1, {0: _cost(3.0, energy_j=1.0), 1: _cost(5.0, energy_j=2.0)})
    second = ledger.record(2, {0: _cost(4.0, energy_j=0.5)}, server_s=1.0)

    # Assert: rounds last 5 s and 4 + 1 s; client 0 spent 1 + 0.5 J over 3 + 4 s
    assert (first, second) == (pytest.approx(5.0), pytest.approx(5.0))
    assert ledger.clock_s == pytest.approx(10.0)
    assert [row["clock_s"] for row in ledger.rows] == pytest.approx([5.0, 5.0, 10.0])
    totals = ledger.totals()
    assert totals[0] == {"latency_s": pytest.approx(7.0), "energy_j": pytest.approx(1.5)}
    assert totals[1] == {"latency_s": pytest.approx(5.0), "energy_j": pytest.approx(2.0)}
    restored = EnergyLedger(**json.loads(json.dumps(vars(ledger))))
    assert restored == ledger
