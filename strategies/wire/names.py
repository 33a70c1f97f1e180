"""Everything that crosses the wire: message types, record names, keys, and the chunk layout.

The ServerApp side (:mod:`strategies`) and the ClientApp side (:mod:`flower_app`) both
import these names, so a rename happens here and nowhere else. The per-minibatch
records (a split forward reply, a centralized upload, the boundary gradients) share
one layout, written by :func:`encode_chunks` and read back, checked, by
:func:`decode_chunks`:

=============  ==========================  ===============================================
array          shape                       what
=============  ==========================  ===============================================
``act.i``      ``(B_i, T_i, hidden)``      boundary activations of chunk ``i`` (wire codec)
``ids.i``      ``(B_i, T_i)``              token ids of chunk ``i`` (integer; uploads only)
``mask.i``     ``(B_i, T_i)``              attention mask, right-padded (integer)
``label.i``    ``(B_i,)``                  class labels (integer)
``grad.i``     ``(B_i, T_i, hidden)``      boundary gradient of minibatch ``i`` (wire codec)
=============  ==========================  ===============================================

Boundary tensors (``act.i``, ``grad.i``) are encoded by a wire codec
(:mod:`strategies.wire.codecs`); the message that carries them names it under
:data:`CODEC` in its config record, and the receiver decodes by that name. Its last
dimension is the codec's wire width of ``hidden``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from strategies.wire.codecs.base import WireCodec
from strategies.wire.codecs.registry import wire_codec

# Message types (Flower routes "<category>.<action>" to the matching handler).
QUERY = "query"
TRAIN = "train"
SPLIT_FORWARD = "train.split_forward"
SPLIT_BACKWARD = "train.split_backward"
UPLOAD = "train.upload"
LOCAL = "train.local"
USHAPE_FORWARD = "train.ushape_forward"
USHAPE_TOP = "train.ushape_top"
USHAPE_BACKWARD = "train.ushape_backward"
EVALUATE = "evaluate"

# Training modes, ordered from the most to the least expensive for the client: `local` runs
# the emulator, `ushape` the lower layers and the head, `split` only the lower layers,
# `centralized` uploads once and trains nothing.
# What each one sends and does is its entry of strategies.modes.registry.TRAINING_MODES.
LOCAL_MODE, USHAPE_MODE, SPLIT_MODE, CENTRALIZED_MODE = "local", "ushape", "split", "centralized"
MODES = (LOCAL_MODE, USHAPE_MODE, SPLIT_MODE, CENTRALIZED_MODE)

# What a centralized client uploads once: token ids of its samples, or lower-layer activations.
SAMPLES, ACTIVATIONS_KIND = "samples", "activations"
UPLOAD_KINDS = (ACTIVATIONS_KIND, SAMPLES)

# Record names inside a message's RecordDict.
ARRAYS = "arrays"  # trainable tensors (global prefix down, updated prefix up)
ACTIVATIONS = "activations"  # boundary activations, masks and labels of a batch plan
GRADIENTS = "gradients"  # boundary gradients, one per planned minibatch
TOP = "top"  # U-shape: the server's top hidden states, one per planned minibatch (grad.i names them)
CONFIG = "config"
METRICS = "metrics"
PROFILE = "profile"  # what a client reports about itself in a query reply
UPLOAD_RECORD = "upload"  # centralized mode: a client's samples or activations, in chunks
SPARSE = "sparse"  # top-k entries of the updated tensors, instead of ``arrays`` (strategies.wire.sparsify)

# Names of trainable tensors: ``prefix.<layer>`` (key/values of one attention layer), ``head.*``.
PREFIX = "prefix."
HEAD = "head."

# Config keys (server -> client), beside the plan's (:class:`TrainPlan`).
MODE = "mode"
GROUP = "group"
POLICY = "policy"
THRESHOLD_FLOPS = "threshold-flops"  # the capability threshold of a threshold policy, FLOP/s
ALLOC_PREFIX = "alloc-"  # alloc-tx-power-w, alloc-cpu-hz, alloc-energy-budget-j
OVER_BUDGET = "alloc-over-budget"  # the mode does not fit the energy budget: run at full speed
REQ_PREFIX = "req-"  # the training requirement, one key per field (req-min-samples, ...)

# Failure keys (client -> server, in the config record of a reply that carries no tensors).
FAILURE_CAUSE = "failure-cause"
FAILURE_NEEDED = "failure-needed"
FAILURE_AVAILABLE = "failure-available"
FAILURE_DETAIL = "failure-detail"

# The wire codec of the boundary tensors a message carries (both ways), by its registry name.
CODEC = "wire-codec"

# Profile / metric keys (client -> server).
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NUM_EXAMPLES = "num-examples"  # data volume behind a contribution: the aggregation weight
NUM_AVAILABLE = "num-available"  # samples a client holds (the ceiling for num-examples)
TRAIN_LOSS = "train-loss"
LOSS = "loss"
ACCURACY = "accuracy"
STEPS_DONE = "steps-done"  # minibatches trained before the time limit
LOCAL_PREFIX = "local-"  # local-accuracy, local-loss: the client's own evaluation


@dataclass(frozen=True)
class TrainPlan:
    """What every train message tells a client about its round (beside its requirement and group).

    Parameters
    ----------
    server_round : int
        The round, from 1.
    seed : int
        Seed of this client's batch plan in this round (both sides of the split draw it).
    steps, batch_size : int
        Minibatches to train and samples per minibatch.
    lr, head_lr : float
        Adam learning rates of the prefix and of a trainable head.
    activation_dtype : str
        Dtype of boundary activations and gradients on the wire.
    emulator_layers, local_eval_size : int
        Local mode: upper layers the emulator keeps (0: all); samples held back for the threshold check.
    upload_kind : str
        Centralized mode: ``"activations"`` or ``"samples"``.
    upload_rows : int
        Centralized mode: samples to upload.
    upload_topk : float
        Split and local mode: fraction of each trained tensor's entries sent back (1: dense).
    replay_lr_scale : float
        Split mode: the replayed steps' learning rate is ``lr`` times this.
    """

    server_round: int
    seed: int
    steps: int
    batch_size: int
    lr: float
    head_lr: float
    activation_dtype: str
    emulator_layers: int
    local_eval_size: int
    upload_kind: str
    upload_rows: int
    upload_topk: float = 1.0
    replay_lr_scale: float = 1.0

    def to_config(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> TrainPlan:
        """Read the plan of a train message; a missing or mistyped key raises, naming it."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in config:
                raise KeyError(f"train message config has no {key!r}")
            value = config[key]
            try:
                values[f.name] = str(value) if f.type == "str" else float(value) if f.type == "float" else as_int(value)  # type: ignore[arg-type]
            except (TypeError, ValueError) as err:
                raise ValueError(f"train message config {key!r}: {err}") from err
        return cls(**values)


