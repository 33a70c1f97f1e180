"""FLTrust (Cao, Fang, Liu and Gong, NDSS 2021): the server's own update as the reference.

The server holds a small clean *root set* and trains the same tensors on it from the
round's global tensors: ``g0``. Each client update ``g_i`` gets a trust score
``TS_i = ReLU(cos(g_i, g0))`` and is rescaled to ``g0``'s norm; the next global tensors
are ``state + sum_i w_i * g_i * |g0| / |g_i|`` with ``w_i`` proportional to ``TS_i``
times the client's data volume. A client pointing away from the server's own update gets
no weight, however many agree with it: this needs no honest majority of the sampled
clients, only a root set of the task's distribution. Its price: every round the server
trains a local client's worth of steps on the root set, and an honest client whose data
differ from the root set's (label skew) is trusted less.

The cosine is taken over the tensors both the client and the server's update hold (the
lower prefix for a split client; a local client's head too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from strategies.aggregate.volume import Contribution

Arrays = Mapping[str, npt.NDArray[np.generic]]


def _delta(arrays: Arrays, state: Arrays, names: Sequence[str]) -> npt.NDArray[np.float64]:
    return np.concatenate(
        [(np.asarray(arrays[k], np.float64) - np.asarray(state[k], np.float64)).ravel() for k in names]
    )


def trust_scores(contributions: Sequence[Contribution], state: Arrays, root: Arrays) -> list[float]:
    """``ReLU(cos(g_i, g0))`` of each contribution's update against the root update (0 when either is zero)."""
    scores = []
    for c in contributions:
        names = sorted(k for k in c.arrays if k in root)
        if not names:
            scores.append(0.0)
            continue
        g, g0 = _delta(c.arrays, state, names), _delta(root, state, names)
        norm = float(np.linalg.norm(g) * np.linalg.norm(g0))
        scores.append(max(0.0, float(g @ g0) / norm) if norm > 0 else 0.0)
    return scores


def fltrust_contribution(
    contributions: Sequence[Contribution], state: Arrays, root: Arrays
) -> tuple[Contribution | None, dict[str, str]]:
    """The clients' contributions merged by FLTrust into one (None when every trust score is 0),
    and a note for each client it gave no weight.

    The merged contribution holds every name some client holds; its volume is the trusted
    clients' total, so that it weighs against the server's own contributions as they would.
    """
    scores = trust_scores(contributions, state, root)
    notes = {
        c.source: "FLTrust: update points away from the server's root update: no weight"
        for c, s in zip(contributions, scores, strict=True)
        if s == 0.0
    }
    trusted = [(c, s) for c, s in zip(contributions, scores, strict=True) if s > 0.0]
    if not trusted:
        return None, notes
    merged: dict[str, npt.NDArray[np.generic]] = {}
    for name in sorted({k for c, _ in trusted for k in c.arrays}):
        holders = [(c, s) for c, s in trusted if name in c.arrays]  # never empty: the name is one of theirs
        total = np.zeros(np.shape(state[name]), np.float64)
        weight = 0.0
        for c, s in holders:
            names = sorted(k for k in c.arrays if k in root)
            g0_norm = float(np.linalg.norm(_delta(root, state, names)))
            g_norm = float(np.linalg.norm(_delta(c.arrays, state, names)))
            scale = g0_norm / g_norm if g_norm > 0 else 0.0
            w = s * c.num_examples
            total += w * scale * (np.asarray(c.arrays[name], np.float64) - np.asarray(state[name], np.float64))
            weight += w
        merged[name] = (np.asarray(state[name], np.float64) + total / weight).astype(np.asarray(state[name]).dtype)
    volume = sum(c.num_examples for c, _ in trusted)
    return Contribution(merged, volume, f"clients by FLTrust ({len(trusted)} of {len(contributions)} trusted)"), notes
