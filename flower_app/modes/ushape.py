"""U-shape mode on the client: the head runs here, on the features the server sends down.

The boundary activations go up without labels and the replay is split's
(:mod:`flower_app.modes.split`); what is U-shape's own is :func:`head_steps`: the device runs
the head of the part it holds on each minibatch's features (what
:meth:`~flower_app.model.split_model.ServerPart.features` gives the head: pooled hidden states for
a classifier, the normed hidden states of every token for an LM head), scores them against its
own labels, steps a trainable head, and returns the loss gradient at the features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flower_app.data import files as data_mod
from flower_app.model.split_model import ServerPart, SplitSpec, load_tensors, trainable_named
from flower_app.modes.training import adam, from_wire, task_loss, to_wire
from strategies.wire import names as wire
from strategies.wire.codecs.base import WireCodec


def head_steps(
    upper: ServerPart,
    spec: SplitSpec,
    verbalizer_ids: tuple[int, ...] | None,
    encoded: data_mod.Encoded,
    plan: Sequence[np.ndarray],
    tops: Sequence[np.ndarray],
    head_lr: float,
    pad_id: int,
    codec: WireCodec,
) -> tuple[list[np.ndarray], float]:
    """Each minibatch's loss gradient at its features (encoded by ``codec``), in plan order,
    and the mean loss; a trainable head takes one step per minibatch.

    The gradient is taken before the head's step, at the head the loss was computed with.
    """
    optimizer = adam([upper], 0.0, head_lr)  # the emulator's prefix is not read here: lr 0 and no gradient
    grads, losses = [], []
    for indices, top in zip(plan, tops, strict=True):
        _, mask, labels = data_mod.collate(encoded, indices, pad_id)
        features = from_wire(top, codec).requires_grad_(True)  # (B, H) or, for an LM head, (B, T, H)
        if features.shape[: features.dim() - 1] != mask.shape[: features.dim() - 1]:
            raise ValueError(f"features {tuple(features.shape)} do not fit minibatch {tuple(mask.shape)}")
        loss = task_loss(spec, upper.head(features), mask, labels, verbalizer_ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert features.grad is not None
        grads.append(to_wire(features.grad, codec))
        losses.append(loss.item())
    return grads, float(np.mean(losses))


def head_state(upper: ServerPart) -> dict[str, np.ndarray]:
    """The trainable head's tensors (``head.*``) of the part the device holds."""
    return {k: p.detach().numpy().copy() for k, p in trainable_named(upper).items() if wire.is_head(k)}


def set_head(upper: ServerPart, arrays: dict[str, np.ndarray]) -> None:
    """Load the global head into the device's part; ValueError naming a missing or misshapen tensor."""
    named = {k: p for k, p in trainable_named(upper).items() if wire.is_head(k)}
    if set(arrays) != set(named):
        raise ValueError(f"head tensors {sorted(arrays)}, expected {sorted(named)}")
    load_tensors(named, arrays)
