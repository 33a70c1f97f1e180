"""A client's uplink channel that changes from round to round: shadowing and block fading.

A fleet preset may give its clients (all, or per tier) a ``channel:`` section; without one the
channel gain is the profile's ``channel-gain`` in every round, as before.

Model (per client ``c`` and round ``r``; gains in dB, ``10 log10`` of the linear power gain)::

    gain_dB(c, r) = mean_dB(c) + s(c, r) + x(c, r)

- ``mean_dB(c)``: the profile's drawn ``channel-gain`` (path loss), in dB.
- ``s(c, r)``: log-normal shadowing, a stationary Gauss-Markov (AR(1)) process in dB with
  standard deviation ``shadowing-db`` (sigma, dB) and lag-1 correlation ``shadowing-correlation``
  (rho, in [0, 1]) between consecutive rounds::

      s(c, 0) = sigma w(c, 0)
      s(c, r) = rho s(c, r-1) + sigma sqrt(1 - rho^2) w(c, r)      w ~ N(0, 1) i.i.d.

- ``x(c, r)``: block fading, constant within a round and independent across rounds:
  ``fading: rayleigh`` draws ``|h|^2 ~ Exp(1)`` (mean 1 in linear power, so the linear mean gain
  stays that of the shadowed path; -2.51 dB mean in dB), ``fading: none`` gives 0 dB.

Every random number comes from ``numpy.random.default_rng([seed, client, round, tag])``: a round's
gain is a function of (run seed, client id, round) alone, the same on every machine and after a
resume, so no channel state goes into a checkpoint. The AR(1) recursion is replayed from round 0
(memoised per client, as runs ask for rounds in order).

Keys (YAML section ``channel:`` of a preset or of a tier; a tier's keys override the preset's):

=========================  ======  ====================================================
``shadowing-db``           dB      std of the shadowing, >= 0 (default 0: none)
``shadowing-correlation``  1       round-to-round correlation of the shadowing, [0, 1] (default 0)
``fading``                 -       ``none`` (default) or ``rayleigh``
=========================  ======  ====================================================

A simulated node reports its process in its ``query`` reply under ``CONFIG_KEYS`` (only when the
channel changes at all, so a static fleet's replies are as before); the server then prices each
round with that round's gain and re-plans on it when a requery is due (:func:`planning_round`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from strategies.fleet.profile import DeviceProfile

FADINGS = ("none", "rayleigh")
SECTION_KEYS = ("shadowing-db", "shadowing-correlation", "fading")
# In a query reply beside the profile keys; the prefix keeps them apart from PROFILE_KEYS.
CONFIG_KEYS = {key: f"channel-{key}" for key in SECTION_KEYS}
# Tags of the random streams, so shadowing and fading draws never share numbers.
_SHADOWING_TAG, _FADING_TAG = 1, 2


@dataclass(frozen=True)
class ChannelProcess:
    """How a client's channel gain moves around its mean, round by round (see the module docstring)."""

    shadowing_db: float = 0.0
    correlation: float = 0.0
    fading: str = "none"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.shadowing_db) and self.shadowing_db >= 0):
            raise ValueError(f"channel key 'shadowing-db' must be >= 0 dB, got {self.shadowing_db!r}")
        if not 0.0 <= self.correlation <= 1.0:
            raise ValueError(f"channel key 'shadowing-correlation' must be in [0, 1], got {self.correlation!r}")
        if self.fading not in FADINGS:
            raise ValueError(f"channel key 'fading' must be one of {list(FADINGS)}, got {self.fading!r}")

    @property
    def static(self) -> bool:
        """Whether the gain never leaves its mean (no shadowing, no fading)."""
        return self.shadowing_db == 0.0 and self.fading == "none"


STATIC = ChannelProcess()


def from_section(section: Any, where: str) -> ChannelProcess:
    """A preset's (or tier's) ``channel:`` mapping as a process; ``where`` names it in errors."""
    return merge(STATIC, section, where)


