"""What the backward messages reveal of labels and targets.

**Split mode, downlink.** The server receives each batch's labels with its activations (it
needs them for the loss) and sends the boundary gradients ``d loss / d boundary`` down. Those
are a function of what the server already holds (activations, labels, its own weights), so
they tell the server nothing new. They can tell an eavesdropper on the downlink who does not
know the labels: for a classifier, each sample's gradient is ``(p - onehot(y))`` pushed back
through the head and the upper layers, and with two classes ``p_1 - y_1`` changes sign with the
label, so the samples' gradient directions fall into two opposite groups.
:func:`sample_directions` + :func:`cluster_directions` + :func:`label_recovery` measure it
(accuracy after the best matching of clusters to labels; 0.5 is chance with balanced classes).

**U-shape mode, uplink.** The device holds the head: the server sends what the head reads
down (``ServerPart.features``: the normed last hidden states for an LM head, their pooling for
a classifier) and receives ``d loss / d features`` up; no labels travel as a field.

- Classifier head, unknown to the server: the same clustering of gradient directions
  (the head's weights set the direction, the label its sign).
- LM head that is the frozen tied embedding ``E``, known to the server (it holds the
  pretrained weights): the gradient of the cross-entropy w.r.t. the logits is
  ``c (softmax(z) - onehot(y))`` (``c`` the loss's scaling, e.g. one over the scored tokens).
  The server knows the states ``x`` it sent, so it knows ``z = E x`` and ``p = softmax(z)``;
  what comes up is ``g = c (E^T p - E_y)``, and :func:`targets_from_lm_gradient` finds, per
  position, the token ``v`` for which ``E^T p - E_v`` is parallel to ``g``: the target makes
  the residual zero, so it is recovered exactly, up to float error. Where the device applies
  the frozen final norm itself (the server sends the states before it), ``g = c J^T (E^T p -
  E_y)`` with ``J`` the norm's Jacobian at ``x``; the search then asks that ``E^T p - E_v`` lie
  in ``{q : J^T q in span(g)}``, leaving free the directions ``J^T`` erases (``x`` itself for
  RMSNorm), and the target is still exact. Without the norm's weights the server is left
  with an approximation.

What would stop it: noise on the upward gradient large against ``c ||E^T p - E_y||``, a final
norm or head the device trains and keeps (the server then no longer knows ``p`` or ``J``), or
sending only gradients summed over positions (a sum of several ``E_y`` is a harder search).
Clipping alone does not: the direction survives it.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from strategies.wire.names import IGNORE_TARGET


def sample_directions(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, H)``: each sample's gradient ``(B, T, H)`` summed over its real positions."""
    return (grad * mask.to(grad.dtype).unsqueeze(-1)).sum(1)


def cluster_directions(vectors: torch.Tensor, num_clusters: int = 2, iterations: int = 50) -> torch.Tensor:
    """Cluster ids ``(B,)`` of vectors ``(B, D)`` by direction (spherical k-means).

    Deterministic: the first centre is the first vector, each next one the vector least like
    the centres so far (for two classes whose gradients point opposite ways, the opposite one).
    """
    unit = nn.functional.normalize(vectors.double(), dim=-1)
    centres = unit[:1]
    while centres.shape[0] < min(num_clusters, unit.shape[0]):
        centres = torch.cat([centres, unit[(unit @ centres.T).max(1).values.argmin()][None]])
    assign = (unit @ centres.T).argmax(1)
    for _ in range(iterations):
        sums = torch.zeros_like(centres).index_add_(0, assign, unit)
        kept = sums.norm(dim=-1) > 0  # an emptied cluster keeps its centre
        centres = torch.where(kept[:, None], nn.functional.normalize(sums, dim=-1), centres)
        following = (unit @ centres.T).argmax(1)
        if torch.equal(following, assign):
            break
        assign = following
    return assign


