"""The strategy's settings: one frozen object, one default per setting.

:class:`SplitSettings` is built once (from the run config by
``flower_app.config.strategy_settings.split_settings``, or by hand in a user's own ServerApp)
and handed to :class:`strategies.strategy.SplitPrefixStrategy` and to the server's half of
the model. The defaults here are a hand-built object's. A run's settings come from the run
config (``flower_app.config.schema``), which sets every one it declares: its defaults are
the default job's and may differ from these.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from strategies.aggregate.robust import RULES, UPDATE_CHECKS
from strategies.policy.policies import Policy
from strategies.policy.requirements import TrainingRequirement
from strategies.probing.judge import ProbePlan
from strategies.probing.modes import parse_mode
from strategies.wire import names as wire
from strategies.wire.codecs.registry import CODEC_NAMES, wire_codec

SERVER_SIDES = ("sequential", "parallel")
UPDATE_REFERENCES = ("round", "history")
TRUST_CHECKS = ("off", "screen")
ACTIVATION_DTYPES = CODEC_NAMES  # the choices of activation_dtype: the wire codecs' names (strategies.wire.codecs)


@dataclass(frozen=True)
class SplitSettings:
    """How the fleet trains, round after round.

    Parameters
    ----------
    seed : int (default: 42)
        Seed of the batch plans, the client sampling and the pool training (combined
        with round and partition id).
    steps : int (default: 10)
        Minibatches each client trains per round (a local-mode group: times its local epochs).
    batch_size : int (default: 16)
        Samples per minibatch.
    lr : float (default: 0.01)
        Adam learning rate of the prefix, on both sides of the split.
    head_lr : float (default: 0.01)
        Adam learning rate of a trainable head (server side, emulator, pool).
    lr_decay_to : float (default: 1.0)
        Cosine decay of ``lr`` and ``head_lr`` over the run's rounds, down to this fraction
        of them at the last round (:mod:`strategies.round.lr_schedule`); 1: constant rates.
    activation_dtype : str (default: "float32")
        Wire codec of boundary activations and gradients, a name of :mod:`strategies.wire.codecs`
        ("float32", "float16", "bfloat16", or "int8" or "int4" with a scale per token vector).
    upload_topk : float (default: 1.0)
        Fraction of each trained tensor's entries a split or local client sends back: the
        largest of its update plus its residual, with error feedback (:mod:`strategies.wire.sparsify`);
        1 sends the tensors dense.
    replay_lr_scale : float (default: 1.0)
        A split client's replayed steps use ``lr`` times this. Its boundary gradients were
        computed on the round's starting weights, so every step it takes moves its half away
        from what the server's half was trained on; with many trainable weights on the client
        (a whole image encoder, not a prefix) full-size steps on stale gradients leave the two
        halves incoherent, and a smaller scale keeps them together. 0: the client's half
        stays frozen in split mode.
    min_clients : int (default: 2)
        Fewest valid contributions a round needs; fewer stops the run cleanly.
    fraction_train : float (default: 1.0)
        Fraction of known clients sampled each round (at least ``min_clients``).
    round_deadline_s : float (default: 0.0)
        Simulated seconds a round may take: a sampled client predicted to need longer
        sits the round out (:mod:`strategies.round.deadline`); 0: no deadline.
    wait_for_nodes_s : float (default: 120)
        Seconds to wait at start for ``min_clients`` nodes to connect.
    requery_every : int (default: 0)
        Ask the known clients for their device profile again after every this many rounds
        and re-plan the fleet if a profile changed (0: never). Nodes that connect later are
        asked at the start of every round whatever this is.
    server_side : str (default: "sequential")
        ``"sequential"``: one copy of the server's tensors trains through the clients in
        partition order; ``"parallel"``: a copy per client, averaged.
    max_strikes : int (default: 3)
        Consecutive errors, timeouts or invalid replies after which a client is excluded.
    emulator_layers : int (default: 1)
        Upper layers a local-mode emulator keeps (0: all, the real model).
    upload_kind : str (default: "activations")
        What a centralized client uploads: ``"activations"`` or ``"samples"``.
    upload_rows : int (default: 0)
        Most samples a centralized client uploads (0: one round's plan, ``steps * batch_size``).
    local_eval_size : int (default: 32)
        Samples a local-mode client holds back to check the performance threshold.
    update_check : str (default: "clip")
        What happens to a client's update whose norm exceeds ``update_bound`` times the
        median of its round (:mod:`strategies.aggregate.robust`): ``"clip"``, ``"reject"`` or ``"off"``.
    update_bound : float (default: 3.0)
        The bound, as a multiple of the round's median update norm.
    update_reference : str (default: "history")
        The norm ``update_bound`` multiplies: ``"round"``, the round's median update norm;
        ``"history"``, the median accepted norm of the last rounds (the round's own median
        in the first round), which colluders in one round cannot raise.
    trust : str (default: "screen")
        ``"screen"``: split clients whose loss or activations are out of line with their
        peers' are left out of the round and lose reputation (:mod:`strategies.trust.screen`);
        ``"off"``: no screening.
    trust_z : float (default: 3.5)
        Robust z-score beyond which a screened client is out of line.
    trust_exclude : float (default: 0.5)
        Reputation below which a client is left out even when it looks in line; a
        client's volume is weighted by its reputation.
    volume_cap : float (default: 3.0)
        A client contribution's volume is capped at this multiple of the round's median
        (:mod:`strategies.trust.volume`); 0: no cap.
    root_samples : int (default: 0)
        FLTrust (:mod:`strategies.trust.fltrust`): samples of the server's own root set;
        0: off. The server model must offer ``root_update``.
    aggregation : str (default: "mean")
        ``"mean"``, ``"median"`` or ``"trimmed"`` (mean after cutting ``trim`` of the volume
        from each end), per value and weighted by data volume.
    trim : float (default: 0.2)
        Fraction of the volume cut from each end by the ``trimmed`` rule.
    dp_clip : float (default: 0.0)
        Client-level DP of the average (:mod:`strategies.aggregate.dp`): each client's update
        is clipped to this L2 norm and the clients are averaged with equal weights, not by
        data volume; 0: off. Needs ``aggregation="mean"`` and no ``root_samples``.
    dp_noise : float (default: 0.0)
        Noise multiplier: Gaussian noise of standard deviation ``dp_noise * dp_clip / n`` on
        the mean of ``n`` clipped updates. Needs ``dp_clip``.
    dp_delta : float (default: 1e-5)
        The delta of the ``(epsilon, delta)`` each round's record reports
        (:mod:`strategies.aggregate.accountant`).
    max_activation : float (default: 1e4)
        Largest boundary activation magnitude the server trains on; a reply with larger
        values is dropped (a client cannot blow up the server's half).
    requirement : TrainingRequirement (default: no bounds)
        Sent in every train message; clients that cannot meet it reply with a failure cause.
    policy : Policy | None (default: None)
        How clients get their group and mode; None: everyone in split mode. It is
        given this object's ``batch_size`` and ``seed``.
    """

    seed: int = 42
    steps: int = 10
    batch_size: int = 16
    lr: float = 0.01
    head_lr: float = 0.01
    lr_decay_to: float = 1.0
    activation_dtype: str = "float32"
    upload_topk: float = 1.0
    replay_lr_scale: float = 1.0
    min_clients: int = 2
    fraction_train: float = 1.0
    round_deadline_s: float = 0.0
    wait_for_nodes_s: float = 120.0
    requery_every: int = 0
    server_side: str = "sequential"
    max_strikes: int = 3
    emulator_layers: int = 1
    upload_kind: str = wire.ACTIVATIONS_KIND
    upload_rows: int = 0
    local_eval_size: int = 32
    update_check: str = "clip"
    update_bound: float = 3.0
    update_reference: str = "history"
    trust: str = "screen"
    trust_z: float = 3.5
    trust_exclude: float = 0.5
    volume_cap: float = 3.0
    root_samples: int = 0
    aggregation: str = "mean"
    trim: float = 0.2
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    dp_delta: float = 1e-5
    max_activation: float = 1e4
    requirement: TrainingRequirement = field(default_factory=TrainingRequirement)
    policy: Policy | None = None
    probe: ProbePlan = field(default_factory=ProbePlan)

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("server_side", self.server_side, SERVER_SIDES),
            ("upload_kind", self.upload_kind, wire.UPLOAD_KINDS),
            ("activation_dtype", self.activation_dtype, CODEC_NAMES),
            ("update_check", self.update_check, UPDATE_CHECKS),
            ("aggregation", self.aggregation, RULES),
            ("update_reference", self.update_reference, UPDATE_REFERENCES),
            ("trust", self.trust, TRUST_CHECKS),
        ):
            if value not in choices:
                raise ValueError(f"{name}={value!r} must be one of {list(choices)}")
        if self.probe.optimized:
            parse_mode(self.probe.optimized)
        if not 0.0 < self.upload_topk <= 1.0:  # also refuses NaN
            raise ValueError(f"upload_topk={self.upload_topk!r} must be in (0, 1]")
        if not 0.0 < self.lr_decay_to <= 1.0:  # also refuses NaN
            raise ValueError(f"lr_decay_to={self.lr_decay_to!r} must be in (0, 1]")
        if not 0.0 <= self.replay_lr_scale <= 10.0:  # also refuses NaN
            raise ValueError(f"replay_lr_scale={self.replay_lr_scale!r} must be in [0, 10]")
        for name in ("steps", "batch_size", "min_clients", "max_strikes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be at least 1")
        if self.requery_every < 0:
            raise ValueError(f"requery_every={self.requery_every!r} must be at least 0")
        if not self.update_bound >= 1.0:  # also refuses NaN
            raise ValueError(f"update_bound={self.update_bound!r} must be at least 1")
        if not self.trust_z >= 1.0:  # also refuses NaN
            raise ValueError(f"trust_z={self.trust_z!r} must be at least 1")
        if not 0.0 <= self.trust_exclude <= 1.0:
            raise ValueError(f"trust_exclude={self.trust_exclude!r} must be in [0, 1]")
        if not self.volume_cap >= 0.0:
            raise ValueError(f"volume_cap={self.volume_cap!r} must be at least 0 (0: no cap)")
        if self.root_samples < 0:
            raise ValueError(f"root_samples={self.root_samples!r} must be at least 0 (0: no FLTrust)")
        if not 0.0 <= self.trim < 0.5:
            raise ValueError(f"trim={self.trim!r} must be in [0, 0.5)")
        self._check_dp()
        if not self.max_activation > 0.0:  # also refuses NaN
            raise ValueError(f"max_activation={self.max_activation!r} must be positive")
        if not 0.0 < self.fraction_train <= 1.0:
            raise ValueError(f"fraction_train={self.fraction_train!r} must be in (0, 1]")
        # The policy sizes workloads and seeds k-means: it takes this object's batch size and seed.
        policy = self.policy or Policy()
        object.__setattr__(self, "policy", replace(policy, batch_size=self.batch_size, seed=self.seed))

    def _check_dp(self) -> None:
        if not (self.dp_clip >= 0.0 and self.dp_noise >= 0.0):  # also refuses NaN
            raise ValueError(f"dp_clip={self.dp_clip!r} and dp_noise={self.dp_noise!r} must be at least 0")
        if not 0.0 < self.dp_delta < 1.0:
            raise ValueError(f"dp_delta={self.dp_delta!r} must be in (0, 1)")
        if self.dp_noise > 0.0 and self.dp_clip == 0.0:
            raise ValueError(f"dp_noise={self.dp_noise!r} needs dp_clip > 0: the noise is dp_noise x dp_clip")
        if self.dp_clip > 0.0 and (self.root_samples or self.aggregation != "mean"):
            raise ValueError(
                f"dp_clip={self.dp_clip!r} averages clients with equal weights: it cannot be combined with "
                f"root_samples={self.root_samples!r} (FLTrust) or aggregation={self.aggregation!r} (only 'mean')"
            )

    @property
    def fleet_policy(self) -> Policy:
        """The policy (never None after construction)."""
        assert self.policy is not None  # set in __post_init__
        return self.policy

    @property
    def activation_bytes(self) -> float:
        """Bytes per boundary value on the wire."""
        return wire_codec(self.activation_dtype).bytes_per_value
