"""The device's activation guard (:mod:`flower_app.privacy.defences`) built from the run config.

Where each path applies it:

=====================================  =========================================================
path                                   what the lower layers' output goes through
=====================================  =========================================================
split forward, centralized upload      ``on_wire``: the clip, then noise drawn per chunk
split replay, local mode               ``shape``: the clip, in the gradient's path
server: evaluation, training on        :func:`boundary_clip`'s ``shape``: the clip, no noise
uploaded samples, generation
=====================================  =========================================================

The clip is part of the model wherever the lower layers run, so the server trains and tests
on the distribution the devices send. The noise is a measure on the wire only: it protects
what leaves a device, and evaluation sees clipped, noise-free activations.

Each chunk's noise has a generator of its own (:func:`noise_generator`), seeded by the
round's noise seed (the node's :attr:`~flower_app.modes.node.Job.noise_seed`) and the chunk's
index: a run is reproducible, and the two halves of a plan sent in two calls draw what one
call would.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from flower_app.config.schema import Config
from flower_app.privacy.defences import ActivationGuard, embedding_directions

NOISE_STREAM = 0x6E6F6973  # entropy word that keeps the noise's streams apart from other uses of a seed


def boundary_clip(config: Config) -> ActivationGuard:
    """The clip alone: what the server's own forwards of the lower layers apply (no noise)."""
    return ActivationGuard(clip=config.privacy.act_clip)


def noise_basis(config: Config, client: Any) -> torch.Tensor | None:
    """``(H, act-rank)`` directions the noise lies in, from the client part's token embeddings.

    None for isotropic noise. ``client`` is a :class:`~flower_app.model.split_model.ClientPart`;
    the SVD costs about a second for MiniLM's vocabulary, so a device computes it once, with its
    device part.
    """
    p = config.privacy
    if p.act_directions != "embedding":
        return None
    return embedding_directions(client.token_embedding.detach(), p.act_rank)


def activation_guard(config: Config, basis: torch.Tensor | None = None) -> ActivationGuard:
    """The device's guard: ``privacy.act-clip``, ``act-noise`` and, for embedding directions, ``basis``.

    ``basis`` is :func:`noise_basis` of the device's client part; embedding directions without
    it raise (isotropic noise would silently take its place).
    """
    p = config.privacy
    embedding = p.act_directions == "embedding"
    if embedding and basis is None:
        raise ValueError("privacy.act-directions=embedding, but the device part holds no noise basis (noise_basis)")
    return ActivationGuard(p.act_clip, p.act_noise, basis if embedding else None)


def noise_generator(seed: int, index: int) -> torch.Generator:
    """The generator of chunk ``index``'s noise in a round whose noise seed is ``seed``."""
    state = np.random.SeedSequence([seed, NOISE_STREAM, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))
