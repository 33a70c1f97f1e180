"""What the strategy needs from the server's half of the model.

The strategy is model-agnostic: it moves tensors and data volumes, and reaches the
upper layers and the head only through this interface
(``flower_app.modes.server_model.SplitServer`` implements it). Minibatches arrive as the
chunks of :mod:`strategies.wire.names`, already checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from strategies.cost.workload import ModelShape
from strategies.wire.codecs.base import WireCodec
from strategies.wire.names import Chunk, ChunkLimits


class ServerModel(Protocol):
    client_keys: tuple[str, ...]  # trainable tensors the clients hold (lower-layer prefix)
    server_keys: tuple[str, ...]  # trainable tensors the server holds (upper prefix, head)

    def train_split(
        self,
        state: Mapping[str, np.ndarray],
        batches: Sequence[Chunk],
        *,
        lr: float,
        head_lr: float,
        codec: WireCodec,
    ) -> tuple[dict[str, np.ndarray], list[np.ndarray], float]:
        """Train the server side on one client's minibatches of boundary activations.

        ``lr`` and ``head_lr`` are the round's learning rates (the strategy's, after its
        schedule); ``codec`` is the round's wire codec (a probe trial's may differ from the
        run's). Returns the server tensors after the steps, one boundary gradient per
        minibatch encoded by ``codec``, and the mean training loss.
        """
        ...

    def score_split(self, state: Mapping[str, np.ndarray], batches: Sequence[Chunk]) -> float:
        """The mean loss of the server side at ``state`` on one client's minibatches, without a step.

        Used to screen clients before the server trains on them (:mod:`strategies.trust.screen`).
        """
        ...

    def top_split(self, state: Mapping[str, np.ndarray], batches: Sequence[Chunk]) -> list[np.ndarray]:
        """U-shape: what the head reads, per minibatch at ``state``, no step: the pooled last hidden
        states ``(B, H)`` for a classifier, the normed ones ``(B, T, H)`` for an LM head. The device
        runs the head on them; the server never does in this mode.
        """
        ...

    def train_top(
        self,
        state: Mapping[str, np.ndarray],
        batches: Sequence[Chunk],
        top_grads: Sequence[np.ndarray],
        *,
        lr: float,
        codec: WireCodec,
    ) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """U-shape: step through a client's minibatches, backpropagating the device's gradient at the
        features; the server tensors after the steps (the head unchanged) and one boundary
        gradient per minibatch encoded by ``codec``."""
        ...

    def root_update(
        self, state: Mapping[str, np.ndarray], samples: int, steps: int, seed: int, *, lr: float, head_lr: float
    ) -> dict[str, np.ndarray]:
        """Every trainable tensor after ``steps`` minibatches from ``state`` on the server's own root set
        of ``samples`` samples (FLTrust's reference, :mod:`strategies.trust.fltrust`)."""
        ...

    def shape(self) -> ModelShape:
        """Sizes of the split model, for the simulated cost of each mode."""
        ...

    def limits(self) -> ChunkLimits:
        """What the model accepts in a chunk: sequence length, label range, vocabulary."""
        ...

    def emulator_keys(self, layers: int) -> tuple[str, ...]:
        """Server tensors a local-mode emulator of ``layers`` upper layers trains (0: all)."""
        ...

    def train_pool(
        self,
        state: Mapping[str, np.ndarray],
        chunks: Sequence[Chunk],
        steps: int,
        seed: int,
        *,
        lr: float,
        head_lr: float,
    ) -> tuple[dict[str, np.ndarray], float, int]:
        """Train from ``state`` on the centralized uploads at the round's learning rates; tensors,
        mean loss, distinct samples drawn."""
        ...
