"""What the strategy knows of a training mode before any round: a :class:`TrainingMode`.

Policies group clients by these facts, the cost model prices them and the round builds each
client's first message from them. Nothing here needs a round: the server's part of a round in
each mode is its :class:`strategies.round.steps.base.ServerStep`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from strategies.cost.costmodel import Workload
from strategies.cost.workload import ModelShape, RoundPlan


@dataclass(frozen=True)
class TrainingMode:
    """One training mode as the registry holds it.

    Attributes
    ----------
    name : str
        The mode's name on the wire and in configs (:data:`strategies.wire.names.MODES`).
    first_message : str
        Message type of the first exchange (:mod:`strategies.wire.names`).
    second_message : str | None
        Message type of a second exchange in the same round, None for a mode with one.
    third_message : str | None (default: None)
        Message type of a third exchange (U-shape's gradients down), None for a mode with fewer.
    sends_emulator : bool
        Whether the first message carries the emulator's upper tensors besides the lower prefix.
    workload : Callable[[ModelShape, RoundPlan, int], Workload]
        One round of the mode for a client (:mod:`strategies.cost.workload`); the int is the
        rows a client uploads, read only by a mode that uploads.
    device_params : Callable[[ModelShape, RoundPlan], int]
        Parameters the device holds to train in this mode (model selection's limit).
    takes_local_epochs : bool
        Whether a round is ``local_epochs`` passes over the plan rather than one.
    uploads_once : bool
        Whether the client uploads its rows once and the server trains on them afterwards:
        once its upload is in the pool the client gets no message, costs no time and the
        server's work on it is priced as the pool's.
    """

    name: str
    first_message: str
    second_message: str | None
    sends_emulator: bool
    workload: Callable[[ModelShape, RoundPlan, int], Workload]
    device_params: Callable[[ModelShape, RoundPlan], int]
    takes_local_epochs: bool = False
    uploads_once: bool = False
    third_message: str | None = None

    @property
    def message_types(self) -> tuple[str, ...]:
        """Every message type a client in this mode must handle, in exchange order."""
        later = (self.second_message, self.third_message)
        return (self.first_message, *(m for m in later if m is not None))

    def epochs(self, local_epochs: int) -> int:
        """Passes over the plan in one round: ``local_epochs`` for a mode that takes them, else 1."""
        return local_epochs if self.takes_local_epochs else 1


def layers_params(shape: ModelShape, layers: int) -> int:
    """Parameters of the embeddings and ``layers`` transformer layers."""
    return shape.embedding_params + layers * shape.layer_params
