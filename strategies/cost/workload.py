"""What one round of each training mode asks of a client and of the server.

The cost model (:mod:`strategies.cost.costmodel`) turns a :class:`~strategies.cost.costmodel.Workload`
into simulated seconds and joules; this module derives those workloads from the shape of the
split model and the round's plan, so every figure traces back to the model that really trains.

FLOPs count the transformer layers only (embedding lookups, norms and the head are small next to
them): a forward costs ``2 * layer_params`` per token per layer. Every weight is frozen, so a
backward computes input gradients but no weight gradients and costs about one forward more;
the prefix's own gradient is a small matrix product per layer. Hence, per token and layer:

=====================  ===================================  ===================================
mode                   client                               server
=====================  ===================================  ===================================
split                  forward, then replay forward and     forward and backward through the
                       backward through the lower layers    upper layers: 4 per upper layer
                       (activations up, gradients down):
                       6 per lower layer
ushape                 split's, plus the head: forward,     a forward for the top hidden states,
                       input and weight gradient (6 per     then forward and backward: 6 per
                       head parameter, per token for an     upper layer
                       LM head, per sample for a
                       classifier)
local                  forward and backward through the     nothing
                       lower layers and the emulator's
                       kept upper layers: 4 per layer
centralized            once: forward of the lower layers    every round, forward and backward
                       over the uploaded rows (activations  over its share of the pool: the
                       kind), nothing for token ids         upper layers (activations kind),
                                                            all layers (samples kind)
=====================  ===================================  ===================================

Bytes are the payload of the tensors: activations ``tokens * hidden * bytes per value``, plus
a mask byte per token and an 8-byte label per sample (none in U-shape, where what the head
reads comes down and its gradient goes up, and the head travels both ways).
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies.cost.costmodel import Workload
from strategies.fleet.devices import DeviceProfile
from strategies.policy.allocation import allocate
from strategies.wire.codecs.registry import WIRE_CODECS

MASK_BYTES, LABEL_BYTES, ID_BYTES = 1, 8, 4
# Activations kept for a backward, per token per layer and hidden unit (attention, MLP inputs).
_ACTIVATION_VALUES_PER_LAYER = 12


@dataclass(frozen=True)
class ModelShape:
    """Sizes of the split model that set the cost of each mode.

    Attributes
    ----------
    layer_params : int
        Parameters of one transformer layer.
    client_layers, server_layers : int
        Layers below and above the split.
    hidden : int
        Width of the boundary activations.
    embedding_params : int
        Parameters of the embeddings (held by every client).
    client_state_bytes : int
        Bytes of the lower-layer prefix (what a client uploads in split and local mode).
    layer_prefix_bytes : int
        Bytes of one upper layer's prefix.
    head_bytes : int
        Bytes of the trainable head (0 when frozen).
    mean_tokens : float
        Mean tokens per sample after truncation (boundary vectors per sample).
    sample_tokens : float (default: 0.0)
        Token ids per sample in a samples upload, when they differ from the boundary's
        (an image: a pixel each, against a vector per feature-map position); 0: ``mean_tokens``.
    head_params : int (default: 0)
        Parameters of the output head, trainable or not (U-shape runs it on the device).
    head_per_token : bool (default: False)
        Whether the head runs on every token (an LM head) or once per sample (a classifier).
    """

    layer_params: int
    client_layers: int
    server_layers: int
    hidden: int
    embedding_params: int
    client_state_bytes: int
    layer_prefix_bytes: int
    head_bytes: int
    mean_tokens: float
    sample_tokens: float = 0.0
    head_params: int = 0
    head_per_token: bool = False


@dataclass(frozen=True)
class RoundPlan:
    """What a client is asked to process in one round.

    Attributes
    ----------
    samples : int
        Samples through the model in the round (minibatches x batch size, x local epochs).
    batch_size : int
        Samples per minibatch (sets the activation memory).
    emulator_layers : int
        Upper layers a local-mode emulator keeps (``server_layers``: the full model).
    activation_bytes : int
        Bytes per activation value on the wire (4 for float32, 2 for float16, 1 for int8 and
        0.5 for int4, which add a scale per token vector: :func:`vector_bytes`).
    upload_kind : str
        ``"activations"`` or ``"samples"``: what a centralized client uploads.
    """

    samples: int
    batch_size: int
    emulator_layers: int = 1
    activation_bytes: float = 4.0
    upload_kind: str = "activations"


def _layer_flops(shape: ModelShape, tokens: float) -> float:
    """FLOPs of one layer's forward over ``tokens``."""
    return 2.0 * shape.layer_params * tokens


def _memory(shape: ModelShape, layers: int, batch_size: int) -> float:
    """Frozen weights of the embeddings and ``layers`` layers, plus one minibatch's activations."""
    weights = 4.0 * (shape.embedding_params + layers * shape.layer_params)
    activations = 4.0 * batch_size * shape.mean_tokens * shape.hidden * _ACTIVATION_VALUES_PER_LAYER * layers
    return weights + activations


# A plan carries a codec's bytes per value; its per-vector overhead (int8's and int4's scale) follows
# from the registry, where no two codecs of one width differ in it (tests/strategies/test_codecs.py).
_VECTOR_OVERHEAD = {codec.bytes_per_value: codec.vector_overhead for codec in WIRE_CODECS.values()}


def vector_bytes(hidden: int, activation_bytes: float) -> float:
    """Bytes of one token's boundary vector on the wire: the values, and a wire codec's overhead."""
    return hidden * activation_bytes + _VECTOR_OVERHEAD.get(activation_bytes, 0)


