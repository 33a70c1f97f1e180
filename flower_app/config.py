"""Run configuration: YAML defaults, scalar overrides, typed and validated.

``conf/<name>.yaml`` holds the structured defaults (``base``, ``test``, or any
YAML path). Flower's ``context.run_config`` (``[tool.flwr.app.config]`` plus
``flwr run --run-config``) holds the config name under ``config`` and scalar
overrides under dotted kebab-case keys such as ``train.lr``. They are merged
with OmegaConf and validated into :class:`Config`: a misspelt key or an
out-of-range value stops the run at start with a message that names it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from flower_app.lm_task import OBJECTIVES, check_objective
from strategies import wire
from strategies.fleet import POLICIES, Policy
from strategies.probing import AMOUNTS, CRITERIA, ProbePlan, parse_rounds
from strategies.requirements import THRESHOLD_METRICS, TrainingRequirement
from strategies.robust import RULES, UPDATE_CHECKS
from strategies.settings import ACTIVATION_DTYPES, SERVER_SIDES, SplitSettings
from strategies.train_modes import probe_mode

# The strategy's defaults are the config's: one default per setting.
_S, _P, _R = SplitSettings(), Policy(), TrainingRequirement()
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _f(default, help: str, low=None, high=None, choices=None):  # noqa: A002 - 'help' reads best here
    return field(default=default, metadata={"help": help, "low": low, "high": high, "choices": choices})


@dataclass(frozen=True)
class RunSettings:
    name: str = _f("default", "name of the run, shown in logs and the summary")
    seed: int = _f(_S.seed, "seed of every random choice (data split, batches, prefix init)")
    num_rounds: int = _f(8, "federated rounds", low=1)
    run_dir: str = _f("runs/default", "run directory (relative paths are taken from the working directory)")
    resume: bool = _f(False, "continue from the run directory's checkpoint")
    server_threads: int = _f(0, "torch threads on the server (0: torch's default)", low=0)
    client_threads: int = _f(1, "torch threads per client (simulated clients share the cores)", low=0)


@dataclass(frozen=True)
class ModelSettings:
    source: str = _f(
        "minilm", "'minilm' or 'smollm2' (offline), a local HF folder, a Hub id, or random-bert/gpt2/llama"
    )
    gguf_file: str = _f("", "GGUF file inside the model folder, if the weights are GGUF")
    allow_download: bool = _f(False, "allow fetching a Hub id (needs a machine that is online)")
    split_layer: int = _f(2, "transformer layers on the client", low=1)
    prefix_length: int = _f(16, "prefix slots per attention layer", low=1, high=512)
    head: str = _f("classifier", "output head", choices=("classifier", "lm"))
    pooling: str = _f("mean", "pooling for a classifier head", choices=("pooler", "mean", "last"))
    verbalizer: str = _f("", "comma-separated label words for an LM head, one per label")
    max_length: int = _f(64, "tokens per sample after truncation", low=4, high=4096)


@dataclass(frozen=True)
class DataSettings:
    source: str = _f(
        "rotten-tomatoes", "'rotten-tomatoes', 'guardian-headlines', 'synthetic' or a path to a .csv/.jsonl file"
    )
    objective: str = _f(
        "classify",
        "'classify' (a class per sample) or 'causal-lm' (continue a prompt with a target; needs model.head=lm)",
        choices=OBJECTIVES,
    )
    prompt: str = _f("", "causal-lm: prompt template with {text} and {label} (empty: the data source's default)")
    target: str = _f("", "causal-lm: target template, the tokens that are scored (empty: the source's default)")
    text_column: str = _f("text", "text column of a local file")
    label_column: str = _f("label", "label column of a local file")
    classes: str = _f("", "comma-separated class names of a local file, in id order (empty: from the labels)")
    test_size: int = _f(1000, "held-out samples for the server's test split", low=1)
    partitioner: str = _f("iid", "how samples are spread over clients", choices=("iid", "dirichlet"))
    alpha: float = _f(0.5, "Dirichlet concentration (smaller: more label skew)", low=1e-3)
    num_partitions: int = _f(10, "partitions (simulation overrides it with the node count)", low=1)


@dataclass(frozen=True)
class TrainSettings:
    steps_per_round: int = _f(_S.steps, "minibatches each client trains per round", low=1, high=10_000)
    batch_size: int = _f(_S.batch_size, "samples per minibatch", low=1, high=4096)
    lr: float = _f(_S.lr, "Adam learning rate of the prefix", low=1e-8, high=10.0)
    head_lr: float = _f(_S.head_lr, "Adam learning rate of a trainable head", low=0.0, high=10.0)
    activation_dtype: str = _f(
        _S.activation_dtype, "dtype of boundary activations and gradients on the wire", choices=tuple(ACTIVATION_DTYPES)
    )
    local_epochs: int = _f(
        _P.local_epochs, "local mode: passes of steps-per-round minibatches a round", low=1, high=100
    )
    emulator_layers: int = _f(
        _S.emulator_layers,
        "local mode: upper layers the emulator keeps (0: all, i.e. prefix FedAvg on the whole model)",
        low=0,
    )
    upload_kind: str = _f(_S.upload_kind, "centralized mode: what a client uploads once", choices=wire.UPLOAD_KINDS)
    upload_rows: int = _f(
        _S.upload_rows,
        "centralized mode: most samples a client uploads (0: one round's plan, "
        "steps-per-round x batch-size); fewer when its energy budget cannot pay",
        low=0,
    )
    local_eval_size: int = _f(
        _S.local_eval_size, "local mode: held-back samples a client evaluates on (0: none)", low=0
    )
    upload_topk: float = _f(_S.upload_topk, "split/local: top fraction of each update sent up (1: dense)", 1e-6, 1.0)


@dataclass(frozen=True)
class StrategySettings:
    min_clients: int = _f(_S.min_clients, "fewest replies a round needs; fewer stops the run cleanly", low=1)
    fraction_train: float = _f(
        _S.fraction_train, "fraction of connected clients sampled each round", low=1e-6, high=1.0
    )
    timeout_s: float = _f(600.0, "seconds to wait for the replies of one exchange", low=1.0)
    server_side: str = _f(
        _S.server_side, "server tensors trained through clients in turn, or a copy per client", choices=SERVER_SIDES
    )
    wait_for_nodes_s: float = _f(_S.wait_for_nodes_s, "seconds to wait for min-clients nodes to connect", low=0.0)
    requery_every: int = _f(
        _S.requery_every,
        "ask known clients for their device profile again every N rounds and re-plan if one changed or a channel moves "
        "(0: never)",
        low=0,
    )
    policy: str = _f(_P.name, "a mode for every client, or a grouping policy", choices=POLICIES)
    threshold_flops: float = _f(
        _P.threshold_flops, "threshold policy: capability (FLOP/s) below which a client is weak", low=0.0
    )
    weak_mode: str = _f(_P.weak_mode, "threshold policy: mode of the weak group", choices=wire.MODES)
    strong_mode: str = _f(_P.strong_mode, "threshold policy: mode of the strong group", choices=wire.MODES)
    kmeans_modes: str = _f(",".join(_P.kmeans_modes), "kmeans policy: one mode per cluster, weakest first")
    update_check: str = _f(
        _S.update_check,
        "a client update above update-bound x the round's median norm: clip, reject or off",
        choices=UPDATE_CHECKS,
    )
    update_bound: float = _f(
        _S.update_bound, "update-check bound, a multiple of the round's median update norm", low=1.0
    )
    aggregation: str = _f(
        _S.aggregation, "rule per value, weighted by data volume: mean, median or trimmed", choices=RULES
    )
    trim: float = _f(_S.trim, "trimmed rule: fraction of the volume cut from each end", low=0.0, high=0.49)
    max_activation: float = _f(
        _S.max_activation,
        "largest boundary activation magnitude the server trains on (larger: reply dropped)",
        low=1e-6,
    )
    cost_modes: str = _f(",".join(_P.cost_modes), "cost policy: modes a client may be given")
    probe_dtype: str = _f(
        "", "probing: probe-mode limited to a wire dtype ('': none)", choices=("", *ACTIVATION_DTYPES)
    )
    probe_mode: str = _f("", "probing: the optimized mode, float16, int8, topk:F or plan:M ('': probe-dtype's)")
    probe_rounds: str = _f("", "probing: comma-separated rounds that start a probe stage (two rounds each)")
    probe_plateau: float = _f(
        0.0,
        "probing: also probe after a round whose held-out loss fell by less than this fraction (0: off)",
        low=0.0,
        high=0.99,
    )
    probe_amount: str = _f("loss", "probing: convergence amount, held-out loss drop or accuracy gain", choices=AMOUNTS)
    probe_criterion: str = _f(
        "rate",
        "probing: keep the mode of higher amount per simulated second, or of higher accuracy",
        choices=CRITERIA,
    )


@dataclass(frozen=True)
class FleetSettings:
    """Device profiles of simulated nodes (deployed nodes report their own, see the README)."""

    preset: str = _f("bimodal", "fleet preset in conf/fleet/ or a YAML path")
    server_flops: float = _f(_P.server_flops, "server compute, FLOP/s, for the simulated clock", low=1.0)


@dataclass(frozen=True)
class RequirementSettings:
    """The training requirement sent in every train message (0 = no bound)."""

    min_samples: int = _f(_R.min_samples, "fewest samples a client must hold to train", low=1)
    target_samples: int = _f(0, "samples a client should train on (0: all it holds)", low=0)
    max_samples: int = _f(0, "most samples a client may train on (0: no cap)", low=0)
    max_train_s: float = _f(0.0, "client training time limit per round, seconds (0: none)", low=0.0)
    threshold_metric: str = _f(
        _R.threshold_metric, "metric of the local evaluation a client checks", choices=THRESHOLD_METRICS
    )
    threshold_value: float = _f(-1.0, "worst acceptable local result (-1: no check)", low=-1.0)


@dataclass(frozen=True)
class EvalSettings:
    every: int = _f(1, "evaluate the global model on the server's test split every N rounds", low=1)
    batch_size: int = _f(64, "samples per evaluation batch", low=1)


@dataclass(frozen=True)
class Config:
    run: RunSettings = field(default_factory=RunSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    strategy: StrategySettings = field(default_factory=StrategySettings)
    requirement: RequirementSettings = field(default_factory=RequirementSettings)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)


def load_config(run_config: Mapping[str, Any] | None = None) -> Config:
    """Merge ``conf/<config>.yaml`` and flat dotted overrides into a validated :class:`Config`."""
    # "" in [tool.flwr.app.config] means "keep the YAML's value" (flwr only overrides listed keys).
    overrides = {k: v for k, v in (run_config or {}).items() if v != ""}
    name = str(overrides.pop("config", "base"))
    base = OmegaConf.load(_yaml_path(name))
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist([f"{k}={_dot(v)}" for k, v in overrides.items()]))
    tree = OmegaConf.to_container(merged, resolve=True)
    if not isinstance(tree, dict):
        raise ValueError(f"config '{name}' must be a mapping of sections, got {type(tree).__name__}")
    return from_dict({str(k): v for k, v in tree.items()})


def _dot(value: Any) -> str:
    # from_dotlist parses YAML scalars: quote strings so '1e-3'-like text stays what the user typed.
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def _yaml_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = CONF_DIR / f"{name}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
        raise ValueError(f"config '{name}' not found: expected one of {known} or a path to a YAML file")
    return candidate


def from_dict(tree: Mapping[str, Any]) -> Config:
    """Validate a nested dict with kebab-case keys into a :class:`Config`."""
    sections = {}
    for key, value in tree.items():
        section = _field(Config, key, "")
        if not isinstance(value, Mapping):
            raise ValueError(f"config key '{key}' must be a section (a mapping), got {value!r}")
        sections[section.name] = _section(section.type, value, key)
    config = Config(**sections)
    for key in ("kmeans-modes", "cost-modes"):
        mode_list(config, key)
    check_objective(config)  # causal-lm: an LM head and templates that render
    split_settings(config)  # cross-checks: probe rounds, probe dtype
    return config


def mode_list(config: Config, key: str) -> tuple[str, ...]:
    """A comma-separated ``strategy.<key>`` as modes, each checked."""
    text = getattr(config.strategy, key.replace("-", "_"))
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in wire.MODES]
    if not modes or bad:
        raise ValueError(f"config key 'strategy.{key}'={text!r} must list modes among {list(wire.MODES)}")
    return modes


def _section(cls_name, values: Mapping[str, Any], prefix: str):
    cls = globals()[cls_name] if isinstance(cls_name, str) else cls_name
    kwargs = {}
    for key, value in values.items():
        spec = _field(cls, key, prefix)
        kwargs[spec.name] = _check(f"{prefix}.{key}", spec, value)
    return cls(**kwargs)


def _field(cls, key: str, prefix: str) -> dataclasses.Field:
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
    if key not in fields:
        where = f"{prefix}.{key}" if prefix else key
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
        raise ValueError(f"unknown config key '{where}'{hint}; valid keys here: {sorted(fields)}")
    return fields[key]


def _check(name: str, spec: dataclasses.Field, value: Any):
    kind = {"int": int, "float": float, "bool": bool, "str": str}[str(spec.type)]
    if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"  # from a command line
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"config key '{name}' must be true or false, got {value!r}")
    if kind is int and (isinstance(value, bool) or not float(value).is_integer()):
        raise ValueError(f"config key '{name}' must be an integer, got {value!r}")
    try:
        value = kind(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config key '{name}' must be a {kind.__name__}, got {value!r}") from err
    if kind is float and not math.isfinite(value):
        raise ValueError(f"config key '{name}' must be a finite number, got {value!r}")
    meta = spec.metadata
    if meta["choices"] and value not in meta["choices"]:
        raise ValueError(f"config key '{name}'={value!r} must be one of {list(meta['choices'])}")
    if meta["low"] is not None and value < meta["low"]:
        raise ValueError(f"config key '{name}'={value!r} is below its minimum {meta['low']}")
    if meta["high"] is not None and value > meta["high"]:
        raise ValueError(f"config key '{name}'={value!r} is above its maximum {meta['high']}")
    return value


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The resolved config with kebab-case keys (written to the run directory)."""
    return {
        s.name: {k.replace("_", "-"): v for k, v in dataclasses.asdict(getattr(config, s.name)).items()}
        for s in dataclasses.fields(config)
    }


