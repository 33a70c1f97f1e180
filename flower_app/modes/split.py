"""Split mode on the client: boundary activations of a batch plan, then the replay.

:func:`forward_plan` runs the lower layers on every planned minibatch and returns
their boundary activations in one chunked record (:mod:`strategies.wire.names`);
:func:`replay_plan` replays the same forwards and applies the server's boundary
gradients in order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from flower_app.data import files as data_mod
from flower_app.model.split_model import ClientPart
from flower_app.modes.training import adam, from_wire, to_wire
from strategies.wire import names as wire


def forward_chunks(
    client: ClientPart, encoded: data_mod.Encoded, plan: Sequence[np.ndarray], pad_id: int, dtype: str
) -> list[wire.Chunk]:
    """Boundary activations, masks and labels of every planned minibatch, without grad."""
    chunks = []
    with torch.no_grad():
        for indices in plan:
            ids, mask, labels = data_mod.collate(encoded, indices, pad_id)  # (B, T), (B, T), (B,)
            boundary = to_wire(client(ids, mask), dtype)  # (B, T, hidden)
            boundary_mask = client.boundary_mask(mask)  # the input's mask, or the image encoder's positions
            chunks.append(wire.Chunk(boundary, boundary_mask.numpy().astype(np.int8), labels.numpy()))
    return chunks


def forward_plan(
    client: ClientPart,
    encoded: data_mod.Encoded,
    plan: Sequence[np.ndarray],
    pad_id: int,
    dtype: str,
    first_index: int = 0,
) -> dict[str, np.ndarray]:
    """:func:`forward_chunks` as the arrays of a record, chunks numbered from ``first_index``."""
    chunks = forward_chunks(client, encoded, plan, pad_id, dtype)
    return wire.encode_chunks(chunks, wire.ACTIVATIONS_KIND, first_index)


def replay_plan(
    client: ClientPart,
    encoded: data_mod.Encoded,
    plan: Sequence[np.ndarray],
    gradients: Sequence[np.ndarray],
    lr: float,
    pad_id: int,
    max_s: float | None = None,
) -> int:
    """Replay each minibatch's forward and apply its boundary gradient, in plan order; steps taken.

    The server computed gradient ``i`` on activations made with the prefix of the
    round's start, while the client's prefix has taken ``i`` steps since: bounded
    staleness, traded for two exchanges a round instead of one per step. With
    ``max_s`` (the requirement's time limit) no step starts after that many
    seconds; the first always runs.
    """
    optimizer = adam([client], lr, head_lr=0.0)  # the client part has no head
    started, done = time.perf_counter(), 0
    for indices, grad in zip(plan, gradients, strict=False):
        if max_s is not None and done and time.perf_counter() - started >= max_s:
            break
        replay_step(client, encoded, indices, grad, optimizer, pad_id)
        done += 1
    return done


def replay_step(
    client: ClientPart,
    encoded: data_mod.Encoded,
    indices: np.ndarray,
    grad: np.ndarray,
    optimizer: torch.optim.Optimizer,
    pad_id: int,
) -> None:
    """One replayed minibatch: forward with the current prefix, backward the server's gradient."""
    ids, mask, _ = data_mod.collate(encoded, indices, pad_id)
    optimizer.zero_grad()
    boundary = client(ids, mask)  # (B, T, hidden)
    boundary.backward(from_wire(grad))
    optimizer.step()
