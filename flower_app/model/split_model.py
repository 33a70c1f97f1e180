"""Split transformer with hand-written prefix tuning.

The pretrained model is cut after layer ``k``: a :class:`ClientPart` holds the
embeddings, the lower ``k`` layers and their prefix; a :class:`ServerPart` holds
the upper layers, the final norm, the output head and their prefix. Every
pretrained weight is frozen; only prefix key/values (and the classification
head, when there is one) are trainable.

The prefix is injected through :class:`PrefixCache`, a duck-typed stand-in for
a Hugging Face cache. In transformers 5.x the attention modules of BERT, GPT-2
and Llama all call ``past_key_values.update(key, value, layer_idx)`` and attend
to what it returns, so prepending trainable key/values there reuses each
layer's own projections, rotary embedding, norms and MLP unchanged. PEFT's
prefix tuning cannot be used here: it hands one cache for *all* layers to one
model's forward, which a split model does not have.

Positions follow the Hugging Face cache convention that PEFT relies on too:
the ``P`` prefix slots occupy positions ``0..P-1`` and the real tokens
``P..P+T-1``. With ``P = 0`` the split forward is the unsplit forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from strategies.wire import names as wire

if TYPE_CHECKING:
    from transformers import PreTrainedModel

FAMILIES = ("bert", "gpt2", "llama")
HEADS = ("classifier", "lm")
POOLINGS = ("pooler", "mean", "last")
TOKEN_TABLES = {"bert": "word_embeddings", "gpt2": "0"}  # the token table within a family's embeddings (gpt2: wte, wpe)


@dataclass(frozen=True)
class SplitSpec:
    """Where to cut the model and what to train.

    Parameters
    ----------
    split_layer : int
        Number of transformer layers on the client (``k``).
    prefix_length : int
        Prefix slots per attention layer (``P``); 0 disables the prefix.
    head : str
        ``"classifier"``: a trainable linear layer over a pooled hidden state.
        ``"lm"``: the model's frozen LM head; classification reads the logits of
        the verbalizer tokens at the last real position.
    pooling : str
        For ``head="classifier"``: ``"pooler"`` (BERT's CLS pooler, as in
        ``BertForSequenceClassification``), ``"mean"`` (mean over real tokens,
        what sentence-transformers checkpoints are trained for) or ``"last"``
        (last real token, for decoders).
    num_labels : int
        Classes of the task.
    """

    split_layer: int
    prefix_length: int = 16
    head: str = "classifier"
    pooling: str = "mean"
    num_labels: int = 2


class PrefixCache:
    """Prepend trainable key/values inside each attention layer.

    ``prefix[layer_idx]`` has shape ``(2, n_kv_heads, P, head_dim)``: keys then
    values, already in the layer's head space (and, for Llama, already rotated:
    prefix slots are virtual tokens at positions ``0..P-1``).
    """

    def __init__(self, prefix: Mapping[int, torch.Tensor]):
        self.prefix = prefix

    def update(self, key, value, layer_idx, *args, **kwargs):  # (B, nkv, T, hd)
        kv = self.prefix.get(layer_idx)
        if kv is None or kv.shape[2] == 0:
            return key, value
        batch = key.shape[0]
        prefix_key = kv[0].unsqueeze(0).expand(batch, -1, -1, -1).to(key.dtype)
        prefix_value = kv[1].unsqueeze(0).expand(batch, -1, -1, -1).to(value.dtype)
        return torch.cat([prefix_key, key], dim=2), torch.cat([prefix_value, value], dim=2)


class _RecordingCache:
    """Keeps the key/values each layer computes (used to initialise the prefix)."""

    def __init__(self):
        self.kv: dict[int, torch.Tensor] = {}

    def update(self, key, value, layer_idx, *args, **kwargs):
        self.kv[layer_idx] = torch.stack([key[0], value[0]])  # (2, nkv, T, hd)
        return key, value


def detect_family(config) -> str:
    """Map a Hugging Face config to one of :data:`FAMILIES`."""
    model_type = getattr(config, "model_type", "")
    for family in FAMILIES:
        if model_type == family:
            return family
    if model_type in ("roberta", "distilbert"):
        raise ValueError(f"model_type '{model_type}' is not supported yet; supported: {FAMILIES}")
    if model_type in ("mistral", "qwen2", "smollm"):
        return "llama"  # same decoder layer interface
    raise ValueError(f"unsupported model_type '{model_type}'; supported families: {FAMILIES}")


def attention_mask_4d(
    attention_mask: torch.Tensor, prefix_length: int, causal: bool, past_length: int = 0
) -> torch.Tensor:
    """Boolean mask ``(B, 1, T, P+L+T)``: True where a query may attend to a key.

    ``attention_mask`` covers the ``L = past_length`` tokens already in a cache and the
    ``T`` new ones (the Hugging Face convention); the queries are the new tokens.
    """
    batch, total = attention_mask.shape
    length = total - past_length
    prefix_valid = attention_mask.new_ones(batch, prefix_length)
    keys = torch.cat([prefix_valid, attention_mask], dim=1).bool()  # (B, P+L+T)
    allowed = keys[:, None, None, :].expand(batch, 1, length, prefix_length + total)
    if causal:
        query_pos = torch.arange(length, device=attention_mask.device)[:, None] + prefix_length + past_length
        key_pos = torch.arange(prefix_length + total, device=attention_mask.device)[None, :]
        allowed = allowed & (key_pos <= query_pos)[None, None]
    return allowed


class _Stack(nn.Module):
    """A run of consecutive pretrained layers plus the prefix of each."""

    def __init__(
        self,
        family: str,
        layers: nn.ModuleList,
        first: int,
        rotary: nn.Module | None,
        prefix: Mapping[int, torch.Tensor],
    ):
        super().__init__()
        self.family = family
        self.layers = layers
        self.first = first
        self.rotary = rotary
        self.prefix = nn.ParameterDict({str(i): nn.Parameter(t.clone()) for i, t in prefix.items()})

    @property
    def prefix_length(self) -> int:
        return next(iter(self.prefix.values())).shape[2] if len(self.prefix) else 0

    def prefix_tensors(self) -> dict[int, torch.Tensor]:
        return {int(i): p for i, p in self.prefix.items()}

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, cache=None, past_length: int = 0
    ) -> torch.Tensor:
        """``past_length``: tokens already in ``cache`` (``generate.KVCache``); ``attention_mask`` covers them too."""
        prefix_length = self.prefix_length
        cache = cache if cache is not None else PrefixCache(self.prefix_tensors())
        mask = attention_mask_4d(attention_mask, prefix_length, causal=self.family != "bert", past_length=past_length)
        kwargs = {}
        if self.family == "llama":
            assert self.rotary is not None, "a llama stack is built with its rotary embedding"
            positions = torch.arange(hidden.shape[1], device=hidden.device)[None] + prefix_length + past_length
            kwargs = {"position_embeddings": self.rotary(hidden, position_ids=positions), "position_ids": positions}
        for layer in self.layers:
            out = layer(hidden, attention_mask=mask, past_key_values=cache, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


class ClientPart(nn.Module):
    """Embeddings, lower ``k`` layers and their prefix: what a device hosts."""

    def __init__(self, family: str, embeddings: nn.Module, stack: _Stack):
        super().__init__()
        self.family = family
        self.embeddings = embeddings
        self.stack = stack

    def embed(self, input_ids: torch.Tensor, past_length: int = 0) -> torch.Tensor:
        """Token (and, for GPT-2 and BERT, position) embeddings; the first token sits at ``P + past_length``."""
        offset = self.stack.prefix_length + past_length
        if self.family == "bert":
            return self.embeddings(input_ids=input_ids, past_key_values_length=offset)
        if self.family == "gpt2":
            assert isinstance(self.embeddings, nn.ModuleList), "gpt2 embeddings are (wte, wpe)"
            wte, wpe = self.embeddings
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None] + offset
            return wte(input_ids) + wpe(positions)
        return self.embeddings(input_ids)

    @property
    def token_embedding(self) -> torch.Tensor:
        """The frozen input token embedding matrix ``(V, H)`` (BERT's ``word_embeddings``, GPT-2's ``wte``)."""
        table = self.embeddings.get_submodule(TOKEN_TABLES.get(self.family, ""))  # "": Llama's embeddings are the table
        assert isinstance(table, nn.Embedding), f"{self.family} token embeddings are an nn.Embedding"
        return table.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Boundary activations ``(B, T, H)`` for token ids ``(B, T)``."""
        return self.stack(self.embed(input_ids), attention_mask)

    def boundary_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The mask of the boundary activations: a token's activation sits at the token's place."""
        return attention_mask


class ServerPart(nn.Module):
    """Upper layers, final norm, output head and their prefix."""

    def __init__(
        self,
        family: str,
        stack: _Stack,
        final_norm: nn.Module | None,
        pooler: nn.Module | None,
        head: nn.Module,
        spec: SplitSpec,
    ):
        super().__init__()
        self.family = family
        self.stack = stack
        self.final_norm = final_norm
        self.pooler = pooler
        self.head = head
        self.spec = spec

    def forward(self, boundary: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits: ``(B, num_labels)`` for a classifier head, ``(B, T, V)`` for an LM head."""
        return self.head(self.features(boundary, attention_mask))

    def features(self, boundary: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the head reads: the normed last hidden states ``(B, T, H)`` for an LM head, their
        pooling ``(B, H)`` for a classifier. In U-shape mode these go to the device, which runs the head."""
        hidden = self.stack(boundary, attention_mask)
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        if self.spec.head == "lm":
            return hidden
        return pool(hidden, attention_mask, self.spec.pooling, self.pooler)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, pooler: nn.Module | None) -> torch.Tensor:
    """Sequence representation ``(B, H)`` from hidden states ``(B, T, H)``."""
    if pooling == "pooler":
        if pooler is None:
            raise ValueError("pooling='pooler' needs the model's pooler")
        return pooler(hidden)
    if pooling == "mean":
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    last = attention_mask.sum(1).long() - 1  # right padding: last real token
    return hidden[torch.arange(hidden.shape[0]), last]


def initial_prefix(
    model: nn.Module, family: str, prefix_length: int, seed: int, vocab_size: int
) -> dict[int, torch.Tensor]:
    """Prefix initialised from the key/values of random real tokens.

    Zero or Gaussian prefixes dilute every attention row by ``P`` meaningless
    slots at the start; key/values of real tokens keep the pretrained
    activations in range from step one.
    """
    if prefix_length == 0:
        return {}
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000 if vocab_size > 2000 else 1, vocab_size, (1, prefix_length), generator=generator)
    recorder = _RecordingCache()
    layers, embeddings, _, rotary = _parts(_backbone(model, family), family)
    client = ClientPart(family, embeddings, _Stack(family, nn.ModuleList(layers), 0, rotary, {}))
    with torch.no_grad():
        client.stack(client.embed(ids), torch.ones_like(ids), cache=recorder)
    return {i: kv.detach().float() for i, kv in recorder.kv.items()}


def _backbone(model: nn.Module, family: str) -> nn.Module:
    return {"bert": lambda m: m, "gpt2": lambda m: m.transformer, "llama": lambda m: m.model}[family](model)


def split(
    model: PreTrainedModel, spec: SplitSpec, prefix: Mapping[int, torch.Tensor], seed: int = 0
) -> tuple[ClientPart, ServerPart]:
    """Cut a Hugging Face model into a client and a server part.

    ``model`` is a ``BertModel``, ``GPT2LMHeadModel`` or ``LlamaForCausalLM``
    (see :mod:`flower_app.model.loading`). Its weights are frozen in place; the server
    gets its own copy of the LM head because a tied head shares its weight with
    the input embedding, which lives on the client.
    """
    family = detect_family(model.config)
    check_spec(spec, model.config, family)
    model.eval()  # no dropout: a replayed forward must equal the first one
    for param in model.parameters():
        param.requires_grad_(False)
    backbone = _backbone(model, family)
    layers, embeddings, final_norm, rotary = _parts(backbone, family)
    k = spec.split_layer
    lower = {i: p for i, p in prefix.items() if i < k}
    upper = {i: p for i, p in prefix.items() if i >= k}
    client = ClientPart(family, embeddings, _Stack(family, nn.ModuleList(layers[:k]), 0, rotary, lower))
    server_stack = _Stack(family, nn.ModuleList(layers[k:]), k, rotary, upper)
    pooler, head = _head(model, backbone, family, spec, seed)
    server = ServerPart(family, server_stack, final_norm, pooler, head, spec)
    return client, server


def _parts(backbone: Any, family: str) -> tuple[list[nn.Module], nn.Module, nn.Module | None, nn.Module | None]:
    # ``backbone`` is a Hugging Face model whose submodule names depend on the family.
    if family == "bert":
        return list(backbone.encoder.layer), backbone.embeddings, None, None
    if family == "gpt2":
        return list(backbone.h), nn.ModuleList([backbone.wte, backbone.wpe]), backbone.ln_f, None
    return list(backbone.layers), backbone.embed_tokens, backbone.norm, backbone.rotary_emb


def _head(
    model: PreTrainedModel, backbone: nn.Module, family: str, spec: SplitSpec, seed: int
) -> tuple[nn.Module | None, nn.Linear]:
    hidden = model.config.hidden_size
    pooler = getattr(backbone, "pooler", None) if spec.pooling == "pooler" else None
    if spec.head == "lm":
        weight = model.get_output_embeddings().weight
        lm_head = nn.Linear(hidden, weight.shape[0], bias=False)
        lm_head.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        return pooler, lm_head
    generator = torch.Generator().manual_seed(seed)
    classifier = nn.Linear(hidden, spec.num_labels)
    with torch.no_grad():  # BERT's initializer: N(0, 0.02), zero bias
        classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=generator) * 0.02)
        classifier.bias.zero_()
    return pooler, classifier


def check_spec(spec: SplitSpec, config, family: str) -> None:
    """Fail early, naming the setting, when a spec does not fit the model."""
    layers = config.num_hidden_layers
    if not 1 <= spec.split_layer < layers:
        raise ValueError(
            f"model.split-layer={spec.split_layer} must be in [1, {layers - 1}] for a {layers}-layer model"
        )
    if spec.prefix_length < 0:
        raise ValueError(f"model.prefix-length={spec.prefix_length} must be >= 0")
    if spec.head not in HEADS:
        raise ValueError(f"model.head='{spec.head}' must be one of {HEADS}")
    if spec.pooling not in POOLINGS:
        raise ValueError(f"model.pooling='{spec.pooling}' must be one of {POOLINGS}")
    if spec.head == "lm" and family == "bert":
        raise ValueError("model.head='lm' needs a decoder (gpt2/llama); use 'classifier' for BERT")
    if spec.pooling == "pooler" and family != "bert":
        raise ValueError("model.pooling='pooler' exists only for BERT; use 'last' or 'mean'")


# --- trainable state <-> numpy ------------------------------------------------------------


def trainable_named(part: ClientPart | ServerPart) -> dict[str, nn.Parameter]:
    """Trainable tensors of a part under their wire names (``prefix.<layer>``, ``head.*``).

    A part of another task family names its own (``trainable_named()``, see :mod:`flower_app.tasks.image.model`).
    """
    own = getattr(part, "trainable_named", None)
    if own is not None:
        return own()
    named: dict[str, nn.Parameter] = {}
    for i, param in part.stack.prefix.items():
        named[wire.prefix_key(int(i))] = param
    head = getattr(part, "head", None)
    if head is not None:
        for name, param in head.named_parameters():
            if param.requires_grad:
                named[wire.HEAD + name] = param
    return named


def get_state(part: ClientPart | ServerPart) -> dict[str, npt.NDArray[Any]]:
    return {name: p.detach().cpu().numpy().copy() for name, p in trainable_named(part).items()}


def set_state(part: ClientPart | ServerPart, state: Mapping[str, npt.NDArray[Any]]) -> None:
    """Load the part's trainable tensors from ``state`` (extra keys are ignored)."""
    named = trainable_named(part)
    missing = [name for name in named if name not in state]
    if missing:
        raise KeyError(f"state is missing trainable tensors {missing}")
    load_tensors(named, state)


def load_tensors(named: Mapping[str, nn.Parameter], state: Mapping[str, npt.NDArray[Any]]) -> None:
    """Copy ``state[name]`` into each parameter of ``named``; ValueError naming a misshapen one."""
    with torch.no_grad():
        for name, param in named.items():
            value = torch.as_tensor(np.asarray(state[name]), dtype=param.dtype)
            if value.shape != param.shape:
                raise ValueError(f"'{name}' has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
            param.copy_(value)
