"""Split generation for decoder models (GPT-2, Llama): the text is produced on the server.

The device (:class:`~flower_app.model.split_model.ClientPart`) embeds the prompt and runs the
lower layers; the server (:class:`~flower_app.model.split_model.ServerPart`) runs the upper
layers, the final norm and the LM head, and chooses the next token. Each side keeps
a :class:`KVCache` of its own layers, so after the prompt only one
token crosses per step: its boundary activation ``(1, 1, H)`` goes up, the chosen id
comes back down.

Positions follow :mod:`flower_app.model.split_model`: the ``P`` prefix slots are positions
``0..P-1``, so the ``n``-th real token (from 0) sits at ``P + n``, on both sides.

The Flower exchange of the same loop is in :mod:`flower_app.apps.generate_app`.
``python -m flower_app.generate --prompt "..."`` runs it in one process (:mod:`flower_app.generate.cli`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from flower_app.model.split_model import ClientPart, PrefixCache, ServerPart
from flower_app.privacy.defences import UNGUARDED, ActivationGuard
from strategies.wire.codecs.registry import CODEC_NAMES, wire_codec

DECODERS = ("gpt2", "llama")
KV_PREFIX = "kv."  # device state: one array per lower layer, "kv.<layer>", shape (2, 1, n_kv_heads, L, head_dim)
ID_BYTES = 8  # a chosen id travels as an int64
WIRE_DTYPES = CODEC_NAMES  # the wire codecs of strategies.wire.codecs: float32, float16, int8, int4, ...


class KVCache(PrefixCache):
    """A :class:`PrefixCache` that also keeps the real tokens' key/values, for decoding one token at a time.

    Each ``update`` appends the new key/values of a layer to what that layer saw
    before and returns prefix + past + new, so a step runs only the new token
    through the layers. The prefix is never copied into ``past``: it stays the
    part's own parameter, and a serialised cache holds real tokens only.
    """

    def __init__(self, prefix: Mapping[int, torch.Tensor], past: Mapping[int, torch.Tensor] | None = None):
        super().__init__(prefix)
        self.past: dict[int, torch.Tensor] = dict(past or {})  # layer -> (2, B, nkv, L, hd)

    @property
    def past_length(self) -> int:
        """Real tokens held (the same in every layer between two forwards)."""
        return next(iter(self.past.values())).shape[3] if self.past else 0

    def update(self, key, value, layer_idx, *args, **kwargs):
        old = self.past.get(layer_idx)
        if old is not None:
            key, value = torch.cat([old[0], key], dim=2), torch.cat([old[1], value], dim=2)
        self.past[layer_idx] = torch.stack([key, value])
        return super().update(key, value, layer_idx)


class GenerationError(ValueError):
    """The model or the request cannot generate; the message says why in one line."""


def check_decoder(family: str, head: str) -> None:
    """Refuse what cannot generate: an encoder, or a head without a vocabulary."""
    if family not in DECODERS:
        raise GenerationError(f"generation needs a decoder: gpt2/llama (this model is {family})")
    if head != "lm":
        raise GenerationError(f"generation needs model.head=lm (this job has a {head} head)")


def max_positions(client: ClientPart) -> int | None:
    """Most positions (prefix included) the device's embeddings can address; None when unbounded.

    GPT-2 has a learnt position table, so position ``P + L`` past its end is an index
    error; Llama's rotary embedding extends to any position.
    """
    if client.family == "gpt2":
        assert isinstance(client.embeddings, torch.nn.ModuleList), "gpt2 embeddings are (wte, wpe)"
        wpe = client.embeddings[1]
        assert isinstance(wpe, torch.nn.Embedding)
        return wpe.num_embeddings
    return None


# --- the two halves -------------------------------------------------------------------------


class DeviceSession:
    """The device's half of one generation: its part of the model and the lower layers' cache.

    ``clip``: the run's activation clip (:func:`flower_app.privacy.guard.boundary_clip`), so the
    upper layers see what they were trained on; generation adds no noise.
    """

    def __init__(self, client: ClientPart, cache: KVCache | None = None, clip: ActivationGuard = UNGUARDED):
        check_decoder(client.family, "lm")
        self.client, self.clip = client, clip
        self.cache = cache if cache is not None else KVCache(client.stack.prefix_tensors())

    @property
    def past_length(self) -> int:
        return self.cache.past_length

    def start(self, prompt_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Boundary activations ``(1, T, H)`` of the prompt; fills the cache."""
        ids = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(1, -1)
        if ids.shape[1] == 0:
            raise GenerationError("the prompt has no tokens")
        if self.past_length:
            raise GenerationError("this device session has already started")
        return self._forward(ids)

    def step(self, token_id: int) -> torch.Tensor:
        """Boundary activation ``(1, 1, H)`` of the token the server chose."""
        if not self.past_length:
            raise GenerationError("step before start: the device session holds no prompt")
        return self._forward(torch.tensor([[int(token_id)]], dtype=torch.long))

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        past = self.past_length
        limit = max_positions(self.client)
        end = self.client.stack.prefix_length + past + ids.shape[1]
        if limit is not None and end > limit:
            raise GenerationError(f"prefix + prompt + new tokens = {end} positions, more than the model's {limit}")
        mask = torch.ones(1, past + ids.shape[1], dtype=torch.long)  # one sequence, nothing padded
        with torch.no_grad():
            hidden = self.client.embed(ids, past_length=past)
            return self.clip.shape(self.client.stack(hidden, mask, cache=self.cache, past_length=past))

    def to_state(self) -> dict[str, npt.NDArray[Any]]:
        """The cache as numpy arrays (what a stateless device keeps between messages)."""
        return {f"{KV_PREFIX}{layer}": kv.cpu().numpy() for layer, kv in sorted(self.cache.past.items())}

    @classmethod
    def from_state(
        cls, client: ClientPart, state: Mapping[str, npt.NDArray[Any]], clip: ActivationGuard = UNGUARDED
    ) -> DeviceSession:
        """A session resumed from :meth:`to_state`; other keys of ``state`` are ignored."""
        past = {
            int(k[len(KV_PREFIX) :]): torch.from_numpy(np.array(v)) for k, v in state.items() if k.startswith(KV_PREFIX)
        }
        first = client.stack.first
        expected = set(range(first, first + len(client.stack.layers)))
        if past and set(past) != expected:
            raise GenerationError(f"device state holds layers {sorted(past)}, this device runs {sorted(expected)}")
        if len({kv.shape[3] for kv in past.values()}) > 1:
            raise GenerationError("device state: the layers hold different numbers of tokens")
        return cls(client, KVCache(client.stack.prefix_tensors(), past), clip)


