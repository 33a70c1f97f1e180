"""Training requirements sent with train messages, the failures replied, the server's reaction.

The client checks a :class:`TrainingRequirement` before and after training and replies with its
tensors or a :class:`Failure`; the server counts causes and re-plans each failed client:

===========================  ==============================================================
cause                        next round
===========================  ==============================================================
insufficient-compute         the next mode cheaper for the client among the available ones
                             (local -> split -> centralized); ``exclude`` when none is left
insufficient-samples         ``centralized`` when available and not already used (the server
                             pools the samples there); otherwise ``exclude``
performance-below-threshold  same mode; the contribution is already out of this round's average
client-error, invalid-reply, same mode, retried; ``exclude`` on the ``max_strikes``-th
timeout                      consecutive failure of these kinds
===========================  ==============================================================

Strike counts are passed in and returned so the policy stays pure; a success or a well-formed
failure of another kind shows the client is alive and resets them. On the wire both records are
flat dicts of config scalars (``req-min-samples``, ``failure-cause``); a ConfigRecord cannot hold
None, so a None field is encoded by leaving its key out.
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum

from strategies.wire import names as wire

ConfigValue = int | float | str | bool | list[int]


THRESHOLD_METRICS = ("accuracy", "loss")
EXCLUDE = "exclude"


class FailureCause(StrEnum):
    """Why a client returned no trained tensors."""

    INSUFFICIENT_SAMPLES = "insufficient-samples"
    INSUFFICIENT_COMPUTE = "insufficient-compute"
    PERFORMANCE_BELOW_THRESHOLD = "performance-below-threshold"
    CLIENT_ERROR = "client-error"
    INVALID_REPLY = "invalid-reply"
    TIMEOUT = "timeout"


# Causes that say nothing about the client's means, only that this round went wrong.
TRANSIENT_CAUSES = frozenset({FailureCause.CLIENT_ERROR, FailureCause.INVALID_REPLY, FailureCause.TIMEOUT})


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True samples is a wiring bug, not a count.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


@dataclass(frozen=True)
class TrainingRequirement:
    """What a client must achieve in one training round.

    Parameters
    ----------
    train_layers : tuple[int, ...] | None (default: None)
        Indices of the layers whose prefix the client trains; None trains every layer it holds.
    max_train_s : float | None (default: None)
        Budget for local training in seconds; None means unbounded.
    target_samples : int | None (default: None)
        Samples to train on; None uses all available, up to ``max_samples``.
    min_samples : int (default: 1)
        Fewer available samples than this is an ``insufficient-samples`` failure.
    max_samples : int | None (default: None)
        Upper bound on the samples used; None means no bound.
    threshold_metric : str (default: "accuracy")
        ``"accuracy"`` (a fraction, higher is better) or ``"loss"`` (lower is better).
    threshold_value : float | None (default: None)
        A result worse than this is a failure; None disables the check.
    """

    train_layers: tuple[int, ...] | None = None
    max_train_s: float | None = None
    target_samples: int | None = None
    min_samples: int = 1
    max_samples: int | None = None
    threshold_metric: str = "accuracy"
    threshold_value: float | None = None

    def __post_init__(self) -> None:
        if self.train_layers is not None:
            layers = self.train_layers
            if not isinstance(layers, (list, tuple)) or not layers:
                raise ValueError(f"train_layers must be a non-empty sequence, got {layers!r}")
            if not all(_is_int(i) and i >= 0 for i in layers) or len(set(layers)) != len(layers):
                raise ValueError(f"train_layers must be distinct indices >= 0, got {layers!r}")
            object.__setattr__(self, "train_layers", tuple(layers))
        if self.max_train_s is not None and not (_is_number(self.max_train_s) and self.max_train_s > 0):
            raise ValueError(f"max_train_s must be positive seconds, got {self.max_train_s!r}")
        for name in ("target_samples", "min_samples", "max_samples"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        lo, target, hi = self.min_samples, self.target_samples, self.max_samples
        if target is not None and target < lo:
            raise ValueError(f"target_samples ({target}) must be >= min_samples ({lo})")
        if hi is not None and hi < max(lo, target or lo):
            raise ValueError(f"max_samples ({hi}) must be >= min_samples and target_samples")
        if self.threshold_metric not in THRESHOLD_METRICS:
            metric = self.threshold_metric
            raise ValueError(f"threshold_metric must be one of {THRESHOLD_METRICS}, got {metric!r}")
        value = self.threshold_value
        if value is not None and not _is_number(value):
            raise ValueError(f"threshold_value must be a finite number, got {value!r}")
        if value is not None and self.threshold_metric == "accuracy" and not 0 <= value <= 1:
            raise ValueError(f"threshold_value for accuracy must lie in [0, 1], got {value}")


def _req_key(field_name: str) -> str:
    return wire.REQ_PREFIX + field_name.replace("_", "-")


def requirement_to_config(req: TrainingRequirement) -> dict[str, ConfigValue]:
    """Flatten a requirement into ``req-*`` config entries; None fields are left out."""
    config: dict[str, ConfigValue] = {}
    for field in fields(req):
        value = getattr(req, field.name)
        if value is not None:
            config[_req_key(field.name)] = list(value) if isinstance(value, tuple) else value
    return config


def requirement_from_config(config: Mapping[str, object]) -> TrainingRequirement:
    """Read the ``req-*`` entries of a config back; other keys are ignored.

    Raises
    ------
    ValueError
        On an unknown ``req-*`` key (a sender/receiver version mismatch) or an invalid value.
    """
    names = {_req_key(field.name): field.name for field in fields(TrainingRequirement)}
    unknown = sorted(k for k in config if k.startswith(wire.REQ_PREFIX) and k not in names)
    if unknown:
        raise ValueError(f"unknown requirement keys in config: {unknown}")
    kwargs = {name: config[key] for key, name in names.items() if key in config}
    return TrainingRequirement(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Failure:
    """A client's reply in place of trained tensors.

    Parameters
    ----------
    cause : FailureCause
        Why there is no contribution; a plain string is converted (ValueError if unknown).
    needed, available : float | None (default: None)
        What the requirement asked for and what the client had or reached (samples, seconds,
        metric value), in the same unit.
    detail : str (default: "")
        Explanation for the log.
    """

    cause: FailureCause
    needed: float | None = None
    available: float | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        try:
            cause = FailureCause(self.cause)
        except ValueError:
            valid = [c.value for c in FailureCause]
            msg = f"unknown failure cause {self.cause!r}; expected one of {valid}"
            raise ValueError(msg) from None
        object.__setattr__(self, "cause", cause)
        for name in ("needed", "available"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))  # one unit type on both ends


def failure_to_config(failure: Failure) -> dict[str, ConfigValue]:
    """Flatten a failure into ``failure-*`` config entries; None numbers are left out."""
    config: dict[str, ConfigValue] = {
        wire.FAILURE_CAUSE: failure.cause.value,
        wire.FAILURE_DETAIL: failure.detail,
    }
    if failure.needed is not None:
        config[wire.FAILURE_NEEDED] = failure.needed
    if failure.available is not None:
        config[wire.FAILURE_AVAILABLE] = failure.available
    return config


def is_failure_config(config: Mapping[str, object]) -> bool:
    """Whether a reply's config reports a failure instead of a contribution."""
    return wire.FAILURE_CAUSE in config


