"""Split prefix model against the unsplit Hugging Face forward and PEFT."""

import copy

import peft
import pytest
import torch
from transformers import BertForSequenceClassification, DynamicCache

from flower_app.model.loading import build_random
from flower_app.model.split_model import SplitSpec, get_state, initial_prefix, pool, set_state, split

FAMILIES = ["bert", "gpt2", "llama"]


def _spec(family: str, prefix_length: int, pooling: str | None = None) -> SplitSpec:
    if family == "bert":
        return SplitSpec(split_layer=2, prefix_length=prefix_length, head="classifier", pooling=pooling or "mean")
    return SplitSpec(split_layer=2, prefix_length=prefix_length, head="lm", pooling="last")


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 512, (3, 7), generator=generator)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0  # one right-padded row
    return ids, mask


def _cache_from(prefix, config, batch):
    """An HF DynamicCache pre-filled with the prefix: how HF itself prepends key/values."""
    cache = DynamicCache(config=config)
    for layer, kv in sorted(prefix.items()):
        cache.update(kv[0].expand(batch, -1, -1, -1), kv[1].expand(batch, -1, -1, -1), layer)
    return cache


def test_empty_prefix_bert_equals_hf_sequence_classification():
    # Prepare
    model, _ = build_random("bert", seed=0)
    reference = BertForSequenceClassification(model.config).eval()
    reference.bert.load_state_dict(model.state_dict())
    client, server = split(copy.deepcopy(model), _spec("bert", 0, pooling="pooler"), {})
    reference.classifier.load_state_dict(server.head.state_dict())
    ids, mask = _batch()

    # Execute
    logits = server(client(ids, mask), mask)
    expected = reference(input_ids=ids, attention_mask=mask).logits

    # Assert
    assert torch.equal(logits, expected)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_empty_prefix_decoder_equals_hf_lm_logits(family):
    # Prepare
    model, _ = build_random(family, seed=0)
    reference = copy.deepcopy(model)
    client, server = split(model, _spec(family, 0), {})
    ids, mask = _batch()

    # Execute
    logits = server(client(ids, mask), mask)
    expected = reference(input_ids=ids, attention_mask=mask).logits

    # Assert: padded positions are don't-cares
    assert torch.equal(logits[mask.bool()], expected[mask.bool()])


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_equals_hf_forward_with_prefilled_cache(family):
    # Prepare
    model, _ = build_random(family, seed=0)
    reference = copy.deepcopy(model)
    prefix = initial_prefix(model, family, prefix_length=4, seed=1, vocab_size=512)
    client, server = split(model, _spec(family, 4), prefix)
    ids, mask = _batch()
    full_mask = torch.cat([torch.ones(3, 4, dtype=torch.long), mask], dim=1)

    # Execute
    logits = server(client(ids, mask), mask)
    out = reference(input_ids=ids, attention_mask=full_mask, past_key_values=_cache_from(prefix, reference.config, 3))

    # Assert: the same kernels on the same numbers, so bit for bit (a tolerance would let a
    # prefix scaled by 1.001 through)
    if family == "bert":
        expected = server.head(pool(out.last_hidden_state, mask, "mean", None))
        assert torch.equal(logits, expected)
    else:
        assert torch.equal(logits[mask.bool()], out.logits[mask.bool()])


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_equals_peft_prefix_tuning(family):
    # Prepare: PEFT's prefix tuning on the unsplit model, then the same values in the split one
    model, _ = build_random(family, seed=0)
    task = peft.TaskType.FEATURE_EXTRACTION if family == "bert" else peft.TaskType.CAUSAL_LM
    peft_model = peft.get_peft_model(
        copy.deepcopy(model), peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=4)
    )
    with torch.no_grad():  # PEFT starts from N(0, 1); move it so the test sees real values
        peft_model.prompt_encoder.default.embedding.weight.mul_(0.5).add_(0.1)
    cache = peft_model.get_prompt(batch_size=1)
    prefix = {i: torch.stack([layer.keys[0], layer.values[0]]).detach() for i, layer in enumerate(cache.layers)}
    client, server = split(model, _spec(family, 4), prefix)
    ids, mask = _batch()

    # Execute
    logits = server(client(ids, mask), mask)
    out = peft_model(input_ids=ids, attention_mask=mask)

    # Assert: the same kernels on the same numbers, so bit for bit (a tolerance would let a
    # prefix scaled by 1.001 through)
    if family == "bert":
        expected = server.head(pool(out.last_hidden_state, mask, "mean", None))
        assert torch.equal(logits, expected)
    else:
        assert torch.equal(logits[mask.bool()], out.logits[mask.bool()])


