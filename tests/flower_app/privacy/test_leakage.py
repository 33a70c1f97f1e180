"""What backward messages reveal: labels from gradient directions, LM targets from the U-shape uplink."""

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from flower_app.model.loading import build_random
from flower_app.model.split_model import SplitSpec, initial_prefix, split
from flower_app.modes.training import torch_threads
from flower_app.privacy.leakage import (
    cluster_directions,
    label_recovery,
    labels_from_gradient,
    sample_directions,
    targets_from_lm_gradient,
)
from flower_app.tasks.lm import lm_loss
from strategies.wire.names import IGNORE_TARGET

VOCAB = 128


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors this small run fastest on one thread; two contend for a shared core."""
    with torch_threads(1):
        yield


def test_sample_directions_sum_real_positions():
    # Prepare
    grad = torch.arange(12.0).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])

    # Execute
    directions = sample_directions(grad, mask)

    # Assert: row 0 is [0,1]+[2,3], row 1 is [6,7]
    assert torch.equal(directions, torch.tensor([[2.0, 4.0], [6.0, 7.0]]))


def test_label_recovery_takes_the_best_naming():
    # Prepare: clusters named the other way round, one sample misplaced
    clusters = torch.tensor([1, 1, 0, 0, 0])
    labels = torch.tensor([0, 0, 1, 1, 0])

    # Execute
    recovered = label_recovery(clusters, labels)

    # Assert: naming 1->0, 0->1 gets 4 of 5
    assert recovered == pytest.approx(4 / 5)


def test_clustering_separates_opposite_directions():
    # Prepare: gradients +-d (sign by label), each scaled and jittered
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (40,), generator=generator)
    direction = torch.randn(16, generator=generator)
    scale = torch.rand(40, 1, generator=generator) + 0.1
    vectors = (1 - 2 * labels[:, None]) * scale * direction + 0.1 * torch.randn(40, 16, generator=generator)

    # Execute
    clusters = cluster_directions(vectors)

    # Assert
    assert label_recovery(clusters, labels) == 1.0


def test_clustering_finds_three_groups():
    # Prepare: three orthogonal directions
    labels = torch.tensor([0, 1, 2] * 5)
    vectors = torch.eye(3)[labels] * torch.linspace(1, 2, 15)[:, None]

    # Execute
    clusters = cluster_directions(vectors, num_clusters=3)

    # Assert
    assert label_recovery(clusters, labels, num_classes=3) == 1.0


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_downlink_gradients_reveal_labels_to_an_eavesdropper(family):
    # Prepare: split mode, a classifier head as in round 1
    model, _ = build_random(family, seed=0, hidden=32, layers=2, vocab=VOCAB)
    spec = SplitSpec(split_layer=1, prefix_length=4, head="classifier", pooling="mean")
    client, server = split(model, spec, initial_prefix(model, family, 4, seed=1, vocab_size=VOCAB))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (32, 8), generator=generator)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (32,), generator=generator)
    with torch.no_grad():
        boundary = client(ids, mask)
    boundary.requires_grad_(True)
    F.cross_entropy(server(boundary, mask), labels).backward()

    # Execute
    recovered = labels_from_gradient(boundary.grad, mask, labels)

    # Assert
    assert recovered >= 0.9


def _ushape_lm_gradient(device_norms: bool):
    """A tiny Llama in U-shape with an LM head: the states the server sends down, the device's loss
    gradient w.r.t. them, the targets. ``device_norms``: the server sends the last hidden states
    and the device applies the final norm; else the server sends them normed (the head's input)."""
    model, _ = build_random("llama", seed=0, hidden=32, layers=2, vocab=VOCAB)
    client, server = split(
        model,
        SplitSpec(split_layer=1, prefix_length=4, head="lm", pooling="last"),
        initial_prefix(model, "llama", 4, seed=1, vocab_size=VOCAB),
    )
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (4, 8), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    targets = torch.randint(0, VOCAB, (4, 8), generator=generator)
    targets[:, :2] = IGNORE_TARGET  # the prompt is not scored
    targets[1, 5:] = IGNORE_TARGET
    with torch.no_grad():
        sent = server.stack(client(ids, mask), mask)
        if not device_norms:
            sent = server.final_norm(sent)
    sent.requires_grad_(True)
    features = server.final_norm(sent) if device_norms else sent
    lm_loss(server.head(features), targets).backward()
    return server, sent, targets


@pytest.mark.parametrize("device_norms", [False, True])
def test_lm_targets_are_recovered_exactly_from_the_upward_gradient(device_norms):
    # Prepare
    server, sent, targets = _ushape_lm_gradient(device_norms)
    norm = server.final_norm if device_norms else None

    # Execute
    recovered = targets_from_lm_gradient(sent.grad, sent.detach(), norm, server.head.weight)

    # Assert: every scored target, and the unscored positions marked as such
    assert torch.equal(recovered, targets)


def test_lm_targets_are_exact_when_the_states_point_at_their_targets():
    # Prepare: as in a trained LM, each state leans towards its target's embedding, so much of
    # E^T p - E_y lies along the state itself, the direction the RMSNorm's Jacobian erases
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(64, 16, generator=generator)
    norm = LlamaRMSNorm(16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(16, generator=generator) + 0.5)
    targets = torch.randint(0, 64, (1, 40), generator=generator)
    states = (2 * table[targets] + 0.3 * torch.randn(1, 40, 16, generator=generator)).requires_grad_(True)
    F.cross_entropy((norm(states) @ table.T)[0], targets[0]).backward()

    # Execute
    recovered = targets_from_lm_gradient(states.grad, states.detach(), norm, table)

    # Assert
    assert torch.equal(recovered, targets)
