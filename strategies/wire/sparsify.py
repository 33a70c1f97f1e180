"""Top-k sparsified uploads of trainable tensors, with error feedback.

A client that trained a tensor ``w`` from the global ``g`` it received sends, instead
of ``w``, the ``k = ceil(fraction * size)`` largest-magnitude entries of

    a = (w - g) + r                 r: its residual, what earlier rounds did not send

as their flat indices (int64) and values (float32), and keeps the rest as its next
residual ``r' = a - sent`` (error feedback: nothing is lost, only delayed). Over rounds,
``sum(sent) + r == sum(w - g)``. The server rebuilds ``g + sent`` before any check or
defence, so a rebuilt update is judged like a dense one.

Wire layout, in the reply's ``sparse`` record (:data:`strategies.wire.names.SPARSE`):

=================  ==========  ========================================================
array              shape       what
=================  ==========  ========================================================
``<name>:idx``     ``(k,)``    flat indices into the tensor ``<name>``: int64, unique,
                               in ``[0, size)``
``<name>:val``     ``(k,)``    the update's values there: float32, finite
=================  ==========  ========================================================

Bytes: ``12 k`` per tensor instead of ``4 size``, so a fraction below 1/3 sends less.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

Arrays = Mapping[str, npt.NDArray[np.generic]]
INDEX_DTYPE, VALUE_DTYPE = np.dtype(np.int64), np.dtype(np.float32)
INDEX_SUFFIX, VALUE_SUFFIX = ":idx", ":val"


def topk_count(size: int, fraction: float) -> int:
    """Entries sent of a tensor of ``size`` values: ``ceil(fraction * size)``, within ``[1, size]``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top-k fraction {fraction!r} must be in (0, 1]")
    return max(1, min(size, math.ceil(fraction * size))) if size else 0


def top_entries(values: npt.NDArray[np.generic], k: int) -> npt.NDArray[np.int64]:
    """Flat indices of the ``k`` largest magnitudes, ascending; ties go to the lower index."""
    flat = np.abs(np.asarray(values, np.float64).ravel())
    chosen = np.argsort(-flat, kind="stable")[:k]
    return np.sort(chosen).astype(INDEX_DTYPE)


def sparsify(
    trained: Arrays, start: Arrays, residual: Arrays, fraction: float
) -> tuple[dict[str, npt.NDArray[np.generic]], dict[str, npt.NDArray[np.float32]]]:
    """The sparse upload of ``trained`` (started from ``start``) and the residual to keep.

    ``residual`` holds each tensor's unsent part from earlier rounds; a missing name, or
    one of another shape, starts from zero.
    """
    sent: dict[str, npt.NDArray[np.generic]] = {}
    kept: dict[str, npt.NDArray[np.float32]] = {}
    for name, value in trained.items():
        accumulated = np.asarray(value, np.float32) - np.asarray(start[name], np.float32)
        carried = residual.get(name)
        if carried is not None and carried.shape == accumulated.shape:
            accumulated = accumulated + np.asarray(carried, np.float32)
        indices = top_entries(accumulated, topk_count(accumulated.size, fraction))
        values = accumulated.ravel()[indices].astype(VALUE_DTYPE)
        sent[name + INDEX_SUFFIX], sent[name + VALUE_SUFFIX] = indices, values
        left = accumulated.ravel()  # this round's own array: no one else holds it
        left[indices] = 0.0  # exactly what was sent
        kept[name] = left.reshape(accumulated.shape)
    return sent, kept


def rebuild(sparse: Arrays, start: Arrays, fraction: float) -> tuple[dict[str, npt.NDArray[np.generic]], list[str]]:
    """``start + sent`` per tensor of ``start``, and every problem with the sparse record (empty: valid).

    A sparse reply is hostile until checked: it must hold exactly the index and value
    arrays of every tensor in ``start``, each of ``k = ceil(fraction * size)`` entries,
    indices int64, unique and in range, values float32 and finite.
    """
    expected = {name + s for name in start for s in (INDEX_SUFFIX, VALUE_SUFFIX)}
    problems = [f"missing sparse array {n!r}" for n in sorted(expected - set(sparse))]
    problems += [f"unexpected sparse array {n!r}" for n in sorted(set(sparse) - expected)]
    if problems:
        return {}, problems
    dense: dict[str, npt.NDArray[np.generic]] = {}
    for name, base in start.items():
        indices, values = sparse[name + INDEX_SUFFIX], sparse[name + VALUE_SUFFIX]
        problem = entry_problem(indices, values, base.size, topk_count(base.size, fraction))
        if problem:
            problems.append(f"{name!r}: {problem}")
            continue
        flat = np.asarray(base).astype(np.float32).ravel()  # a copy of the global tensor
        flat[indices] += values
        dense[name] = flat.reshape(base.shape).astype(base.dtype)
    return dense, problems


def entry_problem(indices: object, values: object, size: int, k: int) -> str:
    """What is wrong with one tensor's sparse entries ("" when nothing)."""
    if not (isinstance(indices, np.ndarray) and isinstance(values, np.ndarray)):
        return "sparse entries must be numpy arrays"
    if indices.dtype != INDEX_DTYPE or values.dtype != VALUE_DTYPE:
        return f"sparse entries of dtypes {indices.dtype}/{values.dtype}, expected int64/float32"
    if indices.shape != (k,) or values.shape != (k,):
        return f"sparse entries of shapes {indices.shape}/{values.shape}, expected ({k},) each (top {k} of {size})"
    if k and (indices.min() < 0 or indices.max() >= size):
        return f"sparse indices {indices.min()}..{indices.max()} outside [0, {size})"
    if np.unique(indices).size != k:
        return f"{k - np.unique(indices).size} repeated sparse indices"
    if not np.isfinite(values).all():
        return f"{int((~np.isfinite(values)).sum())} non-finite sparse values"
    return ""


def sparse_bytes(sizes: Mapping[str, int], fraction: float) -> int:
    """Payload bytes of a sparse upload of tensors of these sizes."""
    per_entry = INDEX_DTYPE.itemsize + VALUE_DTYPE.itemsize
    return sum(per_entry * topk_count(size, fraction) for size in sizes.values())
