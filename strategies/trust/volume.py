"""Data volumes a client cannot inflate at will.

A contribution's weight in the average is its ``num-examples``. What a client claims is
checked against what it holds and what the round planned (:mod:`strategies.wire.validation`),
and in split mode against the rows it actually sent; yet a client that claims to hold 10^9
samples in its query reply still gets the largest weight the plan allows. Against that, a
contribution's volume is capped at ``cap`` times the round's median client volume: a client
may weigh at most ``cap`` median peers. Honest fleets whose volumes differ by more than
``cap`` (skewed partitions smaller than a round's plan) lose some of that spread; 0 turns
the cap off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from strategies.aggregate.robust import group_of
from strategies.aggregate.volume import Contribution

MIN_PEERS = 3  # fewest contributions whose median volume is a reference


def cap_volumes(contributions: Sequence[Contribution], cap: float) -> tuple[list[Contribution], dict[str, str]]:
    """The contributions with volumes above ``cap`` x their peers' median capped, and a note per capped source.

    Peers are the contributions that hold the same tensors (one mode's clients: a local
    client's volume and a split client's are not measured alike); a group of fewer than
    :data:`MIN_PEERS` has no median to trust and is left as it is.
    """
    if cap <= 0:
        return list(contributions), {}
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(contributions):
        groups.setdefault(group_of(c), []).append(i)
    capped, notes = list(contributions), {}
    for members in groups.values():
        if len(members) < MIN_PEERS:
            continue
        median = float(np.median([contributions[i].num_examples for i in members]))
        limit = max(1, int(cap * median))
        for i in members:
            c = contributions[i]
            if c.num_examples > limit:
                notes[c.source] = f"data volume {c.num_examples} > {cap:g} x median {median:g}: capped to {limit}"
                capped[i] = replace(c, num_examples=limit)
    return capped, notes


def weigh_by_reputation(contribution: Contribution, reputation: float) -> Contribution:
    """The contribution with its volume scaled by the client's reputation (at least 1 sample)."""
    if reputation >= 1.0:
        return contribution
    return replace(contribution, num_examples=max(1, round(contribution.num_examples * reputation)))
