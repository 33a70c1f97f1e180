"""Checks on a client's reply before it may enter the average.

Every check returns a list of human-readable problems (empty means valid) instead of raising, so
the strategy can drop a bad reply, log why, and carry on. :func:`judge` combines them.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from strategies.wire import names as wire
from strategies.wire.codecs.base import WireCodec


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype a reply's array must have.

    Parameters
    ----------
    shape : tuple[int, ...]
        Exact expected shape.
    dtype : str
        numpy dtype name, e.g. ``"float32"``; aliases such as ``"f4"`` are normalised.
    """

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)


def spec_of(arrays: Mapping[str, np.ndarray]) -> dict[str, ArraySpec]:
    """The specs of known-good arrays, e.g. the global prefix sent out this round."""
    return {name: ArraySpec(a.shape, a.dtype.name) for name, a in arrays.items()}


def validate_arrays(arrays: Mapping[str, object], expected: Mapping[str, ArraySpec]) -> list[str]:
    """Problems with a reply's arrays: missing or extra names, shape, dtype, NaN/Inf values."""
    problems = [f"missing array {name!r}" for name in sorted(set(expected) - set(arrays))]
    problems += [f"unexpected array {name!r}" for name in sorted(set(arrays) - set(expected))]
    for name in sorted(set(arrays) & set(expected)):
        array, spec = arrays[name], expected[name]
        if not isinstance(array, np.ndarray):
            problems.append(f"{name!r} is a {type(array).__name__}, not a numpy array")
            continue
        if array.shape != spec.shape:
            problems.append(f"{name!r} has shape {array.shape}, expected {spec.shape}")
        if array.dtype.name != spec.dtype:
            problems.append(f"{name!r} has dtype {array.dtype.name}, expected {spec.dtype}")
        if np.issubdtype(array.dtype, np.inexact):
            num_nan, num_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
            if num_nan or num_inf:
                problems.append(f"{name!r} has {num_nan} NaN and {num_inf} Inf values")
    return problems


def validate_num_examples(value: object, ceiling: int | None) -> list[str]:
    """Problems with a reported ``num-examples``, which weighs the reply in the average.

    Parameters
    ----------
    value : object
        The reported count; an int, or a float with an integral value.
    ceiling : int | None
        Most the client may claim: what it reported at query time or was assigned. An inflated
        count would let one client outweigh all the others.
    """
    is_float = isinstance(value, (float, np.floating))
    integral_float = is_float and math.isfinite(float(value)) and float(value).is_integer()  # type: ignore[arg-type]
    # bool is an int subclass; True is a wiring bug, not one example.
    if isinstance(value, bool) or not (isinstance(value, (int, np.integer)) or integral_float):
        return [f"num-examples must be an integer, got {value!r} ({type(value).__name__})"]
    count = int(value)  # type: ignore[call-overload]
    if count <= 0:
        return [f"num-examples must be positive, got {count}"]
    if ceiling is not None and count > ceiling:
        return [f"num-examples {count} exceeds the {ceiling} reported or assigned to this client"]
    return []


def validate_metrics(metrics: Mapping[str, object], required: Sequence[str]) -> list[str]:
    """Problems with reply metrics: required names missing, values not finite numbers.

    Every value is checked, required or not, since all of them may be averaged; a list of
    numbers (allowed in a Flower MetricRecord) must hold only finite ones.
    """
    problems = [f"missing metric {name!r}" for name in required if name not in metrics]
    for name in sorted(metrics):
        value = metrics[name]
        values = value if isinstance(value, list) and name not in required else [value]
        if not all(_is_finite_number(v) for v in values):
            problems.append(f"metric {name!r} is not a finite number: {value!r}")
    return problems


def _is_finite_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return math.isfinite(value)


@dataclass(frozen=True)
class Verdict:
    """Whether a reply may enter the average, and if not, every reason why."""

    ok: bool
    reasons: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.ok == bool(self.reasons):
            raise ValueError("a verdict is ok exactly when it has no reasons")


def judge(
    arrays: Mapping[str, object],
    expected: Mapping[str, ArraySpec],
    num_examples: object,
    ceiling: int | None,
    metrics: Mapping[str, object] | None = None,
    required_metrics: Sequence[str] = (),
) -> Verdict:
    """Run every check on one reply.

    Parameters
    ----------
    arrays : Mapping[str, object]
        The reply's arrays by name.
    expected : Mapping[str, ArraySpec]
        What they must look like (see :func:`spec_of`).
    num_examples : object
        The reply's reported data volume.
    ceiling : int | None
        Most ``num_examples`` may be; None skips the bound.
    metrics : Mapping[str, object] | None (default: None)
        The reply's metrics; None when it sent none.
    required_metrics : Sequence[str] (default: ())
        Metric names the reply must carry.
    """
    reasons = validate_arrays(arrays, expected) + validate_num_examples(num_examples, ceiling)
    if metrics is None:
        reasons += [f"missing metric {name!r}" for name in required_metrics]
    else:
        reasons += validate_metrics(metrics, required_metrics)
    return Verdict(ok=not reasons, reasons=tuple(reasons))


def read_upload(
    arrays: Mapping[str, np.ndarray],
    kind: str,
    hidden: int,
    max_rows: int,
    num_examples: object,
    limits: wire.ChunkLimits | None = None,
    codec: WireCodec | None = None,
) -> tuple[list[wire.Chunk], list[str]]:
    """A centralized client's upload, activations decoded to float32, and every problem with it.

    An upload is a chunked record (:func:`strategies.wire.names.decode_chunks`) of token ids
    (kind ``samples``) or ``(rows, T, hidden)`` activations (kind ``activations``, encoded by
    ``codec``; None: float32). Its rows must be no more than the client was asked for, and as
    many as it claims; ``limits`` bounds sequence lengths, labels, token ids and magnitudes.
    """
    chunks, problems = wire.decode_chunks(arrays, kind, hidden=hidden, limits=limits, codec=codec)
    rows = wire.chunk_rows(chunks)
    if rows > max_rows:
        problems.append(f"{rows} rows uploaded, at most {max_rows} were asked for")
    problems += validate_num_examples(num_examples, rows) if not problems else []
    if not problems and num_examples != rows:
        problems.append(f"num-examples {num_examples} != {rows} rows uploaded")
    return chunks, problems
