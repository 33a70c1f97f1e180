"""The device's activation defences: the clip, the calibrated noise, and every path that applies them."""

import dataclasses
import uuid
from functools import partial

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from flower_app.config.load import load_config
from flower_app.config.strategy_settings import split_settings
from flower_app.data.files import batch_plan, collate, encode, synthetic
from flower_app.generate.session import DeviceSession
from flower_app.model.cache import cache_root
from flower_app.model.device_part import build_device_part, model_key
from flower_app.model.emulator import build_emulator
from flower_app.model.loading import build_random
from flower_app.model.split_model import SplitSpec, get_state, initial_prefix, split
from flower_app.modes import centralized as centralized_mode
from flower_app.modes import local as local_mode
from flower_app.modes.handlers import centralized as centralized_handlers
from flower_app.modes.handlers import local as local_handlers
from flower_app.modes.handlers import split as split_handlers
from flower_app.modes.node import Job, noise_secret
from flower_app.modes.server_model import SplitServer
from flower_app.modes.split import forward_chunks, forward_plan, replay_step
from flower_app.privacy.defences import UNGUARDED, ActivationGuard, clip_tokens, embedding_directions
from flower_app.privacy.guard import activation_guard, boundary_clip, noise_basis, noise_generator
from flower_app.tasks.family import Setup
from flower_app.tasks.registry import family_of
from strategies.wire import names as wire
from strategies.wire.records import from_record, to_record

PAD_ID = 0  # "[PAD]" of loading.tiny_tokenizer
CLIP = 4.0  # below the tiny BERT's token norms (about 8 after its LayerNorm): the clip binds


def _config(overrides=None, **privacy):
    privacy_keys = {f"privacy.{k.replace('_', '-')}": v for k, v in privacy.items()}
    return load_config({"config": "test", **(overrides or {}), **privacy_keys})


@pytest.fixture(scope="module")
def tiny():
    """A random 4-layer BERT cut after layer 2, 32 encoded synthetic samples, and its tokenizer."""
    model, tokenizer = build_random("bert", seed=0, layers=4)
    spec = SplitSpec(split_layer=2, prefix_length=4, head="classifier", pooling="mean")
    client, server = split(model, spec, initial_prefix(model, "bert", prefix_length=4, seed=1, vocab_size=512))
    return client, server, spec, encode(tokenizer, synthetic(32, seed=0), max_length=16), tokenizer


def _prefix_grads(client, encoded, indices, grad, guard):
    """The lower prefix's gradient after one replayed minibatch (lr 0: the prefix does not move)."""
    optimizer = torch.optim.SGD([p for p in client.parameters() if p.requires_grad], lr=0.0)
    replay_step(client, encoded, indices, grad, optimizer, PAD_ID, guard)
    return torch.cat([p.grad.flatten() for p in client.parameters() if p.requires_grad])


def _within(measured, expected, samples, sigmas=5.0):
    """A variance estimate from ``samples`` Gaussian draws is off by about expected * sqrt(2 / samples)."""
    return abs(measured - expected) <= sigmas * expected * np.sqrt(2.0 / samples)


def test_isotropic_noise_has_the_calibrated_per_coordinate_variance():
    # Prepare: 4096 tokens of width 16, most of them above the clip
    hidden = torch.randn(64, 64, 16, generator=torch.Generator().manual_seed(0)) * 0.6  # norms about 2.4
    guard = ActivationGuard(clip=2.0, noise=1.5)

    # Execute
    noise = guard.on_wire(hidden, torch.Generator().manual_seed(1)) - guard.shape(hidden)

    # Assert: std per coordinate noise * clip / sqrt(H), so a token's noise has norm about noise * clip
    expected = (1.5 * 2.0) ** 2 / 16
    assert _within(noise.double().var().item(), expected, noise.numel())
    assert abs(noise.double().mean().item()) < 5 * np.sqrt(expected / noise.numel())


