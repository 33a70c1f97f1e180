"""A device's defences of its boundary activations: pure functions over ``(B, T, H)`` tensors.

- :func:`clip_tokens`: each token's vector scaled down to at most ``max_norm`` (L2). It is part of
  the device's forward, so the replay's gradient goes through it.
- :func:`token_noise`: Gaussian noise, calibrated to the clip: per coordinate its standard
  deviation is ``multiplier * max_norm / sqrt(H)``, so a token's noise has an expected squared norm
  of ``(multiplier * max_norm) ** 2`` whatever the hidden size. Noise is additive and independent of
  the prefix, so the replayed forward needs none: the gradient of ``h + n`` is the gradient of ``h``.
- :func:`embedding_directions`: the top principal directions of the frozen token embedding matrix.
  At a shallow split a token's vector still carries its input embedding, and these directions
  tell tokens apart; noise confined to them (same expected energy as isotropic noise) is meant
  to spend the budget where a nearest-embedding search reads. Measured (``bench/privacy.py``,
  docs/results.md), it slows the search attack but a learned inverse reads the directions
  outside the noise: it does not replace isotropic noise. The idea of choosing perturbation
  directions against inversion follows ActInv/PriPert (arXiv 2605.23158); this is a simple
  instance of it, not a reimplementation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DIRECTIONS = ("isotropic", "embedding")


@dataclass(frozen=True)
class ActivationGuard:
    """What a device does to its boundary activations before they leave it.

    Attributes
    ----------
    clip : float (default: 0.0)
        Largest L2 norm of a token's vector (0: no clip).
    noise : float (default: 0.0)
        Noise multiplier: a token's noise has expected norm ``noise * clip`` (needs ``clip``).
    basis : torch.Tensor | None (default: None)
        ``(H, r)`` orthonormal directions the noise lies in; None: every direction.
    """

    clip: float = 0.0
    noise: float = 0.0
    basis: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.noise > 0 and self.clip <= 0:
            raise ValueError("privacy.act-noise needs privacy.act-clip > 0: the noise is calibrated to the clip")

    @property
    def active(self) -> bool:
        return self.clip > 0

    def shape(self, hidden: torch.Tensor) -> torch.Tensor:
        """The differentiable part: the clip (identity without one)."""
        return clip_tokens(hidden, self.clip) if self.clip > 0 else hidden

    def on_wire(self, hidden: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """What leaves the device: the clipped vectors plus their noise."""
        clipped = self.shape(hidden)
        if self.noise <= 0:
            return clipped
        return clipped + token_noise(clipped, self.noise * self.clip, self.basis, generator)


UNGUARDED = ActivationGuard()  # no clip, no noise: what every path does by default


def clip_tokens(hidden: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Each token's vector ``(..., H)`` scaled to an L2 norm of at most ``max_norm``."""
    norms = hidden.norm(dim=-1, keepdim=True)  # (B, T, 1)
    return hidden * torch.clamp(max_norm / norms.clamp(min=1e-12), max=1.0)


def token_noise(
    hidden: torch.Tensor, scale: float, basis: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gaussian noise shaped like ``hidden`` with expected squared norm ``scale ** 2`` per token.

    Isotropic (``basis`` None): std ``scale / sqrt(H)`` per coordinate. With an ``(H, r)``
    orthonormal ``basis``: std ``scale / sqrt(r)`` along each of its ``r`` directions, none outside.
    """
    h = hidden.shape[-1]
    if basis is None:
        z = torch.randn(hidden.shape, generator=generator, dtype=hidden.dtype, device=hidden.device)
        return z * (scale / h**0.5)
    r = basis.shape[1]
    z = torch.randn((*hidden.shape[:-1], r), generator=generator, dtype=hidden.dtype, device=hidden.device)
    return (z @ basis.T.to(hidden)) * (scale / r**0.5)  # (B, T, H)


def embedding_directions(embedding: torch.Tensor, rank: int) -> torch.Tensor:
    """``(H, rank)`` orthonormal top principal directions of a ``(V, H)`` token embedding matrix."""
    if not 1 <= rank <= embedding.shape[1]:
        raise ValueError(f"privacy.act-rank must be between 1 and the hidden size {embedding.shape[1]}, got {rank}")
    centred = embedding.double() - embedding.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # rows of vh: directions, largest first
    return vh[:rank].T.float().contiguous()
