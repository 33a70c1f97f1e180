"""Plan-based split training (2 exchanges a round) against per-step split and the unsplit model."""

import numpy as np
import torch

from flower_app.config.load import load_config
from flower_app.config.strategy_settings import split_settings
from flower_app.data.files import batch_plan, collate
from flower_app.data.setup import build, client_data
from flower_app.model.split_model import get_state, set_state
from flower_app.modes.server_model import SplitServer
from flower_app.modes.split import forward_chunks, replay_plan, replay_step
from flower_app.modes.training import class_logits
from strategies.wire.codecs.registry import wire_codec

FLOAT32 = wire_codec("float32")


def _loss_after(setup, server, encoded, plan, client_state, server_state):
    """Mean loss over the plan's minibatches with the trained tensors."""
    set_state(setup.client, client_state)
    set_state(setup.server, server_state)
    losses = []
    with torch.no_grad():
        for indices in plan:
            ids, mask, labels = collate(encoded, indices, setup.pad_id)
            losses.append(server.loss(setup.server(setup.client(ids, mask), mask), mask, labels).item())
    return float(np.mean(losses))


def _per_step(setup, server, encoded, plan, state):
    """Reference: every minibatch crosses the split twice before the next one starts."""
    set_state(setup.client, state)
    optimizer = torch.optim.Adam([p for p in setup.client.parameters() if p.requires_grad], lr=setup.config.train.lr)
    server_state = {k: state[k] for k in server.server_keys}
    for indices in plan:
        batches = forward_chunks(setup.client, encoded, [indices], setup.pad_id, "float32")
        server_state, grads, _ = server.train_split(server_state, batches, codec=FLOAT32)
        replay_step(setup.client, encoded, indices, torch.from_numpy(grads[0]), optimizer, setup.pad_id)
    return get_state(setup.client), server_state


def _planned(setup, server, encoded, plan, state):
    set_state(setup.client, state)
    batches = forward_chunks(setup.client, encoded, plan, setup.pad_id, "float32")
    server_state, grads, _ = server.train_split({k: state[k] for k in server.server_keys}, batches, codec=FLOAT32)
    replay_plan(setup.client, encoded, plan, grads, setup.config.train.lr, setup.pad_id, codec=FLOAT32)
    return get_state(setup.client), server_state


def _compare(steps):
    """Relative gap between the two client updates, and the loss each reaches."""
    config = load_config({"config": "test"})
    setup = build(config)
    server = SplitServer(setup, split_settings(config))
    encoded = client_data(config, 0, 4)
    plan = batch_plan(len(encoded), steps, 16, seed=3)
    start = server.initial_state()
    (reference, ref_server), (planned, plan_server) = (
        _per_step(setup, server, encoded, plan, start),
        _planned(setup, server, encoded, plan, start),
    )
    keys = server.client_keys
    delta_ref = np.concatenate([(reference[k] - start[k]).ravel() for k in keys])
    delta_plan = np.concatenate([(planned[k] - start[k]).ravel() for k in keys])
    gap = np.linalg.norm(delta_plan - delta_ref) / np.linalg.norm(delta_ref)
    return (
        gap,
        _loss_after(setup, server, encoded, plan, reference, ref_server),
        _loss_after(setup, server, encoded, plan, planned, plan_server),
        _loss_after(setup, server, encoded, plan, start, start),
    )


def test_one_step_plan_equals_per_step_split():
    gap, loss_ref, loss_plan, _ = _compare(steps=1)
    assert gap < 1e-6 and abs(loss_ref - loss_plan) < 1e-6


def test_staleness_of_a_plan_grows_with_its_length_but_training_outcome_matches():
    # Prepare / Execute
    short_gap, *_ = _compare(steps=3)
    long_gap, loss_ref, loss_plan, loss_start = _compare(steps=10)

    # Assert: replayed steps drift from exact per-step gradients as the plan grows ...
    print(
        f"update gap: 3 steps {short_gap:.3f}, 10 steps {long_gap:.3f}; loss start {loss_start:.4f} "
        f"per-step {loss_ref:.4f} plan {loss_plan:.4f}"
    )
    assert 0 < short_gap < long_gap
    # ... yet both reach about the same loss: the plan loses little of the per-step progress.
    assert loss_ref < loss_start and loss_plan < loss_start
    assert (loss_plan - loss_ref) < 0.2 * (loss_start - loss_ref)


def test_one_split_step_equals_one_adam_step_on_the_unsplit_graph():
    # Prepare: one minibatch of client 0, the round-start tensors on both sides
    import torch.nn.functional as F

    config = load_config({"config": "test"})
    setup = build(config)
    server = SplitServer(setup, split_settings(config))
    encoded = client_data(config, 0, 4)
    plan = batch_plan(len(encoded), 1, 16, seed=3)
    start = server.initial_state()
    lr = config.train.lr

    # Execute: the split pieces (client forward -> server step -> client replay) ...
    set_state(setup.client, start)
    batches = forward_chunks(setup.client, encoded, plan, setup.pad_id, "float32")
    _, grads, _ = server.train_split({k: start[k] for k in server.server_keys}, batches, codec=FLOAT32)
    replay_plan(setup.client, encoded, plan, grads, lr, setup.pad_id, codec=FLOAT32)
    split_prefix = get_state(setup.client)
    # ... and the unsplit model: client and server part in one autograd graph, one Adam step
    set_state(setup.client, start)
    set_state(setup.server, start)
    ids, mask, labels = collate(encoded, plan[0], setup.pad_id)
    boundary = setup.client(ids, mask)
    boundary.retain_grad()
    logits = class_logits(setup.spec, setup.server(boundary, mask), mask, setup.verbalizer_ids)
    client_params = [p for p in setup.client.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(client_params, lr=lr)
    optimizer.zero_grad()
    F.cross_entropy(logits, labels).backward()
    optimizer.step()
    for p in [*setup.client.parameters(), *setup.server.parameters()]:  # the cached modules are shared
        p.grad = None
    unsplit_prefix = get_state(setup.client)

    # Assert: the server sent the unsplit gradient at the boundary ...
    np.testing.assert_allclose(grads[0], boundary.grad.numpy(), rtol=1e-6, atol=1e-9)
    # ... and the client's prefix took the unsplit step (Adam moves each value by about lr)
    assert sorted(split_prefix) == sorted(server.client_keys) and split_prefix
    for key in server.client_keys:
        assert not np.array_equal(split_prefix[key], start[key]), key
        np.testing.assert_allclose(split_prefix[key], unsplit_prefix[key], rtol=1e-6, atol=1e-7, err_msg=key)
