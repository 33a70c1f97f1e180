"""int4 boundary tensors: two values a byte and a 4-byte scale per token vector, about an eighth of float32.

The int8 scheme (:mod:`.scaled`) with ``s = max|x| / 7``; each value ``q`` in -7..7 is stored
as the nibble ``q + 8`` (1..15; 0 never occurs, so a zeroed buffer is caught), the even
index in the low nibble, two to a byte, then the scale: ``(..., H)`` float becomes
``(..., H / 2 + 4)`` uint8 (``H`` even). Sixteen levels per token vector are a coarse grid:
int4 is the lossy mode that buys the smallest uplink with training noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from strategies.wire.codecs.base import WireCodec
from strategies.wire.codecs.scaled import SCALE_BYTES, levels_and_scale, split_scale

INT4_LEVELS = 7  # symmetric: -7..7 in a nibble, stored as 1..15


def quantize_int4(values: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """``(..., H)`` floats (``H`` even) as ``(..., H / 2 + 4)`` uint8: nibble pairs, then the row's scale."""
    x = np.asarray(values, dtype=np.float32)
    if x.ndim and x.shape[-1] % 2:
        raise ValueError(f"int4 packing needs vectors of even width, got shape {x.shape}")
    quantized, scale = levels_and_scale(x, INT4_LEVELS, "int4")
    nibbles = (quantized + 8).astype(np.uint8)  # 1..15
    pairs = nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)  # (..., H / 2)
    return np.concatenate([pairs, scale.view(np.uint8)], axis=-1)


def dequantize_int4(packed: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """The floats of :func:`quantize_int4`'s output; ValueError on anything else."""
    array = np.asarray(packed)
    if array.dtype != np.uint8:
        raise ValueError(f"not int4-packed vectors: dtype {array.dtype}, shape {array.shape}")
    pairs, scale = split_scale(array, "int4")
    low, high = pairs & 0x0F, pairs >> 4
    if not ((low > 0).all() and (high > 0).all()):
        raise ValueError("int4-packed values outside -7..7 (a zero nibble)")
    nibbles = np.stack([low, high], axis=-1).reshape(*pairs.shape[:-1], 2 * pairs.shape[-1])
    return (nibbles.astype(np.float32) - 8.0) * scale


class Int4(WireCodec):
    name = "int4"
    wire_dtype = np.dtype(np.uint8)
    bytes_per_value = 0.5
    vector_overhead = SCALE_BYTES

    def _encode(self, values: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        return quantize_int4(values)

    def _decode(self, array: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        return dequantize_int4(array)


CODEC = Int4()
