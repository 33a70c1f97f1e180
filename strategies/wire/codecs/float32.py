"""float32 boundary tensors: what the model computes, sent as is (4 bytes a value, lossless)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from strategies.wire.codecs.base import WireCodec


class Float32(WireCodec):
    name = "float32"
    wire_dtype = np.dtype(np.float32)
    bytes_per_value = 4.0

    def _encode(self, values: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        return values

    def _decode(self, array: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        return array


CODEC = Float32()
