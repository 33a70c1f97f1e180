"""The wire codecs by name: one registration line each.

A codec's name is the tag its records carry and a choice of ``train.activation-dtype``
and of a probe's optimized mode; the first is the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from strategies.wire.codecs import bfloat16, float16, float32, int4, int8
from strategies.wire.codecs.base import WireCodec

WIRE_CODECS: Mapping[str, WireCodec] = MappingProxyType(
    {
        "float32": float32.CODEC,
        "float16": float16.CODEC,
        "int8": int8.CODEC,
        "int4": int4.CODEC,
        "bfloat16": bfloat16.CODEC,
    }
)

CODEC_NAMES: tuple[str, ...] = tuple(WIRE_CODECS)


def wire_codec(name: str) -> WireCodec:
    """The codec registered as ``name``; ValueError listing the known ones otherwise."""
    try:
        return WIRE_CODECS[name]
    except KeyError:
        raise ValueError(f"unknown wire codec {name!r}: one of {list(CODEC_NAMES)}") from None


def tagged_codec(config: Mapping[str, object] | None, key: str, asked: str) -> WireCodec:
    """The codec a record's ``config[key]`` names, which must be the ``asked`` one.

    ValueError with one reason: no tag, a tag no codec is registered under, or another
    codec than the one asked for (a reply in a mode the round did not ask for is refused).
    """
    tag = None if config is None else config.get(key)
    if tag is None:
        raise ValueError(f"boundary tensors without a {key!r} tag ({asked!r} was asked for)")
    if not isinstance(tag, str) or tag not in WIRE_CODECS:
        raise ValueError(f"boundary tensors tagged {tag!r}: no such wire codec, one of {list(CODEC_NAMES)}")
    if tag != asked:
        raise ValueError(f"boundary tensors tagged {tag!r}, but {asked!r} was asked for")
    return WIRE_CODECS[tag]
