"""Defences of the average against a few hostile clients: bounded updates, robust rules.

**Bounded updates** (:func:`bound_updates`). A client's update is its tensors minus the
current global tensors. Among the clients' contributions that hold the same tensor
names, one whose update norm exceeds ``bound`` times a reference norm of that group is
either clipped to that norm (``clip``: the direction is
kept, the length is not) or rejected (``reject``). Honest clients of one round take the
same number of steps from the same start, so their update norms are of one size; a
scaled or sign-flipped prefix is not. The reference is the round's own median
over ``k >= 3`` comparable contributions, or the median accepted norm of earlier rounds where
the caller has one and it is smaller (``strategy.update-reference=history``: colluders who send
outsized updates together cannot raise it); with neither, nothing is changed. The server's own contributions are not
bounded here (they are checked to be finite where they are made).

**Robust rules** (:func:`robust_average`), per value, weighted by data volume:

=============  =============================================================
rule           next global value
=============  =============================================================
``mean``       the weighted mean (the plain rule of :mod:`strategies.aggregate.volume`)
``median``     the weighted median: the value below which half the volume lies
``trimmed``    the weighted mean of what is left after cutting ``trim`` of the
               volume from each end
=============  =============================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from strategies.aggregate.volume import Contribution, aggregate

UPDATE_CHECKS = ("off", "clip", "reject")
RULES = ("mean", "median", "trimmed")


def update_norm(contribution: Contribution, state: Mapping[str, npt.NDArray[np.generic]]) -> float:
    """Euclidean norm of the contribution's change to the global tensors it holds."""
    total = 0.0
    for name, value in contribution.arrays.items():
        delta = np.asarray(value, np.float64) - np.asarray(state[name], np.float64)
        total += float(np.sum(delta * delta))
    return float(np.sqrt(total))


def group_of(contribution: Contribution) -> str:
    """The group a contribution's update norm is compared within: the names of the tensors it holds."""
    return ",".join(sorted(contribution.arrays))


def group_norms(
    contributions: Sequence[Contribution], state: Mapping[str, npt.NDArray[np.generic]]
) -> dict[str, list[float]]:
    """Update norms by group (:func:`group_of`), in the given order."""
    norms: dict[str, list[float]] = {}
    for c in contributions:
        norms.setdefault(group_of(c), []).append(update_norm(c, state))
    return norms


def bound_updates(
    contributions: Sequence[Contribution],
    state: Mapping[str, npt.NDArray[np.generic]],
    check: str,
    bound: float,
    references: Mapping[str, float] | None = None,
) -> tuple[list[Contribution], dict[str, str]]:
    """The contributions with outsized updates clipped or left out, and what was done to whom.

    ``references``: by group (:func:`group_of`), a norm from outside the round (the median of
    earlier rounds' accepted updates); ``bound`` multiplies the smaller of it and the round's
    own median, so that attackers of one round cannot raise their own limit, and a reference
    from rounds of a larger learning rate does not let them exceed this round's honest size.
    It applies to a group of any size. Returns the contributions to average (in the given order) and, by
    ``source``, a sentence for each one changed or rejected.
    """
    if check not in UPDATE_CHECKS:
        raise ValueError(f"update check {check!r} must be one of {list(UPDATE_CHECKS)}")
    if check == "off":
        return list(contributions), {}
    norms = [update_norm(c, state) for c in contributions]
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(contributions):
        groups.setdefault(group_of(c), []).append(i)
    kept: dict[int, Contribution | None] = dict(enumerate(contributions))
    notes: dict[str, str] = {}
    for group, members in groups.items():
        own = float(np.median([norms[i] for i in members])) if len(members) >= 3 else None
        if references and group in references and (own is None or references[group] < own):
            median, whose = references[group], "earlier rounds' median"
        elif own is not None:
            median, whose = own, "median"
        else:
            continue
        limit = bound * median
        for i in members:
            if norms[i] <= limit:
                continue
            c = contributions[i]
            if check == "reject":
                kept[i] = None
                notes[c.source] = f"update norm {norms[i]:.3g} > {bound:g} x {whose} {median:.3g}: rejected"
            else:
                scale = limit / norms[i]
                arrays = {
                    k: (state[k] + scale * (np.asarray(v) - state[k])).astype(state[k].dtype)
                    for k, v in c.arrays.items()
                }
                kept[i] = replace(c, arrays=arrays)
                notes[c.source] = f"update norm {norms[i]:.3g} > {bound:g} x {whose} {median:.3g}: clipped"
    return [c for c in kept.values() if c is not None], notes


def robust_average(
    contributions: Sequence[Contribution],
    fallback: Mapping[str, npt.NDArray[np.generic]],
    rule: str,
    trim: float = 0.2,
) -> dict[str, npt.NDArray[np.generic]]:
    """Per-value weighted mean, median or trimmed mean; names nobody holds keep ``fallback``."""
    if rule not in RULES:
        raise ValueError(f"aggregation rule {rule!r} must be one of {list(RULES)}")
    if rule == "mean":
        return aggregate(contributions, fallback)
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim={trim!r} must be in [0, 0.5)")
    cut = 0.5 if rule == "median" else trim

    def combine(arrays: list[npt.NDArray[np.float64]], weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        values = np.stack([a.ravel() for a in arrays])  # (n, size)
        return _weighted_trimmed(values, weights, cut).reshape(arrays[0].shape)

    return aggregate(contributions, fallback, combine)


def _weighted_trimmed(
    values: npt.NDArray[np.float64], weights: npt.NDArray[np.float64], cut: float
) -> npt.NDArray[np.float64]:
    """Per column: the weighted mean of the values whose cumulative weight lies within [cut, 1 - cut].

    ``cut = 0.5`` is the weighted median (the value at half the weight; the mean of two
    when the half falls exactly between them).
    """
    order = np.argsort(values, axis=0, kind="stable")  # (n, size)
    sorted_values = np.take_along_axis(values, order, axis=0)
    sorted_weights = weights[order]  # (n, size)
    upper = np.cumsum(sorted_weights, axis=0)
    lower = upper - sorted_weights
    if cut >= 0.5:
        # the weight of each value inside a vanishing window around the half: 1 for the middle value
        inside = np.clip(np.minimum(upper, 0.5 + 1e-12) - np.maximum(lower, 0.5 - 1e-12), 0.0, None)
    else:
        inside = np.clip(np.minimum(upper, 1.0 - cut) - np.maximum(lower, cut), 0.0, None)
    return np.asarray((inside * sorted_values).sum(axis=0) / inside.sum(axis=0), np.float64)
