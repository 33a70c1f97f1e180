"""The run configuration's schema: every setting, its default, bounds, choices and doc.

The frozen dataclasses here are the one place a setting is declared. Each field's
default is what the default job (``make run``, ``conf/base.yaml``) runs, so a preset in
``conf/`` holds only what differs from them. Each field's metadata carries ``doc``
(one line), ``low``/``high`` (inclusive bounds) and ``choices``; from them
:mod:`flower_app.config.load` validates a run config, and
:mod:`flower_app.config.reference` generates ``pyproject.toml``'s
``[tool.flwr.app.config]`` table and ``docs/reference/configuration.md``.

Python names are snake_case; a setting's key is its section and kebab-case name
(``train.steps-per-round``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from strategies.aggregate.robust import RULES, UPDATE_CHECKS
from strategies.policy.policies import POLICIES
from strategies.policy.requirements import THRESHOLD_METRICS
from strategies.probing.judge import AMOUNTS, CRITERIA, VARIANTS
from strategies.settings import ACTIVATION_DTYPES, SERVER_SIDES, TRUST_CHECKS, UPDATE_REFERENCES
from strategies.wire import names as wire

FAMILIES = ("text", "image")
IMAGE_DATASETS = ("digits", "mnist", "cifar10")
OBJECTIVES = ("classify", "causal-lm")


def _f(default, doc: str, low=None, high=None, choices=None):
    return field(default=default, metadata={"doc": doc, "low": low, "high": high, "choices": choices})


@dataclass(frozen=True)
class RunSettings:
    """The run: its name, seed, length, run directory and threads."""

    name: str = _f("default", "name of the run, shown in logs and the summary")
    seed: int = _f(42, "seed of every random choice (data split, batches, prefix init)")
    num_rounds: int = _f(5, "federated rounds", low=1)
    run_dir: str = _f("runs/default", "run directory (relative paths are taken from the working directory)")
    resume: bool = _f(False, "continue from the run directory's checkpoint")
    server_threads: int = _f(0, "torch threads on the server (0: torch's default)", low=0)
    client_threads: int = _f(1, "torch threads per client (simulated clients share the cores)", low=0)


@dataclass(frozen=True)
class ModelSettings:
    """The transformer, where it is split, and its prefix and head."""

    source: str = _f(
        "minilm", "'minilm' or 'smollm2' (offline), a local HF folder, a Hub id, or random-bert/gpt2/llama"
    )
    gguf_file: str = _f("", "GGUF file inside the model folder, if the weights are GGUF")
    allow_download: bool = _f(False, "allow fetching a Hub id (needs a machine that is online)")
    split_layer: int = _f(2, "transformer layers on the client", low=1)
    prefix_length: int = _f(16, "prefix slots per attention layer", low=1, high=512)
    head: str = _f("classifier", "output head", choices=("classifier", "lm"))
    # all-MiniLM-L6-v2, the default model, is trained for mean pooling.
    pooling: str = _f("mean", "pooling for a classifier head", choices=("pooler", "mean", "last"))
    verbalizer: str = _f(
        "",
        "label words of an LM head: class=word pairs (negative=bad,positive=good), or one word per class "
        "in sorted class order (bad,good); empty: the class names",
    )
    max_length: int = _f(64, "tokens per sample after truncation", low=4, high=4096)


@dataclass(frozen=True)
class DataSettings:
    """The data set, the training objective, and how samples are spread over clients."""

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
    max_classes: int = _f(1000, "most distinct labels a data file may hold (more: refused at load)", low=2)
    max_line_bytes: int = _f(
        1_000_000,
        "longest line (or CSV record) a local data file may hold, in bytes (longer: refused with file:line)",
        low=64,
    )


@dataclass(frozen=True)
class TrainSettings:
    """What a client trains each round, and how the boundary tensors and updates travel."""

    steps_per_round: int = _f(12, "minibatches each client trains per round", low=1, high=10_000)
    batch_size: int = _f(16, "samples per minibatch", low=1, high=4096)
    lr: float = _f(0.01, "Adam learning rate of the prefix", low=1e-8, high=10.0)
    head_lr: float = _f(0.01, "Adam learning rate of a trainable head", low=0.0, high=10.0)
    # At a constant lr of 0.01 the default job's held-out accuracy kept swinging (0.794, 0.780,
    # 0.777 in rounds 4-6); decayed to a tenth it ends at 0.797 (README, "The two commands").
    lr_decay_to: float = _f(
        0.1,
        "cosine decay of lr and head-lr over the rounds, to this fraction at the last (1: constant)",
        low=1e-6,
        high=1.0,
    )
    activation_dtype: str = _f(
        "float32", "dtype of boundary activations and gradients on the wire", choices=tuple(ACTIVATION_DTYPES)
    )
    local_epochs: int = _f(1, "local mode: passes of steps-per-round minibatches a round", low=1, high=100)
    emulator_layers: int = _f(
        1,
        "local mode: upper layers the emulator keeps (0: all, i.e. prefix FedAvg on the whole model)",
        low=0,
    )
    upload_kind: str = _f("activations", "centralized mode: what a client uploads once", choices=wire.UPLOAD_KINDS)
    upload_rows: int = _f(
        0,
        "centralized mode: most samples a client uploads (0: one round's plan, "
        "steps-per-round x batch-size); fewer when its energy budget cannot pay",
        low=0,
    )
    local_eval_size: int = _f(32, "local mode: held-back samples a client evaluates on (0: none)", low=0)
    upload_topk: float = _f(1.0, "split/local: top fraction of each update sent up (1: dense)", 1e-6, 1.0)
    replay_lr_scale: float = _f(
        1.0,
        "split mode: the client's replayed steps take lr times this (0: its half stays frozen)",
        low=0.0,
        high=10.0,
    )


@dataclass(frozen=True)
class StrategySettings:
    """Sampling, grouping policies, robust aggregation and probing of the server's strategy."""

    min_clients: int = _f(2, "fewest replies a round needs; fewer stops the run cleanly", low=1)
    fraction_train: float = _f(1.0, "fraction of connected clients sampled each round", low=1e-6, high=1.0)
    round_deadline_s: float = _f(
        0.0,
        "simulated seconds a round may take: a client the cost model expects to need longer sits it out (0: none)",
        low=0.0,
    )
    timeout_s: float = _f(600.0, "seconds to wait for the replies of one exchange", low=1.0)
    server_side: str = _f(
        "sequential", "server tensors trained through clients in turn, or a copy per client", choices=SERVER_SIDES
    )
    wait_for_nodes_s: float = _f(120.0, "seconds to wait for min-clients nodes to connect", low=0.0)
    requery_every: int = _f(
        0,
        "ask known clients for their device profile again every N rounds and re-plan if one changed or a channel moves "
        "(0: never)",
        low=0,
    )
    policy: str = _f("split", "a mode for every client, or a grouping policy", choices=POLICIES)
    policy_schedule: str = _f(
        "",
        "policies by stage, 'policy:rounds[@deadline-s],...' (the last stage may leave out its rounds), "
        "e.g. 'cost:1,threshold'; replaces strategy.policy ('': strategy.policy throughout)",
    )
    threshold_flops: float = _f(2e10, "threshold policy: capability (FLOP/s) below which a client is weak", low=0.0)
    weak_mode: str = _f("centralized", "threshold policy: mode of the weak group", choices=wire.MODES)
    strong_mode: str = _f("split", "threshold policy: mode of the strong group", choices=wire.MODES)
    kmeans_modes: str = _f("centralized,split,local", "kmeans policy: one mode per cluster, weakest first")
    update_check: str = _f(
        "clip",
        "a client update above update-bound x the reference norm (update-reference): clip, reject or off",
        choices=UPDATE_CHECKS,
    )
    update_bound: float = _f(3.0, "update-check bound, a multiple of the reference update norm", low=1.0)
    update_reference: str = _f(
        "history",
        "the norm update-bound multiplies: this round's median, or the median of earlier rounds' accepted updates "
        "(colluders in one round cannot raise it)",
        choices=UPDATE_REFERENCES,
    )
    trust: str = _f(
        "screen",
        "split clients' losses and activations screened against their peers'; a client found out of line loses "
        "reputation, and below trust-exclude it trains neither the server's half nor the average (off: none)",
        choices=TRUST_CHECKS,
    )
    trust_z: float = _f(
        3.5,
        "screen: robust z-score (median/MAD over the round's clients) beyond which a client is out of line",
        low=1.0,
    )
    trust_exclude: float = _f(
        0.5,
        "screen: reputation below which a client is left out of the round (reputations start at 1)",
        low=0.0,
        high=1.0,
    )
    volume_cap: float = _f(
        3.0, "a contribution's data volume is capped at this multiple of the round's median volume (0: no cap)", low=0.0
    )
    root_samples: int = _f(
        0,
        "FLTrust: training samples the server keeps as its own root set; client updates are weighted by their "
        "direction's agreement with the server's update on it and scaled to its norm (0: off)",
        low=0,
    )
    aggregation: str = _f("mean", "rule per value, weighted by data volume: mean, median or trimmed", choices=RULES)
    trim: float = _f(0.2, "trimmed rule: fraction of the volume cut from each end", low=0.0, high=0.49)
    max_activation: float = _f(
        1e4,
        "largest boundary activation magnitude the server trains on (larger: reply dropped)",
        low=1e-6,
    )
    cost_modes: str = _f("local,split,centralized", "cost policy: modes a client may be given")
    probe_dtype: str = _f(
        "", "probing: probe-mode limited to a wire dtype ('': none)", choices=("", *ACTIVATION_DTYPES)
    )
    probe_mode: str = _f(
        "",
        f"probing: the optimized mode, a wire codec ({', '.join(ACTIVATION_DTYPES)}), topk:F or plan:M"
        " ('': probe-dtype's)",
    )
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
    server_flops: float = _f(1e13, "server compute, FLOP/s, for the simulated clock", low=1.0)


