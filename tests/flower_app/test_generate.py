"""Split generation: KV-cached steps against Hugging Face and a full recompute, the device's state,
the Flower exchange and the command line (tiny random decoders, offline)."""

import copy

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from flower_app.apps.client_app import app as client_app
from flower_app.apps.generate_app import STATE_ARRAYS, RemoteDevice, generate_on_grid
from flower_app.apps.runner import InProcessGrid
from flower_app.config.load import load_config, to_dict
from flower_app.data.setup import build
from flower_app.generate.cli import main
from flower_app.generate.session import (
    DeviceSession,
    GenerationError,
    Sampling,
    ServerSession,
    choose,
    decode_loop,
    generate,
)
from flower_app.model.device_part import device_part
from flower_app.model.loading import build_random
from flower_app.model.split_model import SplitSpec, get_state, initial_prefix, set_state, split
from strategies.persist.checkpoint import save_checkpoint

DECODERS = ["gpt2", "llama"]
EOS = 2  # both tiny configs end a text with id 2
PROMPT = [5, 17, 42, 8, 99, 250]
LLAMA_JOB = {
    "config": "test",
    "run.name": "generate-test",  # a config of its own: the tests change its cached parts' prefix
    "model.source": "random-llama",  # the tiny GPT-2 of the job repeats one token whatever its prefix
    "model.head": "lm",
    "model.pooling": "last",
    "model.verbalizer": "bad,good",
}


def _decoder(family):
    """A tiny random decoder whose matrices are redrawn with std 0.2: at the default 0.02 the residual
    stream is mostly the token's own embedding and greedy decoding repeats one token."""
    model, _ = build_random(family, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


def _parts(family, prefix_length, model=None):
    model = model if model is not None else _decoder(family)
    prefix = initial_prefix(model, family, prefix_length, seed=1, vocab_size=512)
    return split(model, SplitSpec(split_layer=2, prefix_length=prefix_length, head="lm", pooling="last"), prefix)


@pytest.mark.parametrize("family", DECODERS)
def test_greedy_split_generation_equals_hf_generate(family):
    # Prepare: split() freezes and rewires its model, so Hugging Face gets an identical copy
    model = _decoder(family)
    reference = copy.deepcopy(model)
    client, server = _parts(family, prefix_length=0, model=model)
    ids = torch.tensor([PROMPT])
    expected = reference.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24, eos_token_id=EOS, pad_token_id=EOS
    )[0, len(PROMPT) :].tolist()
    device = DeviceSession(client)

    # Execute
    result = decode_loop(lambda: device.start(PROMPT), device.step, ServerSession(server), 24, eos_ids=(EOS,))

    # Assert
    assert result.token_ids == expected
    assert len(set(expected)) > 1  # a text that does not repeat one token, or the check is weak
    assert result.prompt_bytes_up == len(PROMPT) * 64 * 4 and result.ids_bytes_down == 8 * (len(expected) - 1)
    assert result.boundary_bytes_up == (len(PROMPT) + len(expected) - 1) * 64 * 4


@pytest.mark.parametrize("family", DECODERS)
def test_cached_steps_equal_a_full_recompute_with_a_prefix(family):
    # Prepare: the default small weights (activations near 1), where float32 rounding stays far below 1e-5
    client, server = _parts(family, prefix_length=4, model=build_random(family, seed=0)[0])
    forced = [7, 300, 12, 45, 3, 200, 7]  # teacher-forced: every step's input is known in advance
    device, upper = DeviceSession(client), ServerSession(server)
    full = torch.tensor([PROMPT + forced])
    mask = torch.ones_like(full)

    # Execute
    boundaries = [device.start(PROMPT)]
    logits = [upper.start(boundaries[0])]
    for token in forced:
        boundaries.append(device.step(token))
        logits.append(upper.step(boundaries[-1]))
    with torch.no_grad():
        full_boundary = client(full, mask)
        expected = server(full_boundary, mask)[0]

    # Assert: step i sees the same positions, keys and prefix as the whole sequence does
    assert torch.allclose(torch.cat(boundaries, dim=1), full_boundary, atol=1e-5, rtol=0)
    for i, got in enumerate(logits):
        assert torch.allclose(got, expected[len(PROMPT) - 1 + i], atol=1e-5, rtol=0), f"step {i}"


