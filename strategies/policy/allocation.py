"""Per-client CPU frequency and transmit power: least round latency within an energy budget.

Problem (symbols as in ``strategies.cost.costmodel``; cycles ``C``, uplink bits ``D``,
``a = h / noise_w``)::

    minimise    C / f  +  t(p)                     t(p) = D / (B log2(1 + a p))
    subject to  kappa C f^2  +  e(p)  <=  E        e(p) = p t(p)
                0 < f <= cpu_hz_max,   0 < p <= max_tx_power_w

Downlink and server time do not depend on ``f`` or ``p``, so they do not move the optimum.

Method
------
Latency falls in ``f`` and ``p`` while energy rises in both: ``kappa C f^2`` obviously, and
``e(p)`` because ``d/dp [p / log(1 + a p)]`` has the sign of ``log(1 + a p) - a p / (1 + a p) > 0``.
So if the full-speed choice ``(cpu_hz_max, max_tx_power_w)`` fits the budget it is optimal, and
otherwise the budget binds at the optimum. ``e`` has infimum ``e(0+) = D ln 2 / (B a)``, not
attained, so the problem is feasible exactly when ``E`` exceeds it (compute energy can be made
arbitrarily small by slowing down).

With the budget binding, fix ``p``: the remaining energy ``E - e(p)`` buys the largest frequency
``f(p) = min(cpu_hz_max, sqrt((E - e(p)) / (kappa C)))``, leaving a 1-D problem in ``p``.
As functions of the energy spent on them, compute time ``C^1.5 kappa^0.5 E_c^-0.5`` is convex and
uplink time is the inverse of the convex decreasing ``E_u(T) = T (2^(D / (B T)) - 1) / a`` (a
perspective of a convex function), hence convex; capping ``f`` or ``p`` takes a max with a
constant, which keeps convexity. Latency is therefore convex in the uplink energy ``e(p)``, and
since ``e`` is increasing, unimodal in ``p`` and in ``log p``. A golden-section search over
``log p`` up to the largest power the budget allows (found by bisection on the increasing
``e``) locates the minimum to ~1e-12 relative precision. The two single-resource cases have
closed or 1-D monotone solutions and are handled directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from strategies.cost.costmodel import Allocation, Workload
from strategies.fleet.devices import DeviceProfile

# Round-off in sqrt/log must never push the planned spend above the budget.
_SAFETY = 1.0 - 1e-12
# Search window below the largest affordable power, in e-folds: the optimum never lies this
# far down, where uplink time is ~e^40 times its value at the top of the window.
_LOG_SPAN = 40.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def allocate(profile: DeviceProfile, workload: Workload) -> Allocation | None:
    """Latency-minimising allocation of ``workload`` on ``profile`` within its energy budget.

    Returns
    -------
    Allocation | None
        ``cpu_hz`` and ``tx_power_w`` to use, with the profile's ``energy_budget_j``; ``None`` when
        no choice fits the budget (the uplink alone needs more than ``E`` at any power). A
        resource the workload does not use (no FLOPs, no uplink bytes) is set to its maximum,
        which costs nothing.
    """
    budget = profile.energy_budget_j
    cycles = workload.client_flops * profile.cycles_per_flop
    bits = 8.0 * workload.uplink_bytes
    f_max, p_max = profile.cpu_hz_max, profile.max_tx_power_w

    if _compute_energy(profile, cycles, f_max) + _uplink_energy(profile, bits, p_max) <= budget:
        return Allocation(tx_power_w=p_max, cpu_hz=f_max, energy_budget_j=budget)
    if bits == 0:
        f = _affordable_frequency(profile, cycles, budget)
        return Allocation(tx_power_w=p_max, cpu_hz=f, energy_budget_j=budget)
    p_top = _max_affordable_power(profile, bits, budget)
    if p_top is None:
        return None
    if cycles == 0:
        return Allocation(tx_power_w=p_top, cpu_hz=f_max, energy_budget_j=budget)

    def latency(log_p: float) -> float:
        p = math.exp(log_p)
        f = _affordable_frequency(profile, cycles, budget - _uplink_energy(profile, bits, p))
        return math.inf if f <= 0 else cycles / f + _uplink_time(profile, bits, p)

    p = math.exp(_golden_section_min(latency, math.log(p_top) - _LOG_SPAN, math.log(p_top)))
    f = _affordable_frequency(profile, cycles, budget - _uplink_energy(profile, bits, p))
    return Allocation(tx_power_w=p, cpu_hz=f, energy_budget_j=budget)


def _compute_energy(profile: DeviceProfile, cycles: float, f: float) -> float:
    return profile.kappa * cycles * f * f


def _uplink_time(profile: DeviceProfile, bits: float, p: float) -> float:
    if bits == 0:
        return 0.0
    snr = p * profile.channel_gain / profile.noise_w
    return bits * math.log(2.0) / (profile.bandwidth_hz * math.log1p(snr))


def _uplink_energy(profile: DeviceProfile, bits: float, p: float) -> float:
    return p * _uplink_time(profile, bits, p)


def _affordable_frequency(profile: DeviceProfile, cycles: float, energy_j: float) -> float:
    """Largest frequency whose compute energy stays within ``energy_j`` (0 if none)."""
    if energy_j <= 0:
        return 0.0
    return min(profile.cpu_hz_max, math.sqrt(energy_j * _SAFETY / (profile.kappa * cycles)))


def _max_affordable_power(profile: DeviceProfile, bits: float, energy_j: float) -> float | None:
    """Largest power in (0, max] whose uplink energy stays within ``energy_j``; None if none.

    Bisection on the increasing ``e(p)``, keeping the affordable end so the result never
    overspends.
    """
    # e(0+) = D ln2 / (B a): the least energy any power can move the bits with.
    a = profile.channel_gain / profile.noise_w
    floor_j = bits * math.log(2.0) / (profile.bandwidth_hz * a)
    if energy_j <= floor_j:
        return None
    lo, hi = 0.0, profile.max_tx_power_w
    if _uplink_energy(profile, bits, hi) <= energy_j:
        return hi
    for _ in range(300):
        mid = 0.5 * (lo + hi)
        if _uplink_energy(profile, bits, mid) <= energy_j:
            lo = mid
        else:
            hi = mid
        if lo > 0 and hi - lo <= 1e-15 * hi:
            break
    return lo if lo > 0 else None


def _golden_section_min(fn: Callable[[float], float], lo: float, hi: float, tol: float = 1e-12) -> float:
    """Argmin of a unimodal ``fn`` on ``[lo, hi]`` to absolute precision ``tol``."""
    x1, x2 = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    f1, f2 = fn(x1), fn(x2)
    while hi - lo > tol:
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - _GOLDEN * (hi - lo)
            f1 = fn(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + _GOLDEN * (hi - lo)
            f2 = fn(x2)
    return x1 if f1 <= f2 else x2
