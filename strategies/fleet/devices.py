"""Device profiles: what a simulated client can compute, hold, spend and send per round.

A profile travels as a flat config dict with kebab-case keys (``PROFILE_KEYS``), so it can be
given to ``flower-supernode --node-config`` or sampled for a whole fleet from a YAML preset in
``conf/fleet/`` (``load_fleet_spec`` + ``sample_fleet``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from strategies.fleet import channel
from strategies.fleet.channel import ChannelProcess

FLEET_DIR = Path(__file__).resolve().parents[2] / "conf" / "fleet"


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


# Tier keys beyond the profile keys: dB forms that are converted, and the tier's own fields.
_DB_KEYS = {"channel-gain-db": "channel-gain", "noise-dbm-per-hz": "noise-w"}
_TIER_KEYS = set(PROFILE_KEYS) | set(_DB_KEYS) | {"name", "weight", "channel"}


def available_fleets() -> list[str]:
    """Names of the fleet presets in ``conf/fleet/``."""
    return sorted(p.stem for p in FLEET_DIR.glob("*.yaml"))


def load_fleet_spec(name_or_path: str | Path) -> dict[str, Any]:
    """Load a fleet spec from a preset name (``conf/fleet/<name>.yaml``) or a YAML file path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = FLEET_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            available = available_fleets()
            raise ValueError(f"unknown fleet preset '{name_or_path}'; available: {available}")
    spec = _spec_dict(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    _validate_spec(spec)
    return spec


def sample_fleet(spec: Mapping[str, Any], num_clients: int, seed: int) -> list[DeviceProfile]:
    """Draw ``num_clients`` profiles from a fleet spec, deterministically for ``seed``.

    Each client draws a tier with probability proportional to its ``weight``; a tier value is
    either a scalar or a range ``[lo, hi]`` drawn uniformly. ``channel-gain-db`` is uniform in dB
    (log-uniform in linear gain); ``noise-dbm-per-hz`` is a noise density scaled by the client's
    bandwidth to give ``noise-w``.
    """
    if OmegaConf.is_config(spec):
        spec = _spec_dict(OmegaConf.to_container(spec, resolve=True))
    _validate_spec(spec)
    tiers = spec["tiers"]
    rng = np.random.default_rng(seed)
    return [_sample_profile(tiers[i], rng) for i in _choose_tiers(tiers, num_clients, rng)]


def sample_channels(spec: Mapping[str, Any], num_clients: int, seed: int) -> list[ChannelProcess]:
    """Each client's channel process (:mod:`strategies.fleet.channel`), for the fleet ``sample_fleet`` draws.

    A client takes its tier's ``channel:`` section over the preset's; static where neither has one.
    """
    if OmegaConf.is_config(spec):
        spec = _spec_dict(OmegaConf.to_container(spec, resolve=True))
    _validate_spec(spec)
    tiers = spec["tiers"]
    base = channel.from_section(spec.get("channel"), "fleet spec")
    processes = [channel.merge(base, t.get("channel"), f"fleet tier '{t.get('name', i)}'") for i, t in enumerate(tiers)]
    # The same first draw as sample_fleet's, so client i gets the tier its profile came from.
    return [processes[i] for i in _choose_tiers(tiers, num_clients, np.random.default_rng(seed))]


def _choose_tiers(tiers: list[Mapping[str, Any]], num_clients: int, rng: np.random.Generator) -> np.ndarray:
    weights = np.array([float(t["weight"]) for t in tiers])
    return rng.choice(len(tiers), size=num_clients, p=weights / weights.sum())


def _sample_profile(tier: Mapping[str, Any], rng: np.random.Generator) -> DeviceProfile:
    values = {}
    for name, raw in tier.items():
        if name in ("name", "weight", "channel"):
            continue
        is_range = isinstance(raw, (list, tuple))
        values[name] = rng.uniform(float(raw[0]), float(raw[1])) if is_range else float(raw)
    if "channel-gain-db" in values:
        values["channel-gain"] = 10.0 ** (values.pop("channel-gain-db") / 10.0)
    if "noise-dbm-per-hz" in values:
        density_w = 10.0 ** ((values.pop("noise-dbm-per-hz") - 30.0) / 10.0)
        values["noise-w"] = density_w * values["bandwidth-hz"]
    return from_config(values)


def _spec_dict(container: object) -> dict[str, Any]:
    """The fleet spec a YAML file or config holds, which must be a mapping."""
    if not isinstance(container, dict):
        raise ValueError(f"a fleet spec must be a mapping, got {type(container).__name__}")
    return container


def _validate_spec(spec: Mapping[str, Any]) -> None:
    for name in spec:
        if name not in ("name", "description", "tiers", "channel"):
            raise ValueError(f"unknown fleet spec key '{name}'; valid: name, description, tiers, channel")
    channel.from_section(spec.get("channel"), "fleet spec")
    tiers = spec.get("tiers")
    if not tiers:
        raise ValueError("fleet spec needs a non-empty 'tiers' list")
    for i, tier in enumerate(tiers):
        label = tier.get("name", f"#{i}")
        channel.from_section(tier.get("channel"), f"fleet tier '{label}'")
        for name, raw in tier.items():
            if name == "channel":
                continue
            if name not in _TIER_KEYS:
                valid = sorted(_TIER_KEYS)
                raise ValueError(f"fleet tier '{label}': unknown key '{name}'; valid keys: {valid}")
            is_range = isinstance(raw, (list, tuple))
            if is_range and (len(raw) != 2 or float(raw[0]) > float(raw[1])):
                msg = f"fleet tier '{label}': '{name}' range must be [lo, hi], lo <= hi, got {raw}"
                raise ValueError(msg)
        for db_key, linear_key in _DB_KEYS.items():
            if db_key in tier and linear_key in tier:
                msg = f"fleet tier '{label}': give '{db_key}' or '{linear_key}', not both"
                raise ValueError(msg)
        for name, key in PROFILE_KEYS.items():
            given = name in tier or any(db in tier for db, lin in _DB_KEYS.items() if lin == name)
            if key.default is None and not given:
                raise ValueError(f"fleet tier '{label}': missing required key '{name}'")
        if not float(tier.get("weight", 0)) > 0:
            weight = tier.get("weight")
            raise ValueError(f"fleet tier '{label}': 'weight' must be positive, got {weight!r}")
