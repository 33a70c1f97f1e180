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

from flower_app.config.strategy_settings import mode_list, split_settings
from flower_app.tasks.lm import OBJECTIVES, check_objective
from strategies.aggregate.robust import RULES, UPDATE_CHECKS
from strategies.policy.policies import POLICIES, Policy
from strategies.policy.requirements import THRESHOLD_METRICS, TrainingRequirement
from strategies.probing.judge import AMOUNTS, CRITERIA, VARIANTS
from strategies.settings import ACTIVATION_DTYPES, SERVER_SIDES, SplitSettings
from strategies.wire import names as wire

FAMILIES = ("text", "image")
IMAGE_DATASETS = ("digits", "mnist", "cifar10")
# The strategy's defaults are the config's: one default per setting.
_S, _P, _R = SplitSettings(), Policy(), TrainingRequirement()
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


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
    lr_decay_to: float = _f(
        _S.lr_decay_to,
        "cosine decay of lr and head-lr over the rounds, to this fraction at the last (1: constant)",
        low=1e-6,
        high=1.0,
    )
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
    replay_lr_scale: float = _f(
        _S.replay_lr_scale,
        "split mode: the client's replayed steps take lr times this (0: its half stays frozen)",
        low=0.0,
        high=10.0,
    )


@dataclass(frozen=True)
class StrategySettings:
    min_clients: int = _f(_S.min_clients, "fewest replies a round needs; fewer stops the run cleanly", low=1)
    fraction_train: float = _f(
        _S.fraction_train, "fraction of connected clients sampled each round", low=1e-6, high=1.0
    )
    round_deadline_s: float = _f(
        _S.round_deadline_s,
        "simulated seconds a round may take: a client the cost model expects to need longer sits it out (0: none)",
        low=0.0,
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
    policy_schedule: str = _f(
        "",
        "policies by stage, 'policy:rounds[@deadline-s],...' (the last stage may leave out its rounds), "
        "e.g. 'cost:1,threshold'; replaces strategy.policy ('': strategy.policy throughout)",
    )
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
    probe_mode: str = _f("", "probing: the optimized mode, float16, int8, int4, topk:F or plan:M ('': probe-dtype's)")
    probe_rounds: str = _f("", "probing: comma-separated rounds that start a probe stage")
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
    probe_variant: str = _f("sequential", "probing: two trial rounds, or one round on two halves", choices=VARIANTS)
    probe_min_saving: float = _f(
        0.05,
        "probing, rate criterion: least fraction of a round's simulated time a compressed mode must save to be taken",
        low=0.0,
        high=0.99,
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
class TaskSettings:
    family: str = _f(
        "text", "task family: prefix tuning of a transformer on text, or image semantic communication", choices=FAMILIES
    )


@dataclass(frozen=True)
class ImageSettings:
    """The image task (``task.family=image``): data, split network and channel."""

    dataset: str = _f(
        "digits", "scikit-learn's 8x8 digits (packaged), or MNIST/CIFAR-10 from image.data-root", choices=IMAGE_DATASETS
    )
    data_root: str = _f("", "folder holding torchvision's MNIST/CIFAR-10 files (never downloaded)")
    conv_width: int = _f(32, "channels of the stem and of every residual block", low=1, high=1024)
    encoder_blocks: int = _f(2, "residual blocks on the device", low=1, high=64)
    decoder_blocks: int = _f(2, "residual blocks on the server (local mode's emulator drops some)", low=1, high=64)
    boundary_channels: int = _f(8, "channel symbols per feature-map position sent over the channel", low=1, high=1024)
    trainable: str = _f(
        "full", "every weight, or only batch-norm scale/shift adapters and the head", choices=("full", "adapters")
    )
    channel: str = _f(
        "awgn", "the split's channel: AWGN after power normalisation, or noiseless", choices=("awgn", "noiseless")
    )
    channel_train: bool = _f(True, "noise in the training forwards too (false: noiseless training, noisy test)")
    snr_source: str = _f(
        "profile", "each device's SNR: p h / N0B of its channel profile, or image.snr-db", choices=("profile", "config")
    )
    snr_db: float = _f(
        10.0,
        "SNR in dB of the server's evaluation and pool training (and of devices: snr-source=config)",
        low=-40.0,
        high=100.0,
    )
    quant_bits: int = _f(0, "bits per channel symbol of a uniform quantiser (0: none)", low=0, high=16)
    augment: int = _f(0, "seeded augmented copies (random affine) of each training image (0: none)", low=0, high=16)


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
    task: TaskSettings = field(default_factory=TaskSettings)
    image: ImageSettings = field(default_factory=ImageSettings)


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
