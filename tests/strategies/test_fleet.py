"""Tests for turning a fleet's profiles into each client's group, mode, allocation and upload."""

import pytest

from strategies.cost.costmodel import Allocation
from strategies.cost.workload import local_workload, split_workload, upload_workload
from strategies.fleet.devices import DeviceProfile, load_fleet_spec, sample_fleet
from strategies.policy.allocation import allocate
from strategies.policy.grouping import ModeAssignment
from strategies.policy.groupings.cost import CostParams
from strategies.policy.groupings.registry import grouping_params
from strategies.policy.policies import (
    Policy,
    assign,
    assignment_config,
    describe,
    effective_allocation,
    fleet_workloads,
    parse_schedule,
    reassign,
    round_plan,
)
from strategies.wire import names as wire
from strategies.wire.names import MODES
from tests.strategies.test_workload import SHAPE  # the toy model: 2 layers below the split, 4 above

STEPS, ACTIVATION_BYTES = 2, 4
CONFIG_KEYS = {
    "group",
    "mode",
    "policy",
    "alloc-tx-power-w",
    "alloc-cpu-hz",
    "alloc-energy-budget-j",
    "alloc-over-budget",
}


def _profile(energy_budget_j=1e3, cycles_per_flop=1.0):
    # a = h / noise_w = 10 per watt, B = 1 MHz; capability 1e9 / cycles_per_flop FLOP/s.
    return DeviceProfile(
        cpu_hz_max=1e9,
        cycles_per_flop=cycles_per_flop,
        memory_bytes=1e9,
        energy_budget_j=energy_budget_j,
        bandwidth_hz=1e6,
        channel_gain=1e-10,
        noise_w=1e-11,
        max_tx_power_w=1.0,
    )


def _bimodal(n=10, seed=3):
    return dict(enumerate(sample_fleet(load_fleet_spec("bimodal"), n, seed)))


def _workloads(policy, profiles, available=None, emulator_layers=1, upload_kind="activations"):
    available = available or {cid: 100 for cid in profiles}
    workloads, _ = fleet_workloads(
        policy, SHAPE, profiles, available, STEPS, emulator_layers, ACTIVATION_BYTES, upload_kind
    )
    return workloads


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "fedavg"}, "policy 'fedavg'"),
        ({"name": "Split"}, "policy 'Split'"),
        ({"name": "threshold", "weak_mode": "edge"}, "mode 'edge'"),
        ({"name": "threshold", "strong_mode": "cloud"}, "mode 'cloud'"),
        ({"name": "kmeans", "kmeans_modes": ("split", "federated")}, "mode 'federated'"),
        ({"name": "cost", "cost_modes": ("Local",)}, "mode 'Local'"),
        ({"name": "cost", "cost_mode": ("local",)}, "no grouping policy has the parameters \\['cost_mode'\\]"),
    ],
)
def test_policy_rejects_unknown_names(kwargs, match):
    # Prepare
    kwargs = dict(kwargs)  # a copy: the parametrize dict must stay whole for a second run in one process
    name = kwargs.pop("name")

    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        Policy(name, params=grouping_params(**kwargs))


def test_policy_rejects_parameters_of_another_policy():
    # Execute / Assert: the threshold policy's slot holds ThresholdParams only
    with pytest.raises(ValueError, match="policy 'threshold' takes ThresholdParams, got CostParams"):
        Policy("threshold", params={"threshold": CostParams()})


@pytest.mark.parametrize(
    ("policy", "modes"),
    [
        (Policy("split"), ("split",)),
        (Policy("local"), ("local",)),
        (Policy("centralized"), ("centralized",)),
        (Policy("threshold"), ("split", "centralized")),  # weak centralized, strong split
        (
            Policy("threshold", params=grouping_params(weak_mode="centralized", strong_mode="local")),
            ("local", "centralized"),
        ),
        (Policy("threshold", params=grouping_params(weak_mode="split", strong_mode="split")), ("split",)),
        (Policy("kmeans"), ("local", "split", "centralized")),
        (Policy("kmeans", params=grouping_params(kmeans_modes=("centralized", "split"))), ("split", "centralized")),
        (Policy("cost", params=grouping_params(cost_modes=("split", "local"))), ("local", "split")),
        # The other policies' settings do not leak into a single-mode policy.
        (
            Policy("split", params=grouping_params(weak_mode="local", kmeans_modes=("local",), cost_modes=("local",))),
            ("split",),
        ),
    ],
)
def test_policy_modes_in_modes_order(policy, modes):
    # Execute / Assert
    assert policy.modes == modes


