"""Every grouping policy, by name: the one place a policy is listed.

``strategy.policy`` and each stage of ``strategy.policy-schedule`` name one of these. A new
policy is a module of this package with its parameters dataclass, ``assign`` and ``GROUPING``,
and one line below. Parameters come from the run config by field name
(:func:`grouping_params`), so a policy with a new setting adds that key to the config schema.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from strategies.policy.grouping import GroupingPolicy
from strategies.policy.groupings import cost, kmeans, random, single, threshold

_ENTRIES: tuple[GroupingPolicy[Any], ...] = (
    *single.GROUPINGS,
    threshold.GROUPING,
    cost.GROUPING,
    kmeans.GROUPING,
    random.GROUPING,
)
GROUPING_POLICIES: dict[str, GroupingPolicy[Any]] = {entry.name: entry for entry in _ENTRIES}
if len(GROUPING_POLICIES) != len(_ENTRIES):
    raise RuntimeError(f"two grouping policies share a name: {[entry.name for entry in _ENTRIES]}")


def grouping_params(**settings: Any) -> dict[str, Any]:
    """Every policy's parameters, each field taken from ``settings`` by name or left at its default.

    ``grouping_params(threshold_flops=5e8)`` changes the threshold policy's and no other.
    ValueError names a setting that is no policy's parameter.
    """
    known = {f.name for entry in _ENTRIES for f in fields(entry.defaults)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"no grouping policy has the parameters {unknown}; known: {sorted(known)}")
    out = {}
    for name, entry in GROUPING_POLICIES.items():
        own = {f.name: settings[f.name] for f in fields(entry.defaults) if f.name in settings}
        out[name] = replace(entry.defaults, **own)
    return out
