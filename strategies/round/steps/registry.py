"""Every training mode's server step, by mode name: one registration line each.

The order is the order the steps run in a round (each phase), and so the order of the
server's contributions in the average: it must not change, float sums depend on it.
The keys are those of :data:`strategies.modes.registry.TRAINING_MODES`
(``tests/strategies/test_mode_registry.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from strategies.round.steps import centralized, local, split, ushape
from strategies.round.steps.base import ServerStep

SERVER_STEPS: Mapping[str, ServerStep] = MappingProxyType(
    {
        split.STEP.mode: split.STEP,
        local.STEP.mode: local.STEP,
        centralized.STEP.mode: centralized.STEP,
        ushape.STEP.mode: ushape.STEP,
    }
)
