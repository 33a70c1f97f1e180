"""Training primitives shared by every mode: threads, class scores, the optimizer, wire codecs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from flower_app.model.split_model import ClientPart, ServerPart, SplitSpec, trainable_named
from flower_app.tasks.lm import LmTally, lm_loss
from strategies.wire import names as wire
from strategies.wire.codecs.base import WireCodec

PERPLEXITY = "perplexity"  # a held-out metric of the causal-LM objective


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


def task_loss(
    spec: SplitSpec,
    logits: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    verbalizer_ids: tuple[int, ...] | None,
) -> torch.Tensor:
    """The loss of every mode: cross-entropy over classes ``(B,)``, or over target tokens ``(B, T)``."""
    if labels.dim() == 2:  # token targets: the causal-LM objective scores target tokens only
        return lm_loss(logits, labels)
    return F.cross_entropy(class_logits(spec, logits, mask, verbalizer_ids), labels)


class EvalTally:
    """Held-out loss and accuracy summed batch by batch, for either objective.

    Classes: the mean cross-entropy and accuracy per sample. Token targets: the mean
    cross-entropy per target token, its perplexity, and the accuracy of the verbalizer
    classes (or of the next token, without a verbalizer).
    """

    def __init__(self, spec: SplitSpec, verbalizer_ids: tuple[int, ...] | None):
        self.spec, self.verbalizer_ids = spec, verbalizer_ids
        self.lm = LmTally()
        self.loss, self.correct, self.samples = 0.0, 0, 0

    def add(self, logits: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> None:
        self.samples += len(labels)
        if labels.dim() == 2:
            self.lm.add(logits, labels, self.verbalizer_ids)
            return
        scores = class_logits(self.spec, logits, mask, self.verbalizer_ids)
        self.loss += F.cross_entropy(scores, labels, reduction="sum").item()
        self.correct += int((scores.argmax(-1) == labels).sum())

    def metrics(self) -> dict[str, float]:
        if self.lm.tokens:
            lm = self.lm.metrics()
            return {wire.LOSS: lm["loss"], wire.ACCURACY: lm["accuracy"], PERPLEXITY: lm["perplexity"]}
        samples = max(self.samples, 1)
        return {wire.LOSS: self.loss / samples, wire.ACCURACY: self.correct / samples}


def adam(parts: Sequence[ClientPart | ServerPart], lr: float, head_lr: float) -> torch.optim.Optimizer:
    """Adam over the parts' prefix at ``lr`` and their trainable head at ``head_lr``.

    Any other trainable tensor (the image task's encoder and decoder weights) trains at ``lr``
    with the prefix.

    The one optimizer of every mode: the client's replay, the server's split side,
    the local emulator and the centralized pool all train the same tensors alike.
    """
    named = [(name, p) for part in parts for name, p in trainable_named(part).items()]
    groups = [{"params": [p for n, p in named if not wire.is_head(n)], "lr": lr}]
    head = [p for n, p in named if wire.is_head(n)]
    if head:
        groups.append({"params": head, "lr": head_lr})
    return torch.optim.Adam(groups)


def to_wire(tensor: torch.Tensor, codec: WireCodec) -> np.ndarray:
    """A ``(..., H)`` boundary tensor as it crosses the split, encoded by ``codec`` (float16 halves
    the bytes, int8 quarters them, int4 cuts them to an eighth); the receiver computes in float32."""
    return codec.encode(tensor.detach().float().numpy())


def from_wire(array: np.ndarray, codec: WireCodec) -> torch.Tensor:
    """float32 of what crossed the split, decoded by the codec its message is tagged with."""
    return torch.from_numpy(codec.decode(array))
