"""Local-mode training through the emulator; centralized uploads and server-side training."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flower_app.data.files import batch_plan, collate, encode, synthetic
from flower_app.model.emulator import build_emulator
from flower_app.model.loading import build_random
from flower_app.model.split_model import SplitSpec, get_state, initial_prefix, set_state, split
from flower_app.modes import centralized as centralized_mode
from flower_app.modes import local as local_mode
from flower_app.modes.training import class_logits
from strategies.wire import names as wire
from strategies.wire.codecs.registry import wire_codec

PAD_ID = 0  # "[PAD]" of loading.tiny_tokenizer


def _setup(family: str, layers: int = 4, samples: int = 48):
    """Tiny random model cut after layer 2, its verbalizer and an encoded synthetic set."""
    model, tokenizer = build_random(family, seed=0, layers=layers)
    if family == "bert":
        spec, verbalizer = SplitSpec(split_layer=2, prefix_length=4, head="classifier", pooling="mean"), None
    else:
        spec = SplitSpec(split_layer=2, prefix_length=4, head="lm", pooling="last")
        verbalizer = tuple(tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("bad", "good"))
    prefix = initial_prefix(model, family, prefix_length=4, seed=1, vocab_size=512)
    client, server = split(model, spec, prefix)
    encoded = encode(tokenizer, synthetic(samples, seed=0), max_length=16)
    return model, client, server, spec, verbalizer, encoded


def _loss(client, server, spec, verbalizer, encoded):
    """Cross entropy over every sample, without grad."""
    with torch.no_grad():
        ids, mask, labels = collate(encoded, np.arange(len(encoded)), PAD_ID)
        scores = class_logits(spec, server(client(ids, mask), mask), mask, verbalizer)
        return F.cross_entropy(scores, labels).item()


@pytest.mark.parametrize("family, lr", [("bert", 0.02), ("gpt2", 0.05)])
def test_train_local_lowers_the_loss_and_moves_only_the_prefix(family, lr):
    # Prepare: 6 layers, the emulator keeps 2 of the server's 4
    model, client, server, spec, verbalizer, encoded = _setup(family, layers=6)
    emulator = build_emulator(server, keep=2)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    client_before, server_before = get_state(client), get_state(server)
    before = _loss(client, emulator, spec, verbalizer, encoded)
    plan = batch_plan(len(encoded), steps=15, batch_size=16, seed=0)

    # Execute
    mean_loss, steps = local_mode.train_local(client, emulator, encoded, plan, lr, lr, PAD_ID, spec, verbalizer)

    # Assert
    after = _loss(client, emulator, spec, verbalizer, encoded)
    assert after < before - 0.005, (before, after)
    assert np.isfinite(mean_loss) and steps == 15
    assert all(not np.array_equal(v, client_before[k]) for k, v in get_state(client).items())
    assert all(np.array_equal(v, server_before[k]) for k, v in get_state(server).items())
    for name, param in model.named_parameters():
        assert torch.equal(param, frozen[name]), name


def test_upload_samples_chunks_rows_by_length_and_keeps_labels():
    # Prepare
    *_, encoded = _setup("bert", samples=20)
    indices = np.arange(3, 20)  # 17 samples: chunks of 8, 8, 1

    # Execute
    uploaded = centralized_mode.upload_samples(encoded, indices, PAD_ID, chunk_size=8)

    # Assert
    chunks = centralized_mode.upload_chunks(encoded, indices, chunk_size=8)
    assert [len(c) for c in chunks] == [8, 8, 1]
    assert sorted(np.concatenate(chunks).tolist()) == indices.tolist()
    assert sorted(uploaded) == sorted(f"{k}.{i}" for k in ("ids", "mask", "label") for i in range(3))
    assert wire.chunk_rows(wire.decode_chunks(uploaded, "samples")[0]) == 17
    for i, chunk in enumerate(chunks):
        ids, mask, labels = uploaded[f"ids.{i}"], uploaded[wire.mask_key(i)], uploaded[wire.label_key(i)]
        width = max(len(encoded.ids[j]) for j in chunk)
        assert ids.shape == mask.shape == (len(chunk), width)
        assert (ids.dtype, mask.dtype, labels.dtype) == (np.int32, np.int8, np.int64)
        assert labels.tolist() == encoded.labels[chunk].tolist()
        for row, row_mask, j in zip(ids, mask, chunk, strict=False):
            length = len(encoded.ids[j])
            assert row[:length].tolist() == list(encoded.ids[j])
            assert row_mask.sum() == length and (row[length:] == PAD_ID).all()
    lengths = [len(encoded.ids[j]) for j in np.concatenate(chunks)]
    assert lengths == sorted(lengths)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_upload_activations_equal_the_client_forward_of_each_chunk(dtype):
    # Prepare
    _, client, _, _, _, encoded = _setup("gpt2", samples=20)
    indices = np.arange(20)
    samples = centralized_mode.upload_samples(encoded, indices, PAD_ID, chunk_size=8)

    # Execute
    uploaded = centralized_mode.upload_activations(client, encoded, indices, PAD_ID, dtype, chunk_size=8)

    # Assert
    assert sorted(uploaded) == sorted(f"{k}.{i}" for k in ("act", "mask", "label") for i in range(3))
    for i in range(3):
        ids = torch.as_tensor(samples[f"ids.{i}"]).long()
        mask = torch.as_tensor(samples[wire.mask_key(i)]).long()
        with torch.no_grad():
            expected = client(ids, mask).to(getattr(torch, dtype))  # (C, T, H)
        act = uploaded[wire.activation_key(i)]
        assert act.dtype == np.dtype(dtype) and act.shape == (*ids.shape, 64)
        assert torch.equal(torch.as_tensor(act), expected)
        assert np.array_equal(uploaded[wire.mask_key(i)], samples[wire.mask_key(i)])
        assert np.array_equal(uploaded[wire.label_key(i)], samples[wire.label_key(i)])


@pytest.mark.parametrize("kind", ["samples", "activations"])
def test_first_centralized_step_sees_the_uploaded_rows_as_the_client_would(kind):
    # Prepare: one step over all rows, which come from chunks padded to different widths
    _, client, server, spec, verbalizer, encoded = _setup("gpt2", samples=20)
    indices = np.arange(20)
    if kind == "samples":
        uploaded = centralized_mode.upload_samples(encoded, indices, PAD_ID, chunk_size=8)
    else:
        uploaded = centralized_mode.upload_activations(client, encoded, indices, PAD_ID, "float32", chunk_size=8)
    expected = _loss(client, server, spec, verbalizer, encoded)

    # Execute: the loss of step 1 is computed before its update
    _, loss, _ = centralized_mode.train_centralized(
        client,
        server,
        _chunks(uploaded, kind),
        kind,
        steps=1,
        batch_size=20,
        lr=0.01,
        head_lr=0.01,
        seed=0,
        spec=spec,
        verbalizer_ids=verbalizer,
    )

    # Assert
    assert loss == pytest.approx(expected, abs=1e-5)


def test_train_centralized_on_activations_trains_only_the_server_side():
    # Prepare
    _, client, server, spec, verbalizer, encoded = _setup("bert")
    uploaded = centralized_mode.upload_activations(client, encoded, np.arange(32), PAD_ID, "float16", chunk_size=8)
    client_before, server_before = get_state(client), get_state(server)

    # Execute
    state, loss, _ = centralized_mode.train_centralized(
        client,
        server,
        _chunks(uploaded, "activations", "float16"),
        "activations",
        steps=3,
        batch_size=8,
        lr=0.02,
        head_lr=0.02,
        seed=0,
        spec=spec,
        verbalizer_ids=verbalizer,
    )

    # Assert
    assert sorted(state) == sorted(server_before) == ["head.bias", "head.weight", "prefix.2", "prefix.3"]
    assert all(not np.array_equal(state[k], server_before[k]) for k in state)
    assert all(np.array_equal(v, client_before[k]) for k, v in get_state(client).items())
    assert np.isfinite(loss)


def test_train_centralized_on_samples_trains_both_sides_and_is_seeded():
    # Prepare
    _, client, server, spec, verbalizer, encoded = _setup("bert")
    uploaded = centralized_mode.upload_samples(encoded, np.arange(32), PAD_ID, chunk_size=8)
    start = {**get_state(client), **get_state(server)}

    def run(seed):
        set_state(client, start)
        set_state(server, start)
        return centralized_mode.train_centralized(
            client,
            server,
            _chunks(uploaded, "samples"),
            "samples",
            steps=3,
            batch_size=8,
            lr=0.02,
            head_lr=0.02,
            seed=seed,
            spec=spec,
            verbalizer_ids=verbalizer,
        )

    # Execute
    (first, loss, _), (again, loss_again, _), (other, _, _) = run(0), run(0), run(1)

    # Assert
    assert sorted(first) == sorted(start)  # prefix.0..3 and the head
    assert all(not np.array_equal(first[k], start[k]) for k in first)
    assert all(np.array_equal(first[k], again[k]) for k in first) and loss == loss_again
    assert not all(np.array_equal(first[k], other[k]) for k in first)


def test_train_centralized_rejects_an_unknown_kind_and_a_mislabelled_upload():
    _, client, server, spec, _, encoded = _setup("bert", samples=16)
    uploaded = centralized_mode.upload_samples(encoded, np.arange(16), PAD_ID, chunk_size=8)
    kwargs = {"steps": 1, "batch_size": 4, "lr": 0.01, "head_lr": 0.01, "seed": 0, "spec": spec, "verbalizer_ids": None}
    with pytest.raises(ValueError, match="gradients"):
        centralized_mode.train_centralized(client, server, _chunks(uploaded, "samples"), "gradients", **kwargs)
    _, problems = wire.decode_chunks(uploaded, "activations")
    assert problems and "act.0" in problems[0]


def test_train_local_stops_when_told_after_at_least_one_step():
    # Prepare
    _, client, server, spec, verbalizer, encoded = _setup("bert", layers=4)
    emulator = build_emulator(server, keep=1)
    plan = batch_plan(len(encoded), steps=50, batch_size=16, seed=0)

    # Execute: a limit no step fits in still takes the first step (there is no result otherwise)
    seen = []
    _, steps = local_mode.train_local(
        client,
        emulator,
        encoded,
        plan,
        0.01,
        0.01,
        PAD_ID,
        spec,
        verbalizer,
        stop=lambda done, elapsed: seen.append((done, elapsed)) or elapsed >= 1e-9,
    )

    # Assert
    assert steps == 1
    assert len(seen) == 1 and seen[0][0] == 1 and seen[0][1] > 0


def _chunks(uploaded, kind, codec="float32"):
    chunks, problems = wire.decode_chunks(uploaded, kind, codec=wire_codec(codec))
    assert problems == []
    return chunks