@pytest.mark.parametrize(("mode", "samples"), [("local", 2 * 3 * 4), ("split", 2 * 4), ("centralized", 2 * 4)])
def test_round_plan_multiplies_steps_epochs_and_batch(mode, samples):
    # Prepare
    policy = Policy("cost", local_epochs=3, batch_size=4)

    # Execute
    plan = round_plan(policy, mode, steps=2, emulator_layers=3, activation_bytes=2, upload_kind="samples")

    # Assert: only local mode takes several epochs a round
    assert plan.samples == samples
    assert plan.batch_size == 4
    assert (plan.emulator_layers, plan.activation_bytes, plan.upload_kind) == (3, 2, "samples")


def test_fleet_workloads_covers_every_client_and_mode():
    # Prepare: a sampled fleet plus one client too starved to upload a single row
    profiles = {**_bimodal(), 10: _profile(energy_budget_j=1e-6)}
    available = {cid: 5 + 7 * cid for cid in profiles}
    policy = Policy("cost", local_epochs=2, batch_size=4)

    # Execute
    workloads, rows = fleet_workloads(policy, SHAPE, profiles, available, STEPS, 1, ACTIVATION_BYTES, "activations")

    # Assert
    assert set(workloads) == set(rows) == set(profiles)
    for cid, by_mode in workloads.items():
        assert set(by_mode) == set(MODES)
        assert {m: w.mode for m, w in by_mode.items()} == {m: m for m in MODES}
        assert 1 <= rows[cid] <= available[cid]
        plan = round_plan(policy, "centralized", STEPS, 1, ACTIVATION_BYTES, "activations")
        assert by_mode["centralized"] == upload_workload(SHAPE, plan, rows[cid])
    # the sampled clients afford the cap (one round's plan, or all they hold); the starved one
    # uploads the cap anyway, over budget
    cap = STEPS * 4
    assert all(rows[cid] == min(available[cid], cap) for cid in range(10))
    assert rows[10] == min(available[10], cap) == 8
    assert allocate(profiles[10], workloads[10]["centralized"]) is None


@pytest.mark.parametrize(("emulator_layers", "kept"), [(0, 4), (1, 1), (4, 4)])
def test_fleet_workloads_emulator_layers_zero_means_full_model(emulator_layers, kept):
    # Prepare
    policy = Policy("local", local_epochs=2, batch_size=4)
    profiles = {0: _profile()}

    # Execute
    workloads = _workloads(policy, profiles, emulator_layers=emulator_layers)

    # Assert
    plans = {m: round_plan(policy, m, STEPS, kept, ACTIVATION_BYTES, "activations") for m in MODES}
    assert workloads[0]["local"] == local_workload(SHAPE, plans["local"])
    assert workloads[0]["split"] == split_workload(SHAPE, plans["split"])


def test_fleet_workloads_rows_capped_by_budget():
    # Prepare: one activations row is 338 B; 2e-3 J pays for about 10 of them
    policy = Policy("centralized", batch_size=4)
    profiles = {0: _profile(energy_budget_j=2e-3)}

    # Execute
    workloads, rows = fleet_workloads(
        policy, SHAPE, profiles, {0: 1000}, STEPS, 1, ACTIVATION_BYTES, "activations", upload_cap=1000
    )

    # Assert: the largest row count that fits
    assert 1 <= rows[0] < 1000
    plan = round_plan(policy, "centralized", STEPS, 1, ACTIVATION_BYTES, "activations")
    assert allocate(profiles[0], workloads[0]["centralized"]) is not None
    assert allocate(profiles[0], upload_workload(SHAPE, plan, rows[0] + 1)) is None


@pytest.mark.parametrize("mode", MODES)
def test_assign_single_mode_puts_everyone_in_group_zero(mode):
    # Prepare
    policy = Policy(mode)
    profiles = _bimodal()
    workloads = _workloads(policy, profiles)

    # Execute
    assignments = assign(policy, profiles, workloads)

    # Assert
    assert sorted(assignments) == sorted(profiles)
    for cid, a in assignments.items():
        assert (a.client_id, a.group, a.mode, a.threshold) == (cid, 0, mode, None)
        assert a.allocation == allocate(profiles[cid], workloads[cid][mode])
        assert a.allocation is not None


def test_assign_threshold_splits_on_capability():
    # Prepare: capabilities 1e8, 5e8 (exactly the threshold) and 2e9 FLOP/s
    policy = Policy(
        "threshold", params=grouping_params(threshold_flops=5e8, weak_mode="centralized", strong_mode="local")
    )
    profiles = {7: _profile(cycles_per_flop=10.0), 2: _profile(cycles_per_flop=2.0), 5: _profile(cycles_per_flop=0.5)}

    # Execute
    assignments = assign(policy, profiles, _workloads(policy, profiles))

    # Assert: below the threshold goes weak (group 0), at or above it strong (group 1)
    assert {cid: (a.group, a.mode) for cid, a in assignments.items()} == {
        7: (0, "centralized"),
        2: (1, "local"),
        5: (1, "local"),
    }
    assert {a.threshold for a in assignments.values()} == {5e8}
    assert all(a.allocation is not None for a in assignments.values())