def as_int(value: object) -> int:
    """A count read off the wire: an int, or a float with an integral value; anything else raises."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"expected an integer, got {value!r} ({type(value).__name__})")
    if not float(value).is_integer():
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def is_prefix(name: str) -> bool:
    return name.startswith(PREFIX)


def is_head(name: str) -> bool:
    return name.startswith(HEAD)


def prefix_key(layer: int) -> str:
    return f"{PREFIX}{layer}"


# Array name patterns in a chunked record (i: chunk or minibatch index).
def activation_key(i: int) -> str:
    return f"act.{i}"


def ids_key(i: int) -> str:
    return f"ids.{i}"


def mask_key(i: int) -> str:
    return f"mask.{i}"


def label_key(i: int) -> str:
    return f"label.{i}"


def gradient_key(i: int) -> str:
    return f"grad.{i}"


@dataclass(frozen=True)
class Chunk:
    """One minibatch (or upload chunk) of a chunked record.

    ``inputs`` is ``(B, T, hidden)`` activations or ``(B, T)`` token ids; ``mask`` is
    ``(B, T)`` and ``label`` ``(B,)`` classes, or ``(B, T)`` token targets for the
    causal-LM objective (:data:`IGNORE_TARGET` where a position is not scored).
    """

    inputs: npt.NDArray[np.generic]
    mask: npt.NDArray[np.generic]
    label: npt.NDArray[np.generic]


@dataclass(frozen=True)
class ChunkLimits:
    """Bounds every chunk must keep: what the server planned and what its model accepts.

    Parameters
    ----------
    max_rows : int | None
        Rows per chunk (a forward reply: the planned batch size).
    max_tokens : int | None
        Sequence length (the model's ``max-length``).
    num_labels : int | None
        Labels must lie in ``[0, num_labels)``.
    vocab_size : int | None
        Token ids must lie in ``[0, vocab_size)``.
    max_abs : float | None
        Largest activation magnitude accepted.
    token_labels : bool | None
        None accepts either form; True: labels are ``(B, T)`` token targets in ``[0, vocab_size)`` or
        :data:`IGNORE_TARGET` (the causal-LM objective); False: ``(B,)`` classes.
    sample_tokens, boundary_tokens : int | None
        For a model of fixed-size inputs (an image: one id per pixel, one boundary vector per
        feature-map position): the exact length of token-id rows and of activation rows, with
        every position real (mask all ones). None: any length up to ``max_tokens``, right-padded.
    """

    max_rows: int | None = None
    max_tokens: int | None = None
    num_labels: int | None = None
    vocab_size: int | None = None
    max_abs: float | None = None
    token_labels: bool | None = None
    sample_tokens: int | None = None
    boundary_tokens: int | None = None


IGNORE_TARGET = -100  # a token target that is not scored (PyTorch's ignore_index)


def _input_key(kind: str, i: int) -> str:
    if kind not in UPLOAD_KINDS:
        raise ValueError(f"chunk kind {kind!r} must be one of {list(UPLOAD_KINDS)}")
    return ids_key(i) if kind == SAMPLES else activation_key(i)


def encode_chunks(
    chunks: Sequence[Chunk], kind: str, first_index: int = 0, *, labels: bool = True
) -> dict[str, npt.NDArray[np.generic]]:
    """The arrays of a chunked record: ``act.i`` or ``ids.i``, ``mask.i``, ``label.i`` (none without ``labels``)."""
    out: dict[str, npt.NDArray[np.generic]] = {}
    for i, chunk in enumerate(chunks, start=first_index):
        out[_input_key(kind, i)] = chunk.inputs
        out[mask_key(i)] = chunk.mask
        if labels:
            out[label_key(i)] = chunk.label
    return out


_LABEL_KEY = re.compile(r"label\.([0-9]+)")
_MASK_KEY = re.compile(r"mask\.([0-9]+)")


def decode_chunks(
    arrays: Mapping[str, npt.NDArray[np.generic]],
    kind: str,
    *,
    count: int | None = None,
    hidden: int | None = None,
    limits: ChunkLimits | None = None,
    codec: WireCodec | None = None,
    labels: bool = True,
) -> tuple[list[Chunk], list[str]]:
    """Read a chunked record back and list what is wrong with it (empty: valid).

    Parameters
    ----------
    arrays : Mapping[str, ndarray]
        The record's arrays by name.
    kind : str
        ``"activations"`` (``act.i``) or ``"samples"`` (``ids.i``).
    count : int | None (default: None)
        The number of chunks the record must hold (a forward reply: one per planned
        minibatch); None accepts any number from one.
    hidden : int | None (default: None)
        The hidden size activations must have; None only requires it to be the same in
        every chunk.
    limits : ChunkLimits | None (default: None)
        Bounds on rows, sequence length, labels, token ids and activation magnitude.
    codec : WireCodec | None (default: None)
        The wire codec the activations are tagged with (:mod:`strategies.wire.codecs`);
        None: float32. They are decoded to float32 before any other check.
    labels : bool (default: True)
        Whether each chunk carries ``label.i``. Without (U-shape: labels never leave the
        device) a record holding any label is refused, and each chunk's ``label`` is a
        placeholder of zeros, one per row, that nothing reads.

    Chunks must be numbered ``0..n-1`` with nothing else in the record; masks and labels
    (and token ids) must be integers, activations finite.
    """
    prefix = _input_key(kind, 0).split(".")[0]
    carried = sorted(k for k in arrays if _LABEL_KEY.fullmatch(k))
    if not labels and carried:
        return [], [f"record of {kind} carries labels ({carried[:3]}): refused, labels must stay on the device"]
    found = sorted(int(m.group(1)) for m in map(_LABEL_KEY.fullmatch if labels else _MASK_KEY.fullmatch, arrays) if m)
    n = len(found) if count is None else count
    parts = (prefix, "mask", "label") if labels else (prefix, "mask")
    keys = [(_input_key(kind, i), mask_key(i), label_key(i))[: len(parts)] for i in range(n)]
    expected = {key for chunk_keys in keys for key in chunk_keys}
    if n == 0 or set(arrays) != expected:
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        return [], [
            f"record of {kind}: arrays are not chunks {'/'.join(parts)}.0..{max(n - 1, 0)} "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        ]
    chunks: list[Chunk] = []
    problems: list[str] = []
    width = hidden
    limits = limits or ChunkLimits()
    if not labels:  # the placeholder labels say nothing: no label check applies to them
        limits = replace(limits, num_labels=None, token_labels=None)
    for i in range(n):
        inputs, mask = np.asarray(arrays[keys[i][0]]), np.asarray(arrays[keys[i][1]])
        label = np.asarray(arrays[keys[i][2]]) if labels else np.zeros(inputs.shape[:1], np.int64)
        chunk = Chunk(inputs, mask, label)
        chunk, problem = _decoded(chunk, kind, codec or wire_codec("float32"))
        problem = problem or _chunk_problem(chunk, kind, width) or _limit_problem(chunk, kind, limits)
        if problem:
            problems.append(f"chunk {i}: {problem}")
        elif kind == ACTIVATIONS_KIND:
            width = chunk.inputs.shape[2]
        chunks.append(chunk)
    return chunks, problems


def _decoded(chunk: Chunk, kind: str, codec: WireCodec) -> tuple[Chunk, str]:
    """Activations decoded to float32 by their tagged codec, before any other check."""
    if kind != ACTIVATIONS_KIND:
        return chunk, ""
    try:
        return Chunk(codec.decode(chunk.inputs), chunk.mask, chunk.label), ""
    except ValueError as err:
        return chunk, str(err)


def _chunk_problem(chunk: Chunk, kind: str, hidden: int | None) -> str:
    inputs, mask, label = chunk.inputs, chunk.mask, chunk.label
    want_ndim = 3 if kind == ACTIVATIONS_KIND else 2
    labels_fit = label.shape in (inputs.shape[:1], inputs.shape[:2])  # classes or token targets
    if inputs.ndim != want_ndim or mask.shape != inputs.shape[:2] or not labels_fit:
        return f"shapes {inputs.shape}, mask {mask.shape}, label {label.shape}"
    integers = (mask, label) if kind == ACTIVATIONS_KIND else (inputs, mask, label)
    if not all(np.issubdtype(a.dtype, np.integer) for a in integers):
        return f"dtypes {inputs.dtype}, mask {mask.dtype}, label {label.dtype}; ids, masks and labels must be integers"
    if kind == ACTIVATIONS_KIND and hidden is not None and inputs.shape[2] != hidden:
        return f"hidden size {inputs.shape[2]}, expected {hidden}"
    if np.issubdtype(inputs.dtype, np.inexact) and not np.isfinite(inputs).all():
        return f"{int((~np.isfinite(inputs)).sum())} non-finite values"
    return ""


def _limit_problem(chunk: Chunk, kind: str, limits: ChunkLimits) -> str:
    rows, tokens = chunk.inputs.shape[:2]
    if limits.max_rows is not None and rows > limits.max_rows:
        return f"{rows} rows, at most {limits.max_rows} were planned"
    if limits.max_tokens is not None and tokens > limits.max_tokens:
        return f"sequence length {tokens}, at most {limits.max_tokens}"
    exact = limits.boundary_tokens if kind == ACTIVATIONS_KIND else limits.sample_tokens
    if exact is not None and (tokens != exact or (chunk.mask.size and chunk.mask.min() != 1)):
        return f"sequence length {tokens} with padding, expected exactly {exact} real positions"
    if limits.token_labels is not None and chunk.label.ndim != (2 if limits.token_labels else 1):
        want = "(rows, tokens) token targets" if limits.token_labels else "(rows,) classes"
        return f"labels of shape {chunk.label.shape}, expected {want}"
    if chunk.label.ndim == 2:
        return _token_target_problem(chunk.label, limits.vocab_size) or _mask_and_input_problem(chunk, kind, limits)
    if (
        limits.num_labels is not None
        and chunk.label.size
        and not (chunk.label.min() >= 0 and chunk.label.max() < limits.num_labels)
    ):
        return f"labels {chunk.label.min()}..{chunk.label.max()} outside [0, {limits.num_labels})"
    return _mask_and_input_problem(chunk, kind, limits)


def _token_target_problem(targets: npt.NDArray[np.generic], vocab_size: int | None) -> str:
    scored = targets[targets != IGNORE_TARGET]
    if scored.size and (scored.min() < 0 or (vocab_size is not None and scored.max() >= vocab_size)):
        return f"token targets {scored.min()}..{scored.max()} outside [0, {vocab_size}) (or {IGNORE_TARGET})"
    return ""


def _mask_and_input_problem(chunk: Chunk, kind: str, limits: ChunkLimits) -> str:
    if not (chunk.mask.size == 0 or (chunk.mask.min() >= 0 and chunk.mask.max() <= 1)):
        return "mask values other than 0 and 1"
    if (
        kind == SAMPLES
        and limits.vocab_size is not None
        and chunk.inputs.size
        and not (chunk.inputs.min() >= 0 and chunk.inputs.max() < limits.vocab_size)
    ):
        return f"token ids {chunk.inputs.min()}..{chunk.inputs.max()} outside [0, {limits.vocab_size})"
    if kind == ACTIVATIONS_KIND and limits.max_abs is not None and chunk.inputs.size:
        largest = float(np.abs(chunk.inputs).max())
        if largest > limits.max_abs:
            return f"activation magnitude {largest:.3g} above {limits.max_abs:.3g}"
    return ""


def chunk_rows(chunks: Sequence[Chunk]) -> int:
    """Samples in a chunked record."""
    return sum(len(chunk.label) for chunk in chunks)
