"""Tests for device profiles, their config round trip and fleet sampling."""

import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from strategies.fleet.devices import (
    PROFILE_KEYS,
    DeviceProfile,
    available_fleets,
    from_config,
    load_fleet_spec,
    sample_fleet,
    to_config,
)

REQUIRED = {
    "cpu-hz-max": "2e9",
    "memory-bytes": "4e9",
    "energy-budget-j": "50",
    "bandwidth-hz": "1e6",
    "channel-gain": "1e-10",
}


def _tier(**overrides):
    tier = {
        "name": "t",
        "weight": 1.0,
        "cpu-hz-max": [1.0e9, 2.0e9],
        "memory-bytes": 1.0e9,
        "energy-budget-j": 10.0,
        "bandwidth-hz": 1.0e6,
        "channel-gain-db": -100.0,
    }
    tier.update(overrides)
    return tier


def test_capability_and_snr_db():
    # Prepare: 2 GHz at 4 cycles/FLOP; SNR = 0.2 W * 1e-10 / 2e-14 W = 1000
    profile = DeviceProfile(
        cpu_hz_max=2e9,
        cycles_per_flop=4.0,
        memory_bytes=1e9,
        energy_budget_j=1.0,
        bandwidth_hz=1e6,
        channel_gain=1e-10,
        noise_w=2e-14,
        max_tx_power_w=0.2,
    )

    # Execute / Assert
    assert profile.capability == pytest.approx(5e8)
    assert profile.snr_db == pytest.approx(30.0)


def test_config_round_trip_from_strings():
    # Prepare: node configs deliver strings; optional keys fall back to defaults
    config = dict(REQUIRED, kappa="2e-28")

    # Execute
    profile = from_config(config)

    # Assert
    assert profile.cpu_hz_max == 2e9
    assert profile.kappa == 2e-28
    assert profile.max_tx_power_w == PROFILE_KEYS["max-tx-power-w"].default
    assert from_config(to_config(profile)) == profile
    assert set(to_config(profile)) == set(PROFILE_KEYS)


def test_profile_keys_cover_every_field():
    # Prepare
    field_names = set(DeviceProfile.__dataclass_fields__)

    # Execute
    documented = {key.field for key in PROFILE_KEYS.values()}

    # Assert: every field is documented with a unit and help text
    assert documented == field_names
    assert all(key.unit and key.help for key in PROFILE_KEYS.values())


def test_from_config_rejects_unknown_key():
    # Prepare
    config = dict(REQUIRED, **{"cpu-mhz": "5"})

    # Execute / Assert
    with pytest.raises(ValueError, match="cpu-mhz"):
        from_config(config)


def test_from_config_rejects_missing_key():
    # Prepare
    config = {k: v for k, v in REQUIRED.items() if k != "bandwidth-hz"}

    # Execute / Assert
    with pytest.raises(ValueError, match="bandwidth-hz"):
        from_config(config)


@pytest.mark.parametrize("value", ["0", "-3", "nan", "fast", True])
def test_from_config_rejects_bad_value(value):
    # Prepare
    config = dict(REQUIRED, **{"energy-budget-j": value})

    # Execute
    with pytest.raises(ValueError, match="energy-budget-j") as excinfo:
        from_config(config)

    # Assert: the message also names the value
    assert str(value) in str(excinfo.value)


def test_sample_fleet_is_deterministic_and_converts_db():
    # Prepare: gain -100 dB is 1e-10; noise -174 dBm/Hz over 1 MHz is 10^(-20.4) W
    spec = {"tiers": [_tier(**{"noise-dbm-per-hz": -174.0})]}

    # Execute
    first = sample_fleet(spec, num_clients=5, seed=3)
    again = sample_fleet(spec, num_clients=5, seed=3)
    other = sample_fleet(spec, num_clients=5, seed=4)

    # Assert
    assert first == again
    assert first != other
    assert all(1e9 <= p.cpu_hz_max <= 2e9 for p in first)
    assert len({p.cpu_hz_max for p in first}) == 5
    assert first[0].channel_gain == pytest.approx(1e-10)
    assert first[0].noise_w == pytest.approx(10 ** (-20.4))
    assert first[0].memory_bytes == 1e9


def test_sample_fleet_draws_tiers_by_weight():
    # Prepare: tiers told apart by memory, weights 3:1
    spec = {
        "tiers": [
            _tier(name="a", weight=3.0, **{"memory-bytes": 1.0}),
            _tier(name="b", weight=1.0, **{"memory-bytes": 2.0}),
        ]
    }

    # Execute
    fleet = sample_fleet(spec, num_clients=4000, seed=0)

    # Assert: expected share of tier a is 0.75; 4000 draws put it within 0.03
    share_a = np.mean([p.memory_bytes == 1.0 for p in fleet])
    assert share_a == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize(
    ("tier", "match"),
    [
        (_tier(**{"cpu-ghz": 1.0}), "cpu-ghz"),  # unknown key
        (_tier(weight=0.0), "weight"),  # weights must be positive
        (_tier(**{"channel-gain": 1e-10}), "channel-gain-db"),  # both gain forms
        (_tier(**{"cpu-hz-max": [2.0e9, 1.0e9]}), "cpu-hz-max"),  # reversed range
        ({k: v for k, v in _tier().items() if k != "bandwidth-hz"}, "bandwidth-hz"),  # missing
    ],
)
def test_sample_fleet_rejects_bad_spec(tier, match):
    # Prepare
    spec = {"tiers": [tier]}

    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        sample_fleet(spec, num_clients=2, seed=0)


def test_sample_fleet_accepts_omegaconf_and_rejects_unknown_top_level_key():
    # Prepare
    spec = {"name": "x", "tiers": [_tier()]}

    # Execute
    from_omegaconf = sample_fleet(OmegaConf.create(spec), num_clients=3, seed=1)

    # Assert
    assert from_omegaconf == sample_fleet(spec, num_clients=3, seed=1)
    with pytest.raises(ValueError, match="clients"):
        sample_fleet(dict(spec, clients=3), num_clients=3, seed=1)


def test_presets_load_and_span_orders_of_magnitude():
    # Prepare
    names = available_fleets()

    # Execute
    fleets = {name: sample_fleet(load_fleet_spec(name), num_clients=60, seed=0) for name in names}

    # Assert: every preset mixes clients at least 100x apart in compute and 20 dB apart in SNR
    assert {"uniform", "bimodal", "long-tail"} <= set(names)
    for fleet in fleets.values():
        caps = [p.capability for p in fleet]
        snrs = [p.snr_db for p in fleet]
        assert max(caps) / min(caps) > 100
        assert max(snrs) - min(snrs) > 20


def test_load_fleet_spec_from_path_and_unknown_name(tmp_path):
    # Prepare
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\ntiers:\n  - name: t\n    weight: 1\n    cpu-hz-max: 1.0e9\n"
        "    memory-bytes: 1.0e9\n    energy-budget-j: 5\n    bandwidth-hz: 1.0e6\n"
        "    channel-gain-db: -90\n"
    )

    # Execute
    spec = load_fleet_spec(path)
    (profile,) = sample_fleet(spec, num_clients=1, seed=0)

    # Assert
    assert profile.cpu_hz_max == 1e9
    assert math.isclose(profile.channel_gain, 1e-9)
    with pytest.raises(ValueError, match="bimodal"):
        load_fleet_spec("no-such-fleet")
