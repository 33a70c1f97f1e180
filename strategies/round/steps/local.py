"""Local mode on the server: validate the prefixes clients trained through their emulator."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Message

from strategies.modes import local
from strategies.round.steps.base import RoundWork, ServerStep
from strategies.round.steps.prefixes import collect_prefixes
from strategies.wire import names as wire


def receive_prefixes(work: RoundWork, replies: Mapping[int, Message]) -> None:
    """The local replies' prefixes into ``work.prefixes``, and each accepted client's train loss.

    A local client was sent its lower prefix and the emulator's tensors; it sends back the lower
    prefix and those of :attr:`~strategies.round.steps.base.TensorKeys.local_reply`.
    """
    start = {**work.client_part(), **{k: work.state[k] for k in work.keys.local_reply}}
    accepted = collect_prefixes(replies, local.MODE.name, start, work.fleet_state, work.settings, work.rnd)
    work.prefixes[local.MODE.name] = accepted
    for node in accepted:
        loss = replies[node].content.metric_records[wire.METRICS].get(wire.TRAIN_LOSS)
        if isinstance(loss, (int, float)) and np.isfinite(loss):
            work.rnd.local_losses[node] = float(loss)


STEP = ServerStep(mode=local.MODE.name, first=receive_prefixes)
