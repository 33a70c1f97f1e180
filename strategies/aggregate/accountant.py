"""The privacy a run has spent: Opacus's RDP accountant over the rounds released under DP.

Each round released under client-level DP (:mod:`strategies.aggregate.dp`) is one step of
the sampled Gaussian mechanism, of noise multiplier ``z`` (``dp_noise``) and sampling rate
``q``: the clients the round sampled over the clients it sampled them from. Rényi DP
(Mironov 2017) adds up over rounds; :class:`PrivacyLedger` keeps the rounds as Opacus's
``RDPAccountant`` keeps its steps, ``(z, q, rounds)``, and :func:`epsilon` turns them into
the ``epsilon`` of ``(epsilon, delta)``-DP at ``dp_delta`` (Opacus's ``get_privacy_spent``,
the conversion of Balle et al. 2020).

=================  ==================================================================
``q = 1``          every client every round (``fraction_train`` 1): no amplification is
                   claimed, each round is the Gaussian mechanism, RDP ``a / (2 z^2)``
``q < 1``          the subsampled mechanism's RDP, as for Poisson sampling at rate ``q``;
                   the strategy samples a fixed number without replacement, the usual
                   approximation. Amplification also assumes the sample is secret, and
                   the sample is seeded by the run seed
``z = 0``          no privacy: ``epsilon`` is infinite
=================  ==================================================================

The ledger is the strategy's, checkpointed with it: a resumed run goes on from the rounds
counted before the restart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Opacus's default RDP orders go up to 63; a large noise multiplier has its best order above
# that, so a few larger ones are added (they can only tighten the bound).
EXTRA_ORDERS = (80.0, 128.0, 256.0, 512.0, 1024.0)

Step = tuple[float, float, int]  # (noise multiplier, sampling rate, rounds), Opacus's history entry


def sampling_rate(sampled: int, population: int) -> float:
    """A round's sampling rate: the clients it sampled over the clients it sampled from (at most 1)."""
    return 1.0 if population <= 0 else min(1.0, sampled / population)


def epsilon(steps: tuple[Step, ...], delta: float) -> float:
    """The ``epsilon`` of the composed steps at ``delta`` (0 for none, infinite if one had no noise)."""
    if not steps:
        return 0.0
    if any(z <= 0.0 for z, _, _ in steps):
        return math.inf
    from opacus.accountants import RDPAccountant  # imports torch: only when a run reports DP

    accountant = RDPAccountant()
    accountant.history = [tuple(s) for s in steps]
    spent, _ = accountant.get_privacy_spent(delta=delta, alphas=[*RDPAccountant.DEFAULT_ALPHAS, *EXTRA_ORDERS])
    return float(spent)


@dataclass(frozen=True)
class PrivacyLedger:
    """The rounds released under DP so far, as ``(noise multiplier, sampling rate, rounds)``."""

    steps: tuple[Step, ...] = ()

    @property
    def rounds(self) -> int:
        return sum(t for _, _, t in self.steps)

    def after(self, noise: float, rate: float) -> PrivacyLedger:
        """This ledger with one more round (counted with the last entry when it had the same noise and rate)."""
        if self.steps and self.steps[-1][:2] == (noise, rate):
            z, q, t = self.steps[-1]
            return PrivacyLedger((*self.steps[:-1], (z, q, t + 1)))
        return PrivacyLedger((*self.steps, (noise, rate, 1)))

    def epsilon(self, delta: float) -> float:
        return epsilon(self.steps, delta)

    def to_state(self) -> dict[str, Any]:
        return {"steps": [list(s) for s in self.steps]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> PrivacyLedger:
        """A checkpoint's privacy entry (a checkpoint without one: no rounds counted)."""
        steps = (state or {}).get("steps", [])
        return cls(tuple((float(z), float(q), int(t)) for z, q, t in steps))