def reference() -> list[tuple[str, Any, str]]:
    """``(key, default, help)`` of every setting, for the README and ``--help`` output."""
    rows = []
    for section in dataclasses.fields(Config):
        for spec in dataclasses.fields(getattr(Config(), section.name)):
            rows.append((f"{section.name}.{spec.name.replace('_', '-')}", spec.default, spec.metadata["help"]))
    return rows


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
    return Policy(
        name=s.policy,
        threshold_flops=s.threshold_flops,
        weak_mode=s.weak_mode,
        strong_mode=s.strong_mode,
        kmeans_modes=mode_list(config, "kmeans-modes"),
        cost_modes=mode_list(config, "cost-modes"),
        local_epochs=config.train.local_epochs,
        batch_size=config.train.batch_size,
        seed=config.run.seed,
        server_flops=config.fleet.server_flops,
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
        activation_dtype=t.activation_dtype,
        upload_topk=t.upload_topk,
        min_clients=s.min_clients,
        fraction_train=s.fraction_train,
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
        aggregation=s.aggregation,
        trim=s.trim,
        requirement=requirement(config),
        policy=policy(config),
        probe=ProbePlan(
            optimized=probe_mode(s.probe_mode, s.probe_dtype),
            rounds=parse_rounds(s.probe_rounds),
            plateau=s.probe_plateau,
            amount=s.probe_amount,
            criterion=s.probe_criterion,
        ),
    )
