"""Boundary tensors in int8 or int4: one scale per token vector, packed beside its values.

int8: a token's vector ``x`` of ``H`` float values becomes ``H`` int8 values ``round(x / s)``
with ``s = max|x| / 127``, followed by ``s`` itself as 4 bytes (float32): ``(..., H)``
float becomes ``(..., H + 4)`` int8, about a quarter of float32's bytes.

int4: the same with ``s = max|x| / 7``; each value ``q`` in -7..7 is stored as the nibble
``q + 8`` (1..15; 0 never occurs, so a zeroed buffer is caught), two to a byte, then the
scale: ``(..., H)`` float becomes ``(..., H / 2 + 4)`` uint8 (``H`` even), about an eighth of
float32's bytes. Sixteen levels per token vector are a coarse grid: int4 is the lossy mode
that buys the smallest uplink with training noise.

One array per chunk keeps the wire's record layout (``act.i``, ``grad.i``); its dtype says
the packing (int8 or uint8), and the receiver unpacks it before any other check. Each value
comes back within ``s / 2`` of what was sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

SCALE_BYTES = 4  # a float32 scale per token vector
LEVELS = 127  # symmetric: -127..127, so 0 stays exact and the sign is free
INT4_LEVELS = 7  # symmetric: -7..7 in a nibble, stored as 1..15


def quantize_int8(values: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """``(..., H)`` floats as ``(..., H + 4)`` int8: values, then the row's scale's bytes."""
    x = np.asarray(values, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"int8 packing needs vectors, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("int8 packing got non-finite values")
    scale = np.abs(x).max(axis=-1, keepdims=True) / LEVELS  # (..., 1)
    safe = np.where(scale > 0, scale, 1.0)  # an all-zero vector stays zero
    quantized = np.clip(np.rint(x / safe), -LEVELS, LEVELS).astype(np.int8)
    scale_bytes = scale.astype(np.float32).view(np.int8)  # (..., 4)
    return np.concatenate([quantized, scale_bytes], axis=-1)


def dequantize_int8(packed: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """The floats of :func:`quantize_int8`'s output; ValueError on anything else."""
    array = np.asarray(packed)
    if array.dtype != np.int8 or array.ndim == 0 or array.shape[-1] <= SCALE_BYTES:
        raise ValueError(f"not int8-packed vectors: dtype {array.dtype}, shape {array.shape}")
    values = array[..., :-SCALE_BYTES].astype(np.float32)
    scale = np.ascontiguousarray(array[..., -SCALE_BYTES:]).view(np.float32)  # (..., 1)
    if not (np.isfinite(scale).all() and (scale >= 0).all()):
        raise ValueError("int8-packed vectors carry a negative or non-finite scale")
    if (np.abs(values) > LEVELS).any():
        raise ValueError(f"int8-packed values outside -{LEVELS}..{LEVELS}")
    return values * scale


def quantize_int4(values: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """``(..., H)`` floats (``H`` even) as ``(..., H / 2 + 4)`` uint8: nibble pairs, then the row's scale."""
    x = np.asarray(values, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] == 0 or x.shape[-1] % 2:
        raise ValueError(f"int4 packing needs vectors of even width, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("int4 packing got non-finite values")
    scale = np.abs(x).max(axis=-1, keepdims=True) / INT4_LEVELS  # (..., 1)
    safe = np.where(scale > 0, scale, 1.0)
    nibbles = (np.clip(np.rint(x / safe), -INT4_LEVELS, INT4_LEVELS) + 8).astype(np.uint8)  # 1..15
    pairs = nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)  # (..., H / 2)
    return np.concatenate([pairs, scale.astype(np.float32).view(np.uint8)], axis=-1)


def dequantize_int4(packed: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """The floats of :func:`quantize_int4`'s output; ValueError on anything else."""
    array = np.asarray(packed)
    if array.dtype != np.uint8 or array.ndim == 0 or array.shape[-1] <= SCALE_BYTES:
        raise ValueError(f"not int4-packed vectors: dtype {array.dtype}, shape {array.shape}")
    pairs = array[..., :-SCALE_BYTES]
    scale = np.ascontiguousarray(array[..., -SCALE_BYTES:]).view(np.float32)  # (..., 1)
    if not (np.isfinite(scale).all() and (scale >= 0).all()):
        raise ValueError("int4-packed vectors carry a negative or non-finite scale")
    low, high = pairs & 0x0F, pairs >> 4
    if not ((low > 0).all() and (high > 0).all()):
        raise ValueError("int4-packed values outside -7..7 (a zero nibble)")
    nibbles = np.stack([low, high], axis=-1).reshape(*pairs.shape[:-1], 2 * pairs.shape[-1])
    return (nibbles.astype(np.float32) - 8.0) * scale


def unpack(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """float32 of an int8- or int4-packed array (by its dtype); any other array as it is."""
    if array.dtype == np.int8:
        return dequantize_int8(array)
    if array.dtype == np.uint8:
        return dequantize_int4(array)
    return array


def to_wire_dtype(values: npt.ArrayLike, dtype: str) -> npt.NDArray[Any]:
    """A boundary tensor as it crosses the split: float32, float16, int8 or int4 packed (from any of them)."""
    array = unpack(np.asarray(values))
    if dtype == "int8":
        return quantize_int8(array)
    if dtype == "int4":
        return quantize_int4(array)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"wire dtype {dtype!r} must be float32, float16, int8 or int4")
    return array.astype(np.float16 if dtype == "float16" else np.float32, copy=False)


def packed_width(hidden: int, dtype: str = "int8") -> int:
    """Last dimension of a packed ``hidden``-wide vector."""
    return (hidden // 2 if dtype == "int4" else hidden) + SCALE_BYTES