def test_device_cache_survives_a_round_trip_through_numpy():
    # Prepare
    client, _ = _parts("llama", prefix_length=4)
    device = DeviceSession(client)
    device.start(PROMPT)
    device.step(11)

    # Execute: what a stateless device keeps between two messages
    state = {k: np.array(v, copy=True) for k, v in device.to_state().items()}
    resumed = DeviceSession.from_state(client, state)

    # Assert
    assert sorted(state) == ["kv.0", "kv.1"]
    assert state["kv.0"].shape == (2, 1, 2, len(PROMPT) + 1, 16)  # keys/values, batch, kv heads, tokens, head dim
    assert resumed.past_length == len(PROMPT) + 1
    assert torch.equal(resumed.step(40), device.step(40))
    with pytest.raises(GenerationError, match="layers"):
        DeviceSession.from_state(client, {"kv.0": state["kv.0"]})


def test_sampler_is_seeded_and_top_k_1_is_greedy():
    logits = torch.randn(512, generator=torch.Generator().manual_seed(0))
    greedy = int(logits.argmax())

    def draws(sampling, n=50):
        return [choose(logits, sampling, torch.Generator().manual_seed(i)) for i in range(n)]

    warm = Sampling(temperature=1.0)
    assert draws(warm) == draws(warm) and len(set(draws(warm))) > 10
    assert set(draws(Sampling(temperature=1.0, top_k=1))) == {greedy}
    assert set(draws(Sampling(temperature=1.0, top_p=1e-6))) == {greedy}
    assert set(draws(Sampling(temperature=2.0, top_k=3))) == set(torch.topk(logits, 3).indices.tolist())
    ordered = torch.softmax(logits, -1).sort(descending=True).values
    nucleus = int((ordered.cumsum(-1) < 0.5).sum()) + 1  # the fewest likeliest tokens reaching p = 0.5
    assert len(set(draws(Sampling(temperature=1.0, top_p=0.5), 400))) == nucleus


def test_exchange_through_the_grid_gives_the_direct_text():
    # Prepare: a "trained" lower prefix that the device only gets from the start message
    setup = build(load_config(LLAMA_JOB))
    initial = get_state(setup.client)
    trained = {k: v * 1.5 + 0.2 for k, v in initial.items()}
    states = []

    def fresh_process(index, message, call):
        """Drop the device's in-memory part before each message, as a new process per message does,
        and record what the node's context.state holds after it."""
        device_part.cache_clear()
        reply = call()
        arrays = grid.contexts[node].state.array_records.get(STATE_ARRAYS)
        states.append(None if arrays is None else {k: tuple(a.shape) for k, a in arrays.items()})
        return reply

    grid = InProcessGrid(client_app, 1, LLAMA_JOB, fault=fresh_process)
    node = grid.node_ids[0]

    # Execute
    try:
        remote = generate_on_grid(grid, node, setup.server, setup.tokenizer, "good movie w7", trained, 12)
        set_state(setup.client, trained)
        direct = generate(setup.client, setup.server, setup.tokenizer, "good movie w7", 12)
    finally:
        set_state(setup.client, initial)

    # Assert
    assert remote.token_ids == direct.token_ids and remote.text == direct.text
    assert remote.boundary_bytes_up == direct.boundary_bytes_up and remote.ids_bytes_down == direct.ids_bytes_down
    assert remote.prefix_bytes_down == sum(v.nbytes for v in trained.values())
    # the cache grew in context.state one token a message, and "end" removed it
    assert [s["kv.0"][3] for s in states[:-1]] == list(range(3, 3 + len(remote.token_ids)))
    assert states[-1] is None