def failure_from_config(config: Mapping[str, object]) -> Failure:
    """Read a failure back; raises ValueError when the cause is missing or unknown."""
    if wire.FAILURE_CAUSE not in config:
        raise ValueError(f"config has no {wire.FAILURE_CAUSE!r} entry")
    return Failure(
        cause=config[wire.FAILURE_CAUSE],  # type: ignore[arg-type]
        needed=config.get(wire.FAILURE_NEEDED),  # type: ignore[arg-type]
        available=config.get(wire.FAILURE_AVAILABLE),  # type: ignore[arg-type]
        detail=str(config.get(wire.FAILURE_DETAIL, "")),
    )


def plan_volume(req: TrainingRequirement, num_available_samples: int) -> int:
    """Samples to train on: the available ones, capped by the target and the maximum."""
    volume = num_available_samples
    for cap in (req.target_samples, req.max_samples):
        if cap is not None:
            volume = min(volume, cap)
    return volume


def check_before_training(
    req: TrainingRequirement, num_available_samples: int, est_step_s: float, steps_planned: int
) -> Failure | None:
    """Fail early when the client lacks the samples or the time the requirement asks for.

    ``est_step_s`` is the measured time of one step; the plan of ``steps_planned`` steps
    fails when it would overrun ``max_train_s``.
    """
    if num_available_samples < 0 or est_step_s < 0 or steps_planned < 0:
        raise ValueError("samples, step time and steps must be non-negative")
    if num_available_samples < req.min_samples:
        return Failure(
            FailureCause.INSUFFICIENT_SAMPLES,
            needed=float(req.min_samples),
            available=float(num_available_samples),
            detail=f"{num_available_samples} samples available, at least {req.min_samples} needed",
        )
    est_s = est_step_s * steps_planned
    if req.max_train_s is not None and est_s > req.max_train_s:
        return Failure(
            FailureCause.INSUFFICIENT_COMPUTE,
            needed=est_s,
            available=float(req.max_train_s),
            detail=f"{steps_planned} steps need ~{est_s:.3g} s, budget is {req.max_train_s:.3g} s",
        )
    return None


