"""Training primitives shared by every mode: threads, class scores, the optimizer, wire dtypes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from flower_app.model import ClientPart, ServerPart, SplitSpec, trainable_named
from strategies import wire

DTYPES = {"float32": torch.float32, "float16": torch.float16}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch threads (0: leave as is); results depend on it bitwise."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def class_logits(
    spec: SplitSpec, logits: torch.Tensor, mask: torch.Tensor, verbalizer_ids: tuple[int, ...] | None
) -> torch.Tensor:
    """``(B, num_labels)`` class scores from the server part's output."""
    if spec.head == "classifier":
        return logits
    assert verbalizer_ids is not None, "an LM head scores classes through its verbalizer"
    last = mask.sum(1).long() - 1  # right padding: next-token logits after the last real token
    return logits[torch.arange(logits.shape[0]), last][:, list(verbalizer_ids)]


def adam(parts: Sequence[ClientPart | ServerPart], lr: float, head_lr: float) -> torch.optim.Optimizer:
    """Adam over the parts' prefix at ``lr`` and their trainable head at ``head_lr``.

    The one optimizer of every mode: the client's replay, the server's split side,
    the local emulator and the centralized pool all train the same tensors alike.
    """
    named = [(name, p) for part in parts for name, p in trainable_named(part).items()]
    groups = [{"params": [p for n, p in named if wire.is_prefix(n)], "lr": lr}]
    head = [p for n, p in named if wire.is_head(n)]
    if head:
        groups.append({"params": head, "lr": head_lr})
    return torch.optim.Adam(groups)


def to_wire(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    """float16 halves the bytes crossing the split; the receiver computes in float32."""
    return tensor.detach().to(DTYPES[dtype]).numpy()


def from_wire(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array)).float()
