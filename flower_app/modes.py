"""Training for the ``local`` and ``centralized`` modes (``split`` lives in :mod:`flower_app.task`).

- ``local``: :func:`train_local` trains the client's lower prefix end to end
  through an emulator of the upper layers (:mod:`flower_app.emulator`).
- ``centralized``: a weak client sends its data once, with :func:`upload_samples`
  (token ids) or :func:`upload_activations` (its lower layers' output); the
  server trains on it with :func:`train_centralized`.

Every function is pure over the parts, the data and the plan it is given: it
reads nothing from a config and trains the parts in place from their current
tensors, so the caller loads the global tensors first (``model.set_state``)
and picks the torch threads (``task.torch_threads``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flower_app import data as data_mod
from flower_app.model import ClientPart, ServerPart, SplitSpec, get_state, trainable_named
from flower_app.task import class_logits, forward_plan
from strategies import wire

KINDS = ("samples", "activations")
CHUNK_SIZE = 16


def ids_key(i: int) -> str:
    """Token ids of upload chunk ``i`` (activations, masks and labels use :mod:`strategies.wire`)."""
    return f"ids.{i}"


# --- local mode ---------------------------------------------------------------------------------

def train_local(client: ClientPart, emulator: ServerPart, encoded: data_mod.Encoded,
                plan: Sequence[np.ndarray], lr: float, head_lr: float, pad_id: int, spec: SplitSpec,
                verbalizer_ids: tuple[int, ...] | None,
                stop: Callable[[int, float], bool] | None = None) -> tuple[float, int]:
    """One Adam step per planned minibatch through client part and emulator; mean loss and steps taken.

    Trains the client's prefix and the emulator's prefix at ``lr`` and its head
    at ``head_lr``. Only the client's prefix leaves the device afterwards (the
    whole emulator's tensors too when it keeps every upper layer). Before each
    step after the first, ``stop(steps_done, seconds_elapsed)`` may end the
    plan early: how the requirement's time limit is kept.
    """
    optimizer = _adam([client, emulator], lr, head_lr)
    losses, started = [], time.perf_counter()
    for indices in plan:
        if stop is not None and losses and stop(len(losses), time.perf_counter() - started):
            break
        ids, mask, labels = data_mod.collate(encoded, indices, pad_id)  # (B, T), (B, T), (B,)
        scores = class_logits(spec, emulator(client(ids, mask), mask), mask, verbalizer_ids)
        loss = F.cross_entropy(scores, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses)), len(losses)


def evaluate_local(client: ClientPart, emulator: ServerPart, encoded: data_mod.Encoded,
                   indices: Sequence[int], pad_id: int, spec: SplitSpec,
                   verbalizer_ids: tuple[int, ...] | None) -> dict[str, float]:
    """Loss and accuracy of client part + emulator on held-back samples (the threshold check)."""
    with torch.no_grad():
        ids, mask, labels = data_mod.collate(encoded, np.asarray(indices), pad_id)
        scores = class_logits(spec, emulator(client(ids, mask), mask), mask, verbalizer_ids)
        return {"loss": float(F.cross_entropy(scores, labels)),
                "accuracy": float((scores.argmax(-1) == labels).float().mean())}


# --- centralized mode: what the client uploads --------------------------------------------------

def upload_chunks(encoded: data_mod.Encoded, indices: Sequence[int],
                  chunk_size: int = CHUNK_SIZE) -> list[np.ndarray]:
    """Split the uploaded samples into chunks of ``chunk_size``, sorted by length.

    Each chunk is padded to its longest row; similar lengths side by side pad
    little, and padding is bytes on the weakest uplink. Order does not matter to
    the server, which samples its minibatches over all rows.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if chunk_size < 1 or len(indices) == 0:
        raise ValueError(f"need chunk_size >= 1 and samples to upload, got {chunk_size} and {len(indices)}")
    lengths = np.array([len(encoded.ids[i]) for i in indices])
    ordered = indices[np.argsort(lengths, kind="stable")]
    return [ordered[start:start + chunk_size] for start in range(0, len(ordered), chunk_size)]


def upload_samples(encoded: data_mod.Encoded, indices: Sequence[int], pad_id: int,
                   chunk_size: int = CHUNK_SIZE) -> dict[str, np.ndarray]:
    """Token ids, masks and labels of the samples, per chunk (``ids.i``, ``mask.i``, ``label.i``)."""
    out = {}
    for i, chunk in enumerate(upload_chunks(encoded, indices, chunk_size)):
        ids, mask, labels = data_mod.collate(encoded, chunk, pad_id)  # (C, T), (C, T), (C,)
        out[ids_key(i)] = ids.numpy().astype(np.int32)  # vocabularies fit in 31 bits: half the bytes
        out[wire.mask_key(i)] = mask.numpy().astype(np.int8)
        out[wire.label_key(i)] = labels.numpy()
    return out


def upload_activations(client: ClientPart, encoded: data_mod.Encoded, indices: Sequence[int],
                       pad_id: int, dtype: str, chunk_size: int = CHUNK_SIZE) -> dict[str, np.ndarray]:
    """Lower-layer activations, masks and labels, per chunk (``act.i``, ``mask.i``, ``label.i``).

    Computed without grad, with whatever lower prefix ``client`` holds (the
    global one when the upload is asked for); ``dtype`` is the wire dtype.
    """
    return forward_plan(client, encoded, upload_chunks(encoded, indices, chunk_size), pad_id, dtype)


