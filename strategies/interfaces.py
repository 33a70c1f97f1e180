"""What the strategy needs from the server's half of the model.

The strategy is model-agnostic: it moves tensors and data volumes, and reaches
the upper layers, the head and the held-out evaluation only through this
interface (``flower_app.task.SplitServer`` implements it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np


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

    def evaluate(self, state: Mapping[str, np.ndarray]) -> dict[str, float]:
        """``loss``, ``accuracy`` and ``num-examples`` of the global tensors on held-out data."""
