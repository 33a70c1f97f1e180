"""int8 boundary tensors: a byte a value and a 4-byte scale per token vector, about a quarter of float32.

A token's vector ``x`` of ``H`` floats becomes ``H`` int8 values ``round(x / s)`` with
``s = max|x| / 127``, followed by ``s`` as 4 bytes (float32, :mod:`.scaled`): ``(..., H)``
float becomes ``(..., H + 4)`` int8. Each value comes back within ``s / 2``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from strategies.wire.codecs.base import WireCodec
from strategies.wire.codecs.scaled import SCALE_BYTES, levels_and_scale, split_scale

LEVELS = 127  # symmetric: -127..127, so 0 stays exact and the sign is free


def quantize_int8(values: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """``(..., H)`` floats as ``(..., H + 4)`` int8: values, then the row's scale's bytes."""
    quantized, scale = levels_and_scale(np.asarray(values, dtype=np.float32), LEVELS, "int8")
    return np.concatenate([quantized.astype(np.int8), scale.view(np.int8)], axis=-1)


def dequantize_int8(packed: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """The floats of :func:`quantize_int8`'s output; ValueError on anything else."""
    array = np.asarray(packed)
    if array.dtype != np.int8:
        raise ValueError(f"not int8-packed vectors: dtype {array.dtype}, shape {array.shape}")
    quantized, scale = split_scale(array, "int8")
    values = quantized.astype(np.float32)
    if (np.abs(values) > LEVELS).any():
        raise ValueError(f"int8-packed values outside -{LEVELS}..{LEVELS}")
    return values * scale


class Int8(WireCodec):
    name = "int8"
    wire_dtype = np.dtype(np.int8)
    bytes_per_value = 1.0
    vector_overhead = SCALE_BYTES

    def _encode(self, values: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        return quantize_int8(values)

    def _decode(self, array: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        return dequantize_int8(array)


CODEC = Int8()
