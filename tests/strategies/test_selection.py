"""Tests for footprints, constraint filtering with reasons, ranking with ties and Kendall's tau."""

import math

import pytest

from strategies.cost.workload import ModelShape, RoundPlan
from strategies.fleet.devices import DeviceProfile
from strategies.selection.rank import (
    Footprint,
    Limits,
    Violation,
    choose,
    footprint,
    kendall_tau,
    limits_for,
    ranks,
    violations,
)

PHONE = DeviceProfile(
    cpu_hz_max=1.5e9,
    cycles_per_flop=0.5,
    memory_bytes=1e9,
    energy_budget_j=40.0,
    bandwidth_hz=3e6,
    channel_gain=1e-11,
    noise_w=9.5e-14,
)
SHAPE = ModelShape(
    layer_params=1_000_000,
    client_layers=2,
    server_layers=4,
    hidden=384,
    embedding_params=10_000_000,
    client_state_bytes=50_000,
    layer_prefix_bytes=25_000,
    head_bytes=3_000,
    mean_tokens=20.0,
)
PLAN = RoundPlan(samples=64, batch_size=16, emulator_layers=1)


def _figures(**changes):
    base = dict(
        memory_bytes=5e7, device_params=12_000_000, latency_s=5.0, energy_j=2.0, uplink_bytes=1e6, over_budget=False
    )
    return Footprint(**{**base, **changes})


def test_within_every_limit_nothing_is_broken():
    # Prepare
    limits = Limits(memory_bytes=1e8, device_params=2e7, latency_s=10.0, energy_j=40.0, uplink_bytes=5e6)

    # Execute
    broken = violations(_figures(), limits)

    # Assert
    assert broken == []


@pytest.mark.parametrize(
    "changes, limit, text",
    [
        ({"memory_bytes": 2e8}, "memory_bytes", "device memory 2e+08 B > 1e+08 B"),
        ({"device_params": 35_391_744}, "device_params", "parameters on the device 3.539e+07 > 2e+07"),
        ({"latency_s": 29.67}, "latency_s", "round latency 29.67 s > 10 s"),
        ({"energy_j": 41.0}, "energy_j", "round energy 41 J > 40 J"),
        ({"uplink_bytes": 6e6}, "uplink_bytes", "uplink per round 6e+06 B > 5e+06 B"),
    ],
)
def test_each_broken_limit_is_named_with_both_figures(changes, limit, text):
    # Prepare
    limits = Limits(memory_bytes=1e8, device_params=2e7, latency_s=10.0, energy_j=40.0, uplink_bytes=5e6)

    # Execute
    broken = violations(_figures(**changes), limits)

    # Assert
    assert [v.limit for v in broken] == [limit]
    assert str(broken[0]) == text


def test_every_broken_limit_is_listed_in_table_order():
    # Prepare: parameters and latency over, as SmolLM2 on a phone
    limits = Limits(device_params=3e7, latency_s=20.0)

    # Execute
    broken = violations(_figures(device_params=35_391_744, latency_s=23.75), limits)

    # Assert
    assert broken == [Violation("device_params", 35_391_744.0, 3e7), Violation("latency_s", 23.75, 20.0)]


def test_a_figure_equal_to_its_limit_keeps_it():
    assert violations(_figures(latency_s=10.0), Limits(latency_s=10.0)) == []


def test_unset_limits_default_to_the_devices_memory_and_energy_budget():
    # Execute
    limits = limits_for(PHONE, {"latency_s": 20.0})

    # Assert
    assert limits == Limits(memory_bytes=1e9, energy_j=40.0, latency_s=20.0)


@pytest.mark.parametrize(
    "given",
    [
        {"latency": 20.0},  # not a limit
        {"latency_s": -1.0},  # negative
        {"energy_j": float("inf")},  # not finite
    ],
)
def test_bad_limits_are_refused(given):
    with pytest.raises(ValueError):
        limits_for(PHONE, given)


def test_footprint_of_split_counts_embeddings_and_lower_layers():
    # Execute
    figures = footprint(SHAPE, "split", PLAN, PHONE, server_flops=1e13)

    # Assert: 10M embeddings + 2 lower layers of 1M; a round that fits the budget
    assert figures.device_params == 12_000_000
    assert not figures.over_budget
    assert figures.energy_j <= PHONE.energy_budget_j
    assert figures.latency_s > 0 and figures.uplink_bytes > 0


def test_footprint_of_local_adds_the_emulator_layers_and_uploads_only_the_prefix():
    # Execute
    split = footprint(SHAPE, "split", PLAN, PHONE, server_flops=1e13)
    local = footprint(SHAPE, "local", PLAN, PHONE, server_flops=1e13)

    # Assert
    assert local.device_params == 13_000_000
    assert local.uplink_bytes < split.uplink_bytes


def test_footprint_over_the_energy_budget_runs_at_full_speed_and_says_so():
    # Prepare: a device with almost no energy
    poor = DeviceProfile(**{**PHONE.__dict__, "energy_budget_j": 1e-6})

    # Execute
    figures = footprint(SHAPE, "split", PLAN, poor, server_flops=1e13)

    # Assert
    assert figures.over_budget
    assert violations(figures, limits_for(poor, {}))[0].limit == "energy_j"


def test_ranks_give_tied_scores_the_mean_of_their_ranks():
    # Prepare: two candidates tie for second place
    scores = [0.80, 0.75, 0.90, 0.75]

    # Execute
    result = ranks(scores)

    # Assert: 0.90 first, the 0.75s share ranks 3 and 4
    assert result == [2.0, 3.5, 1.0, 3.5]


def test_choose_breaks_a_tie_by_the_faster_round_then_by_order():
    # Prepare: candidates 0 and 2 tie on prediction; 2 is faster; 1 is lower
    predicted = [0.8, 0.7, 0.8, 0.8]
    latency = [9.0, 1.0, 3.0, 3.0]

    # Execute
    chosen = choose(predicted, latency)

    # Assert: 2 (faster than 0, first of the two equally fast)
    assert chosen == 2


def test_choose_needs_a_latency_per_prediction():
    with pytest.raises(ValueError):
        choose([0.5, 0.6], [1.0])


@pytest.mark.parametrize(
    "x, y, expected",
    [
        ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),  # same order
        ([1, 2, 3, 4], [40, 30, 20, 10], -1.0),  # reversed
        ([1, 2, 3], [1, 3, 2], 1 / 3),  # one discordant pair of three
        # ties in x: pairs 6, tied_x 1, C 5 D 0 -> 5 / sqrt(5 * 6)
        ([1, 1, 2, 3], [1, 2, 3, 4], 5 / math.sqrt(30)),
        # ties in both: tied_x = tied_y = 1 (the same pair), C 5 -> 5 / 5
        ([1, 1, 2, 3], [2, 2, 3, 4], 1.0),
    ],
)
def test_kendall_tau_b_by_hand(x, y, expected):
    assert kendall_tau(x, y) == pytest.approx(expected)


def test_kendall_tau_of_a_constant_ranking_is_undefined():
    # a zero-cost score that cannot tell any candidate apart
    assert math.isnan(kendall_tau([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]))