def test_float16_activations_halve_the_bytes_up_through_the_grid():
    job = {**LLAMA_JOB, "train.activation-dtype": "float16"}
    setup = build(load_config(job))
    grid = InProcessGrid(client_app, 1, job)

    remote = generate_on_grid(
        grid, grid.node_ids[0], setup.server, setup.tokenizer, "good movie w7", get_state(setup.client), 8
    )
    direct = generate(setup.client, setup.server, setup.tokenizer, "good movie w7", 8, wire_dtype="float16")

    assert remote.token_ids == direct.token_ids
    assert remote.prompt_bytes_up == 3 * 64 * 2 and remote.per_token()["bytes-up"] == 64 * 2


@pytest.mark.parametrize(("dtype", "width"), [("int8", 64 + 4), ("int4", 32 + 4)])
def test_packed_activations_cross_the_grid_at_their_packed_size(dtype, width):
    # Prepare: hidden 64; int8 sends a byte a value, int4 half a byte, each with a 4-byte scale per token
    job = {**LLAMA_JOB, "train.activation-dtype": dtype}
    setup = build(load_config(job))
    grid = InProcessGrid(client_app, 1, job)

    # Execute
    remote = generate_on_grid(
        grid, grid.node_ids[0], setup.server, setup.tokenizer, "good movie w7", get_state(setup.client), 8
    )
    direct = generate(setup.client, setup.server, setup.tokenizer, "good movie w7", 8, wire_dtype=dtype)

    # Assert: the server unpacked what crossed, the same way in both paths, and the bytes are the packing's
    assert remote.token_ids == direct.token_ids
    assert remote.prompt_bytes_up == 3 * width and remote.per_token()["bytes-up"] == width


def test_a_broken_packing_is_refused_before_the_server_runs_on_it():
    # Prepare: an int8 packing of one token whose scale bytes say -1.0
    server = _parts("llama", 2)[1]
    packed = np.zeros((1, 1, 64 + 4), dtype=np.int8)
    packed[..., -4:] = np.array([-1.0], dtype=np.float32).view(np.int8)

    # Execute / Assert
    with pytest.raises(GenerationError, match="boundary activations: .*negative or non-finite scale"):
        decode_loop(lambda: packed, lambda token: packed, ServerSession(server), 4, wire_dtype="int8")


def test_a_step_without_its_start_is_refused():
    grid = InProcessGrid(client_app, 1, LLAMA_JOB)
    device = RemoteDevice(grid, grid.node_ids[0], timeout=30)

    with pytest.raises(GenerationError, match="without a started session"):
        device.boundary({"action": "step", "token-id": 5})


def test_cli_generates_with_a_run_directory_checkpoint(tmp_path, capsys):
    # Prepare: a run directory as a run leaves it: the resolved config and a checkpoint
    config = load_config(LLAMA_JOB)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(to_dict(config)))
    setup = build(config)
    initial = {**get_state(setup.client), **get_state(setup.server)}
    trained = {k: v * 1.5 + 0.2 for k, v in initial.items()}
    save_checkpoint(tmp_path, 3, trained, {})

    # Execute
    try:
        code = main(["--prompt", "good movie w7", "--run-dir", str(tmp_path), "--max-new-tokens", "6"])
        out, err = capsys.readouterr()
        expected = generate(setup.client, setup.server, setup.tokenizer, "good movie w7", 6).text
    finally:
        set_state(setup.client, initial)
        set_state(setup.server, initial)
    untrained = generate(setup.client, setup.server, setup.tokenizer, "good movie w7", 6).text

    # Assert
    assert code == 0 and out.strip() == expected != untrained
    assert "per new token: 256 B up (its boundary activation), 8 B down (its id)" in err  # 64 float32 values


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["config=test"], "generation needs a decoder: gpt2/llama"),
        (["config=test", "model.source=random-gpt2", "model.pooling=last"], "needs model.head=lm"),
    ],
)
def test_cli_refuses_what_cannot_generate_in_one_line(overrides, message, capsys):
    code = main(["--prompt", "good", *overrides])

    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