@dataclass(frozen=True)
class RequirementSettings:
    """The training requirement sent in every train message (0 = no bound)."""

    min_samples: int = _f(1, "fewest samples a client must hold to train", low=1)
    target_samples: int = _f(0, "samples a client should train on (0: all it holds)", low=0)
    max_samples: int = _f(0, "most samples a client may train on (0: no cap)", low=0)
    max_train_s: float = _f(0.0, "client training time limit per round, seconds (0: none)", low=0.0)
    threshold_metric: str = _f("accuracy", "metric of the local evaluation a client checks", choices=THRESHOLD_METRICS)
    threshold_value: float = _f(-1.0, "worst acceptable local result (-1: no check)", low=-1.0)


@dataclass(frozen=True)
class EvalSettings:
    """The server's evaluation of the global model."""

    every: int = _f(1, "evaluate the global model on the server's test split every N rounds", low=1)
    batch_size: int = _f(64, "samples per evaluation batch", low=1)


@dataclass(frozen=True)
class TaskSettings:
    """Which task family the run trains."""

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
class PrivacySettings:
    """What the server can learn from the wire: the device's activation defences, DP for the prefix average."""

    act_clip: float = _f(0.0, "device: clip each token's boundary activation to this L2 norm (0: no clip)", low=0.0)
    act_noise: float = _f(
        0.0,
        "device: Gaussian noise on each token's clipped activation, expected norm act-noise x act-clip (0: none)",
        low=0.0,
    )
    act_directions: str = _f(
        "isotropic",
        "device: noise in every direction, or only in the token embeddings' top act-rank principal directions",
        choices=("isotropic", "embedding"),
    )
    act_rank: int = _f(32, "embedding directions: how many principal directions the noise lies in", low=1)
    dp_clip: float = _f(0.0, "DP for the prefix average: clip each client's update to this L2 norm (0: off)", low=0.0)
    dp_noise: float = _f(
        0.0, "DP: Gaussian noise multiplier on the clipped updates' sum (std dp-noise x dp-clip)", low=0.0
    )
    dp_delta: float = _f(1e-5, "DP: the delta of the (epsilon, delta) the run reports", low=1e-12, high=0.1)


