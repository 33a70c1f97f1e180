"""Tests for the per-round workloads of each training mode, derived from the model's shape."""

from dataclasses import replace

import pytest

from strategies.cost.workload import (
    ModelShape,
    RoundPlan,
    affordable_rows,
    boundary_bytes,
    local_workload,
    pool_server_flops,
    split_workload,
    upload_row_bytes,
    upload_workload,
    ushape_workload,
)
from strategies.fleet.devices import DeviceProfile
from strategies.policy.allocation import allocate

# A toy model: 2 layers below the split, 4 above, 100 parameters a layer, 10 tokens a sample.
SHAPE = ModelShape(
    layer_params=100,
    client_layers=2,
    server_layers=4,
    hidden=8,
    embedding_params=50,
    client_state_bytes=64,
    layer_prefix_bytes=32,
    head_bytes=16,
    mean_tokens=10.0,
)
# 3 samples a round, so 30 tokens; a layer's forward over them is 2 * 100 * 30 = 6000 FLOPs.
PLAN = RoundPlan(samples=3, batch_size=2, emulator_layers=1, activation_bytes=4)


def _profile(energy_budget_j):
    # a = h / noise_w = 10 per watt, B = 1 MHz: one bit costs at least ln2 / 1e7 J to send.
    return DeviceProfile(
        cpu_hz_max=1e9,
        memory_bytes=1e9,
        energy_budget_j=energy_budget_j,
        bandwidth_hz=1e6,
        channel_gain=1e-10,
        noise_w=1e-11,
        max_tx_power_w=1.0,
    )


def test_split_workload_matches_hand_count():
    # Execute
    workload = split_workload(SHAPE, PLAN)

    # Assert
    assert workload.mode == "split"
    assert workload.client_flops == pytest.approx(6 * 2 * 100 * 30)  # 36000
    assert workload.server_flops == pytest.approx(4 * 4 * 100 * 30)  # 48000
    # 30 tokens * (8 values * 4 B + 1 mask B) + 3 labels * 8 B, then the lower prefix
    assert workload.uplink_bytes == pytest.approx(30 * 33 + 24 + 64)
    # weights 4 * (50 + 2 * 100) B; activations 4 B * batch 2 * 10 tokens * 8 * 12 values * 2 layers
    assert workload.client_memory_bytes == pytest.approx(4 * 250 + 4 * 2 * 10 * 8 * 12 * 2)


@pytest.mark.parametrize(
    ("kept", "flops", "uplink"),
    [
        (1, 4 * (2 + 1) * 100 * 30, 64),  # an emulator: only the lower prefix goes up
        (3, 4 * (2 + 3) * 100 * 30, 64),
        (4, 4 * (2 + 4) * 100 * 30, 64 + 4 * 32 + 16),  # the full model: upper prefix and head too
    ],
)
def test_local_workload_matches_hand_count(kept, flops, uplink):
    # Prepare
    plan = replace(PLAN, emulator_layers=kept)

    # Execute
    workload = local_workload(SHAPE, plan)

    # Assert
    assert workload.mode == "local"
    assert workload.client_flops == pytest.approx(flops)
    assert workload.uplink_bytes == pytest.approx(uplink)
    assert workload.downlink_bytes == pytest.approx(64 + kept * 32 + 16)
    assert workload.server_flops == 0.0
    assert workload.client_memory_bytes == pytest.approx(4 * (50 + (2 + kept) * 100) + 4 * 2 * 10 * 8 * 12 * (2 + kept))


@pytest.mark.parametrize("kept", [0, -1, 5])
def test_local_workload_rejects_emulator_layers_out_of_range(kept):
    # Prepare
    plan = replace(PLAN, emulator_layers=kept)

    # Execute / Assert
    with pytest.raises(ValueError, match="emulator layers"):
        local_workload(SHAPE, plan)


def test_samples_upload_costs_no_client_compute():
    # Prepare
    plan = replace(PLAN, upload_kind="samples")

    # Execute
    workload = upload_workload(SHAPE, plan, rows=5)

    # Assert: 5 rows * (10 tokens * (4 B id + 1 B mask) + 8 B label); server trains all 6 layers
    assert workload.mode == "centralized"
    assert workload.client_flops == 0.0
    assert workload.uplink_bytes == pytest.approx(5 * (10 * (4 + 1) + 8))  # 290
    assert workload.downlink_bytes == 0.0
    assert workload.client_memory_bytes == 0.0
    assert workload.server_flops == pytest.approx(4 * (2 + 4) * 100 * 30)


@pytest.mark.parametrize("activation_bytes", [4, 2])
def test_activations_upload_matches_hand_count(activation_bytes):
    # Prepare
    plan = replace(PLAN, upload_kind="activations", activation_bytes=activation_bytes)

    # Execute
    workload = upload_workload(SHAPE, plan, rows=5)

    # Assert: one forward of the 2 lower layers over 50 tokens; server trains the 4 upper ones
    assert workload.client_flops == pytest.approx(2 * 2 * 100 * 50)
    assert workload.uplink_bytes == pytest.approx(5 * (10 * (8 * activation_bytes + 1) + 8))
    assert workload.downlink_bytes == pytest.approx(64)
    assert workload.server_flops == pytest.approx(4 * 4 * 100 * 30)


@pytest.mark.parametrize("kind", ["tokens", "Activations", ""])
def test_upload_workload_rejects_unknown_kind(kind):
    # Prepare
    plan = replace(PLAN, upload_kind=kind)

    # Execute / Assert
    with pytest.raises(ValueError, match="upload kind"):
        upload_workload(SHAPE, plan, rows=5)


