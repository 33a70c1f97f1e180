"""A device profile: what one client can compute, hold, spend and send per round.

A profile travels as a flat config dict with kebab-case keys (``PROFILE_KEYS``), so it can be
given to ``flower-supernode --node-config``; :mod:`strategies.fleet.devices` samples whole
fleets of them from presets, and :mod:`strategies.fleet.channel` moves their channel gain by round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ProfileKey:
    """Documentation of one profile config key: field name, unit, help text, default."""

    field: str
    unit: str
    help: str
    default: float | None = None  # None: the key is required


PROFILE_KEYS: dict[str, ProfileKey] = {
    "cpu-hz-max": ProfileKey("cpu_hz_max", "Hz", "maximum CPU frequency (cycles per second)"),
    "cycles-per-flop": ProfileKey(
        "cycles_per_flop", "cycles/FLOP", "effective cycles per FLOP (lower: faster chip)", 1.0
    ),
    "memory-bytes": ProfileKey("memory_bytes", "B", "memory available for training"),
    "energy-budget-j": ProfileKey("energy_budget_j", "J", "energy the client may spend per round"),
    "bandwidth-hz": ProfileKey("bandwidth_hz", "Hz", "uplink bandwidth B"),
    "channel-gain": ProfileKey("channel_gain", "linear", "uplink channel power gain h"),
    "noise-w": ProfileKey("noise_w", "W", "noise power over the uplink band (N0 * B); default is -100 dBm", 1e-13),
    "max-tx-power-w": ProfileKey("max_tx_power_w", "W", "maximum uplink transmit power", 0.2),
    "kappa": ProfileKey("kappa", "J*s^2/cycle^3", "effective switched capacitance of the CPU", 1e-28),
    "downlink-bps": ProfileKey("downlink_bps", "bit/s", "downlink rate from the server", 50e6),
}
_KEY_OF_FIELD = {k.field: name for name, k in PROFILE_KEYS.items()}


@dataclass(frozen=True)
class DeviceProfile:
    """Compute, memory, energy and radio resources of one client.

    Attributes
    ----------
    cpu_hz_max : float
        Maximum CPU frequency in cycles/s.
    cycles_per_flop : float (default: 1.0)
        Effective cycles per FLOP; lower means a stronger accelerator.
    memory_bytes : float
        Memory available for training, in bytes.
    energy_budget_j : float
        Energy the client may spend per round, in joules.
    bandwidth_hz : float
        Uplink bandwidth B in Hz.
    channel_gain : float
        Uplink channel power gain h (linear, not dB).
    noise_w : float (default: 1e-13)
        Noise power over the uplink band, N0 * B, in watts.
    max_tx_power_w : float (default: 0.2)
        Maximum uplink transmit power in watts.
    kappa : float (default: 1e-28)
        Effective switched capacitance; compute energy is kappa * cycles * f^2.
    downlink_bps : float (default: 50e6)
        Downlink rate in bits/s.
    """

    cpu_hz_max: float
    memory_bytes: float
    energy_budget_j: float
    bandwidth_hz: float
    channel_gain: float
    cycles_per_flop: float = 1.0
    noise_w: float = 1e-13
    max_tx_power_w: float = 0.2
    kappa: float = 1e-28
    downlink_bps: float = 50e6

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (math.isfinite(value) and value > 0):
                key = _KEY_OF_FIELD[f.name]
                raise ValueError(f"device profile key '{key}' must be positive, got {value!r}")

    @property
    def capability(self) -> float:
        """Effective compute throughput in FLOP/s at maximum frequency."""
        return self.cpu_hz_max / self.cycles_per_flop

    @property
    def snr(self) -> float:
        """Uplink signal-to-noise ratio at maximum transmit power (linear)."""
        return self.max_tx_power_w * self.channel_gain / self.noise_w

    @property
    def snr_db(self) -> float:
        """Uplink signal-to-noise ratio at maximum transmit power, in dB."""
        return 10.0 * math.log10(self.snr)


def to_config(profile: DeviceProfile) -> dict[str, float | int | str]:
    """Flatten a profile into a config dict with kebab-case keys."""
    return {name: float(getattr(profile, key.field)) for name, key in PROFILE_KEYS.items()}


def from_config(config: Mapping[str, Any]) -> DeviceProfile:
    """Build a profile from a flat config dict, validating every key and value.

    Values may be strings (as ``--node-config`` delivers them). Keys outside ``PROFILE_KEYS``
    are rejected, so callers holding a larger node config pass only the profile keys.

    Raises
    ------
    ValueError
        On an unknown key, a missing required key, or a value that is not a positive number.
    """
    for name in config:
        if name not in PROFILE_KEYS:
            valid = sorted(PROFILE_KEYS)
            raise ValueError(f"unknown device profile key '{name}'; valid keys: {valid}")
    kwargs = {}
    for name, key in PROFILE_KEYS.items():
        if name not in config:
            if key.default is None:
                raise ValueError(f"missing required device profile key '{name}' ({key.help})")
            continue
        kwargs[key.field] = _parse_float(name, config[name])
    return DeviceProfile(**kwargs)


def _parse_float(name: str, value: Any) -> float:
    # bool is an int subclass; a True where a frequency belongs is a config mistake.
    if isinstance(value, bool):
        raise ValueError(f"device profile key '{name}' must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"device profile key '{name}' must be a number, got {value!r}") from None
