"""Simulated time and energy of one client's round.

Devices are simulated on one machine, so time and energy come from this model, not from the
host; accuracy always comes from real training.

Cost model (SI units throughout: s, J, W, Hz, bit/s, FLOP)
----------------------------------------------------------
Compute on the client, at CPU frequency ``f`` (Hz):

    cycles      = client_flops * cycles_per_flop
    compute_s   = cycles / f
    compute_j   = kappa * cycles * f^2

Uplink at transmit power ``p`` (W), bandwidth ``B`` (Hz), channel gain ``h`` and noise power
over the band ``N0 * B`` (``noise_w``, W):

    r           = B * log2(1 + p * h / noise_w)         bit/s
    uplink_s    = 8 * uplink_bytes / r
    uplink_j    = p * uplink_s

Downlink at the profile's fixed rate: ``downlink_s = 8 * downlink_bytes / downlink_bps``. The
client spends no energy receiving (an assumption: receive power is small next to transmit and
compute power, and the client cannot trade it against latency).

Server compute for this client: ``server_s = server_flops / server_flops_per_s``.

A client's latency is ``compute_s + uplink_s + downlink_s + server_s``: every mode runs these
steps one after another for a client (split: client forward, upload activations, server
forward/backward, download gradients, client backward; centralized: upload data, server trains;
local: download prefix, train, upload prefix). ``server_s`` is time the server would spend on
this client alone; ``round_latency`` accounts for the server being shared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from strategies.fleet.devices import DeviceProfile
from strategies.wire.names import MODES


@dataclass(frozen=True)
class Workload:
    """What one round of one mode asks of a client and of the server.

    Attributes
    ----------
    mode : str
        One of ``MODES``.
    client_flops : float
        FLOPs the client computes in the round.
    uplink_bytes : float
        Bytes the client sends (prefix, activations or samples).
    downlink_bytes : float
        Bytes the client receives (global prefix, boundary gradients).
    server_flops : float
        FLOPs the server computes on this client's behalf.
    client_memory_bytes : float
        Peak memory the mode needs on the client.
    """

    mode: str
    client_flops: float
    uplink_bytes: float
    downlink_bytes: float
    server_flops: float
    client_memory_bytes: float

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode '{self.mode}'; valid modes: {list(MODES)}")
        for name in ("client_flops", "uplink_bytes", "downlink_bytes", "server_flops", "client_memory_bytes"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"workload {name} must be >= 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Allocation:
    """Resources a client is told to use in a round.

    Attributes
    ----------
    tx_power_w : float
        Uplink transmit power in W.
    cpu_hz : float
        CPU frequency in Hz.
    energy_budget_j : float
        The client's energy budget for the round in J (the allocation spends at most this).
    """

    tx_power_w: float
    cpu_hz: float
    energy_budget_j: float


@dataclass(frozen=True)
class RoundCost:
    """Simulated time (s) and client energy (J) of one client's round."""

    compute_s: float
    uplink_s: float
    downlink_s: float
    server_s: float
    latency_s: float
    compute_j: float
    uplink_j: float
    energy_j: float


def uplink_rate(bandwidth_hz: float, tx_power_w: float, channel_gain: float, noise_w: float) -> float:
    """Shannon uplink rate ``B log2(1 + p h / noise_w)`` in bit/s."""
    # log1p keeps the rate accurate at the very low SNRs the allocator probes.
    return bandwidth_hz * math.log1p(tx_power_w * channel_gain / noise_w) / math.log(2.0)


