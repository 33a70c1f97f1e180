"""What the strategy needs from the server's half of the model.

The strategy is model-agnostic: it moves tensors and data volumes, and reaches
the upper layers, the head and the held-out evaluation only through this
interface (``flower_app.task.SplitServer`` implements it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from strategies.workload import ModelShape


class ServerModel(Protocol):
    client_keys: tuple[str, ...]  # trainable tensors the clients hold (lower-layer prefix)
    server_keys: tuple[str, ...]  # trainable tensors the server holds (upper prefix, head)

    def initial_state(self) -> dict[str, np.ndarray]:
        """All trainable tensors at the start of a run."""

    def train_split(self, state: Mapping[str, np.ndarray], batches: Sequence[Mapping[str, np.ndarray]],
                    ) -> tuple[dict[str, np.ndarray], list[np.ndarray], float]:
        """Train the server side on one client's minibatches (``act``, ``mask``, ``label``).

        Returns the server tensors after the steps, one boundary gradient per
        minibatch, and the mean training loss.
        """

    def shape(self) -> ModelShape:
        """Sizes of the split model, for the simulated cost of each mode."""

    def emulator_keys(self, layers: int) -> tuple[str, ...]:
        """Server tensors a local-mode emulator of ``layers`` upper layers trains (0: all)."""

    def train_pool(self, state: Mapping[str, np.ndarray], uploads: Sequence[Mapping[str, np.ndarray]],
                   kind: str, steps: int, batch_size: int, seed: int,
                   ) -> tuple[dict[str, np.ndarray], float, int]:
        """Train from ``state`` on the centralized uploads; tensors, mean loss, distinct samples drawn."""

    def evaluate(self, state: Mapping[str, np.ndarray]) -> dict[str, float]:
        """``loss``, ``accuracy`` and ``num-examples`` of the global tensors on held-out data."""
