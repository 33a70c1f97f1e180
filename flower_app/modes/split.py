"""Split mode on the client: boundary activations of a batch plan, then the replay.

:func:`forward_plan` runs the lower layers on every planned minibatch and returns
their boundary activations in one chunked record (:mod:`strategies.wire.names`),
encoded by the round's wire codec (:mod:`strategies.wire.codecs`), whose name the reply
carries as its tag (:func:`codec_tag`); :func:`replay_plan` replays the same forwards and
applies the server's boundary gradients in order, decoded by the codec their message names.
Both go through the device's activation guard (:mod:`flower_app.privacy.guard`): the clip in
both, the noise only in what is sent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from flwr.app import ConfigRecord

from flower_app.data import files as data_mod
from flower_app.model.split_model import ClientPart
from flower_app.modes.training import adam, from_wire, to_wire
from flower_app.privacy.defences import UNGUARDED, ActivationGuard
from flower_app.privacy.guard import noise_generator
from strategies.wire import names as wire
from strategies.wire.codecs.base import WireCodec
from strategies.wire.codecs.registry import wire_codec


def codec_tag(codec: str) -> ConfigRecord:
    """The config record of a reply that names the wire codec of its boundary tensors."""
    return ConfigRecord({wire.CODEC: wire_codec(codec).name})


def forward_chunks(
    client: ClientPart,
    encoded: data_mod.Encoded,
    plan: Sequence[np.ndarray],
    pad_id: int,
    codec: str,
    *,
    guard: ActivationGuard = UNGUARDED,
    noise_seed: int = 0,
    first_index: int = 0,
) -> list[wire.Chunk]:
    """Boundary activations (encoded by the wire codec named ``codec``), masks and labels of every
    planned minibatch, without grad.

    What goes on the wire is ``guard.on_wire`` of the lower layers' output: clipped, plus noise
    drawn for chunk ``first_index + i`` from the round's ``noise_seed``
    (:func:`flower_app.privacy.guard.noise_generator`)."""
    encoder = wire_codec(codec)
    chunks = []
    with torch.no_grad():
        for i, indices in enumerate(plan, start=first_index):
            ids, mask, labels = data_mod.collate(encoded, indices, pad_id)  # (B, T), (B, T), (B,)
            generator = noise_generator(noise_seed, i) if guard.noise > 0 else None
            boundary = to_wire(guard.on_wire(client(ids, mask), generator), encoder)  # (B, T, wire width of hidden)
            boundary_mask = client.boundary_mask(mask)  # the input's mask, or the image encoder's positions
            chunks.append(wire.Chunk(boundary, boundary_mask.numpy().astype(np.int8), labels.numpy()))
    return chunks


def forward_plan(
    client: ClientPart,
    encoded: data_mod.Encoded,
    plan: Sequence[np.ndarray],
    pad_id: int,
    codec: str,
    first_index: int = 0,
    *,
    labels: bool = True,
    guard: ActivationGuard = UNGUARDED,
    noise_seed: int = 0,
) -> dict[str, np.ndarray]:
    """:func:`forward_chunks` as the arrays of a record, chunks numbered from ``first_index``;
    without ``labels`` (U-shape) the record holds activations and masks only."""
    chunks = forward_chunks(
        client, encoded, plan, pad_id, codec, guard=guard, noise_seed=noise_seed, first_index=first_index
    )
    return wire.encode_chunks(chunks, wire.ACTIVATIONS_KIND, first_index, labels=labels)


def replay_plan(
    client: ClientPart,
    encoded: data_mod.Encoded,
    plan: Sequence[np.ndarray],
    gradients: Sequence[np.ndarray],
    lr: float,
    pad_id: int,
    max_s: float | None = None,
    *,
    codec: WireCodec,
    guard: ActivationGuard = UNGUARDED,
) -> int:
    """Replay each minibatch's forward and apply its boundary gradient, in plan order; steps taken.

    The server computed gradient ``i`` on activations made with the prefix of the
    round's start, while the client's prefix has taken ``i`` steps since: bounded
    staleness, traded for two exchanges a round instead of one per step. With
    ``max_s`` (the requirement's time limit) no step starts after that many
    seconds; the first always runs. ``codec``: the wire codec the gradients' message names;
    ``guard``: the device's activation guard (see :func:`replay_step`).
    """
    optimizer = adam([client], lr, head_lr=0.0)  # the client part has no head
    started, done = time.perf_counter(), 0
    for indices, grad in zip(plan, gradients, strict=False):
        if max_s is not None and done and time.perf_counter() - started >= max_s:
            break
        replay_step(client, encoded, indices, from_wire(grad, codec), optimizer, pad_id, guard)
        done += 1
    return done


def replay_step(
    client: ClientPart,
    encoded: data_mod.Encoded,
    indices: np.ndarray,
    grad: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    pad_id: int,
    guard: ActivationGuard = UNGUARDED,
) -> None:
    """One replayed minibatch: forward with the current prefix, backward the server's (decoded) gradient."""
    ids, mask, _ = data_mod.collate(encoded, indices, pad_id)
    optimizer.zero_grad()
    # The clip is part of the forward: the gradient goes through it. The noise sent with the
    # first forward is not: it was added after the clip and does not depend on the prefix, so
    # the gradient of clip(h) + noise is the gradient of clip(h).
    boundary = guard.shape(client(ids, mask))  # (B, T, hidden)
    boundary.backward(grad)
    optimizer.step()
