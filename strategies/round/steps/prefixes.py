"""Validating the trained prefixes clients send back (split's second replies, local's first)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Message

from strategies.aggregate.volume import Contribution
from strategies.fleet.state import FleetState
from strategies.policy.requirements import FailureCause
from strategies.round.messages import answers, reason
from strategies.round.state import RoundState
from strategies.settings import SplitSettings
from strategies.wire import names as wire
from strategies.wire import sparsify
from strategies.wire.records import from_record
from strategies.wire.validation import judge, spec_of


def collect_prefixes(
    replies: Mapping[int, Message],
    mode: str,
    start: Mapping[str, np.ndarray],
    fleet_state: FleetState,
    settings: SplitSettings,
    rnd: RoundState,
) -> dict[int, Contribution]:
    """Validated prefix contributions of ``mode``'s replies, by node id, in partition order.

    ``start``: the global tensors the clients were sent, those they must send back. With
    ``upload_topk`` below 1 a reply carries their top-k entries (:mod:`strategies.wire.sparsify`),
    rebuilt onto ``start`` before every other check.
    """
    contributions, expected = {}, spec_of(start)
    for info, reply in answers(replies, fleet_state, rnd):
        planned = fleet_state.steps_of(info, settings)
        try:
            arrays = _uploaded(reply, start, settings.upload_topk)
            metrics = reply.content.metric_records[wire.METRICS]
            volume = metrics[wire.NUM_EXAMPLES]
            rnd.steps_done[info.node_id] = wire.as_int(metrics.get(wire.STEPS_DONE, planned))
        except Exception as err:
            rnd.drop(info.node_id, FailureCause.INVALID_REPLY, f"{mode} reply rejected: {reason(err)}")
            continue
        verdict = judge(arrays, expected, volume, min(info.num_available, planned * settings.batch_size))
        if not verdict.ok:
            rnd.drop(info.node_id, FailureCause.INVALID_REPLY, f"{mode} reply rejected: " + "; ".join(verdict.reasons))
            continue
        contributions[info.node_id] = Contribution(arrays, wire.as_int(volume), f"client {info.partition_id} ({mode})")
    return contributions


def _uploaded(reply: Message, start: Mapping[str, np.ndarray], fraction: float) -> dict[str, np.ndarray]:
    """A reply's tensors: dense, or rebuilt from their top-k entries; ValueError naming what is wrong."""
    if fraction >= 1.0:
        return from_record(reply.content.array_records[wire.ARRAYS])
    if wire.SPARSE not in reply.content.array_records:
        raise ValueError(f"no {wire.SPARSE!r} record: top-{fraction:g} uploads were asked for")
    arrays, problems = sparsify.rebuild(from_record(reply.content.array_records[wire.SPARSE]), start, fraction)
    if problems:
        raise ValueError("; ".join(problems))
    return arrays
