"""Where a node's device profile comes from: --node-config when given, else the fleet preset."""

import pytest

from flower_app.config.load import load_config
from flower_app.modes.node import _fleet, node_profile
from strategies.fleet.devices import load_fleet_spec, sample_fleet, to_config

CONFIG = load_config({"config": "test"})
PHONE = {
    "cpu-hz-max": "1.8e9",
    "cycles-per-flop": "0.5",
    "memory-bytes": "2e9",
    "energy-budget-j": "40",
    "bandwidth-hz": "5e6",
    "channel-gain": "1e-11",
}


def test_a_deployed_node_states_its_own_profile():
    # Execute: values arrive as strings, beside the partition keys
    profile = node_profile(CONFIG, {"partition-id": 3, "num-partitions": 20, **PHONE}, 3, 20)

    # Assert
    assert profile.capability == pytest.approx(3.6e9)
    assert to_config(profile)["energy-budget-j"] == 40.0


def test_a_simulated_node_draws_its_entry_of_the_seeded_fleet():
    # Execute
    profile = node_profile(CONFIG, {"partition-id": 2, "num-partitions": 5}, 2, 5)

    # Assert: the same draw on every machine, for the run's seed and preset
    assert profile == sample_fleet(load_fleet_spec(CONFIG.fleet.preset), 5, CONFIG.run.seed)[2]
    assert profile == _fleet(CONFIG.fleet.preset, 5, CONFIG.run.seed)[2]


def test_a_partial_profile_names_the_missing_key():
    # Prepare
    partial = {k: v for k, v in PHONE.items() if k != "bandwidth-hz"}

    # Execute / Assert
    with pytest.raises(ValueError, match="missing required device profile key 'bandwidth-hz'"):
        node_profile(CONFIG, {"partition-id": 0, **partial}, 0, 4)
