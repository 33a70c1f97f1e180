"""Data-volume weighted aggregation of trainable tensors.

Every training mode yields contributions ``(tensors, data volume)``: a client's
prefix after local or split training, the server's side of a split round, the
server's result of centralized training. The next global tensors are their
average weighted by data volume. A contribution may hold a subset of the
names (a split client sends only its lower-layer prefix); each name is
averaged over the contributions that hold it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Contribution:
    """Trainable tensors and the number of samples behind them."""

    arrays: Mapping[str, npt.NDArray[Any]]
    num_examples: int
    source: str = ""  # who produced it, e.g. "client 3" or "server (centralized)", for logs


def volume_weights(volumes: Sequence[int]) -> npt.NDArray[np.float64]:
    """Normalised weights ``n_i / sum(n)``; all volumes must be positive."""
    weights = np.asarray(volumes, dtype=np.float64)
    if len(weights) == 0 or (weights <= 0).any():
        raise ValueError(f"data volumes must be positive, got {weights.tolist()}")
    return weights / float(weights.sum())  # the same float64 quotient; float() gives mypy a typed scalar


Combine = Callable[[list[npt.NDArray[np.float64]], npt.NDArray[np.float64]], npt.NDArray[np.float64]]


def weighted_mean(arrays: list[npt.NDArray[np.float64]], weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Sum of ``w_i * x_i`` in the given order (float64)."""
    return np.asarray(sum(w * x for w, x in zip(weights, arrays, strict=True)), np.float64)


def aggregate(
    contributions: Sequence[Contribution],
    fallback: Mapping[str, npt.NDArray[Any]],
    combine: Combine = weighted_mean,
) -> dict[str, npt.NDArray[Any]]:
    """Weighted average per tensor name; names no contribution holds keep ``fallback``.

    Sums in float64 in the given order (callers sort contributions by a stable
    id) so the result does not depend on reply arrival order. ``combine`` replaces the
    weighted mean by another rule over the holders' values and normalised volumes
    (see :mod:`strategies.aggregate.robust`).
    """
    result = {name: np.array(value, copy=True) for name, value in fallback.items()}
    for name in fallback:
        holders = [c for c in contributions if name in c.arrays]
        if not holders:
            continue
        weights = volume_weights([c.num_examples for c in holders])
        merged = combine([np.asarray(c.arrays[name], dtype=np.float64) for c in holders], weights)
        result[name] = merged.astype(fallback[name].dtype)
    return result