class ServerSession:
    """The server's half: upper layers with their cache, final norm and LM head."""

    def __init__(self, server: ServerPart):
        check_decoder(server.family, server.spec.head)
        self.server = server
        self.cache = KVCache(server.stack.prefix_tensors())

    def start(self, boundary: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(V,)`` after the prompt's boundary activations ``(1, T, H)``."""
        if self.cache.past_length:
            raise GenerationError("this server session has already started")
        return self._forward(boundary)

    def step(self, boundary: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(V,)`` after one more token's boundary activation ``(1, 1, H)``."""
        if boundary.shape[:2] != (1, 1):
            raise GenerationError(f"a step takes one token's activation (1, 1, H), got {tuple(boundary.shape)}")
        return self._forward(boundary)

    def _forward(self, boundary: torch.Tensor) -> torch.Tensor:
        past = self.cache.past_length
        mask = torch.ones(1, past + boundary.shape[1], dtype=torch.long)
        with torch.no_grad():
            hidden = self.server.stack(boundary.float(), mask, cache=self.cache, past_length=past)[:, -1:]
            # The norm and the head act per position: only the last one chooses a token.
            if self.server.final_norm is not None:
                hidden = self.server.final_norm(hidden)
            return self.server.head(hidden)[0, -1]


# --- choosing a token -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """``temperature=0``: greedy; otherwise sample from the top-k / top-p tokens, seeded."""

    temperature: float = 0.0
    top_k: int = 0  # 0: every token
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise GenerationError(f"bad sampling settings {self}: temperature >= 0, top-k >= 0, 0 < top-p <= 1")


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """The next id from logits ``(V,)``."""
    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    scores = logits.float() / sampling.temperature
    if 0 < sampling.top_k < scores.numel():
        kth = torch.topk(scores, sampling.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1:
        ordered, order = torch.sort(scores, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # Drop a token when the more likely ones already reach top-p (the first one always stays).
        dropped = (probs.cumsum(-1) - probs) >= sampling.top_p
        scores = scores.scatter(0, order[dropped], float("-inf"))
    return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator))


# --- the loop -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: list[int]  # the new tokens, the eos included when it ended the text
    boundary_bytes_up: int  # device -> server, prompt included
    ids_bytes_down: int  # server -> device: the chosen ids the device had to embed
    device_s: float  # the device's share (in an exchange: each round trip, transport included)
    server_s: float  # upper layers, head and sampling
    prompt_tokens: int = 0
    prompt_bytes_up: int = 0
    stopped: str = ""  # "eos" or "max-new-tokens"
    prefix_bytes_down: int = 0  # an exchange sends the device its trained prefix once
    prompt_device_s: float = 0.0  # of device_s and server_s: the prompt and the first token
    prompt_server_s: float = 0.0

    def per_token(self) -> dict[str, float]:
        """Bytes and seconds of one step after the prompt (0 when the first token was the last)."""
        steps = len(self.token_ids) - 1
        if steps < 1:
            return {"bytes-up": 0.0, "bytes-down": 0.0, "device-s": 0.0, "server-s": 0.0}
        return {
            "bytes-up": (self.boundary_bytes_up - self.prompt_bytes_up) / steps,
            "bytes-down": self.ids_bytes_down / steps,
            "device-s": (self.device_s - self.prompt_device_s) / steps,
            "server-s": (self.server_s - self.prompt_server_s) / steps,
        }


@dataclass(frozen=True)
class WireBoundary:
    """Boundary activations as they cross the link: the encoded array and its codec's name (the tag)."""

    array: npt.NDArray[Any]  # (1, L, ...): the codec's encoding of (1, L, H) floats
    codec: str


def to_wire(boundary: torch.Tensor | npt.NDArray[Any] | WireBoundary, dtype: str = "float32") -> WireBoundary:
    """The activations as they cross the link: a tensor is encoded by the wire codec ``dtype``; what
    came through an exchange is taken as it arrived, under its tag (a bare array: encoded by ``dtype``)."""
    if isinstance(boundary, WireBoundary):
        return boundary
    if isinstance(boundary, torch.Tensor):
        values = boundary.detach().cpu().float().numpy()
        return WireBoundary(np.ascontiguousarray(wire_codec(dtype).encode(values)), dtype)
    return WireBoundary(np.asarray(boundary), dtype)


def from_wire(boundary: WireBoundary) -> torch.Tensor:
    """The server's view of activations that crossed the link: float32, decoded by their tag's codec.

    An unknown tag or an encoding that cannot be read (a negative or non-finite scale, values out
    of range) is a :class:`GenerationError` naming the problem, before any layer runs on it.
    """
    try:
        return torch.from_numpy(np.ascontiguousarray(wire_codec(boundary.codec).decode(boundary.array)))
    except ValueError as err:
        raise GenerationError(f"boundary activations: {err}") from err


Start = Callable[[], "torch.Tensor | npt.NDArray[Any] | WireBoundary"]
Step = Callable[[int], "torch.Tensor | npt.NDArray[Any] | WireBoundary"]


def decode_loop(
    start: Start,
    step: Step,
    server: ServerSession,
    max_new_tokens: int,
    sampling: Sampling | None = None,
    eos_ids: Sequence[int] = (),
    wire_dtype: str = "float32",
) -> GenerationResult:
    """Run the split decoding loop; the device is two calls (a session, or messages to one).

    ``start()`` returns the prompt's boundary activations, ``step(id)`` those of a chosen
    id. The last chosen id is never sent: nothing would use its activation.
    """
    if max_new_tokens < 1:
        raise GenerationError(f"max-new-tokens={max_new_tokens} must be >= 1")
    if wire_dtype not in WIRE_DTYPES:
        raise GenerationError(f"activation dtype '{wire_dtype}' must be one of {list(WIRE_DTYPES)}")
    sampling = sampling or Sampling()
    generator = torch.Generator().manual_seed(sampling.seed)
    boundary, device_s = _timed(lambda: to_wire(start(), wire_dtype))
    prompt_tokens, prompt_bytes = boundary.array.shape[1], boundary.array.nbytes
    up, down = prompt_bytes, 0
    token, server_s = _timed(lambda: choose(server.start(from_wire(boundary)), sampling, generator))
    prompt_s = (device_s, server_s)
    tokens = [token]
    while token not in eos_ids and len(tokens) < max_new_tokens:
        boundary, spent = _timed(lambda sent: to_wire(step(sent), wire_dtype), token)
        device_s, up, down = device_s + spent, up + boundary.array.nbytes, down + ID_BYTES
        token, spent = _timed(lambda acts: choose(server.step(from_wire(acts)), sampling, generator), boundary)
        server_s += spent
        tokens.append(token)
    stopped = "eos" if token in eos_ids else "max-new-tokens"
    return GenerationResult(
        "",
        tokens,
        up,
        down,
        device_s,
        server_s,
        prompt_tokens=prompt_tokens,
        prompt_bytes_up=prompt_bytes,
        stopped=stopped,
        prompt_device_s=prompt_s[0],
        prompt_server_s=prompt_s[1],
    )


def _timed(call: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    tick = time.perf_counter()
    return call(*args), time.perf_counter() - tick


def eos_ids_of(tokenizer: Any, eos_token_id: int | Sequence[int] | None = None) -> tuple[int, ...]:
    """The ids that end a text: the given ones, else the tokenizer's eos (none: only max-new-tokens stops)."""
    given = eos_token_id if eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
    if given is None:
        return ()
    return (int(given),) if isinstance(given, int) else tuple(int(i) for i in given)


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    ids = list(tokenizer(prompt)["input_ids"])
    if not ids:
        raise GenerationError("the prompt has no tokens")
    return ids


def generate(
    client: ClientPart,
    server: ServerPart,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 32,
    sampling: Sampling | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    wire_dtype: str = "float32",
    clip: ActivationGuard = UNGUARDED,
) -> GenerationResult:
    """Generate a continuation of ``prompt`` with both halves in this process (``clip``: see :class:`DeviceSession`)."""
    device = DeviceSession(client, clip=clip)
    ids = prompt_ids(tokenizer, prompt)
    result = decode_loop(
        lambda: device.start(ids),
        device.step,
        ServerSession(server),
        max_new_tokens,
        sampling,
        eos_ids_of(tokenizer, eos_token_id),
        wire_dtype,
    )
    return with_text(result, tokenizer)


def with_text(result: GenerationResult, tokenizer: Any) -> GenerationResult:
    return replace(result, text=tokenizer.decode(result.token_ids, skip_special_tokens=True))
