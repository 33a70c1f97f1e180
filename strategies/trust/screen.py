"""Screening split clients by what the server sees of them: their loss and their activations.

A split server trains its own half on every split client's minibatches, so a client with
poisoned data (flipped labels, made-up activations) poisons the server's half as well as
the average. Before the server trains on anyone, it scores each client's minibatches:

- **loss** at the round's starting tensors (a forward pass, no step): labels that disagree
  with what the model has learnt show up as a loss far above the peers' (one-sided: a
  lower loss is never suspicious);
- **activation spread**: the mean, over the client's real tokens, of the standard deviation
  of a token's hidden vector, in log scale (two-sided): constant or degenerate activations
  have none, and activations from another distribution have a spread of another size.

Each feature is compared robustly with the round's other clients: ``z = (x - median) /
scale``, with ``scale = 1.4826 x MAD`` (the standard deviation for normal data, unmoved by a
minority of outliers), floored so that near-identical honest clients do not make every
small difference an outlier. With fewer than :data:`MIN_PEERS` clients there is no median to
trust, and the previous rounds' reference (:class:`strategies.trust.state.TrustState`)
stands in for it.

What it cannot see: an attacker whose labels are wrong in a way the model has not yet learnt
to contradict (round 1, with an untrained head, every loss looks alike); a majority of
attackers in the round (they set the median); poison mild enough to stay inside the
honest spread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from strategies.wire.names import Chunk

MIN_PEERS = 3  # fewest clients whose median is a reference
MAD_TO_SIGMA = 1.4826
# The loss's scale is at least a quarter of the median loss, and 0.05 nats: a model that has
# nearly solved its task (losses of 0.02-0.04) tells honest clients apart by differences that
# mean nothing, while flipped labels cost a whole nat or more.
LOSS_FLOOR, LOSS_FLOOR_ABS = 0.25, 0.05
SPREAD_FLOOR = 0.05  # the log-spread's scale is at least 5% (log units)


@dataclass(frozen=True)
class Reference:
    """A feature's centre and scale, from the round's clients or from earlier rounds."""

    median: float
    scale: float


@dataclass(frozen=True)
class ClientScore:
    """What the server measured of one split client's minibatches."""

    loss: float | None  # mean loss at the round's start (None: the model cannot score)
    spread: float  # log of the mean per-token standard deviation of the activations


def activation_spread(chunks: Sequence[Chunk]) -> float:
    """Log of the mean, over real (unmasked) tokens, of each token's standard deviation across hidden units."""
    total, count = 0.0, 0
    for chunk in chunks:
        values = np.asarray(chunk.inputs, np.float64)  # (B, T, hidden)
        std = values.std(axis=-1)  # (B, T)
        mask = np.asarray(chunk.mask).astype(bool)
        if mask.shape != std.shape:  # a family without token masks: every position counts
            mask = np.ones(std.shape, bool)
        total += float(std[mask].sum())
        count += int(mask.sum())
    mean = total / count if count else 0.0
    return math.log(mean) if mean > 0 else -math.inf


def reference(values: Sequence[float], floor: float, relative: bool, least: float = 0.0) -> Reference | None:
    """Median and floored MAD scale of ``values`` (finite ones); None with fewer than :data:`MIN_PEERS`.

    The scale is at least ``floor`` (times the median's size when ``relative``) and ``least``."""
    finite = np.asarray([v for v in values if math.isfinite(v)], np.float64)
    if len(finite) < MIN_PEERS:
        return None
    median = float(np.median(finite))
    mad = float(np.median(np.abs(finite - median)))
    floored = floor * abs(median) if relative else floor
    return Reference(median, max(MAD_TO_SIGMA * mad, floored, least, 1e-12))


def z_score(value: float, ref: Reference) -> float:
    """How many scales ``value`` lies from the reference's median (inf for a non-finite value)."""
    if not math.isfinite(value):
        return math.inf
    return (value - ref.median) / ref.scale


@dataclass(frozen=True)
class References:
    """The references a round screens against (either may be missing)."""

    loss: Reference | None
    spread: Reference | None

    def to_state(self) -> dict[str, list[float]]:
        return {name: [r.median, r.scale] for name, r in (("loss", self.loss), ("spread", self.spread)) if r}

    @classmethod
    def from_state(cls, state: Mapping[str, object]) -> References:
        def one(name: str) -> Reference | None:
            value = state.get(name)
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                return None
            median, scale = float(value[0]), float(value[1])
            return Reference(median, scale) if math.isfinite(median) and scale > 0 else None

        return cls(one("loss"), one("spread"))


def round_references(scores: Mapping[int, ClientScore], fallback: References) -> References:
    """The round's own references where it has enough clients, else ``fallback`` (earlier rounds')."""
    losses = [s.loss for s in scores.values() if s.loss is not None]
    loss = reference(losses, LOSS_FLOOR, relative=True, least=LOSS_FLOOR_ABS) or fallback.loss
    spread = reference([s.spread for s in scores.values()], SPREAD_FLOOR, relative=False) or fallback.spread
    return References(loss, spread)


def out_of_line(score: ClientScore, refs: References, bound: float) -> str | None:
    """Why a client's score is out of line with the references (beyond ``bound`` scales), or None."""
    why = []
    if refs.loss is not None and score.loss is not None:
        z = z_score(score.loss, refs.loss)
        if z > bound:
            why.append(f"loss {score.loss:.3g} vs median {refs.loss.median:.3g} (z {z:.1f})")
    if refs.spread is not None:
        z = z_score(score.spread, refs.spread)
        if abs(z) > bound:
            spread = math.exp(score.spread) if math.isfinite(score.spread) else 0.0
            why.append(f"activation spread {spread:.3g} vs median {math.exp(refs.spread.median):.3g} (z {z:.1f})")
    return "; ".join(why) or None