def test_embedding_noise_lies_in_the_basis_span_with_the_same_energy():
    # Prepare: the top 4 of 16 directions of a random embedding matrix
    embedding = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    basis = embedding_directions(embedding, rank=4)  # (16, 4)
    hidden = torch.randn(64, 32, 16, generator=torch.Generator().manual_seed(2))
    guard = ActivationGuard(clip=3.0, noise=2.0, basis=basis)

    # Execute
    noise = (guard.on_wire(hidden, torch.Generator().manual_seed(3)) - guard.shape(hidden)).double()
    inside = noise @ basis.double()  # (B, T, 4) coordinates along the basis

    # Assert: nothing outside the span; each of the 4 directions carries (noise * clip)^2 / 4
    outside = noise - inside @ basis.double().T
    assert outside.abs().max().item() < 1e-5 * noise.abs().max().item()
    assert _within(inside.var().item(), (2.0 * 3.0) ** 2 / 4, inside.numel())


def test_clip_bounds_every_token_and_leaves_shorter_ones_alone():
    # Prepare: tokens with norms from 0.1 to 10
    direction = torch.nn.functional.normalize(torch.randn(5, 20, 8, generator=torch.Generator().manual_seed(4)), dim=-1)
    norms = torch.linspace(0.1, 10.0, 100).reshape(5, 20, 1)
    hidden = direction * norms

    # Execute
    clipped = clip_tokens(hidden, 3.0)

    # Assert: no token above the clip, the longer ones exactly at it, the shorter ones unchanged
    out_norms = clipped.norm(dim=-1)
    assert (out_norms <= 3.0 * (1 + 1e-6)).all()
    below = norms.squeeze(-1) <= 3.0
    assert torch.equal(clipped[below], hidden[below])
    assert torch.allclose(out_norms[~below], torch.full_like(out_norms[~below], 3.0))
    # the direction of a clipped token is kept
    assert torch.allclose(torch.nn.functional.normalize(clipped, dim=-1), direction, atol=1e-6)


def test_replay_gradient_is_the_same_with_noise_and_goes_through_the_clip(tiny):
    # Prepare: one minibatch and a boundary gradient, as the server would send
    client, _, _, encoded, _ = tiny
    indices = np.arange(8)
    ids, mask, _ = collate(encoded, indices, PAD_ID)
    grad = torch.randn(*ids.shape, 64, generator=torch.Generator().manual_seed(5))
    noisy, clean = ActivationGuard(clip=CLIP, noise=2.0), ActivationGuard(clip=CLIP)

    # Execute: the replay with and without noise, unclipped, and the gradient of what was sent
    with_noise = _prefix_grads(client, encoded, indices, grad, noisy)
    without_noise = _prefix_grads(client, encoded, indices, grad, clean)
    unclipped = _prefix_grads(client, encoded, indices, grad, UNGUARDED)
    client.zero_grad()
    sent = noisy.on_wire(client(ids, mask), torch.Generator().manual_seed(6))  # (B, T, H), noise in the graph
    sent.backward(grad)
    of_sent = torch.cat([p.grad.flatten() for p in client.parameters() if p.requires_grad])
    client.zero_grad()

    # Assert: the noise changes nothing in the gradient, the replay's is that of what was sent ...
    assert torch.equal(with_noise, without_noise)
    assert torch.allclose(with_noise, of_sent, rtol=1e-5, atol=1e-7)
    # ... and the clip is in its path: where it binds, the gradient differs from the unclipped one
    assert (with_noise - unclipped).norm() > 0.1 * unclipped.norm()


def test_forward_chunks_send_noisy_activations_reproducibly_per_seed(tiny):
    # Prepare: a guard from the config, a 3-minibatch plan
    client, _, _, encoded, _ = tiny
    config = _config(act_clip=CLIP, act_noise=1.0)
    guard = activation_guard(config, noise_basis(config, client))
    plan = batch_plan(len(encoded), 3, 8, seed=0)

    def sent(seed, chunk_guard=guard):
        return [
            c.inputs
            for c in forward_chunks(client, encoded, plan, PAD_ID, "float32", guard=chunk_guard, noise_seed=seed)
        ]

    # Execute
    first, again, other, clipped = sent(7), sent(7), sent(8), sent(7, boundary_clip(config))
    # the handler sends the first minibatch, then the rest numbered from 1
    record = {
        **forward_plan(client, encoded, plan[:1], PAD_ID, "float32", guard=guard, noise_seed=7),
        **forward_plan(client, encoded, plan[1:], PAD_ID, "float32", 1, guard=guard, noise_seed=7),
    }

    # Assert: same seed, same activations; another seed, other noise; noise of the calibrated size
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(not np.allclose(a, b) for a, b in zip(first, other, strict=True))
    assert all(np.array_equal(record[wire.activation_key(i)], a) for i, a in enumerate(first))
    noise = np.concatenate([(a - c).reshape(-1, 64) for a, c in zip(first, clipped, strict=True)])
    assert _within(float(noise.astype(np.float64).var()), CLIP**2 / 64, noise.size)
    assert np.all(np.linalg.norm(np.concatenate([c.reshape(-1, 64) for c in clipped]), axis=1) <= CLIP * (1 + 1e-6))


