"""Centralized mode: a weak client uploads its data once; the server trains on the pool.

The client sends either its samples as token ids (:func:`upload_samples`) or its lower
layers' output (:func:`upload_activations`), as a chunked record of
:mod:`strategies.wire.names`. The server trains on the pooled chunks of every centralized
client with :func:`train_centralized`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from flower_app.data import files as data_mod
from flower_app.model.split_model import ClientPart, ServerPart, SplitSpec, get_state
from flower_app.modes.split import forward_chunks
from flower_app.modes.training import adam, task_loss
from flower_app.privacy.defences import UNGUARDED, ActivationGuard
from flower_app.tasks.lm import IGNORE
from strategies.wire import names as wire

CHUNK_SIZE = 16


def upload_chunks(
    encoded: data_mod.Encoded, indices: Sequence[int] | np.ndarray, chunk_size: int = CHUNK_SIZE
) -> list[np.ndarray]:
    """Split the uploaded samples into chunks of ``chunk_size``, sorted by length.

    Each chunk is padded to its longest row; similar lengths side by side pad little,
    and padding is bytes on the weakest uplink. Order does not matter to the server,
    which samples its minibatches over all rows.
    """
    order = np.asarray(indices, dtype=np.int64)
    if chunk_size < 1 or len(order) == 0:
        raise ValueError(f"need chunk_size >= 1 and samples to upload, got {chunk_size} and {len(order)}")
    lengths = np.array([len(encoded.ids[i]) for i in order])
    ordered = order[np.argsort(lengths, kind="stable")]
    return [ordered[start : start + chunk_size] for start in range(0, len(ordered), chunk_size)]


def upload_samples(
    encoded: data_mod.Encoded, indices: Sequence[int] | np.ndarray, pad_id: int, chunk_size: int = CHUNK_SIZE
) -> dict[str, np.ndarray]:
    """Token ids, masks and labels of the samples, per chunk (``ids.i``, ``mask.i``, ``label.i``)."""
    chunks = []
    for rows in upload_chunks(encoded, indices, chunk_size):
        ids, mask, labels = data_mod.collate(encoded, rows, pad_id)  # (C, T), (C, T), (C,)
        # Vocabularies fit in 31 bits: int32 ids are half the bytes.
        chunks.append(wire.Chunk(ids.numpy().astype(np.int32), mask.numpy().astype(np.int8), labels.numpy()))
    return wire.encode_chunks(chunks, wire.SAMPLES)


def upload_activations(
    client: ClientPart,
    encoded: data_mod.Encoded,
    indices: Sequence[int] | np.ndarray,
    pad_id: int,
    dtype: str,
    chunk_size: int = CHUNK_SIZE,
    *,
    guard: ActivationGuard = UNGUARDED,
    noise_seed: int = 0,
) -> dict[str, np.ndarray]:
    """Lower-layer activations, masks and labels, per chunk (``act.i``, ``mask.i``, ``label.i``).

    Computed without grad, with whatever lower prefix ``client`` holds (the global one
    when the upload is asked for); ``dtype`` is the wire dtype. What is sent went through
    ``guard`` as in split mode (:func:`~flower_app.modes.split.forward_chunks`).
    """
    rows = upload_chunks(encoded, indices, chunk_size)
    chunks = forward_chunks(client, encoded, rows, pad_id, dtype, guard=guard, noise_seed=noise_seed)
    return wire.encode_chunks(chunks, wire.ACTIVATIONS_KIND)


def train_centralized(
    client: ClientPart,
    server: ServerPart,
    chunks: Sequence[wire.Chunk],
    kind: str,
    steps: int,
    batch_size: int,
    lr: float,
    head_lr: float,
    seed: int,
    spec: SplitSpec,
    verbalizer_ids: tuple[int, ...] | None,
    clip: ActivationGuard = UNGUARDED,
) -> tuple[dict[str, np.ndarray], float, int]:
    """Train on uploaded chunks; the trained tensors, the mean loss and the distinct samples drawn.

    ``kind="samples"``: the server runs its copy of the client part too, its output clipped
    by ``clip`` as a device's is (:func:`flower_app.privacy.guard.boundary_clip`), and trains
    the lower prefix, the upper prefix and the head. ``kind="activations"``: the lower
    layers' output is fixed by the upload, so only the upper prefix and the head
    train, and only the server part's tensors are returned. Minibatches are ``steps``
    seeded draws over the uploaded rows (:func:`data.batch_plan`).
    """
    if kind not in wire.UPLOAD_KINDS:
        raise ValueError(f"upload kind '{kind}' must be one of {list(wire.UPLOAD_KINDS)}")
    rows, row_labels = _rows(chunks)
    parts: list[ClientPart | ServerPart] = [client, server] if kind == wire.SAMPLES else [server]
    optimizer = adam(parts, lr, head_lr)
    losses: list[float] = []
    drawn: set[int] = set()
    for indices in data_mod.batch_plan(len(rows), steps, batch_size, seed):
        inputs, mask = _pad([rows[j] for j in indices])  # (B, T) ids or (B, T, H) activations
        labels = _labels([row_labels[j] for j in indices], mask.shape[1])  # (B,) classes or (B, T) targets
        # Activations may travel as float16; the server computes in float32.
        boundary = clip.shape(client(inputs.long(), mask)) if kind == wire.SAMPLES else inputs.float()  # (B, T, H)
        loss = task_loss(spec, server(boundary, mask), mask, labels, verbalizer_ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        drawn.update(int(j) for j in indices)
    state = {name: array for part in parts for name, array in get_state(part).items()}
    return state, float(np.mean(losses)), len(drawn)


def _rows(chunks: Sequence[wire.Chunk]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every uploaded row and its label without padding: chunks differ in length.

    A label is a class ``()`` or, for the causal-LM objective, token targets ``(T_real,)``.
    """
    rows, labels = [], []
    for i, chunk in enumerate(chunks):
        for row, row_mask, label in zip(np.asarray(chunk.inputs), np.asarray(chunk.mask), chunk.label, strict=True):
            length = int(row_mask.sum())
            if not row_mask[:length].all():
                raise ValueError(f"upload chunk {i} has a mask that is not right-padded")
            rows.append(row[:length])  # (T_real,) ids or (T_real, H) activations
            labels.append(np.asarray(label)[:length] if np.ndim(label) else np.asarray(label))
    if not rows:
        raise ValueError("the upload holds no samples")
    return rows, labels


def _labels(labels: Sequence[np.ndarray], length: int) -> torch.Tensor:
    """``(B,)`` classes, or token targets padded to ``(B, T)`` with IGNORE."""
    if np.ndim(labels[0]) == 0:
        return torch.as_tensor(np.array(labels), dtype=torch.long)
    padded = np.full((len(labels), length), IGNORE, dtype=np.int64)
    for j, targets in enumerate(labels):
        padded[j, : len(targets)] = targets
    return torch.as_tensor(padded)


def _pad(rows: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows of lengths ``T_i`` to ``(B, T, ...)`` with zeros, and their ``(B, T)`` mask.

    Padded positions are masked out as keys and never pooled, so what fills them
    (zeros, not the client's pad id) does not reach the loss.
    """
    length = max(len(r) for r in rows)
    padded = np.zeros((len(rows), length, *rows[0].shape[1:]), dtype=rows[0].dtype)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for j, row in enumerate(rows):
        padded[j, : len(row)] = row
        mask[j, : len(row)] = 1
    return torch.as_tensor(padded), torch.as_tensor(mask)
