"""What every wire codec is: a name (the tag), its bytes, and a checked encode/decode pair.

A boundary tensor (activations going up, gradients coming down) crosses the split as one
array per minibatch, ``(..., H)`` floats encoded by the round's codec. The codec's name
travels beside the arrays (:data:`strategies.wire.names.CODEC`); the receiver decodes by
that name and never by the array's numpy dtype, so two formats that share a dtype (int4
packing and bfloat16 bits both need unsigned integers) stay apart.

Bytes on the wire per ``H``-wide vector: ``H * bytes_per_value + vector_overhead``
(:meth:`WireCodec.vector_bytes`), what the cost model plans with.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt


class WireCodec(ABC):
    """One way of sending ``(..., H)`` float boundary tensors.

    Attributes
    ----------
    name : str
        The tag a record carries and the choice of ``train.activation-dtype``.
    wire_dtype : numpy.dtype
        The dtype of the encoded array (checked on decode, never used to pick a codec).
    bytes_per_value : float
        Wire bytes per float value.
    vector_overhead : int
        Wire bytes per ``H``-wide vector beside its values (a packed scale).
    """

    name: ClassVar[str]
    wire_dtype: ClassVar[np.dtype[Any]]
    bytes_per_value: ClassVar[float]
    vector_overhead: ClassVar[int] = 0

    def vector_bytes(self, hidden: int) -> float:
        """Wire bytes of one ``hidden``-wide vector."""
        return hidden * self.bytes_per_value + self.vector_overhead

    def wire_width(self, hidden: int) -> int:
        """Last dimension of the encoded array of ``hidden``-wide vectors."""
        return int(self.vector_bytes(hidden) // self.wire_dtype.itemsize)

    def encode(self, values: npt.ArrayLike) -> npt.NDArray[Any]:
        """``(..., H)`` floats as the array that crosses the wire; ValueError when they cannot be sent."""
        return self._encode(np.asarray(values, dtype=np.float32))

    def decode(self, array: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """``(..., H)`` float32 of an encoded array; ValueError naming what is wrong with it."""
        array = np.asarray(array)
        if array.dtype != self.wire_dtype:
            raise ValueError(f"{self.name} boundary tensors travel as {self.wire_dtype}, got {array.dtype}")
        return self._decode(array)

    @abstractmethod
    def _encode(self, values: npt.NDArray[np.float32]) -> npt.NDArray[Any]: ...

    @abstractmethod
    def _decode(self, array: npt.NDArray[Any]) -> npt.NDArray[np.float32]: ...

    def __repr__(self) -> str:
        return f"<wire codec {self.name}>"