def test_upload_activations_go_through_the_guard(tiny):
    # Prepare
    client, _, _, encoded, _ = tiny
    guard = ActivationGuard(clip=CLIP, noise=1.0)

    # Execute
    rows = np.arange(16)
    plain = centralized_mode.upload_activations(client, encoded, rows, PAD_ID, "float32", chunk_size=8)
    guarded = centralized_mode.upload_activations(
        client, encoded, rows, PAD_ID, "float32", chunk_size=8, guard=guard, noise_seed=3
    )

    # Assert: the same chunks, noised, and not the plain ones
    key = wire.activation_key(0)
    assert guarded[key].shape == plain[key].shape and not np.allclose(guarded[key], plain[key])


def test_embedding_directions_are_the_top_orthonormal_principal_directions():
    # Prepare: an embedding matrix with a mean far from zero and unequal spreads
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(200, 10)) * np.linspace(3.0, 0.3, 10) + 5.0

    # Execute
    basis = embedding_directions(torch.as_tensor(embedding, dtype=torch.float32), rank=3).double().numpy()

    # Assert: orthonormal columns spanning numpy's top 3 right singular vectors of the centred matrix
    _, _, vh = np.linalg.svd(embedding - embedding.mean(0), full_matrices=False)
    top = vh[:3].T
    assert np.allclose(basis.T @ basis, np.eye(3), atol=1e-5)
    assert np.allclose(basis @ basis.T, top @ top.T, atol=1e-4)  # the same span, whatever the signs
    with pytest.raises(ValueError, match="act-rank"):
        embedding_directions(torch.as_tensor(embedding), rank=11)


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"privacy.act-noise": 1.0}, "privacy.act-noise=1.0 needs privacy.act-clip"),  # noise without a clip
        ({"config": "image", "privacy.act-directions": "embedding"}, "task.family=image"),  # no token embeddings
    ],
)
def test_bad_combinations_are_refused_at_load(overrides, named):
    with pytest.raises(ValueError, match=named):
        load_config({"config": "test", **overrides})


def test_embedding_directions_without_a_basis_and_noise_without_a_clip_are_refused():
    with pytest.raises(ValueError, match="noise basis"):
        activation_guard(_config(act_clip=1.0, act_noise=1.0, act_directions="embedding"), None)
    with pytest.raises(ValueError, match="act-clip"):
        ActivationGuard(noise=1.0)


def test_device_part_holds_its_basis_and_keeps_its_cache_key_otherwise():
    # Prepare
    labels = ("negative", "positive")
    embedding = _config(act_clip=1.0, act_noise=1.0, act_directions="embedding", act_rank=8)

    # Execute
    part, _ = build_device_part(embedding, labels)

    # Assert: the basis of its own token embeddings, computed with the part
    assert torch.allclose(part.noise_basis, embedding_directions(part.client.token_embedding, 8))
    assert activation_guard(embedding, part.noise_basis).basis is part.noise_basis
    # a run with a clip and isotropic noise reads the same cached part as one without defences
    assert model_key(_config(act_clip=1.0, act_noise=1.0, act_rank=5), labels) == model_key(_config(), labels)
    assert model_key(embedding, labels) != model_key(_config(), labels)


def test_noise_seed_follows_the_plan_and_the_node_secret():
    # Prepare
    plan = wire.TrainPlan(3, 12345, 2, 8, 0.1, 0.1, "float32", 0, 0, "samples", 8)
    jobs = [Job(_config(), None, None, plan, None, secret) for secret in (0, 0, 99)]
    later = Job(_config(), None, None, dataclasses.replace(plan, server_round=4), None)

    # Execute / Assert: reproducible; another secret or another round, another seed
    assert jobs[0].noise_seed == jobs[1].noise_seed != jobs[2].noise_seed
    assert later.noise_seed != jobs[0].noise_seed
    assert noise_secret({"noise-secret": 99}) == 99 and noise_secret({}) == 0
    with pytest.raises(ValueError, match="noise-secret"):
        noise_secret({"noise-secret": -1})
    assert not torch.equal(
        torch.randn(4, generator=noise_generator(1, 0)), torch.randn(4, generator=noise_generator(1, 1))
    )


