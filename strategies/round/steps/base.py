"""What a mode's server step is handed and fills in: :class:`RoundWork`, and the :class:`ServerStep` entry.

A round part (:func:`strategies.round.server_side.train_part`) runs in two phases: every mode's
``first`` step on its clients' first replies, in registry order, then every ``second`` step
(a mode with a second exchange sends it there and reads its replies). Each step records a
dropped reply in the round state with its reason and goes on: one client's bad reply never
ends the round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from strategies.aggregate.volume import Contribution
from strategies.cost.workload import ModelShape
from strategies.fleet.state import FleetState
from strategies.interfaces import ServerModel
from strategies.modes.registry import TRAINING_MODES
from strategies.round.context import RoundContext
from strategies.round.state import RoundState, TrainedPart
from strategies.settings import SplitSettings
from strategies.trust.state import TrustState
from strategies.wire import names as wire


@dataclass(frozen=True)
class Bounds:
    """What replies are checked against: the boundary width and the model's chunk limits."""

    hidden: int
    limits: wire.ChunkLimits


@dataclass(frozen=True)
class TensorKeys:
    """Which tensors travel: down in each mode's first message, and back in a local reply."""

    by_mode: dict[str, tuple[str, ...]]
    local_reply: tuple[str, ...]

    @classmethod
    def of(cls, model: ServerModel, emulator_layers: int, shape: ModelShape) -> TensorKeys:
        emulator = tuple(model.emulator_keys(emulator_layers))
        client = tuple(model.client_keys)
        # A local client sends back its lower prefix and the head, and the upper prefix
        # too when the emulator dropped nothing (then it is the real model).
        full = emulator_layers in (0, shape.server_layers)
        by_mode = {name: client + (emulator if m.sends_emulator else ()) for name, m in TRAINING_MODES.items()}
        return cls(by_mode, tuple(k for k in emulator if wire.is_head(k) or full))


@dataclass
class RoundWork:
    """One round part on the server: what its steps read, and what they yield.

    ``prefixes``: validated client contributions by mode, then node id; ``pool``: the
    server's result on uploaded rows; ``uploaded``: whether an upload arrived this round.
    """

    ctx: RoundContext
    model: ServerModel
    keys: TensorKeys
    bounds: Bounds
    fleet_state: FleetState
    state: dict[str, np.ndarray]
    rnd: RoundState
    trust: TrustState = field(default_factory=TrustState)  # read only: the strategy commits kept rounds
    prefixes: dict[str, dict[int, Contribution]] = field(default_factory=dict)
    pool: Contribution | None = None
    uploaded: bool = False

    @property
    def settings(self) -> SplitSettings:
        """The round's settings (a parallel probe half's, in one)."""
        return self.ctx.settings

    def client_part(self) -> dict[str, np.ndarray]:
        """The global lower prefix: what a client was sent and sends back trained."""
        return {k: self.state[k] for k in self.model.client_keys}


def no_server_part(settings: SplitSettings, part: TrainedPart, rnd: RoundState) -> list[Contribution]:
    """A mode whose server trains nothing of its own adds no contribution."""
    return []


@dataclass(frozen=True)
class ServerStep:
    """A training mode's part of a round on the server, as the step registry holds it.

    Attributes
    ----------
    mode : str
        The mode's name (a key of :data:`strategies.modes.registry.TRAINING_MODES`).
    first : Callable[[RoundWork, Mapping[int, Message]], None]
        Validate the mode's first replies (by node id) and do the server's work on them.
    second : Callable[[RoundWork], None] | None (default: None)
        The mode's second exchange, after every mode's first step; None without one.
    server_part : Callable[[SplitSettings, TrainedPart, RoundState], list[Contribution]]
        The server's own contributions to the average, given the part's accepted clients.
    """

    mode: str
    first: Callable[[RoundWork, Mapping[int, Message]], None]
    second: Callable[[RoundWork], None] | None = None
    server_part: Callable[[SplitSettings, TrainedPart, RoundState], list[Contribution]] = no_server_part


def finite(trained: Mapping[str, np.ndarray], grads: Sequence[np.ndarray], loss: float) -> bool:
    """Whether a training result (tensors, gradients, loss) is finite throughout."""
    return bool(np.isfinite(loss)) and all(np.isfinite(a).all() for a in [*trained.values(), *grads])