def check_after_training(req: TrainingRequirement, metric_value: float) -> Failure | None:
    """Fail when the trained result is worse than the threshold (NaN is always worse)."""
    threshold = req.threshold_value
    if threshold is None:
        return None
    if req.threshold_metric == "accuracy":
        worse = not metric_value >= threshold  # written so that NaN counts as worse
    else:
        worse = not metric_value <= threshold
    if not worse:
        return None
    return Failure(
        FailureCause.PERFORMANCE_BELOW_THRESHOLD,
        needed=float(threshold),
        available=float(metric_value),
        detail=f"{req.threshold_metric} {metric_value:.4g} is worse than {threshold:.4g}",
    )


@dataclass(frozen=True)
class Reaction:
    """What a failed client does next round: ``mode`` is its next mode, or ``EXCLUDE``."""

    mode: str
    cause: FailureCause

    @property
    def excluded(self) -> bool:
        """Whether the client takes no further part."""
        return self.mode == EXCLUDE


def react_to_failures(
    failures: Mapping[int, Failure],
    current_modes: Mapping[int, str],
    available_modes: Sequence[str],
    strikes: Mapping[int, int],
    *,
    succeeded: Iterable[int] = (),
    max_strikes: int = 3,
) -> tuple[dict[int, Reaction], dict[int, int]]:
    """Decide each failed client's next round, following the table in the module docstring.

    Parameters
    ----------
    failures : Mapping[int, Failure]
        This round's failures by client (node) id.
    current_modes : Mapping[int, str]
        This round's mode of every failed client (others are ignored).
    available_modes : Sequence[str]
        Modes the server runs next round, a subset of ``wire.MODES``.
    strikes : Mapping[int, int]
        Consecutive transient failures per client so far; not modified.
    succeeded : Iterable[int] (default: ())
        Clients whose contribution was accepted this round; their strikes reset.
    max_strikes : int (default: 3)
        The consecutive transient failure that excludes a client.

    Returns
    -------
    tuple[dict[int, Reaction], dict[int, int]]
        A reaction per failed client and the new strike counts (excluded clients dropped, so a
        client let back in starts afresh).
    """
    if max_strikes < 1:
        raise ValueError(f"max_strikes must be >= 1, got {max_strikes}")
    unknown = sorted(set(available_modes) - set(wire.MODES))
    if unknown:
        raise ValueError(f"unknown modes {unknown}; expected some of {wire.MODES}")
    accepted = set(succeeded)
    new_strikes = {cid: n for cid, n in strikes.items() if cid not in accepted}
    reactions: dict[int, Reaction] = {}
    for cid, failure in failures.items():
        mode = current_modes.get(cid)
        if mode not in wire.MODES:
            raise ValueError(f"client {cid} failed in unknown mode {mode!r}")
        next_mode = _next_mode(failure.cause, mode, available_modes)
        if failure.cause in TRANSIENT_CAUSES:
            new_strikes[cid] = new_strikes.get(cid, 0) + 1
            if new_strikes[cid] >= max_strikes:
                next_mode = EXCLUDE
        else:
            new_strikes.pop(cid, None)
        if next_mode == EXCLUDE:
            new_strikes.pop(cid, None)
        reactions[cid] = Reaction(mode=next_mode, cause=failure.cause)
    return reactions, new_strikes


def _next_mode(cause: FailureCause, mode: str, available_modes: Sequence[str]) -> str:
    if cause == FailureCause.INSUFFICIENT_COMPUTE:
        cheaper = wire.MODES[wire.MODES.index(mode) + 1 :]
        return next((m for m in cheaper if m in available_modes), EXCLUDE)
    if cause == FailureCause.INSUFFICIENT_SAMPLES:
        usable = mode != "centralized" and "centralized" in available_modes
        return "centralized" if usable else EXCLUDE
    return mode


def count_causes(failures: Mapping[int, Failure] | Iterable[Failure]) -> dict[str, int]:
    """Failures per cause for the round's metrics; every cause is present, zeros included."""
    values = failures.values() if isinstance(failures, Mapping) else failures
    counts = {cause.value: 0 for cause in FailureCause}
    for failure in values:
        counts[failure.cause.value] += 1
    return counts