def test_assign_threshold_on_sampled_fleet():
    # Prepare: phones do 0.8 - 10 GFLOP/s, base stations 100 - 600
    policy = Policy("threshold", params=grouping_params(threshold_flops=20e9))
    profiles = _bimodal()

    # Execute
    assignments = assign(policy, profiles, _workloads(policy, profiles))

    # Assert
    weak = {cid for cid, p in profiles.items() if p.capability < 20e9}
    assert 0 < len(weak) < len(profiles)  # both tiers drawn
    for cid, a in assignments.items():
        expected = (0, "centralized") if cid in weak else (1, "split")
        assert (a.group, a.mode) == expected
        assert a.threshold == 20e9


@pytest.mark.parametrize("cost_modes", [("local", "split", "centralized"), ("centralized", "split")])
def test_assign_cost_picks_a_fitting_mode_for_everyone(cost_modes):
    # Prepare
    policy = Policy("cost", params=grouping_params(cost_modes=cost_modes))
    profiles = _bimodal()
    workloads = _workloads(policy, profiles)

    # Execute
    assignments = assign(policy, profiles, workloads)

    # Assert: groups are numbered by the order of cost_modes
    assert sorted(assignments) == sorted(profiles)
    for cid, a in assignments.items():
        assert a.mode in cost_modes
        assert a.group == cost_modes.index(a.mode)
        assert a.allocation is not None
        assert a.allocation == allocate(profiles[cid], workloads[cid][a.mode])


def test_assign_kmeans_more_modes_than_clients_fails():
    # Prepare
    policy = Policy("kmeans", params=grouping_params(kmeans_modes=("centralized", "split", "local")))
    profiles = {0: _profile(), 1: _profile(cycles_per_flop=0.1)}

    # Execute / Assert
    with pytest.raises(ValueError, match="names 3 clusters for 2 clients"):
        assign(policy, profiles, _workloads(policy, profiles))


def test_assign_kmeans_groups_weakest_first():
    # Prepare
    policy = Policy("kmeans", seed=1, params=grouping_params(kmeans_modes=("centralized", "local")))
    profiles = _bimodal()

    # Execute
    assignments = assign(policy, profiles, _workloads(policy, profiles))

    # Assert: the two tiers are far apart, so the phones make the weak cluster
    for cid, a in assignments.items():
        phone = profiles[cid].capability < 20e9
        assert (a.group, a.mode) == ((0, "centralized") if phone else (1, "local"))


def test_assignment_config_carries_group_mode_and_allocation():
    # Prepare
    policy = Policy("split")
    profile = _profile()
    allocation = Allocation(tx_power_w=0.5, cpu_hz=7e8, energy_budget_j=1e3)
    assignment = ModeAssignment(3, 1, "split", 1, 16, allocation)

    # Execute
    config = assignment_config(assignment, policy, profile)

    # Assert
    assert config == {
        "group": 1,
        "mode": "split",
        "policy": "split",
        "alloc-tx-power-w": 0.5,
        "alloc-cpu-hz": 7e8,
        "alloc-energy-budget-j": 1e3,
        "alloc-over-budget": False,
    }


def test_assignment_config_over_budget_runs_at_full_speed():
    # Prepare: a 1 uJ budget cannot send the split boundary at any power
    policy = Policy("split")
    profiles = {0: _profile(energy_budget_j=1e-6)}
    assignment = assign(policy, profiles, _workloads(policy, profiles))[0]

    # Execute
    config = assignment_config(assignment, policy, profiles[0])

    # Assert
    assert assignment.allocation is None
    assert set(config) == CONFIG_KEYS
    assert config[wire.OVER_BUDGET] is True
    assert config["alloc-tx-power-w"] == 1.0
    assert config["alloc-cpu-hz"] == 1e9
    assert config["alloc-energy-budget-j"] == 1e-6


def test_assignment_config_adds_threshold_for_threshold_policy():
    # Prepare
    policy = Policy("threshold", params=grouping_params(threshold_flops=5e8))
    profiles = {0: _profile(cycles_per_flop=10.0)}
    assignment = assign(policy, profiles, _workloads(policy, profiles))[0]

    # Execute
    config = assignment_config(assignment, policy, profiles[0])

    # Assert
    assert set(config) == CONFIG_KEYS | {wire.THRESHOLD_FLOPS}
    assert config[wire.THRESHOLD_FLOPS] == 5e8
    assert (config["policy"], config["mode"], config["group"]) == ("threshold", "centralized", 0)
    assert config["alloc-over-budget"] is False