def upload_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes an upload puts on the uplink (payload only), for the cost model."""
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


def uploaded_rows(uploaded: Mapping[str, np.ndarray]) -> int:
    """Samples in an upload: the data volume behind a centralized contribution."""
    return sum(len(uploaded[wire.label_key(i)]) for i in range(_num_chunks(uploaded)))


# --- centralized mode: what the server trains ---------------------------------------------------

def train_centralized(client: ClientPart, server: ServerPart, uploaded: Mapping[str, np.ndarray],
                      kind: str, steps: int, batch_size: int, lr: float, head_lr: float, seed: int,
                      spec: SplitSpec, verbalizer_ids: tuple[int, ...] | None,
                      ) -> tuple[dict[str, np.ndarray], float]:
    """Train the full model on uploaded data; return the trained tensors and mean loss.

    ``kind="samples"``: the server runs its copy of the client part too and
    trains the lower prefix, the upper prefix and the head. ``kind="activations"``:
    the lower layers' output is fixed by the upload, so only the upper prefix and
    the head train, and only the server part's tensors are returned. Minibatches
    are ``steps`` seeded draws over the uploaded rows (:func:`data.batch_plan`).
    """
    if kind not in KINDS:
        raise ValueError(f"upload kind '{kind}' must be one of {KINDS}")
    rows, row_labels = _rows(uploaded, kind)
    parts = [client, server] if kind == "samples" else [server]
    optimizer = _adam(parts, lr, head_lr)
    losses = []
    for indices in data_mod.batch_plan(len(rows), steps, batch_size, seed):
        inputs, mask = _pad([rows[j] for j in indices])  # (B, T) ids or (B, T, H) activations
        labels = torch.as_tensor(row_labels[indices], dtype=torch.long)  # (B,)
        # Activations may travel as float16; the server computes in float32.
        boundary = client(inputs.long(), mask) if kind == "samples" else inputs.float()  # (B, T, H)
        loss = F.cross_entropy(class_logits(spec, server(boundary, mask), mask, verbalizer_ids), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    state = {name: array for part in parts for name, array in get_state(part).items()}
    return state, float(np.mean(losses))


def merge_uploads(uploads: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Several clients' uploads as one, chunks renumbered in the given order (the server's pool)."""
    merged, offset = {}, 0
    for uploaded in uploads:
        count = _num_chunks(uploaded)
        for i in range(count):
            for key in (ids_key, wire.activation_key, wire.mask_key, wire.label_key):
                if key(i) in uploaded:
                    merged[key(offset + i)] = uploaded[key(i)]
        offset += count
    return merged


def _num_chunks(uploaded: Mapping[str, np.ndarray]) -> int:
    count = 0
    while wire.label_key(count) in uploaded:
        count += 1
    return count


def _rows(uploaded: Mapping[str, np.ndarray], kind: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Every uploaded row without its padding, and the labels: chunks differ in length."""
    input_key = ids_key if kind == "samples" else wire.activation_key
    rows, labels = [], []
    for i in range(_num_chunks(uploaded)):
        for key in (input_key(i), wire.mask_key(i)):
            if key not in uploaded:
                raise KeyError(f"upload of {kind} has no array '{key}'")
        inputs, mask = np.asarray(uploaded[input_key(i)]), np.asarray(uploaded[wire.mask_key(i)])
        for row, row_mask in zip(inputs, mask):
            length = int(row_mask.sum())
            if not row_mask[:length].all():
                raise ValueError(f"upload chunk {i} has a mask that is not right-padded")
            rows.append(row[:length])  # (T_real,) ids or (T_real, H) activations
        labels.append(np.asarray(uploaded[wire.label_key(i)]))
    if not rows:
        raise ValueError("the upload holds no samples")
    return rows, np.concatenate(labels)


def _pad(rows: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows of lengths ``T_i`` to ``(B, T, ...)`` with zeros, and their ``(B, T)`` mask.

    Padded positions are masked out as keys and never pooled, so what fills
    them (zeros, not the client's pad id) does not reach the loss.
    """
    length = max(len(r) for r in rows)
    padded = np.zeros((len(rows), length, *rows[0].shape[1:]), dtype=rows[0].dtype)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for j, row in enumerate(rows):
        padded[j, :len(row)] = row
        mask[j, :len(row)] = 1
    return torch.as_tensor(padded), torch.as_tensor(mask)


def _adam(parts: Sequence[nn.Module], lr: float, head_lr: float) -> torch.optim.Optimizer:
    """Adam over the parts' prefix at ``lr`` and their trainable head at ``head_lr``."""
    named = [(name, p) for part in parts for name, p in trainable_named(part).items()]
    groups = [{"params": [p for n, p in named if n.startswith("prefix.")], "lr": lr}]
    head = [p for n, p in named if n.startswith("head.")]
    if head:
        groups.append({"params": head, "lr": head_lr})
    return torch.optim.Adam(groups)