@dataclass(frozen=True)
class Config:
    """The whole run configuration, one settings dataclass per section."""

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
    privacy: PrivacySettings = field(default_factory=PrivacySettings)


@dataclass(frozen=True)
class Setting:
    """One setting: its key, default and checks, as validation and the reference read them."""

    section: str
    key: str  # kebab-case, e.g. "steps-per-round"
    default: Any
    doc: str
    low: float | None
    high: float | None
    choices: tuple[Any, ...] | None
    kind: str  # "int", "float", "bool" or "str"

    @property
    def name(self) -> str:
        """The dotted key a run config uses, e.g. ``train.steps-per-round``."""
        return f"{self.section}.{self.key}"


def kebab(name: str) -> str:
    """A Python field name as a config key."""
    return name.replace("_", "-")


def section_classes() -> dict[str, type]:
    """Section key -> its settings dataclass, in :class:`Config`'s order."""
    return {s.name: s.default_factory for s in dataclasses.fields(Config)}  # type: ignore[misc]


def settings() -> Iterator[Setting]:
    """Every setting of :class:`Config`, section by section, in declaration order."""
    for section, cls in section_classes().items():
        for spec in dataclasses.fields(cls):
            meta = spec.metadata
            yield Setting(
                section=section,
                key=kebab(spec.name),
                default=spec.default,
                doc=meta["doc"],
                low=meta["low"],
                high=meta["high"],
                choices=tuple(meta["choices"]) if meta["choices"] else None,
                kind=str(spec.type),
            )
