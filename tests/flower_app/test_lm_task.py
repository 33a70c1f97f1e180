"""The causal-LM objective: templates, target-only loss masking, held-out scores, whole runs."""

import json
import math

import numpy as np
import pytest
import torch

from flower_app.apps.runner import run_inprocess
from flower_app.config.load import load_config
from flower_app.data import files as data_mod
from flower_app.data.device_cache import _read_encoded, _write_encoded
from flower_app.model.device_part import BUILT_IN_LABELS
from flower_app.model.loading import tiny_tokenizer
from flower_app.tasks.lm import (
    IGNORE,
    LmTally,
    Templates,
    encode_lm,
    job_verbalizer,
    lm_loss,
    templates_for,
    token_targets,
)
from strategies.wire import names as wire

LM = {"model.source": "random-gpt2", "model.head": "lm", "model.pooling": "last", "model.verbalizer": "bad,good"}


def test_targets_cover_only_target_tokens():
    # Arrange: two rows, prompts of 3 and 2 tokens, the second row padded by two
    ids = torch.tensor([[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])

    # Execute
    targets = token_targets(ids, mask, [3, 2])

    # Assert: position t is scored on token t+1, from the first target token to the last real one
    assert targets.tolist() == [
        [IGNORE, IGNORE, 13, 14, 15, IGNORE],
        [IGNORE, 22, 23, IGNORE, IGNORE, IGNORE],
    ]


def test_an_empty_prompt_scores_from_the_second_token():
    targets = token_targets(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long), [0])
    assert targets.tolist() == [[6, 7, IGNORE]]


def test_loss_gradient_reaches_target_positions_only():
    # Arrange
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 6))
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    targets = token_targets(ids, mask, [3, 2])
    logits = torch.randn(2, 6, 50, requires_grad=True)

    # Execute
    lm_loss(logits, targets).backward()

    # Assert
    assert logits.grad is not None
    touched = logits.grad.abs().sum(-1) > 0  # (B, T)
    assert touched.tolist() == (targets != IGNORE).tolist()


def test_encoding_keeps_the_instruction_and_the_target_when_truncating():
    # Arrange
    tokenizer = tiny_tokenizer(512)
    long_text = " ".join(["the film"] * 20)
    dataset = data_mod.TextDataset((long_text, "good film"), np.array([1, 0]), ("negative", "positive"))
    templates = Templates(prompt="{text} was", target=" {label}")

    # Execute
    encoded = encode_lm(tokenizer, dataset, 8, templates, ("bad", "good"))

    # Assert
    vocab = tokenizer.get_vocab()
    first, second = encoded.ids
    assert len(first) == 8 and first[-2:] == (vocab["was"], vocab["good"])  # end of prompt, then the target
    assert encoded.prompt_lengths is not None and encoded.prompt_lengths.tolist() == [7, 3]
    assert second == (vocab["good"], vocab["film"], vocab["was"], vocab["bad"])


def test_verbalizer_accuracy_is_read_at_the_first_target_token():
    # Arrange: 2 rows; class words are tokens 7 and 9; row 0's truth is 9, row 1's is 7
    targets = torch.tensor([[IGNORE, 9, IGNORE], [IGNORE, IGNORE, 7]])
    logits = torch.zeros(2, 3, 12)
    logits[0, 1, 9] = 5.0  # right
    logits[1, 2, 9] = 5.0  # wrong: prefers 9 where 7 is the truth
    logits[1, 1, 7] = 9.0  # a position that is not scored must not count

    # Execute
    tally = LmTally()
    tally.add(logits, targets, (7, 9))

    # Assert
    scores = tally.metrics()
    assert tally.tokens == 2 and scores["accuracy"] == 0.5
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]))


