"""Every training mode's client handlers, by message type: one registration line per mode.

The ClientApp (:mod:`flower_app.apps.client_app`) registers each entry with Flower, so a mode's
message types (:attr:`strategies.modes.base.TrainingMode.message_types`) are answered once its
handler module is listed here (``tests/flower_app/test_mode_handlers.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from flwr.app import Context, Message

from flower_app.modes.handlers import centralized, local, split, ushape

Handler = Callable[[Message, Context], Message]

CLIENT_HANDLERS: Mapping[str, Handler] = MappingProxyType(
    {
        **local.HANDLERS,
        **split.HANDLERS,
        **centralized.HANDLERS,
        **ushape.HANDLERS,
    }
)