def boundary_bytes(shape: ModelShape, samples: float, activation_bytes: float) -> float:
    """Bytes of the boundary activations (or gradients) of ``samples`` samples, masks and labels."""
    tokens = samples * shape.mean_tokens
    return tokens * (vector_bytes(shape.hidden, activation_bytes) + MASK_BYTES) + samples * LABEL_BYTES


def split_workload(shape: ModelShape, plan: RoundPlan) -> Workload:
    tokens = plan.samples * shape.mean_tokens
    boundary = boundary_bytes(shape, plan.samples, plan.activation_bytes)
    return Workload(
        mode="split",
        client_flops=3 * shape.client_layers * _layer_flops(shape, tokens),
        uplink_bytes=boundary + shape.client_state_bytes,
        downlink_bytes=tokens * vector_bytes(shape.hidden, plan.activation_bytes) + 2 * shape.client_state_bytes,
        server_flops=2 * shape.server_layers * _layer_flops(shape, tokens),
        client_memory_bytes=_memory(shape, shape.client_layers, plan.batch_size),
    )


def ushape_workload(shape: ModelShape, plan: RoundPlan) -> Workload:
    """Split's round without labels on the wire, plus the head on the device and a third exchange.

    What the head reads crosses twice more (features down, their gradients up): a vector per
    token for an LM head, one per sample for a classifier (the server pools before sending).
    """
    tokens = plan.samples * shape.mean_tokens
    vector = vector_bytes(shape.hidden, plan.activation_bytes)
    head_units = tokens if shape.head_per_token else plan.samples  # feature vectors, and head runs
    return Workload(
        mode="ushape",
        client_flops=3 * shape.client_layers * _layer_flops(shape, tokens) + 6.0 * shape.head_params * head_units,
        uplink_bytes=(tokens + head_units) * vector + tokens * MASK_BYTES + shape.client_state_bytes + shape.head_bytes,
        downlink_bytes=(tokens + head_units) * vector + 2 * shape.client_state_bytes + shape.head_bytes,
        server_flops=3 * shape.server_layers * _layer_flops(shape, tokens),
        client_memory_bytes=_memory(shape, shape.client_layers, plan.batch_size) + 4.0 * shape.head_params,
    )


def local_workload(shape: ModelShape, plan: RoundPlan) -> Workload:
    kept = plan.emulator_layers
    if not 1 <= kept <= shape.server_layers:
        raise ValueError(f"emulator layers {kept} must be in [1, {shape.server_layers}]")
    tokens = plan.samples * shape.mean_tokens
    emulator_bytes = kept * shape.layer_prefix_bytes + shape.head_bytes
    full = kept == shape.server_layers  # the full model: upper prefix and head go up too
    return Workload(
        mode="local",
        client_flops=2 * (shape.client_layers + kept) * _layer_flops(shape, tokens),
        uplink_bytes=shape.client_state_bytes + (emulator_bytes if full else 0),
        downlink_bytes=shape.client_state_bytes + emulator_bytes,
        server_flops=0.0,
        client_memory_bytes=_memory(shape, shape.client_layers + kept, plan.batch_size),
    )


def upload_row_bytes(shape: ModelShape, kind: str, activation_bytes: float) -> float:
    """Bytes one uploaded sample costs: its activations, or its token ids, with mask and label."""
    if kind == "activations":
        return shape.mean_tokens * (vector_bytes(shape.hidden, activation_bytes) + MASK_BYTES) + LABEL_BYTES
    return (shape.sample_tokens or shape.mean_tokens) * (ID_BYTES + MASK_BYTES) + LABEL_BYTES


def upload_workload(shape: ModelShape, plan: RoundPlan, rows: int) -> Workload:
    """The one-off upload of ``rows`` samples by a centralized client (plus the server's round)."""
    if plan.upload_kind not in ("activations", "samples"):
        raise ValueError(f"upload kind '{plan.upload_kind}' must be 'activations' or 'samples'")
    activations = plan.upload_kind == "activations"
    tokens = rows * shape.mean_tokens
    return Workload(
        mode="centralized",
        client_flops=shape.client_layers * _layer_flops(shape, tokens) if activations else 0.0,
        uplink_bytes=rows * upload_row_bytes(shape, plan.upload_kind, plan.activation_bytes),
        downlink_bytes=shape.client_state_bytes if activations else 0.0,
        server_flops=pool_server_flops(shape, plan.samples, plan.upload_kind),
        client_memory_bytes=_memory(shape, shape.client_layers, plan.batch_size) if activations else 0.0,
    )


def pool_server_flops(shape: ModelShape, samples: float, kind: str) -> float:
    """Server FLOPs to train ``samples`` pooled samples once: upper layers, or all of them."""
    layers = shape.server_layers if kind == "activations" else shape.client_layers + shape.server_layers
    return 2 * layers * _layer_flops(shape, samples * shape.mean_tokens)


def affordable_rows(profile: DeviceProfile, shape: ModelShape, plan: RoundPlan, available: int) -> int:
    """Most samples (up to ``available``) a client can upload within one round's energy budget.

    Uploading fewer rows never costs more, so feasibility is monotone in the row count and a
    bisection finds the largest feasible one.
    """

    def fits(rows: int) -> bool:
        return allocate(profile, upload_workload(shape, plan, rows)) is not None

    if available <= 0 or not fits(1):
        return 0
    lo, hi = 1, available
    if fits(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
