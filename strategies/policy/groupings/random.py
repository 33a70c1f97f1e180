"""The ``random`` policy: each client's mode drawn at random, in given fractions.

A baseline that ignores device profiles: run beside ``threshold``, ``cost`` or ``kmeans`` with
the mix of modes they chose, it tells how much of their gain comes from *which* clients get a
mode rather than from the mix itself.

Of ``n`` clients, mode ``i`` with fraction ``f_i`` (normalised to sum 1) gets ``n f_i`` rounded
by largest remainder: every mode first gets ``floor(n f_i)``, and the clients left over go one
each to the modes with the largest remainders ``n f_i - floor(n f_i)``, ties to the earlier mode.
For example, 5 clients at ``local 0.5, split 0.3, centralized 0.2``: quotas 2.5, 1.5, 1.0, floors
2, 1, 1, and the one left over goes to ``local`` (remainder 0.5, tied with ``split``, earlier):
3, 1, 1.

Which clients: each client ``c`` draws a key ``u(c) ~ U[0, 1)`` from
``numpy.random.default_rng([seed, c])``, a function of the run seed and its own id alone. Sorted
by key, the first clients take the first mode, the next ones the second, and so on. A re-plan of
the same fleet gives everyone the same mode again, and a client that joins or leaves moves at
most the clients at the boundaries between modes. Group ``i`` is the ``i``-th mode given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from strategies.policy.grouping import Fleet, GroupingPolicy, ModeAssignment, assignment, check_modes
from strategies.wire.names import CENTRALIZED_MODE, LOCAL_MODE, SPLIT_MODE


@dataclass(frozen=True)
class RandomParams:
    """Parameters of the random policy.

    Attributes
    ----------
    random_fractions : tuple[tuple[str, float], ...] (default: local, split and centralized, equal fractions)
        ``(mode, fraction)`` pairs: the share of the fleet drawn into each mode, normalised to
        sum 1; a mode's group is its place in this list.
    """

    # The modes the fleet policies choose among by default (``cost-modes``): a baseline that
    # stays the same when a mode is added; ``ushape`` joins when it is listed.
    random_fractions: tuple[tuple[str, float], ...] = tuple(
        (mode, 1.0) for mode in (LOCAL_MODE, SPLIT_MODE, CENTRALIZED_MODE)
    )

    def __post_init__(self) -> None:
        names = tuple(mode for mode, _ in self.random_fractions)
        check_modes(names)
        if len(set(names)) != len(names):
            raise ValueError(f"random policy: each mode at most once, got {list(names)}")
        fractions = [f for _, f in self.random_fractions]
        if not all(math.isfinite(f) and f >= 0 for f in fractions) or not sum(fractions) > 0:
            raise ValueError(f"random policy: fractions must be >= 0 and not all 0, got {fractions}")


def counts(fractions: list[float], n: int) -> list[int]:
    """``n`` clients shared out in ``fractions`` (normalised) by largest remainder."""
    total = sum(fractions)
    quotas = [n * f / total for f in fractions]
    out = [math.floor(q) for q in quotas]
    # Rounded so that remainders equal on paper (2.5 and 1.5) tie as on paper.
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-round(quotas[i] - out[i], 9), i))
    for i in by_remainder[: n - sum(out)]:
        out[i] += 1
    return out


def draw_order(client_ids: list[int], seed: int) -> list[int]:
    """The clients sorted by their key ``u(c)``, drawn from ``(seed, c)`` alone."""
    # SeedSequence takes non-negative entries only; a negative run seed maps to a fixed one.
    key = {cid: np.random.default_rng([seed % 2**63, cid]).random() for cid in client_ids}
    return sorted(client_ids, key=lambda cid: (key[cid], cid))


def assign(params: RandomParams, fleet: Fleet) -> list[ModeAssignment]:
    """Each client of ``fleet`` in the mode its draw falls into."""
    order = draw_order(sorted(fleet.profiles), fleet.seed)
    sizes = counts([f for _, f in params.random_fractions], len(order))
    out, start = [], 0
    for group, ((mode, _), size) in enumerate(zip(params.random_fractions, sizes, strict=True)):
        config = fleet.config(mode)
        out += [assignment(cid, group, config, fleet.profiles, fleet.workloads) for cid in order[start : start + size]]
        start += size
    return sorted(out, key=lambda a: a.client_id)


def modes(params: RandomParams) -> tuple[str, ...]:
    return tuple(mode for mode, fraction in params.random_fractions if fraction > 0)


GROUPING = GroupingPolicy("random", RandomParams(), assign, modes)