def test_token_targets_are_checked_on_the_wire():
    # Arrange
    limits = wire.ChunkLimits(vocab_size=10, token_labels=True)
    good = wire.Chunk(np.zeros((1, 3, 4), np.float32), np.ones((1, 3), np.int8), np.array([[IGNORE, 3, 9]]))
    outside = wire.Chunk(good.inputs, good.mask, np.array([[IGNORE, 3, 10]]))
    classes = wire.Chunk(good.inputs, good.mask, np.array([1]))

    def problems(chunk):
        return wire.decode_chunks(wire.encode_chunks([chunk], wire.ACTIVATIONS_KIND), "activations", limits=limits)[1]

    # Assert
    assert problems(good) == []
    assert "token targets 3..10 outside [0, 10)" in problems(outside)[0]
    assert "expected (rows, tokens) token targets" in problems(classes)[0]


def test_config_refuses_a_classifier_head_and_bad_templates():
    with pytest.raises(ValueError, match="needs model.head='lm'"):
        load_config({"config": "test", "data.objective": "causal-lm"})
    with pytest.raises(ValueError, match=r"uses \['sentiment'\]"):
        load_config({"config": "test", **LM, "data.objective": "causal-lm", "data.prompt": "{sentiment}"})
    assert templates_for("guardian-headlines", "", "") == Templates("Headline:", " {text}")


def test_guardian_headlines_ship_offline():
    headlines = data_mod.load_dataset("guardian-headlines")
    assert 3900 < len(headlines) <= 4080 and len(set(headlines.texts)) == len(headlines)
    assert headlines.label_names == ("headline",) and not headlines.labels.any()


def test_the_device_data_cache_keeps_where_targets_start(tmp_path):
    # Arrange
    encoded = data_mod.Encoded(((1, 2, 3), (4, 5)), np.array([0, 1]), np.array([2, 1]))

    # Execute
    with open(tmp_path / "x.npz", "wb") as handle:
        _write_encoded(handle, encoded)
    again = _read_encoded(tmp_path / "x.npz")

    # Assert
    assert again is not None and again.ids == encoded.ids
    assert again.prompt_lengths is not None and again.prompt_lengths.tolist() == [2, 1]


@pytest.mark.parametrize("policy", ["split", "local", "centralized", "threshold"])
def test_causal_lm_runs_learn_in_every_mode(tmp_path, policy):
    # Execute: a tiny GPT-2 learns to continue "<words>" with " good" or " bad"
    run_dir = tmp_path / policy
    overrides = {"config": "test", "run.run-dir": str(run_dir), **LM, "data.objective": "causal-lm"}
    summary = run_inprocess({**overrides, "strategy.policy": policy}, num_nodes=4)
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    # Assert: the held-out loss on target tokens falls, and perplexity is its exponential
    assert summary["status"] == "completed"
    assert rounds[-1]["eval-loss"] < rounds[0]["eval-loss"] - 0.1
    assert rounds[-1]["eval-perplexity"] == pytest.approx(math.exp(rounds[-1]["eval-loss"]))
    assert summary["final-eval-perplexity"] == rounds[-1]["eval-perplexity"]


@pytest.mark.parametrize("source", sorted(BUILT_IN_LABELS))
def test_devices_know_the_class_names_of_every_built_in_source(source):
    # A device maps labels without loading the run's dataset: the names must be the dataset's own.
    assert BUILT_IN_LABELS[source] == data_mod.load_dataset(source).label_names


def test_accuracy_reads_classes_only_when_the_target_is_the_class_word():
    # Arrange
    tokenizer = tiny_tokenizer(512)
    lm = {"config": "test", **LM, "data.objective": "causal-lm"}

    # Execute
    instruction = job_verbalizer(tokenizer, load_config(lm), ("negative", "positive"))
    continuation = job_verbalizer(tokenizer, load_config({**lm, "data.target": " {text}"}), ("negative", "positive"))
    one_class = job_verbalizer(tokenizer, load_config(lm), ("headline",))

    # Assert: the other two score next tokens (a verbalizer would judge nothing: accuracy 0)
    vocab = tokenizer.get_vocab()
    assert instruction == (vocab["bad"], vocab["good"])
    assert continuation is None and one_class is None
