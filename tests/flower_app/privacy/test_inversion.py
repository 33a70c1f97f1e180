"""Inversion attacks on boundary activations: each recovers the text before it judges a defence."""

import pytest
import torch
from torch import nn

from flower_app.model.loading import build_random
from flower_app.model.split_model import SplitSpec, initial_prefix, split
from flower_app.modes.training import torch_threads
from flower_app.privacy.defences import ActivationGuard
from flower_app.privacy.inversion import (
    Readout,
    boundary_features,
    embedding_shortlist,
    fit_readout,
    invert,
    search_attack,
    sentence_recovery,
    token_recovery,
    train_inverse,
)

VOCAB = 128
FAMILIES = ["bert", "llama"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors this small run fastest on one thread; two contend for a shared core."""
    with torch_threads(1):
        yield


def _client(family: str, layers_on_device: int, prefix_length: int = 4):
    """A tiny random model's device part; 0 layers on the device: the boundary is the embedding output."""
    model, _ = build_random(family, seed=0, hidden=32, layers=2, vocab=VOCAB)
    prefix = initial_prefix(model, family, prefix_length, seed=1, vocab_size=VOCAB) if prefix_length else {}
    client, _ = split(model, SplitSpec(split_layer=max(layers_on_device, 1), prefix_length=prefix_length), prefix)
    if layers_on_device == 0:
        client.stack.layers = nn.ModuleList()
    return client


def _victims(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (4, 8), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # one right-padded row
    return ids, mask


def _public(seed: int = 1):
    """The server's public text: random token sequences (another draw than the victims')."""
    ids = torch.randint(3, VOCAB, (160, 8), generator=torch.Generator().manual_seed(seed))
    return ids, torch.ones_like(ids)


def _received(client, ids, mask, guard: ActivationGuard | None = None):
    with torch.no_grad():
        hidden = client(ids, mask)
    return guard.on_wire(hidden, torch.Generator().manual_seed(2)) if guard is not None else hidden


# --- metrics ---------------------------------------------------------------------------------


def test_token_recovery_counts_real_tokens_only():
    # Prepare: row 0 has 3 real tokens (2 right), row 1 has 2 (1 right); wrong padding is ignored
    true = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    pred = torch.tensor([[5, 6, 1, 4], [8, 2, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])

    # Execute
    recovered = token_recovery(pred, true, mask)

    # Assert: 3 of 5 real tokens
    assert recovered == pytest.approx(3 / 5)


def test_sentence_recovery_ignores_padding_and_empty_rows():
    # Prepare
    true = torch.tensor([[5, 6, 0], [8, 9, 0], [1, 2, 3], [4, 4, 4]])
    pred = torch.tensor([[5, 6, 7], [8, 1, 0], [1, 2, 3], [0, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]])

    # Execute
    recovered = sentence_recovery(pred, true, mask)

    # Assert: rows 0 (padding differs only) and 2 exact, row 1 not, row 3 has no real token
    assert recovered == pytest.approx(2 / 3)


# --- what the server fits on public text -----------------------------------------------------


def test_readout_recovers_an_affine_map():
    # Prepare: embedded = features @ A + b exactly
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(500, 16, generator=generator)
    a, b = torch.randn(16, 16, generator=generator), torch.randn(16, generator=generator)
    embedded = features @ a + b

    # Execute
    readout = fit_readout(features, embedded, ridge=1e-9)

    # Assert
    assert torch.allclose(readout(features), embedded, atol=1e-3)


def test_boundary_features_are_the_real_tokens_outputs():
    # Prepare
    client = _client("llama", 1)
    ids, mask = _victims()

    # Execute
    features, targets, _ = boundary_features(client, ids, mask, batch_size=3)

    # Assert: 4 x 8 tokens, two of them padding
    assert features.shape == (30, 32) and torch.equal(targets, ids[mask.bool()])
    assert torch.allclose(features, _received(client, ids, mask)[mask.bool()], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_shortlist_ranks_the_true_token_first_on_embeddings(family):
    # Prepare
    client = _client(family, 0)
    ids, mask = _victims()

    # Execute
    shortlist = embedding_shortlist(client, _received(client, ids, mask), k=4)

    # Assert
    assert shortlist.shape == (4, 8, 4) and torch.equal(shortlist[..., 0][mask.bool()], ids[mask.bool()])


# --- the attacks recover the text -----------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_search_recovers_every_token_from_embeddings(family):
    # Prepare
    client = _client(family, 0)
    ids, mask = _victims()

    # Execute
    found = search_attack(client, _received(client, ids, mask), mask, k=None)

    # Assert
    assert token_recovery(found, ids, mask) == 1.0 and sentence_recovery(found, ids, mask) == 1.0
    assert (found[~mask.bool()] == 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_inverse_recovers_every_token_from_embeddings(family):
    # Prepare
    client = _client(family, 0)
    ids, mask = _victims()
    features, targets, _ = boundary_features(client, *_public())

    # Execute
    inverse = train_inverse(features, targets, client.token_embedding, steps=300, batch_size=128, lr=3e-3)
    found = invert(inverse, _received(client, ids, mask), mask)

    # Assert
    assert token_recovery(found, ids, mask) == 1.0


@pytest.mark.parametrize("layers_on_device", [1, 2])
def test_causal_search_over_the_whole_vocabulary_recovers_deeper_splits(layers_on_device):
    # Prepare: a 3-layer model, so that 2 layers may stay on the device
    model, _ = build_random("llama", seed=0, hidden=32, layers=3, vocab=VOCAB)
    prefix = initial_prefix(model, "llama", 4, seed=1, vocab_size=VOCAB)
    client, _ = split(model, SplitSpec(split_layer=layers_on_device, prefix_length=4), prefix)
    ids, mask = _victims()

    # Execute
    found = search_attack(client, _received(client, ids, mask), mask, k=None)

    # Assert
    assert token_recovery(found, ids, mask) == 1.0


def _useless_readout() -> Readout:
    """A random map: the shortlist it ranks starts every position on a wrong token."""
    generator = torch.Generator().manual_seed(3)
    return Readout(torch.zeros(32), torch.randn(32, 32, generator=generator), torch.zeros(32))


@pytest.mark.parametrize("exact", [None, 1])
def test_coordinate_sweeps_recover_a_bidirectional_split_from_a_useless_ranking(exact):
    # Prepare: after a BERT layer every output depends on every token
    client = _client("bert", 1)
    ids, mask = _victims()
    received = _received(client, ids, mask)
    first = embedding_shortlist(client, received, k=1, readout=_useless_readout())[..., 0]

    # Execute: exact=1 evaluates only the candidate the gradient estimate prefers
    found = search_attack(client, received, mask, k=None, readout=_useless_readout(), sweeps=3, exact=exact)

    # Assert: the sweeps, not the ranking, found the text
    assert token_recovery(first, ids, mask) < 0.2
    assert token_recovery(found, ids, mask) == 1.0


def test_search_applies_the_clip_it_knows_of():
    # Prepare: a clip at a tenth of the smallest token norm, no noise
    client = _client("llama", 1)
    ids, mask = _victims()
    clean = _received(client, ids, mask)
    guard = ActivationGuard(clip=0.1 * float(clean.norm(dim=-1).min()))

    # Execute
    found = search_attack(client, guard.on_wire(clean), mask, k=None, guard=guard)

    # Assert: clipped candidates match the clipped vectors exactly
    assert token_recovery(found, ids, mask) == 1.0


def test_inverse_recovers_a_split_after_one_layer():
    # Prepare
    client = _client("llama", 1)
    ids, mask = _victims()
    features, targets, _ = boundary_features(client, *_public())

    # Execute
    inverse = train_inverse(features, targets, client.token_embedding, steps=150, batch_size=128, lr=3e-3)
    found = invert(inverse, _received(client, ids, mask), mask)

    # Assert
    assert token_recovery(found, ids, mask) >= 0.9


# --- a defence against them ------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_large_isotropic_noise_defeats_both_attacks(family):
    # Prepare: clip at the median token norm, noise 8 times the clip
    client = _client(family, 1)
    ids, mask = _victims()
    clean = _received(client, ids, mask)
    guard = ActivationGuard(clip=float(clean.norm(dim=-1).median()), noise=8.0)
    received = _received(client, ids, mask, guard)
    features, targets, _ = boundary_features(client, *_public())

    # Execute
    searched = search_attack(client, received, mask, k=None, guard=guard)
    inverse = train_inverse(features, targets, client.token_embedding, guard=guard, steps=150, batch_size=128, lr=3e-3)
    inverted = invert(inverse, received, mask)

    # Assert: both attacks recover everything without noise (tests above), a third at most with it
    assert token_recovery(searched, ids, mask) < 1 / 3
    assert token_recovery(inverted, ids, mask) < 1 / 3
