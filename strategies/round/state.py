"""One round as a value: created when the round starts, passed along, turned into a record.

Nothing of a round lives on the strategy object: a :class:`RoundState` holds the
clients sampled, their assignments at the round's start, the replies of each exchange,
every failure (the one record of a dropped reply and why), the bytes sent, the losses
and what the server trained. :mod:`strategies.round.record` turns it into the round's
line of ``metrics.jsonl``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from strategies.aggregate.volume import Contribution
from strategies.fleet.state import ClientInfo
from strategies.policy.grouping import ModeAssignment
from strategies.policy.requirements import Failure, FailureCause
from strategies.trust.screen import References
from strategies.wire.codecs.base import WireCodec
from strategies.wire.names import Chunk


@dataclass
class SplitOutcome:
    """The server side of this round's split clients (keyed by node id).

    ``gradients``: one boundary gradient per planned minibatch, sent back in the
    second exchange. ``server_parts``: the server's tensors trained on each client
    (a copy per client, ``parallel``), and ``sequential``: the one copy that went
    through all of them in partition order (``sequential``).
    """

    gradients: dict[int, list[np.ndarray]] = field(default_factory=dict)
    server_parts: dict[int, Contribution] = field(default_factory=dict)
    losses: dict[int, float] = field(default_factory=dict)
    sequential: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class UShapeOutcome(SplitOutcome):
    """The server side of this round's U-shape clients (keyed by node id), beyond split's.

    ``chunks``: each client's boundary activations as read (no labels), with its ``volumes`` and
    ``codecs``; ``server_parts`` (and ``sequential``) carry the head the devices trained on their
    own labels; ``losses``: the training loss each device reports (the server cannot compute
    one: it holds no labels).
    """

    chunks: dict[int, list[Chunk]] = field(default_factory=dict)
    volumes: dict[int, int] = field(default_factory=dict)
    codecs: dict[int, WireCodec] = field(default_factory=dict)


@dataclass
class TrainedPart:
    """What a round's clients (or one half of them, in a parallel probe) yielded, before averaging.

    ``prefixes``: validated prefix contributions by mode (in the order the server steps run),
    then node id; ``pool``: the server's result on the centralized pool; ``uploaded``: whether
    an upload arrived.
    """

    prefixes: dict[str, dict[int, Contribution]]
    pool: Contribution | None
    uploaded: bool
    root: dict[str, np.ndarray] | None = None  # the server's update on its root set (FLTrust), if any

    @property
    def accepted(self) -> dict[int, Contribution]:
        """Every mode's accepted contributions, by node id."""
        return {n: c for by_node in self.prefixes.values() for n, c in by_node.items()}

    def only_from(self, nodes: set[int]) -> TrainedPart:
        """The contributions of the clients in ``nodes`` (and the pool's)."""
        prefixes = {m: {n: c for n, c in by_node.items() if n in nodes} for m, by_node in self.prefixes.items()}
        return TrainedPart(prefixes, self.pool, self.uploaded, self.root)


@dataclass
class RoundState:
    """Everything one round produces on its way to the next global tensors and its record."""

    server_round: int
    num_rounds: int
    sampled: list[ClientInfo]
    assignments: dict[int, ModeAssignment]  # by partition id, as the round started
    started: float = field(default_factory=time.time)
    first: dict[int, Message] = field(default_factory=dict)  # replies of the first exchange, by node id
    backward: dict[int, Message] = field(default_factory=dict)  # replies of split_backward
    failures: dict[int, Failure] = field(default_factory=dict)  # by node id: the one record of a drop
    reported: set[int] = field(default_factory=set)  # nodes whose failure the client itself reported
    unavailable: set[int] = field(default_factory=set)  # nodes Flower reported gone: not sampled again
    bytes_down: dict[int, int] = field(default_factory=dict)
    steps_done: dict[int, int] = field(default_factory=dict)
    split: SplitOutcome = field(default_factory=SplitOutcome)
    ushape: UShapeOutcome = field(default_factory=UShapeOutcome)
    more_up: dict[int, int] = field(default_factory=dict)  # bytes a node sent in exchanges beyond two
    local_losses: dict[int, float] = field(default_factory=dict)
    pool_members: list[int] = field(default_factory=list)  # partition ids trained on in the pool
    sat_out: list[int] = field(default_factory=list)  # partition ids over the round's deadline
    population: int = 0  # the clients the sample was drawn from (the DP accountant's sampling rate)
    bounded: dict[str, str] = field(default_factory=dict)  # contributions clipped or rejected, by source
    screened: dict[int, str] = field(default_factory=dict)  # by node id: split clients left out by trust, why
    in_line: dict[int, bool] = field(default_factory=dict)  # by partition id: each screened client's verdict
    references: References | None = None  # the screening references the round used
    capped: dict[str, str] = field(default_factory=dict)  # contributions whose volume was capped, by source
    norms: dict[str, list[float]] = field(default_factory=dict)  # accepted update norms by tensor group
    pool_loss: float | None = None
    pool_samples: int = 0
    joined: list[int] = field(default_factory=list)  # partition ids admitted at the round's start
    left: list[int] = field(default_factory=list)  # partition ids whose node had disconnected

    def drop(self, node: int, cause: FailureCause, why: str) -> None:
        """A reply the server found unusable (error, timeout, invalid): it does not enter the average."""
        self.failures[node] = Failure(cause, detail=why)

    def report(self, node: int, failure: Failure) -> None:
        """A client's own failure reply (it could not meet the requirement)."""
        self.failures[node] = failure
        self.reported.add(node)

    def dropped(self) -> dict[int, str]:
        """Each dropped node's reason, as logged and recorded (a reported failure leads with its cause)."""
        return {
            node: f"{f.cause}: {f.detail}" if node in self.reported else f.detail for node, f in self.failures.items()
        }