def round_cost(
    profile: DeviceProfile, workload: Workload, allocation: Allocation, server_flops_per_s: float
) -> RoundCost:
    """Time and energy of ``workload`` on ``profile`` under ``allocation``.

    Raises
    ------
    ValueError
        If the allocation asks for more frequency or power than the device has, or for none.
    """
    _check_allocation(profile, allocation)
    cycles = workload.client_flops * profile.cycles_per_flop
    compute_s = cycles / allocation.cpu_hz
    compute_j = profile.kappa * cycles * allocation.cpu_hz**2
    bits = 8.0 * workload.uplink_bytes
    uplink_s = 0.0
    if bits > 0:
        rate = uplink_rate(profile.bandwidth_hz, allocation.tx_power_w, profile.channel_gain, profile.noise_w)
        uplink_s = bits / rate
    uplink_j = allocation.tx_power_w * uplink_s
    downlink_s = 8.0 * workload.downlink_bytes / profile.downlink_bps
    server_s = workload.server_flops / server_flops_per_s
    return RoundCost(
        compute_s=compute_s,
        uplink_s=uplink_s,
        downlink_s=downlink_s,
        server_s=server_s,
        latency_s=compute_s + uplink_s + downlink_s + server_s,
        compute_j=compute_j,
        uplink_j=uplink_j,
        energy_j=compute_j + uplink_j,
    )


def _check_allocation(profile: DeviceProfile, allocation: Allocation) -> None:
    # A relative slack absorbs float round-off from the optimiser, not real overshoot.
    slack = 1.0 + 1e-9
    if not 0 < allocation.cpu_hz <= profile.cpu_hz_max * slack:
        raise ValueError(f"cpu_hz {allocation.cpu_hz} outside (0, {profile.cpu_hz_max}]")
    if not 0 < allocation.tx_power_w <= profile.max_tx_power_w * slack:
        limit = profile.max_tx_power_w
        raise ValueError(f"tx_power_w {allocation.tx_power_w} outside (0, {limit}]")


def round_latency(costs: Sequence[RoundCost], server_s: float = 0.0, server_busy_s: float = 0.0) -> float:
    """Simulated wall time of a round in seconds.

    Clients run in parallel, but the server is one machine serving them one at a time, so the
    round lasts at least as long as the slowest client and at least as long as the server's
    total per-client work; we take the larger of the two (perfect overlap of the rest, an
    optimistic bound). ``server_s`` is server time that cannot overlap with clients, e.g.
    aggregation, or centralized training that waits for every upload; it is added on top.
    ``server_busy_s`` is server work that may overlap with the clients but is no client's
    (training on the pool of centralized uploads): it adds to the server's busy time.
    """
    server_busy = sum(c.server_s for c in costs) + server_busy_s
    slowest = max((c.latency_s for c in costs), default=0.0)
    return max(slowest, server_busy) + server_s


def ledger_rows(server_round: int, costs: Mapping[int, RoundCost]) -> list[dict[str, float | int]]:
    """One JSON-serialisable row per client: round, client id and every ``RoundCost`` field."""
    return [{"round": int(server_round), "client_id": int(cid), **asdict(cost)} for cid, cost in sorted(costs.items())]


@dataclass
class EnergyLedger:
    """Simulated clock and per-client, per-round time and energy of a run.

    Both attributes are JSON-serialisable, so a checkpoint can store them and a resumed run
    rebuilds the ledger with ``EnergyLedger(rows=..., clock_s=...)``.

    Attributes
    ----------
    rows : list[dict] (default: [])
        ``ledger_rows`` of every recorded round, each with the simulated clock at round end.
    clock_s : float (default: 0.0)
        Simulated time since the start of the run, in seconds.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    clock_s: float = 0.0

    def record(
        self,
        server_round: int,
        costs: Mapping[int, RoundCost],
        server_s: float = 0.0,
        server_busy_s: float = 0.0,
        extra: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> float:
        """Add one round, advance the clock by its ``round_latency`` and return that latency.

        ``extra`` adds fields to a client's row (its mode, group, whether it ran over budget).
        """
        latency = round_latency(list(costs.values()), server_s, server_busy_s)
        self.clock_s += latency
        rows = ledger_rows(server_round, costs)
        extra = extra or {}
        self.rows.extend({**row, **extra.get(int(row["client_id"]), {}), "clock_s": self.clock_s} for row in rows)
        return latency

    def totals(self) -> dict[int, dict[str, float]]:
        """Per client: total simulated latency (s) and energy (J) over all recorded rounds."""
        out: dict[int, dict[str, float]] = {}
        for row in self.rows:
            acc = out.setdefault(int(row["client_id"]), {"latency_s": 0.0, "energy_j": 0.0})
            acc["latency_s"] += row["latency_s"]
            acc["energy_j"] += row["energy_j"]
        return out