def test_effective_allocation_keeps_a_fitting_allocation():
    # Prepare
    allocation = Allocation(tx_power_w=0.1, cpu_hz=2e8, energy_budget_j=1e3)
    assignment = ModeAssignment(0, 0, "local", 1, 16, allocation)

    # Execute
    effective, over = effective_allocation(assignment, _profile())

    # Assert
    assert (effective, over) == (allocation, False)


@pytest.mark.parametrize("mode", ["local", "centralized"])
def test_reassign_changes_mode_and_keeps_client_and_group(mode):
    # Prepare
    policy = Policy("threshold", local_epochs=3, batch_size=8, params=grouping_params(threshold_flops=5e8))
    profiles = {4: _profile(cycles_per_flop=0.5)}
    workloads = _workloads(policy, profiles)
    before = assign(policy, profiles, workloads)[4]

    # Execute
    after = reassign(before, mode, policy, profiles[4], workloads[4])

    # Assert
    assert before.mode == "split"
    assert (after.client_id, after.group, after.threshold) == (4, 1, 5e8)
    assert after.mode == mode
    assert after.local_epochs == (3 if mode == "local" else 1)
    assert after.batch_size == 8
    assert after.allocation == allocate(profiles[4], workloads[4][mode])


@pytest.mark.parametrize(("mode", "upload_rows"), [("centralized", 12), ("split", 0), ("local", 0)])
def test_describe_reports_upload_rows_only_for_centralized(mode, upload_rows):
    # Prepare
    profile = _profile(energy_budget_j=1e-6)
    assignment = ModeAssignment(0, 2, mode, 1, 16, None)

    # Execute
    line = describe(assignment, profile, upload_rows=12)

    # Assert
    assert line["upload-rows"] == upload_rows
    assert (line["group"], line["mode"], line["over-budget"]) == (2, mode, True)
    assert (line["tx-power-w"], line["cpu-hz"]) == (1.0, 1e9)
    assert line["capability-flops"] == 1e9
    assert line["snr-db"] == 10.0  # 1 W * 1e-10 / 1e-11 = 10


def test_upload_cap_bounds_the_rows_and_a_tight_budget_lowers_them():
    # Prepare: energy for some rows only, at any power
    policy = Policy("centralized", batch_size=4)
    plan = round_plan(policy, "centralized", STEPS, 1, ACTIVATION_BYTES, "activations")
    rich, tight = _profile(), _profile(energy_budget_j=2e-3)  # 2e-3 J: about 10 rows

    # Execute
    _, rows = fleet_workloads(
        policy, SHAPE, {0: rich, 1: tight}, {0: 500, 1: 500}, STEPS, 1, ACTIVATION_BYTES, "activations", upload_cap=50
    )

    # Assert: the rich client stops at the cap although it could pay for all 500; the tight one below it
    assert rows[0] == 50
    assert allocate(rich, upload_workload(SHAPE, plan, 500)) is not None
    assert 1 <= rows[1] < 50
    assert allocate(tight, upload_workload(SHAPE, plan, rows[1] + 1)) is None


@pytest.mark.parametrize(
    ("text", "stages"),
    [
        ("", ()),
        ("split", (("split", 0),)),
        ("cost:1, threshold", (("cost", 1), ("threshold", 0))),
        ("centralized:2,threshold:3,split:1", (("centralized", 2), ("threshold", 3), ("split", 1))),
    ],
)
def test_parse_schedule_reads_stages(text, stages):
    assert parse_schedule(text) == stages


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("cost,split", "needs its rounds"),  # only the last stage may run to the end
        ("cost:x,split", "whole number"),
    ],
)
def test_parse_schedule_names_the_bad_stage(text, match):
    with pytest.raises(ValueError, match=match):
        parse_schedule(text)


@pytest.mark.parametrize(
    ("schedule", "match"),
    [
        ((("cost", 1), ("fastest", 0)), "'fastest' must be one of"),
        ((("cost", 0), ("split", 0)), "stage 1 \\(cost\\) needs a number of rounds"),
    ],
)
def test_policy_rejects_a_bad_schedule(schedule, match):
    with pytest.raises(ValueError, match=match):
        Policy(schedule=schedule)


def test_policy_at_follows_the_schedule_round_by_round():
    # Prepare: one round of cost, two of threshold, then split to the end
    policy = Policy(name="cost", schedule=(("cost", 1), ("threshold", 2), ("split", 0)))

    # Execute
    names = [policy.at(r).name for r in range(1, 7)]

    # Assert: stage boundaries after rounds 1 and 3; the schedule travels with each stage
    assert names == ["cost", "threshold", "threshold", "split", "split", "split"]
    assert policy.at(2).schedule == policy.schedule
    assert Policy(name="kmeans").at(5).name == "kmeans"  # no schedule: the policy itself
    # A last stage with rounds still lasts to the end of the run
    assert Policy(schedule=(("cost", 1), ("split", 1))).at(9).name == "split"
