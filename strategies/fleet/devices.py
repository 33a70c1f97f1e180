"""Fleets of device profiles: a whole fleet sampled from a YAML preset in ``conf/fleet/``.

``load_fleet_spec`` + ``sample_fleet`` draw each client's :class:`DeviceProfile` (defined in
:mod:`strategies.fleet.profile`, where its config keys ``PROFILE_KEYS`` are documented) and
``sample_channels`` its channel process.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from strategies.fleet import channel
from strategies.fleet.channel import ChannelProcess
from strategies.fleet.profile import PROFILE_KEYS, DeviceProfile, ProfileKey, from_config, to_config

# The profile itself lives in strategies.fleet.profile; these names stay importable from here.
__all__ = [
    "FLEET_DIR",
    "PROFILE_KEYS",
    "DeviceProfile",
    "ProfileKey",
    "available_fleets",
    "from_config",
    "load_fleet_spec",
    "sample_channels",
    "sample_fleet",
    "to_config",
]

FLEET_DIR = Path(__file__).resolve().parents[2] / "conf" / "fleet"


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