@pytest.mark.parametrize(
    ("kind", "activation_bytes", "expected"),
    [
        ("activations", 4, 10 * (8 * 4 + 1) + 8),  # 338
        ("activations", 2, 10 * (8 * 2 + 1) + 8),  # 178
        ("samples", 4, 10 * (4 + 1) + 8),  # 58: ids are 4 B whatever the activation width
        ("samples", 2, 10 * (4 + 1) + 8),
    ],
)
def test_upload_row_bytes(kind, activation_bytes, expected):
    # Execute
    row = upload_row_bytes(SHAPE, kind, activation_bytes)

    # Assert
    assert row == pytest.approx(expected)


def test_boundary_bytes_counts_values_masks_and_labels():
    # Execute
    full, half = boundary_bytes(SHAPE, 3, 4), boundary_bytes(SHAPE, 3, 2)

    # Assert
    assert full == pytest.approx(30 * (8 * 4 + 1) + 3 * 8)  # 1014
    assert half == pytest.approx(30 * (8 * 2 + 1) + 3 * 8)  # 534


@pytest.mark.parametrize(
    ("kind", "layers"),
    [("activations", 4), ("samples", 6)],
)
def test_pool_server_flops(kind, layers):
    # Execute
    flops = pool_server_flops(SHAPE, 7, kind)

    # Assert: forward and backward over 70 tokens
    assert flops == pytest.approx(4 * layers * 100 * 70)


@pytest.mark.parametrize("kind", ["activations", "samples"])
def test_affordable_rows_generous_budget_takes_everything(kind):
    # Prepare
    plan = replace(PLAN, upload_kind=kind)

    # Execute
    rows = affordable_rows(_profile(1e6), SHAPE, plan, available=1000)

    # Assert
    assert rows == 1000


@pytest.mark.parametrize("kind", ["activations", "samples"])
def test_affordable_rows_tiny_budget_affords_none(kind):
    # Prepare: one row is at least 58 B = 464 bit, whose floor is 464 ln2 / 1e7 = 3.2e-5 J
    plan = replace(PLAN, upload_kind=kind)

    # Execute
    rows = affordable_rows(_profile(1e-6), SHAPE, plan, available=1000)

    # Assert
    assert rows == 0


@pytest.mark.parametrize("available", [0, -3])
def test_affordable_rows_nothing_available(available):
    # Execute
    rows = affordable_rows(_profile(1e6), SHAPE, PLAN, available=available)

    # Assert
    assert rows == 0


@pytest.mark.parametrize("kind", ["activations", "samples"])
@pytest.mark.parametrize("budget", [2e-4, 1e-3, 5e-3])
def test_affordable_rows_is_the_largest_that_fits(kind, budget):
    # Prepare: budgets between one row's floor and the whole 1000 rows
    plan = replace(PLAN, upload_kind=kind)
    profile = _profile(budget)

    # Execute
    rows = affordable_rows(profile, SHAPE, plan, available=1000)

    # Assert
    assert 1 <= rows < 1000
    assert allocate(profile, upload_workload(SHAPE, plan, rows)) is not None
    assert allocate(profile, upload_workload(SHAPE, plan, rows + 1)) is None


def test_affordable_rows_matches_linear_scan():
    # Prepare
    plan = replace(PLAN, upload_kind="activations")
    profile = _profile(2e-3)

    def fits(r):
        return allocate(profile, upload_workload(SHAPE, plan, r)) is not None

    # Execute
    rows = [affordable_rows(profile, SHAPE, plan, available) for available in range(1, 40)]

    # Assert: the count is capped by what is available, then by the budget
    largest = max(r for r in range(1, 200) if fits(r))
    assert 1 <= largest < 39
    assert rows == [min(available, largest) for available in range(1, 40)]


def test_affordable_rows_grows_with_budget():
    # Prepare
    budgets = [1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 1e-1, 1.0]

    # Execute
    rows = [affordable_rows(_profile(b), SHAPE, PLAN, available=500) for b in budgets]

    # Assert
    assert rows == sorted(rows)
    assert rows[0] == 0 and rows[-1] == 500


def test_ushape_sends_no_labels_and_pays_for_the_head_and_a_third_exchange():
    # Prepare: a classifier head of 18 parameters (8 x 2 + 2), run once per sample
    shape = replace(SHAPE, head_params=18)

    # Execute
    w = ushape_workload(shape, PLAN)

    # Assert: 30 tokens of 8 float32 values = 960 bytes (activations up, boundary gradients down),
    # and one pooled feature vector per sample each way (3 x 32 bytes); masks up; no label bytes
    assert w.uplink_bytes == 960 + 96 + 30 * 1 + 64 + 16
    assert w.downlink_bytes == 960 + 96 + 2 * 64 + 16
    # Split's 3 forwards of 2 lower layers (6 x 6000), and the head: 6 FLOPs per parameter per sample
    assert w.client_flops == 6 * 6000 + 6 * 18 * 3
    # The server runs its 4 layers once for the features and again forward and backward
    assert w.server_flops == 3 * 4 * 6000
    # An LM head runs on every token instead, and its features are a vector per token
    lm = ushape_workload(replace(shape, head_per_token=True), PLAN)
    assert lm.client_flops == 6 * 6000 + 6 * 18 * 30
    assert lm.uplink_bytes == 2 * 960 + 30 * 1 + 64 + 16