def _clipped_loss(client, upper, encoded, indices, clip=CLIP):
    """Cross entropy of ``upper`` on the clipped boundary of ``indices``, without grad (by hand; clip 0: none)."""
    ids, mask, labels = collate(encoded, indices, PAD_ID)
    with torch.no_grad():
        boundary = client(ids, mask)
        logits = upper(clip_tokens(boundary, clip) if clip else boundary, mask)
    return torch.nn.functional.cross_entropy(logits, labels).item()


def test_local_mode_trains_and_evaluates_through_the_clip(tiny):
    # Prepare: the emulator keeps 1 of the 2 upper layers; one minibatch of all 16 samples
    client, server, spec, encoded, _ = tiny
    emulator = build_emulator(server, keep=1)
    clip, indices = ActivationGuard(clip=CLIP), np.arange(16)
    by_hand = _clipped_loss(client, emulator, encoded, indices)

    # Execute: evaluation with and without the clip; a step at lr 0 (its loss is taken before it)
    guarded = local_mode.evaluate_local(client, emulator, encoded, indices, PAD_ID, spec, None, guard=clip)
    plain = local_mode.evaluate_local(client, emulator, encoded, indices, PAD_ID, spec, None)
    trained, _ = local_mode.train_local(client, emulator, encoded, [indices], 0.0, 0.0, PAD_ID, spec, None, guard=clip)

    # Assert
    assert guarded[wire.LOSS] == pytest.approx(by_hand, rel=1e-5) and guarded[wire.LOSS] != plain[wire.LOSS]
    assert trained == pytest.approx(by_hand, rel=1e-5)


def test_server_evaluates_and_trains_on_samples_through_the_clip_without_noise(tiny):
    # Prepare: the server's setup over the tiny model, with noise in the config (which it must not add)
    client, server, spec, encoded, tokenizer = tiny
    clip = 0.5  # far below the norms: the upper layers' LayerNorms undo a milder clip almost entirely
    config = _config({"train.upload-kind": "samples"}, act_clip=clip, act_noise=3.0)
    test = synthetic(24, seed=1)
    state = {**get_state(client), **get_state(server)}
    state["head.weight"] = state["head.weight"] * 30  # a decisive head: the clip moves the loss
    encoder = partial(encode, tokenizer, max_length=16)
    setup = Setup(config, spec, client, server, tokenizer, PAD_ID, None, test, test, state, encoder)
    split_server = SplitServer(setup, split_settings(config))
    uploaded = centralized_mode.upload_samples(encoded, np.arange(16), PAD_ID, chunk_size=16)
    chunks, _ = wire.decode_chunks(uploaded, wire.SAMPLES)

    # Execute
    evaluated = split_server.evaluate(state)[wire.LOSS]
    _, pool_loss, _ = split_server.train_pool(state, chunks, steps=1, seed=0, lr=0.0, head_lr=0.0)

    # Assert: the clipped, noise-free loss both times (a step's loss is taken before it)
    test_rows = np.arange(24)
    assert evaluated == pytest.approx(_clipped_loss(client, server, setup.test_encoded, test_rows, clip), rel=1e-5)
    assert evaluated != pytest.approx(_clipped_loss(client, server, setup.test_encoded, test_rows, 0.0), rel=1e-3)
    assert split_settings(config).batch_size >= 16  # the step's minibatch is all 16 uploaded rows
    assert pool_loss == pytest.approx(_clipped_loss(client, server, encoded, np.arange(16), clip), rel=1e-5)


def test_generation_sends_clipped_activations():
    # Prepare: a tiny GPT-2 cut after layer 2
    model, _ = build_random("gpt2", seed=0, layers=4)
    spec = SplitSpec(split_layer=2, prefix_length=4, head="lm", pooling="last")
    client, _ = split(model, spec, initial_prefix(model, "gpt2", prefix_length=4, seed=1, vocab_size=512))
    prompt = [5, 6, 7, 8]

    # Execute
    plain = DeviceSession(client).start(prompt)
    clip = float(plain.norm(dim=-1).median())  # binds on half the tokens
    clipped = DeviceSession(client, clip=ActivationGuard(clip=clip)).start(prompt)

    # Assert: the activations that go up are the clipped ones, noise-free
    assert (plain.norm(dim=-1) > clip * 1.01).any()
    assert torch.equal(clipped, clip_tokens(plain, clip))


