"""The learning rates of each round: constant, or a cosine decay over the run.

At a fixed rate, split prefix tuning keeps oscillating late in a run (the default job at
lr 0.01: held-out accuracy 0.780 after round 4, 0.745 after round 5). With
``SplitSettings.lr_decay_to`` below 1, round ``r`` of ``R`` trains at

.. math::

    \\mathrm{lr}_r = \\mathrm{lr} \\cdot \\left(d + (1 - d)\\,\\tfrac{1}{2}
    \\left(1 + \\cos \\pi \\tfrac{r - 1}{R - 1}\\right)\\right),

from ``lr`` at round 1 down to ``d * lr`` at the last round, ``head_lr`` alike. The rates of
a round depend only on its number and the run's length, so a resumed run trains at the same
rates as one that never stopped. Every side reads them from the round's settings: the
server's split and pool steps, and the clients' plan (local steps, split replay).
"""

from __future__ import annotations

import math
from dataclasses import replace

from strategies.settings import SplitSettings


def lr_factor(server_round: int, num_rounds: int, decay_to: float) -> float:
    """The factor on ``lr`` and ``head_lr`` in ``server_round`` (from 1) of ``num_rounds``."""
    if decay_to == 1.0 or num_rounds <= 1:
        return 1.0
    progress = min(max(server_round - 1, 0), num_rounds - 1) / (num_rounds - 1)
    return decay_to + (1.0 - decay_to) * 0.5 * (1.0 + math.cos(math.pi * progress))


def settings_for_round(settings: SplitSettings, server_round: int, num_rounds: int) -> SplitSettings:
    """``settings`` with the round's learning rates (the same object when the schedule is constant)."""
    factor = lr_factor(server_round, num_rounds, settings.lr_decay_to)
    if factor == 1.0:
        return settings
    return replace(settings, lr=settings.lr * factor, head_lr=settings.head_lr * factor)
