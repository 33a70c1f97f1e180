"""Attacks an honest-but-curious server can run on the boundary activations it receives.

Threat model: the server holds the pretrained weights and the global prefix (it aggregates the
prefix itself), and receives a batch's boundary activations ``(B, T, H)`` with its mask: what
split mode sends every step and centralized mode with ``train.upload-kind=activations`` sends
once. It knows the defence's mechanism (:class:`~flower_app.privacy.defences.ActivationGuard`:
the clip, the noise's scale and directions) but not the noise drawn. Each attack returns the
token ids ``(B, T)`` it recovers; positions outside the mask hold 0.

- :func:`search_attack`: find the tokens whose lower-layer output matches what was received.
  A causal decoder (GPT-2, Llama) is searched left to right: the output at ``t`` depends on
  tokens ``<= t`` only, so with the tokens before ``t`` recovered, each candidate for ``t`` costs
  one new token through the lower layers (their key/values are kept in a cache). A
  bidirectional encoder (BERT) is searched coordinate-wise: every output depends on every
  token, so positions are swept in turn, each trying its candidates with the others fixed,
  until a sweep changes nothing. Distances are L2 after the known clip: under isotropic
  Gaussian noise the nearest candidate is the most likely one.
- :func:`train_inverse` and :func:`invert`: a per-token decoder trained by the server on
  activations of public text it runs through its own copy of the lower layers (with the
  defence applied, fresh noise each batch, so it learns to see through it), decoding each
  received vector by argmax.

**Pruning.** A search over the whole vocabulary costs ``V`` candidates a position (30,522 for
MiniLM, 49,152 for SmolLM2), too slow on a CPU for real models; ``k`` candidates a position are
taken instead, nearest by cosine to the received vector among the embedding outputs of every
token at that position (:func:`embedding_shortlist`; for BERT these include the position and
type embeddings and their LayerNorm). A token missing from its shortlist cannot be recovered,
so the attack's recovery is at most the shortlist's hit rate. The residual stream of a deeper
or larger model drifts from the token embeddings (SmolLM2's does after one layer: the true
token is in a raw-cosine top 256 for about one position in ten), so the shortlist can be ranked
through an affine :class:`Readout` fitted by the server on public text (:func:`fit_readout`,
ridge regression onto the embedding outputs), which puts it back near the top. ``k=None``
searches the whole vocabulary (tiny models). A BERT sweep evaluates whole sequences, ``T^2``
tokens a candidate, so ``exact`` prunes once more: of the ``k``, the few whose first-order
estimate of the change in distance is lowest are evaluated by a forward.

Metrics: :func:`token_recovery` (top-1 accuracy over real tokens, special tokens included) and
:func:`sentence_recovery` (sequences whose every real token is recovered).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flower_app.generate.session import DECODERS, KVCache
from flower_app.model.split_model import ClientPart
from flower_app.privacy.defences import ActivationGuard

MAX_ROWS = 2048  # candidate sequences a forward evaluates at once (memory, not results)


# --- metrics --------------------------------------------------------------------------------


def token_recovery(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of real tokens (``mask`` 1) whose id was recovered."""
    real = mask.bool()
    return float((pred[real] == true[real]).float().mean()) if real.any() else float("nan")


