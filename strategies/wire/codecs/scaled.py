"""What the scaled integer packings share: one float32 scale per token vector, after its values.

A token's vector ``x`` of ``H`` floats is sent as integers ``round(x / s)`` in ``-L..L`` with
``s = max|x| / L``, then ``s`` itself as 4 bytes. Each value comes back within ``s / 2``
of what was sent; ``L`` is the packing's (:mod:`.int8`: 127, :mod:`.int4`: 7).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

SCALE_BYTES = 4  # a float32 scale per token vector


def levels_and_scale(
    x: npt.NDArray[np.float32], levels: int, name: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``(..., H)`` values as integers in ``-levels..levels`` (still float) and their ``(..., 1)`` scales."""
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name} packing needs vectors, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} packing got non-finite values")
    scale = (np.abs(x).max(axis=-1, keepdims=True) / levels).astype(np.float32)  # (..., 1)
    safe = np.where(scale > 0, scale, 1.0)  # an all-zero vector stays zero
    return np.clip(np.rint(x / safe), -levels, levels), scale


def split_scale(array: npt.NDArray[Any], name: str) -> tuple[npt.NDArray[Any], npt.NDArray[np.float32]]:
    """A packed array's value bytes and its ``(..., 1)`` scales; ValueError if a scale cannot be one."""
    if array.ndim == 0 or array.shape[-1] <= SCALE_BYTES:
        raise ValueError(f"not {name}-packed vectors: dtype {array.dtype}, shape {array.shape}")
    scale = np.ascontiguousarray(array[..., -SCALE_BYTES:]).view(np.float32)  # (..., 1)
    if not (np.isfinite(scale).all() and (scale >= 0).all()):
        raise ValueError(f"{name}-packed vectors carry a negative or non-finite scale")
    return array[..., :-SCALE_BYTES], scale