def merge(base: ChannelProcess, section: Any, where: str) -> ChannelProcess:
    """``base`` with the keys of a ``channel:`` section set (a tier's section over the preset's)."""
    if section is None:
        return base
    if not isinstance(section, Mapping):
        raise ValueError(f"{where}: 'channel' must be a mapping of {list(SECTION_KEYS)}, got {section!r}")
    for key in section:
        if key not in SECTION_KEYS:
            raise ValueError(f"{where}: unknown channel key '{key}'; valid keys: {list(SECTION_KEYS)}")
    shadowing = _number(section, "shadowing-db", base.shadowing_db, where)
    correlation = _number(section, "shadowing-correlation", base.correlation, where)
    try:
        return ChannelProcess(shadowing, correlation, str(section.get("fading", base.fading)))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _number(section: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = section.get(key, default)
    # bool is an int subclass; "shadowing-db: true" is a mistake, not 1 dB.
    if isinstance(value, bool):
        raise ValueError(f"{where}: channel key '{key}' must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: channel key '{key}' must be a number, got {value!r}") from None


def to_config(process: ChannelProcess) -> dict[str, float | str]:
    """The process as query-reply entries; none for a static channel (replies stay as they were)."""
    if process.static:
        return {}
    return {
        CONFIG_KEYS["shadowing-db"]: process.shadowing_db,
        CONFIG_KEYS["shadowing-correlation"]: process.correlation,
        CONFIG_KEYS["fading"]: process.fading,
    }


def from_config(config: Mapping[str, Any]) -> ChannelProcess:
    """The process a query reply (or a node config) states; static when it states none."""
    section = {key: config[wire_key] for key, wire_key in CONFIG_KEYS.items() if wire_key in config}
    return from_section(section, "device channel")


def shadowing_db(process: ChannelProcess, seed: int, client_id: int, server_round: int) -> float:
    """The shadowing ``s(client, round)`` in dB (0 without shadowing)."""
    if process.shadowing_db == 0.0:
        return 0.0
    series = _SERIES.setdefault((_seed(seed), client_id, process.shadowing_db, process.correlation), [])
    rho, sigma = process.correlation, process.shadowing_db
    innovation = sigma * math.sqrt(1.0 - rho * rho)
    while len(series) <= server_round:
        r = len(series)
        w = _normal(seed, client_id, r)
        series.append(sigma * w if r == 0 else rho * series[-1] + innovation * w)
    return series[server_round]


# (seed, client, sigma, rho) -> s(0), s(1), ...: replaying the recursion from round 0 each round
# would make a run's cost quadratic in its rounds. A pure function's memo, not run state.
_SERIES: dict[tuple[int, int, float, float], list[float]] = {}


def fading_db(process: ChannelProcess, seed: int, client_id: int, server_round: int) -> float:
    """The block fading ``x(client, round)`` in dB: ``10 log10 |h|^2``, ``|h|^2 ~ Exp(1)`` (0 without)."""
    if process.fading == "none":
        return 0.0
    rng = np.random.default_rng([_seed(seed), client_id, server_round, _FADING_TAG])
    power = float(rng.standard_exponential())
    # An exact 0 has no dB value; it is as good as no channel at all.
    return 10.0 * math.log10(power) if power > 0 else -300.0


def gain_offset_db(process: ChannelProcess, seed: int, client_id: int, server_round: int) -> float:
    """``gain_dB(round) - mean_dB``: shadowing plus fading, in dB."""
    return shadowing_db(process, seed, client_id, server_round) + fading_db(process, seed, client_id, server_round)


def profile_at(
    profile: DeviceProfile, process: ChannelProcess | None, seed: int, client_id: int, server_round: int | None
) -> DeviceProfile:
    """The profile with the channel gain of ``server_round`` (the mean gain when ``round`` is None)."""
    if process is None or process.static or server_round is None:
        return profile
    offset = gain_offset_db(process, seed, client_id, server_round)
    return replace(profile, channel_gain=profile.channel_gain * 10.0 ** (offset / 10.0))


def gain_db(profile: DeviceProfile) -> float:
    """The profile's channel gain in dB."""
    return 10.0 * math.log10(profile.channel_gain)


def planning_round(server_round: int, requery_every: int) -> int | None:
    """The round whose channel a plan made in ``server_round`` uses, or None for the mean gain.

    A plan uses the channel the server learnt at the latest requery (rounds ``1``, ``1 + N``,
    ``1 + 2N``, ... for ``requery_every`` N); a run that never asks again plans on the mean
    gain. A pure function of the round, so a resumed run plans as the uninterrupted one did.
    """
    if requery_every <= 0:
        return None
    return 1 + (max(server_round, 1) - 1) // requery_every * requery_every


def _normal(seed: int, client_id: int, server_round: int) -> float:
    return float(np.random.default_rng([_seed(seed), client_id, server_round, _SHADOWING_TAG]).standard_normal())


def _seed(seed: int) -> int:
    # SeedSequence takes non-negative entries only; a negative run seed maps to a fixed one.
    return seed % (2**63)
