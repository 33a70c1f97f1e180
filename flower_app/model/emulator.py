"""A compressed emulator of the server's upper layers, for ``local`` mode.

A client in ``local`` mode cannot reach the server every step, so it trains its
lower-layer prefix end to end against a stand-in for the upper layers: the
server part with most of its layers dropped, as in Offsite-tuning's layer drop
(Xiao et al., 2023). What is kept and what is dropped:

- kept: a subset of the upper layers (evenly spaced, always the last one, whose
  output the head was trained to read), the final norm, the pooler and the
  output head, and the prefix of the kept layers only;
- dropped: every other upper layer and its prefix;
- untouched: the tokenizer, the embeddings and the client's lower layers. The
  client trains its own :class:`~flower_app.model.split_model.ClientPart`, identical to the
  real model's, so the prefix it learns is a prefix of the real lower layers.

The emulator's upper prefix and classifier head are fresh copies of the
server's, trained alongside the lower prefix. The kept layers' prefix adapts to
a stack with holes in it: averaged into the real upper prefix it would pull it
towards a model that does not exist, so it stays on the device. The head goes
up with the lower prefix: it reads the output of the real last layer, and in a
fleet where every client trains locally nobody else trains it. An emulator that
keeps every upper layer is the real model, and then its upper prefix goes up
too (plain FedAvg of the trainable tensors).

Cost: the frozen layer modules are shared with the real server part, not
copied, so the emulator adds only its prefix and head in memory. A forward or
backward through it costs about ``len(kept) / len(server layers)`` of the
server part's layer compute (norm, pooler and head are the same); keeping 2 of
10 upper layers runs the upper half at a fifth of its cost.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import numpy as np
from torch import nn

from flower_app.model.split_model import ServerPart, _Stack
from strategies.wire import names as wire


def server_layers(server: ServerPart) -> tuple[int, ...]:
    """Global indices of the layers a server part holds, in order (``k .. L-1`` for a real one).

    Read from each layer's attention ``layer_idx``: the index :class:`PrefixCache`
    is called with, so it is right for emulators too, whose layers skip indices.
    """
    return tuple(_layer_index(layer) for layer in server.stack.layers)


def _layer_index(layer: nn.Module) -> int:
    for module in layer.modules():
        index = getattr(module, "layer_idx", None)
        if index is not None:
            return int(index)
    raise ValueError(f"{type(layer).__name__} has no attention module with a layer_idx")


def kept_layers(server: ServerPart, keep: int | Sequence[int]) -> tuple[int, ...]:
    """Global indices of the upper layers an emulator keeps.

    Parameters
    ----------
    server : ServerPart
        The real server part.
    keep : int | Sequence[int]
        A count ``m``: ``m`` evenly spaced layers of the server's ``n``, always
        including the last (``m = n`` keeps all). Or explicit global layer
        indices, each one a layer the server holds.
    """
    layers = server_layers(server)
    if isinstance(keep, (int, np.integer)):
        return spaced_layers(layers, int(keep))
    chosen = sorted(set(int(i) for i in keep))
    outside = [i for i in chosen if i not in layers]
    if not chosen or outside:
        raise ValueError(f"emulator keep={list(keep)} must name server layers among {list(layers)}")
    return tuple(chosen)


def spaced_layers(layers: Sequence[int], keep: int) -> tuple[int, ...]:
    """``keep`` evenly spaced entries of ``layers``, always the last (``keep = len(layers)``: all).

    A pure function of the layer list, so a device picks the same layers as the
    server without holding the others.
    """
    if not 1 <= keep <= len(layers):
        raise ValueError(
            f"emulator keep={keep} must be in [1, {len(layers)}] for a server part of {len(layers)} layers"
        )
    # Spaced from the last layer down, so keep=1 is the last layer alone.
    positions = np.round(np.linspace(len(layers) - 1, 0, keep)).astype(int)
    return tuple(layers[p] for p in sorted(set(positions.tolist())))


def build_emulator(server: ServerPart, keep: int | Sequence[int]) -> ServerPart:
    """A server part that runs only the kept upper layers (see the module docstring).

    The layer modules, final norm and pooler are shared with ``server`` (they
    are frozen); the kept layers' prefix and a trainable head are copied into
    new parameters, so training the emulator never touches ``server``. The
    layers keep their global ``layer_idx``, by which :class:`PrefixCache`
    finds each one's prefix (and GPT-2 may scale its attention).
    """
    if not isinstance(server, ServerPart):  # another task family's part drops its own layers
        return server.emulator(spaced_layers(server.stack.indices, keep) if isinstance(keep, int) else tuple(keep))
    kept = kept_layers(server, keep)
    position = {index: p for p, index in enumerate(server_layers(server))}
    layers = nn.ModuleList([server.stack.layers[position[i]] for i in kept])
    prefix = {i: server.stack.prefix[str(i)].detach() for i in kept if str(i) in server.stack.prefix}
    stack = _Stack(server.family, layers, kept[0], server.stack.rotary, prefix)  # _Stack clones the prefix
    head = server.head
    if any(p.requires_grad for p in head.parameters()):
        head = copy.deepcopy(head)  # a trainable classifier; a frozen LM head is shared
    return ServerPart(server.family, stack, server.final_norm, server.pooler, head, server.spec)


def emulator_keys(server_keys: Iterable[str], kept: Iterable[int]) -> tuple[str, ...]:
    """The trainable names an emulator holds: the kept layers' prefix and the head."""
    prefixes = {wire.prefix_key(i) for i in kept}
    return tuple(k for k in server_keys if k in prefixes or wire.is_head(k))
