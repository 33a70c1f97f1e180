"""Boundary tensors in int8: one scale per token vector, packed beside its values.

A token's vector ``x`` of ``H`` float values becomes ``H`` int8 values ``round(x / s)``
with ``s = max|x| / 127``, followed by ``s`` itself as 4 bytes (float32): ``(..., H)``
float becomes ``(..., H + 4)`` int8, about a quarter of float32's bytes. One array per
chunk keeps the wire's record layout (``act.i``, ``grad.i``); the receiver unpacks it
before any other check. Each value comes back within ``s / 2`` of what was sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

SCALE_BYTES = 4  # a float32 scale per token vector
LEVELS = 127  # symmetric: -127..127, so 0 stays exact and the sign is free


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


def to_wire_dtype(values: npt.ArrayLike, dtype: str) -> npt.NDArray[Any]:
    """A boundary tensor as it crosses the split: float32, float16, or int8 packed (from any of them)."""
    array = np.asarray(values)
    if array.dtype == np.int8:
        array = dequantize_int8(array)
    if dtype == "int8":
        return quantize_int8(array)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"wire dtype {dtype!r} must be float32, float16 or int8")
    return array.astype(np.float16 if dtype == "float16" else np.float32, copy=False)


def packed_width(hidden: int) -> int:
    """Last dimension of a packed ``hidden``-wide vector."""
    return hidden + SCALE_BYTES
