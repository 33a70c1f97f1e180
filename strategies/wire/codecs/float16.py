"""float16 boundary tensors: half of float32's bytes, 11 bits of mantissa, a range up to 65504."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from strategies.wire.codecs.base import WireCodec


class Float16(WireCodec):
    name = "float16"
    wire_dtype = np.dtype(np.float16)
    bytes_per_value = 2.0

    def _encode(self, values: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        return values.astype(np.float16)

    def _decode(self, array: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        return array.astype(np.float32)


CODEC = Float16()