def sentence_recovery(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of sequences (with at least one real token) whose every real token was recovered."""
    real = mask.bool()
    wrong = ((pred != true) & real).any(1)  # (B,)
    rows = real.any(1)
    return float((~wrong[rows]).float().mean()) if rows.any() else float("nan")


# --- what the server computes from public text ----------------------------------------------


@torch.no_grad()
def boundary_features(
    client: ClientPart, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean boundary vectors of the real tokens of ``ids``: ``(features (M, H), ids (M,), embedded (M, H))``.

    ``embedded`` is each token's embedding output at its position (what :class:`Readout` maps to).
    """
    features, targets, embedded = [], [], []
    for start in range(0, ids.shape[0], batch_size):
        rows, rows_mask = ids[start : start + batch_size], mask[start : start + batch_size]
        real = rows_mask.bool()
        features.append(client(rows, rows_mask)[real])
        targets.append(rows[real])
        embedded.append(client.embed(rows)[real])
    return torch.cat(features), torch.cat(targets), torch.cat(embedded)


@dataclass(frozen=True)
class Readout:
    """Affine map from boundary vectors to embedding outputs: ``(h - mean_in) @ weight + mean_out``."""

    mean_in: torch.Tensor  # (H,)
    weight: torch.Tensor  # (H, H)
    mean_out: torch.Tensor  # (H,)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden - self.mean_in) @ self.weight + self.mean_out


def fit_readout(features: torch.Tensor, embedded: torch.Tensor, ridge: float = 0.1) -> Readout:
    """Ridge regression from boundary vectors ``(M, H)`` to the same tokens' embedding outputs ``(M, H)``.

    ``ridge`` is relative to the mean eigenvalue of the features' covariance, so one value fits
    activations of any scale. Closed form: no training loop, seconds for any model here.
    """
    x = (features - features.mean(0)).double()
    y = (embedded - embedded.mean(0)).double()
    gram = x.T @ x
    penalty = ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    weight = torch.linalg.solve(gram + penalty, x.T @ y)
    return Readout(features.mean(0), weight.float(), embedded.mean(0))


# --- (a) search ---------------------------------------------------------------------------


def token_table(client: ClientPart, position: int) -> torch.Tensor:
    """``(V, H)``: the embedding output of every token at ``position`` (after the prefix)."""
    vocab = client.token_embedding.shape[0]
    return client.embed(torch.arange(vocab)[:, None], past_length=position)[:, 0]


@torch.no_grad()
def embedding_shortlist(
    client: ClientPart, received: torch.Tensor, k: int, readout: Readout | None = None
) -> torch.Tensor:
    """``(B, T, k)`` candidate ids per position, nearest first by cosine to the received vector.

    With ``readout``, the received vector is mapped to the embedding space first.
    """
    query = readout(received) if readout is not None else received
    query = F.normalize(query, dim=-1)  # (B, T, H)
    positional = client.family != "llama"  # BERT and GPT-2 add position embeddings; Llama rotates inside attention
    shortlist, table = [], None
    for t in range(received.shape[1]):
        if table is None or positional:
            table = F.normalize(token_table(client, t), dim=-1)  # (V, H)
        shortlist.append((query[:, t] @ table.T).topk(k, dim=-1).indices)  # (B, k)
    return torch.stack(shortlist, dim=1)


@torch.no_grad()
def search_attack(
    client: ClientPart,
    received: torch.Tensor,
    mask: torch.Tensor,
    k: int | None = 128,
    readout: Readout | None = None,
    guard: ActivationGuard | None = None,
    sweeps: int = 3,
    exact: int | None = None,
) -> torch.Tensor:
    """Token ids ``(B, T)`` whose lower-layer output is nearest (L2) to ``received``.

    Parameters
    ----------
    client : ClientPart
        The server's copy of the device's part: embeddings, lower layers, global lower prefix.
    received : torch.Tensor
        ``(B, T, H)`` boundary activations as they arrived (clipped and noised by the device).
    mask : torch.Tensor
        ``(B, T)`` attention mask that travelled with them.
    k : int | None (default: 128)
        Candidates per position (:func:`embedding_shortlist`); None: the whole vocabulary.
    readout : Readout | None (default: None)
        Ranks the shortlist through this map (:func:`fit_readout`); None: raw cosine.
    guard : ActivationGuard | None (default: None)
        The device's defence: its clip is applied to every candidate's output.
    sweeps : int (default: 3)
        Bidirectional models: most passes over the positions.
    exact : int | None (default: None)
        Bidirectional models: candidates a position evaluated by a forward, the ``exact`` of the
        ``k`` whose first-order estimate of the change in distance (gradient w.r.t. the
        embedding output) is lowest; None: all ``k``. Each evaluation is a whole sequence, so
        a sweep costs ``T^2 k`` tokens: on a CPU, MiniLM affords ``exact`` of 4 to 8, not 64.
    """
    vocab = client.token_embedding.shape[0]
    # The whole vocabulary is a shortlist of V: still ranked, so a sweep starts from the nearest token.
    candidates = embedding_shortlist(client, received, vocab if k is None else min(k, vocab), readout)
    clip = guard.shape if guard is not None else _identity
    if client.family in DECODERS:
        found = torch.cat(
            [
                _left_to_right(client, received[rows], mask[rows], candidates[rows], clip)
                for rows in _chunks(received.shape[0], max(1, MAX_ROWS // candidates.shape[-1]))
            ]
        )
    else:
        found = torch.stack(
            [
                _coordinate(client, received[b], mask[b], candidates[b], clip, sweeps, exact)
                for b in range(received.shape[0])
            ]
        )
    return torch.where(mask.bool(), found, 0)


def _identity(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, start + size)


def _left_to_right(client: ClientPart, received, mask, candidates, clip) -> torch.Tensor:
    """Causal search of a few sequences: ``(b, T, H)``, ``(b, T)``, ``(b, T, K)`` -> ``(b, T)``."""
    b, length, k = candidates.shape
    prefix = client.stack.prefix_tensors()
    past: dict[int, torch.Tensor] = {}  # layer -> (2, b, n_kv, t, hd): the recovered tokens' key/values
    found = torch.zeros(b, length, dtype=torch.long)
    rows = torch.arange(b)
    for t in range(length):
        # Every candidate continues its own sequence's recovered tokens: b * k rows of one new token.
        cache = KVCache(prefix, {i: kv.repeat_interleave(k, dim=1) for i, kv in past.items()})
        ids = candidates[:, t].reshape(b * k, 1)
        seen = mask[:, : t + 1].repeat_interleave(k, dim=0)  # (b k, t + 1)
        out = client.stack(client.embed(ids, past_length=t), seen, cache=cache, past_length=t)  # (b k, 1, H)
        dist = (clip(out[:, 0]).view(b, k, -1) - received[:, t, None]).pow(2).sum(-1)  # (b, k)
        best = dist.argmin(1)
        found[:, t] = candidates[rows, t, best]
        # A padded position's choice is arbitrary and harmless: later real tokens do not attend to it.
        past = {i: kv.view(2, b, k, *kv.shape[2:])[:, rows, best] for i, kv in cache.past.items()}
    return found


def _coordinate(client: ClientPart, received, mask, candidates, clip, sweeps: int, exact: int | None) -> torch.Tensor:
    """Coordinate search of one sequence: ``(T, H)``, ``(T,)``, ``(T, K)`` -> ``(T,)``."""
    real = mask.bool()
    if not real.any():
        return torch.zeros(mask.shape[0], dtype=torch.long)
    end = int(real.nonzero().max()) + 1  # right padding past the last real token changes nothing
    received, real, candidates = received[:end], real[:end], candidates[:end]
    current = candidates[:, 0].clone()  # each position's best shortlisted token
    positions = real.nonzero()[:, 0].tolist()
    unchanged = 0  # positions tried in a row without a change: once all are, none would change
    grad = None  # d distance / d embedding output at the current tokens, (T, H)
    for t in positions * sweeps:
        options = candidates[t]
        if exact is not None and exact < len(options):
            if grad is None:
                grad = _distance_gradient(client, current, mask[:end], received, real, clip)
            change = (client.embed(options[:, None], past_length=t)[:, 0] - client.embed(current[None])[0, t]) @ grad[t]
            options = options[change.topk(exact, largest=False).indices]
        # The current token first: argmin keeps it on a tie, so the distance never grows.
        options = torch.cat([current[t : t + 1], options])
        best = _best_at(client, current, t, options, mask[:end], received, real, clip)
        unchanged = unchanged + 1 if bool(best == current[t]) else 0
        grad = grad if unchanged else None
        current[t] = best
        if unchanged == len(positions):
            break
    return torch.cat([current, torch.zeros(mask.shape[0] - end, dtype=torch.long)])


def _distance_gradient(client: ClientPart, current, mask, received, real, clip) -> torch.Tensor:
    """``(T, H)``: gradient of the squared distance to ``received`` w.r.t. the embedding output."""
    with torch.enable_grad():
        embedded = client.embed(current[None]).detach().requires_grad_(True)  # (1, T, H)
        out = clip(client.stack(embedded, mask[None]))[0]
        distance = (out - received).pow(2).sum(-1)[real].sum()
        return torch.autograd.grad(distance, embedded)[0][0]


def _best_at(client: ClientPart, current, t: int, options, mask, received, real, clip) -> torch.Tensor:
    """The option for position ``t`` whose whole-sequence output is nearest to ``received``."""
    dist = []
    for part in _chunks(len(options), max(1, MAX_ROWS // len(current))):
        trial = current.repeat(len(options[part]), 1)  # (n, T)
        trial[:, t] = options[part]
        out = clip(client(trial, mask.expand_as(trial)))  # (n, T, H)
        dist.append((out - received).pow(2).sum(-1)[:, real].sum(1))
    return options[torch.cat(dist).argmin()]


# --- (b) learned inverse --------------------------------------------------------------------


class TokenInverse(nn.Module):
    """Per-token decoder: a boundary vector ``(..., H)`` to logits over the vocabulary ``(..., V)``.

    ``LayerNorm -> Linear(H, H) -> GELU -> Linear(H, H)`` plus a linear skip map the vector
    back to the token embedding space; the logits are its cosine with each row of the frozen
    token embedding matrix, times a learnt temperature. Tying the output to the frozen matrix
    keeps the trainable part at about ``3 H^2`` weights (a free ``H -> V`` layer would be
    11.7M for MiniLM, 28M for SmolLM2, too many for a minute of CPU and a few thousand public
    sentences), and a token the public text never contains can still be decoded, since its row
    is there.
    """

    table: torch.Tensor  # (V, H) unit rows, a buffer: frozen, saved with the module

    def __init__(self, table: torch.Tensor, readout: Readout | None = None):
        super().__init__()
        hidden = table.shape[1]
        self.register_buffer("table", F.normalize(table.detach(), dim=-1))  # (V, H)
        self.norm = nn.LayerNorm(hidden)
        last = nn.Linear(hidden, hidden)
        nn.init.zeros_(last.weight)  # the MLP starts at 0: the decoder starts as its linear skip alone
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), last)
        self.skip = nn.Linear(hidden, hidden)
        self.log_temperature = nn.Parameter(torch.tensor(3.0))  # e^3 = 20: a softmax over cosines needs a sharp one
        if readout is not None:  # start from the closed-form answer; training only improves on it
            with torch.no_grad():
                self.skip.weight.copy_(readout.weight.T)
                self.skip.bias.copy_(readout.mean_out - readout.mean_in @ readout.weight)

    def forward(self, hidden: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(..., V)``, or ``(..., C)`` over the token ids ``classes`` only."""
        z = self.skip(hidden) + self.mlp(self.norm(hidden))  # (..., H)
        table = self.table if classes is None else self.table[classes]
        return self.log_temperature.exp() * F.normalize(z, dim=-1) @ table.T


def train_inverse(
    features: torch.Tensor,
    targets: torch.Tensor,
    table: torch.Tensor,
    guard: ActivationGuard | None = None,
    steps: int = 400,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    readout: Readout | None = None,
    negatives: int | None = None,
) -> TokenInverse:
    """A :class:`TokenInverse` trained by cross-entropy on public boundary vectors.

    Parameters
    ----------
    features : torch.Tensor
        ``(M, H)`` clean boundary vectors of public tokens (:func:`boundary_features`).
    targets : torch.Tensor
        ``(M,)`` their token ids.
    table : torch.Tensor
        ``(V, H)`` the frozen token embedding matrix (``client.token_embedding``).
    guard : ActivationGuard | None (default: None)
        The device's defence, applied to every batch with fresh noise.
    steps, batch_size, lr, seed
        Adam steps, tokens a step, learning rate, seed of the batches and the noise.
    readout : Readout | None (default: None)
        Initial linear skip (:func:`fit_readout` onto the token table rows).
    negatives : int | None (default: None)
        Sampled softmax: each step's logits cover the batch's targets and this many uniformly
        drawn ids, not all ``V`` (a full softmax over 30-50k tokens is most of a CPU step).
        Uniform draws need no correction for the argmax: every id is equally likely drawn.
        None: the whole vocabulary.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the MLP's initial weights
    inverse = TokenInverse(table, readout)
    optimizer = torch.optim.Adam(inverse.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        rows = torch.randint(0, features.shape[0], (batch_size,), generator=generator)
        seen = guard.on_wire(features[rows], generator) if guard is not None else features[rows]
        if negatives is None:
            loss = F.cross_entropy(inverse(seen), targets[rows])
        else:
            drawn = torch.randint(0, table.shape[0], (negatives,), generator=generator)
            classes = torch.cat([targets[rows], drawn]).unique()  # sorted
            loss = F.cross_entropy(inverse(seen, classes), torch.searchsorted(classes, targets[rows]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return inverse.eval()


@torch.no_grad()
def invert(inverse: TokenInverse, received: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token ids ``(B, T)``: the argmax of the decoder at each real position, 0 elsewhere."""
    return torch.where(mask.bool(), inverse(received).argmax(-1), 0)
