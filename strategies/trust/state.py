"""The server's memory of its clients' trustworthiness across rounds: one owner, checkpointed.

- ``reputation`` by partition id, in ``[0, 1]`` (1 for a client never screened): after each
  round it moves halfway towards 0 for a client screened out of line and towards 1 for
  one in line. A client screened out twice in a row falls to 0.25, below the default
  ``trust-exclude`` of 0.5, and stays out until clean rounds bring it back;
- ``norms``: the accepted update norms of the last :data:`NORM_ROUNDS` rounds, by the set
  of tensor names updated, the reference of the update bound when
  ``update-reference=history`` (attackers in one round cannot raise it);
- ``references``: the last round's screening references, for a round with too few split
  clients to have its own.

Only :meth:`commit` changes it, with a round that was kept (a probe's discarded trial
teaches it nothing); the strategy calls it when it closes a round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strategies.trust.screen import References

NORM_ROUNDS = 3  # rounds of accepted norms the history reference is the median of
STEP = 0.5  # how far a round moves a reputation towards 0 (out of line) or 1 (in line)


@dataclass
class TrustState:
    """Reputations, the history of accepted update norms and the last screening references."""

    reputation: dict[int, float] = field(default_factory=dict)
    norms: dict[str, list[list[float]]] = field(default_factory=dict)  # group -> per round, oldest first
    references: References = field(default_factory=lambda: References(None, None))

    def reputation_of(self, partition_id: int) -> float:
        return self.reputation.get(partition_id, 1.0)

    def norm_references(self) -> dict[str, float]:
        """By group of tensor names: the median accepted update norm of the last rounds."""
        refs = {}
        for group, rounds in self.norms.items():
            values = [n for r in rounds for n in r]
            if values:
                refs[group] = float(np.median(values))
        return refs

    def commit(
        self,
        in_line: Mapping[int, bool],
        accepted_norms: Mapping[str, list[float]],
        references: References | None,
    ) -> None:
        """A kept round: the screened clients' verdicts (by partition id), its accepted norms, its references."""
        for pid, ok in in_line.items():
            self.reputation[pid] = (1 - STEP) * self.reputation_of(pid) + STEP * (1.0 if ok else 0.0)
        for group, values in accepted_norms.items():
            finite = [float(v) for v in values if math.isfinite(v)]
            if finite:
                self.norms[group] = [*self.norms.get(group, []), finite][-NORM_ROUNDS:]
        if references is not None and (references.loss or references.spread):
            self.references = references

    def to_state(self) -> dict[str, Any]:
        return {
            "reputation": {str(k): v for k, v in sorted(self.reputation.items())},
            "norms": self.norms,
            "references": self.references.to_state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> TrustState:
        """A checkpoint's trust entry (an older checkpoint without one: a fresh state)."""
        state = state or {}
        reputation = {int(k): min(1.0, max(0.0, float(v))) for k, v in dict(state.get("reputation", {})).items()}
        norms = {str(g): [[float(n) for n in r] for r in rounds] for g, rounds in dict(state.get("norms", {})).items()}
        return cls(reputation, norms, References.from_state(dict(state.get("references", {}))))
