"""Layer-drop emulator of the server part, for local mode."""

import numpy as np
import pytest
import torch

from flower_app.model.emulator import build_emulator, emulator_keys, kept_layers, server_layers
from flower_app.model.loading import build_random
from flower_app.model.split_model import SplitSpec, get_state, initial_prefix, set_state, split, trainable_named


def _parts(family: str, layers: int = 4):
    """A tiny random model cut after layer 2, with a 4-slot prefix."""
    model, _ = build_random(family, seed=0, layers=layers)
    if family == "bert":
        spec = SplitSpec(split_layer=2, prefix_length=4, head="classifier", pooling="mean")
    else:
        spec = SplitSpec(split_layer=2, prefix_length=4, head="lm", pooling="last")
    prefix = initial_prefix(model, family, prefix_length=4, seed=1, vocab_size=512)
    client, server = split(model, spec, prefix)
    return model, client, server


def _batch():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 512, (3, 7), generator=generator)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0  # one right-padded row
    return ids, mask


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_emulator_keeping_all_layers_equals_server(family):
    # Prepare
    _, client, server = _parts(family)
    emulator = build_emulator(server, keep=2)
    ids, mask = _batch()
    boundary = client(ids, mask)

    # Execute
    logits = emulator(boundary, mask)

    # Assert
    assert server_layers(emulator) == (2, 3)
    assert torch.equal(logits, server(boundary, mask))


def test_keep_one_is_the_last_layer_and_counts_are_evenly_spaced():
    # Prepare: a 6-layer model, so the server part holds layers 2..5
    _, client, server = _parts("bert", layers=6)
    ids, mask = _batch()

    # Execute
    one = build_emulator(server, keep=1)
    logits = one(client(ids, mask), mask)

    # Assert
    assert len(one.stack.layers) == 1
    assert one.stack.layers[0] is server.stack.layers[-1]  # shared, not copied
    assert server_layers(one) == (5,)
    assert sorted(get_state(one)) == ["head.bias", "head.weight", "prefix.5"]
    assert logits.shape == (3, 2)
    assert not torch.equal(logits, server(client(ids, mask), mask))
    assert kept_layers(server, 2) == (2, 5)
    assert kept_layers(server, 3) == (2, 4, 5)
    assert kept_layers(server, [5, 3]) == (3, 5)


@pytest.mark.parametrize("keep", [0, 5, [1], [2, 6], []])
def test_keep_outside_the_server_layers_names_the_setting(keep):
    _, _, server = _parts("bert", layers=6)
    with pytest.raises(ValueError, match="keep"):
        build_emulator(server, keep)


def test_training_the_emulator_leaves_server_and_frozen_weights_alone():
    # Prepare
    model, client, server = _parts("bert", layers=6)
    emulator = build_emulator(server, keep=2)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    server_before, emulator_before = get_state(server), get_state(emulator)
    optimizer = torch.optim.Adam(trainable_named(emulator).values(), lr=0.1)
    ids, mask = _batch()

    # Execute
    for _ in range(3):
        optimizer.zero_grad()
        emulator(client(ids, mask), mask).pow(2).mean().backward()
        optimizer.step()

    # Assert: the emulator trained, the real model did not move
    after = get_state(emulator)
    assert all(not np.array_equal(after[k], emulator_before[k]) for k in after)
    for name, value in get_state(server).items():
        assert np.array_equal(value, server_before[name]), name
    for name, param in model.named_parameters():
        assert torch.equal(param, frozen[name]), name


def test_emulator_keys_match_its_state_and_load_from_the_global_state():
    # Prepare
    _, client, server = _parts("bert", layers=6)
    server_keys = tuple(get_state(server))
    emulator = build_emulator(server, keep=[3, 5])
    global_state = {**get_state(client), **get_state(server)}
    global_state["prefix.5"] = global_state["prefix.5"] + 1.0

    # Execute
    keys = emulator_keys(server_keys, kept_layers(server, [3, 5]))
    set_state(emulator, global_state)  # the client's and dropped layers' tensors are extra keys

    # Assert
    assert keys == ("prefix.3", "prefix.5", "head.weight", "head.bias")
    assert set(keys) == set(get_state(emulator))
    assert np.array_equal(get_state(emulator)["prefix.5"], global_state["prefix.5"])
    assert not np.array_equal(get_state(server)["prefix.5"], global_state["prefix.5"])