def _loss(family, logits, mask):
    # Decoder logits at padded positions are don't-cares: leave them out of the loss.
    return (logits if family == "bert" else logits[mask.bool()]).pow(2).mean()


@pytest.mark.parametrize("family", FAMILIES)
def test_boundary_gradients_equal_one_unsplit_graph(family):
    # Prepare
    model, _ = build_random(family, seed=0)
    reference = copy.deepcopy(model)
    prefix = initial_prefix(model, family, prefix_length=4, seed=1, vocab_size=512)
    client, server = split(model, _spec(family, 4), prefix)
    ids, mask = _batch()
    full_mask = torch.cat([torch.ones(3, 4, dtype=torch.long), mask], dim=1)
    leaves = {i: kv.clone().requires_grad_(True) for i, kv in prefix.items()}

    # Execute: split backward (server -> boundary gradient -> client) ...
    boundary = client(ids, mask)
    sent = boundary.detach().requires_grad_(True)
    _loss(family, server(sent, mask), mask).backward()
    boundary.backward(sent.grad)
    # ... and one graph through the unsplit HF model
    out = reference(input_ids=ids, attention_mask=full_mask, past_key_values=_cache_from(leaves, reference.config, 3))
    if family == "bert":
        unsplit = server.head(pool(out.last_hidden_state, mask, "mean", None))
    else:
        unsplit = out.logits
    _loss(family, unsplit, mask).backward()

    # Assert: the same kernels on the same numbers, so bit for bit
    for i in range(4):
        part = client if i < 2 else server
        got = part.stack.prefix[str(i)].grad
        assert torch.equal(got, leaves[i].grad), f"layer {i}"


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_weights_bit_identical_after_a_step(family):
    # Prepare
    model, _ = build_random(family, seed=0)
    prefix = initial_prefix(model, family, prefix_length=4, seed=1, vocab_size=512)
    client, server = split(model, _spec(family, 4), prefix)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for part in (client, server) for p in part.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=0.1)
    ids, mask = _batch()
    before = get_state(client)

    # Execute
    server(client(ids, mask), mask).float().pow(2).mean().backward()
    optimizer.step()

    # Assert
    for name, param in model.named_parameters():
        assert param.grad is None, name
        assert torch.equal(param, frozen[name]), name
    assert not all(torch.equal(torch.as_tensor(v), torch.as_tensor(get_state(client)[k])) for k, v in before.items())


def test_state_round_trip_and_shape_check():
    # Prepare
    model, _ = build_random("bert", seed=0)
    prefix = initial_prefix(model, "bert", prefix_length=4, seed=1, vocab_size=512)
    _, server = split(model, _spec("bert", 4), prefix)
    state = get_state(server)

    # Execute
    state["prefix.3"] = state["prefix.3"] + 1.0
    set_state(server, state)

    # Assert
    assert sorted(state) == ["head.bias", "head.weight", "prefix.2", "prefix.3"]
    assert (get_state(server)["prefix.3"] == state["prefix.3"]).all()
    with pytest.raises(ValueError, match="prefix.2"):
        set_state(server, {**state, "prefix.2": state["prefix.2"][:, :, :2]})


def test_split_layer_out_of_range_names_the_setting():
    model, _ = build_random("gpt2", seed=0)
    with pytest.raises(ValueError, match="split-layer"):
        split(model, SplitSpec(split_layer=4, head="lm", pooling="last"), {})
