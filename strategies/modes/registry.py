"""Every training mode, by name: the one place a mode is listed.

A new mode is a module of this package with its :class:`~strategies.modes.base.TrainingMode`,
one line below, its server step (:mod:`strategies.round.steps.registry`) and its client
handlers (``flower_app.modes.registry``). The order is :data:`strategies.wire.names.MODES`:
from the most to the least expensive for the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from strategies.modes import centralized, local, split, ushape
from strategies.modes.base import TrainingMode

TRAINING_MODES: Mapping[str, TrainingMode] = MappingProxyType(
    {
        local.MODE.name: local.MODE,
        ushape.MODE.name: ushape.MODE,
        split.MODE.name: split.MODE,
        centralized.MODE.name: centralized.MODE,
    }
)


def training_mode(name: str) -> TrainingMode:
    """The mode registered as ``name``; ValueError listing the known ones otherwise."""
    try:
        return TRAINING_MODES[name]
    except KeyError:
        raise ValueError(f"mode '{name}' must be one of {list(TRAINING_MODES)}") from None
