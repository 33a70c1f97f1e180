"""The run config's strategy side: the :class:`SplitSettings`, :class:`Policy` and
:class:`TrainingRequirement` that ``strategies/`` takes, built from a validated
:class:`flower_app.config.schema.Config` (:func:`flower_app.config.load.from_dict` builds them
once as a cross-check). Every setting the schema declares is passed on: the run config's defaults
are the schema's, never these classes' own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from strategies.policy.groupings.registry import grouping_params
from strategies.policy.policies import Policy, Schedule, parse_schedule, stage_deadlines
from strategies.policy.requirements import TrainingRequirement
from strategies.probing.judge import ProbePlan, parse_rounds
from strategies.probing.modes import probe_mode
from strategies.settings import SplitSettings
from strategies.wire import names as wire

if TYPE_CHECKING:
    from flower_app.config.schema import Config

__all__ = ["mode_list", "policy", "requirement", "split_settings"]


def mode_list(config: Config, key: str) -> tuple[str, ...]:
    """A comma-separated ``strategy.<key>`` as modes, each checked."""
    text = getattr(config.strategy, key.replace("-", "_"))
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in wire.MODES]
    if not modes or bad:
        raise ValueError(f"config key 'strategy.{key}'={text!r} must list modes among {list(wire.MODES)}")
    return modes


def requirement(config: Config) -> TrainingRequirement:
    """The config's requirement section as the wire-level requirement (0 means no bound)."""
    r = config.requirement
    return TrainingRequirement(
        min_samples=r.min_samples,
        target_samples=r.target_samples or None,
        max_samples=r.max_samples or None,
        max_train_s=r.max_train_s or None,
        threshold_metric=r.threshold_metric,
        threshold_value=None if r.threshold_value < 0 else r.threshold_value,
    )


def policy(config: Config) -> Policy:
    """The config's grouping policy (``strategy.policy`` and its settings)."""
    s = config.strategy
    try:
        schedule = parse_schedule(s.policy_schedule)
        staged = replace(_policy(config, s.policy, schedule), stage_deadlines=stage_deadlines(s.policy_schedule))
        return staged.at(1)  # the first stage, its deadline included
    except ValueError as err:
        raise ValueError(f"config key 'strategy.policy-schedule'={s.policy_schedule!r}: {err}") from None


def _policy(config: Config, name: str, schedule: Schedule) -> Policy:
    s = config.strategy
    return Policy(
        name=name,
        params=grouping_params(
            threshold_flops=s.threshold_flops,
            weak_mode=s.weak_mode,
            strong_mode=s.strong_mode,
            kmeans_modes=mode_list(config, "kmeans-modes"),
            cost_modes=mode_list(config, "cost-modes"),
        ),
        local_epochs=config.train.local_epochs,
        batch_size=config.train.batch_size,
        seed=config.run.seed,
        server_flops=config.fleet.server_flops,
        schedule=schedule,
    )


def split_settings(config: Config) -> SplitSettings:
    """The one settings object of the strategy and the server's half, from the run config."""
    t, s = config.train, config.strategy
    return SplitSettings(
        seed=config.run.seed,
        steps=t.steps_per_round,
        batch_size=t.batch_size,
        lr=t.lr,
        head_lr=t.head_lr,
        lr_decay_to=t.lr_decay_to,
        activation_dtype=t.activation_dtype,
        upload_topk=t.upload_topk,
        replay_lr_scale=t.replay_lr_scale,
        min_clients=s.min_clients,
        fraction_train=s.fraction_train,
        round_deadline_s=s.round_deadline_s,
        wait_for_nodes_s=s.wait_for_nodes_s,
        requery_every=s.requery_every,
        server_side=s.server_side,
        emulator_layers=t.emulator_layers,
        upload_kind=t.upload_kind,
        upload_rows=t.upload_rows,
        local_eval_size=t.local_eval_size,
        max_activation=s.max_activation,
        update_check=s.update_check,
        update_bound=s.update_bound,
        update_reference=s.update_reference,
        trust=s.trust,
        trust_z=s.trust_z,
        trust_exclude=s.trust_exclude,
        volume_cap=s.volume_cap,
        root_samples=s.root_samples,
        aggregation=s.aggregation,
        trim=s.trim,
        dp_clip=config.privacy.dp_clip,
        dp_noise=config.privacy.dp_noise,
        dp_delta=config.privacy.dp_delta,
        requirement=requirement(config),
        policy=policy(config),
        probe=ProbePlan(
            optimized=probe_mode(s.probe_mode, s.probe_dtype),
            rounds=parse_rounds(s.probe_rounds),
            plateau=s.probe_plateau,
            amount=s.probe_amount,
            criterion=s.probe_criterion,
            variant=s.probe_variant,
            min_saving=s.probe_min_saving,
        ),
    )