def label_recovery(clusters: torch.Tensor, labels: torch.Tensor, num_classes: int = 2) -> float:
    """Accuracy of ``clusters`` as labels under the best one-to-one naming of clusters (``num_classes!`` tried)."""
    best = 0.0
    for naming in itertools.permutations(range(num_classes)):
        guess = torch.tensor(naming)[clusters]
        best = max(best, float((guess == labels).float().mean()))
    return best


def labels_from_gradient(grad: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, num_classes: int = 2) -> float:
    """Label recovery by clustering the samples' gradient directions (downlink or U-shape uplink)."""
    return label_recovery(cluster_directions(sample_directions(grad, mask), num_classes), labels, num_classes)


def targets_from_lm_gradient(
    grad_hidden: torch.Tensor,
    hidden: torch.Tensor,
    final_norm: nn.Module | None,
    embedding: torch.Tensor,
    rtol: float = 1e-3,
) -> torch.Tensor:
    """Target ids ``(B, T)`` from the gradient of the LM loss w.r.t. the top hidden states.

    Parameters
    ----------
    grad_hidden : torch.Tensor
        ``(B, T, H)`` what the device sends up; a position with a zero gradient is not scored
        and gets ``IGNORE_TARGET``.
    hidden : torch.Tensor
        ``(B, T, H)`` the states the server sent down: before the final norm when the device
        applies it, the head's input itself otherwise.
    final_norm : nn.Module | None
        The frozen final norm the device applies; None when the server applied it before
        sending (``ServerPart.features``), so the gradient is w.r.t. the head's input.
    embedding : torch.Tensor
        ``(V, H)`` the frozen LM head (the tied input embedding).
    rtol : float (default: 1e-3)
        Singular values of ``J`` below ``rtol`` times the largest count as directions ``J^T`` erases.
    """
    size = hidden.shape[-1]
    g, x = grad_hidden.reshape(-1, size).double(), hidden.reshape(-1, size).detach()
    found = torch.full((g.shape[0],), IGNORE_TARGET, dtype=torch.long)
    table = embedding.detach().double()  # (V, H)
    table_sq = table.pow(2).sum(1)  # (V,)
    for n in (g.norm(dim=-1) > 0).nonzero()[:, 0].tolist():
        if final_norm is None:  # the gradient is w.r.t. the head's input itself: J = I
            normed, basis = x[n].double(), nn.functional.normalize(g[n], dim=0)[None]
        else:
            jac, normed = _norm_jacobian(final_norm, x[n])  # (H, H): d norm / d x
            basis = _preimage_basis(jac.T, g[n], rtol)  # (r, H) orthonormal
        p = torch.softmax(normed @ table.T, dim=-1)
        expected = p @ table  # E^T p, (H,)
        # residual of E^T p - E_v outside span(basis), over its norm, for every v at once
        square = expected.pow(2).sum() - 2 * table @ expected + table_sq  # (V,)
        inside = (basis @ expected)[None] - table @ basis.T  # (V, r)
        residual = (square - inside.pow(2).sum(1)) / square.clamp(min=1e-30)
        found[n] = residual.argmin()
    return found.view(hidden.shape[:-1])


def _norm_jacobian(final_norm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(J (H, H), norm(x) (H,))`` in float64."""
    with torch.no_grad():
        normed = final_norm(x[None])[0].double()
    jac = torch.autograd.functional.jacobian(lambda v: final_norm(v[None])[0], x.float())
    return jac.double(), normed


def _preimage_basis(jac_t: torch.Tensor, g: torch.Tensor, rtol: float) -> torch.Tensor:
    """Orthonormal rows spanning ``{q : J^T q in span(g)}``: ``pinv(J^T) g`` and the null space of ``J^T``."""
    u, s, vh = torch.linalg.svd(jac_t)
    kept = s > rtol * s[0]
    particular = vh[kept].T @ ((u[:, kept].T @ g) / s[kept])  # (H,): orthogonal to the null space
    return torch.cat([nn.functional.normalize(particular, dim=0)[None], vh[~kept]])
