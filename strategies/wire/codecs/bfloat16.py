"""bfloat16 boundary tensors: float32's range in half its bytes, 8 bits of mantissa.

numpy has no bfloat16, so a value travels as the upper 16 bits of its float32 pattern in a
uint16, rounded to nearest, ties to even: ``(bits + 0x7FFF + lsb) >> 16`` where ``lsb`` is
bit 16 of ``bits``. The receiver shifts them back up, so each value comes back within a
relative ``2**-8`` of what was sent. Non-finite values are refused on both sides: rounding
would carry a large finite value over into infinity, and no boundary tensor is meant to hold one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from strategies.wire.codecs.base import WireCodec

EXPONENT_BITS = np.uint16(0x7F80)  # all ones: an infinity or a NaN


def to_bfloat16_bits(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """The bfloat16 nearest each float32 (ties to even), as its 16 bits."""
    if not np.isfinite(values).all():
        raise ValueError("bfloat16 packing got non-finite values")
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    lsb = (bits >> 16) & 1  # the kept part's last bit decides a tie
    rounded = ((bits + 0x7FFF + lsb) >> 16).astype(np.uint16)
    if ((rounded & EXPONENT_BITS) == EXPONENT_BITS).any():
        raise ValueError("bfloat16 packing: a value rounds beyond bfloat16's range")
    return rounded


def from_bfloat16_bits(bits: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    """float32 of bfloat16 bits; ValueError if any is an infinity or a NaN."""
    if ((bits & EXPONENT_BITS) == EXPONENT_BITS).any():
        raise ValueError("bfloat16 values carry an infinity or a NaN")
    return (bits.astype(np.uint32) << 16).view(np.float32)


class BFloat16(WireCodec):
    name = "bfloat16"
    wire_dtype = np.dtype(np.uint16)
    bytes_per_value = 2.0

    def _encode(self, values: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        return to_bfloat16_bits(values)

    def _decode(self, array: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        return from_bfloat16_bits(array)


CODEC = BFloat16()