# --- the handlers: a node's train messages, with the run config's privacy settings ----------------

NODE = {"partition-id": 0, "num-partitions": 4}
PLAN = wire.TrainPlan(1, 5, 2, 8, 0.02, 0.02, "float32", 1, 0, "activations", 16)  # 1: the test config's emulator


def _reply(handler, message_type, privacy, node=NODE, records=None):
    """``handler``'s reply to a train message of the test config with ``privacy`` overrides."""
    run_config = {"config": "test", **{f"privacy.{k}": v for k, v in privacy.items()}}
    config = load_config(run_config)
    device = family_of(config).device_part(config, cache_root(node))
    state = {**get_state(device.client), **get_state(device.upper)}  # what local mode's emulator needs too
    content = RecordDict(
        {wire.ARRAYS: to_record(state), wire.CONFIG: ConfigRecord(PLAN.to_config()), **(records or {})}
    )
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID  # as a ServerApp's
    message = Message(content, 1, message_type, group_id="1")
    message.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # a reply needs the id of what it answers
    return handler(message, Context(1, 1, dict(node), RecordDict(), run_config))


def _sent(privacy, node=NODE):
    reply = _reply(split_handlers.forward, wire.SPLIT_FORWARD, privacy, node)
    arrays = from_record(reply.content.array_records[wire.ACTIVATIONS])
    return [arrays[wire.activation_key(i)] for i in range(PLAN.steps)]


def test_split_forward_handler_sends_what_the_config_asks():
    # Prepare
    clip, noisy = {"act-clip": CLIP}, {"act-clip": CLIP, "act-noise": 1.0}

    # Execute
    plain, clipped, first, again = _sent({}), _sent(clip), _sent(noisy), _sent(noisy)
    secret = _sent(noisy, {**NODE, "noise-secret": 12345})

    # Assert: clipped without noise, the noise reproducible, and another with the node's secret
    assert np.all(np.linalg.norm(np.concatenate(clipped), axis=-1) <= CLIP * (1 + 1e-6))
    assert not np.allclose(plain[0], clipped[0])
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(not np.allclose(a, c) for a, c in zip(first, clipped, strict=True))  # every chunk has noise
    assert all(not np.allclose(a, b) for a, b in zip(first, secret, strict=True))


def _replayed(privacy):
    shapes = [a.shape for a in _sent({})]
    grads = {
        wire.gradient_key(i): np.random.default_rng(i).normal(size=s).astype(np.float32) for i, s in enumerate(shapes)
    }
    records = {wire.GRADIENTS: to_record(grads), wire.CONFIG: ConfigRecord({**PLAN.to_config(), wire.CODEC: "float32"})}
    reply = _reply(split_handlers.backward, wire.SPLIT_BACKWARD, privacy, records=records)
    arrays = from_record(reply.content.array_records[wire.ARRAYS])
    return np.concatenate([arrays[k].ravel() for k in sorted(arrays)])


def test_split_backward_handler_replays_through_the_clip_and_not_the_noise():
    # Execute
    plain, clipped = _replayed({}), _replayed({"act-clip": CLIP})
    noisy = _replayed({"act-clip": CLIP, "act-noise": 1.0})

    # Assert
    assert np.array_equal(clipped, noisy) and not np.allclose(clipped, plain)


def test_upload_and_local_handlers_apply_the_guard():
    # Execute: an activation upload with and without noise; local mode with and without the clip
    def uploaded(privacy):
        reply = _reply(centralized_handlers.upload, wire.UPLOAD, privacy)
        return from_record(reply.content.array_records[wire.UPLOAD_RECORD])[wire.activation_key(0)]

    def local(privacy):
        reply = _reply(local_handlers.train, wire.LOCAL, privacy)
        arrays = from_record(reply.content.array_records[wire.ARRAYS])
        return np.concatenate([arrays[k].ravel() for k in sorted(arrays)])

    # Assert
    clip, noisy = {"act-clip": CLIP}, {"act-clip": CLIP, "act-noise": 1.0}
    assert not np.allclose(uploaded(clip), uploaded(noisy))
    assert not np.allclose(local({}), local(clip))
