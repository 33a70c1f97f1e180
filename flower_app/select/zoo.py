"""The model zoo: candidates for a task, the device constraints, the probe's budget.

A zoo file (``conf/zoo/<name>.yaml``, ``default`` unless named, or any YAML path) reads::

    task:                       # the job every candidate is for
      name: rotten-tomatoes     # names the task in the history file
      config: base              # a conf/ name or YAML path, as load_config's `config`
      nodes: 4                  # simulated clients of the planned run
      overrides: {run.num-rounds: 4, ...}
    constraints:
      device: {cpu-hz-max: 1.5e9, ...}   # the reference device (strategies.fleet.devices.PROFILE_KEYS)
      max-memory-bytes: ...     # default: the device's memory-bytes
      max-device-params: ...    # parameters the device holds (embeddings + its layers)
      max-round-latency-s: ...  # simulated, cost model
      max-round-energy-j: ...   # default: the device's energy-budget-j
      max-uplink-bytes: ...     # per round
    probe: {rounds: 3, clients: 2, steps-per-round: 2, min-history-runs: 8}
    history: runs/select/history.jsonl
    candidates:
      - name: minilm            # dotted overrides of the task's config ...
        model.source: minilm
        grid:                   # ... and optionally lists to expand (every combination)
          model.split-layer: [1, 2]
          train.lr: [0.003, 0.01]

Every candidate's run config is checked by :func:`flower_app.config.load.load_config` when the
zoo loads, so a misspelt key or an out-of-range value stops at start with one line.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from flower_app.config.load import CONF_DIR, load_config
from flower_app.config.schema import Config
from strategies.fleet.devices import DeviceProfile, from_config
from strategies.selection.rank import SELECTABLE_MODES, Limits, limits_for

# Zoo constraint key -> strategies.selection.rank.Limits field.
CONSTRAINT_KEYS = {
    "max-memory-bytes": "memory_bytes",
    "max-device-params": "device_params",
    "max-round-latency-s": "latency_s",
    "max-round-energy-j": "energy_j",
    "max-uplink-bytes": "uplink_bytes",
}
ZOO_DIR = CONF_DIR / "zoo"
_SECTIONS = ("task", "constraints", "probe", "history", "candidates")


@dataclass(frozen=True)
class ProbeBudget:
    """How much a probe trains: ``rounds`` rounds of ``clients`` clients, ``steps`` minibatches each."""

    rounds: int = 3
    clients: int = 2
    steps: int = 2
    min_history_runs: int = 8


@dataclass(frozen=True)
class Candidate:
    """One entry of the zoo: a name and the run config (task config plus its overrides)."""

    name: str
    run_config: dict[str, Any]
    config: Config = field(compare=False, repr=False)

    @property
    def mode(self) -> str:
        return self.config.strategy.policy


@dataclass(frozen=True)
class Zoo:
    task: str
    nodes: int
    candidates: tuple[Candidate, ...]
    device: DeviceProfile
    limits: Limits
    probe: ProbeBudget
    history: Path


def load_zoo(name_or_path: str | Path = "default") -> Zoo:
    """Read and check a zoo (a name in ``conf/zoo/`` or a YAML path); errors name the key at fault."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = ZOO_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in ZOO_DIR.glob("*.yaml"))
            raise ValueError(f"unknown zoo '{name_or_path}': expected one of {known} or a path to a YAML file")
    if not path.is_file():
        raise ValueError(f"zoo file {path} not found")
    tree = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(tree, dict):
        raise ValueError(f"zoo file {path} must be a mapping of sections {list(_SECTIONS)}")
    unknown = sorted(set(map(str, tree)) - set(_SECTIONS))
    if unknown:
        raise ValueError(f"zoo file {path}: unknown section(s) {unknown}; valid: {list(_SECTIONS)}")
    task = _mapping(tree.get("task", {}), "task")
    base = {"config": str(task.get("config", "base")), **_mapping(task.get("overrides", {}), "task.overrides")}
    nodes = _positive_int(task.get("nodes", 10), "task.nodes")
    entries = tree.get("candidates") or []
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"zoo file {path}: 'candidates' must be a non-empty list")
    candidates = [c for i, entry in enumerate(entries) for c in _expand(_mapping(entry, f"candidates[{i}]"), base)]
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"zoo file {path}: candidate names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    device, limits = _constraints(_mapping(tree.get("constraints", {}), "constraints"))
    return Zoo(
        task=str(task.get("name", base["config"])),
        nodes=nodes,
        candidates=tuple(candidates),
        device=device,
        limits=limits,
        probe=_probe(_mapping(tree.get("probe", {}), "probe")),
        history=Path(str(tree.get("history", "runs/select/history.jsonl"))),
    )


def _expand(entry: Mapping[str, Any], base: Mapping[str, Any]) -> list[Candidate]:
    """A zoo entry as candidates: one per combination of its grid's values."""
    entry = dict(entry)
    name = str(entry.pop("name", "")).strip()
    if not name:
        raise ValueError(f"a zoo candidate needs a 'name': {dict(entry)}")
    grid = _mapping(entry.pop("grid", {}), f"{name}.grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"zoo candidate '{name}': grid '{key}' must be a non-empty list, got {values!r}")
    out = []
    for combo in itertools.product(*grid.values()):
        chosen = dict(zip(grid, combo, strict=True))
        suffix = "".join(f"-{key.rsplit('.', 1)[-1]}={value}" for key, value in chosen.items())
        run_config = {**base, **entry, **chosen}
        try:
            config = load_config(run_config)
        except ValueError as err:
            raise ValueError(f"zoo candidate '{name}{suffix}': {err}") from None
        if config.strategy.policy not in SELECTABLE_MODES:
            raise ValueError(
                f"zoo candidate '{name}{suffix}': strategy.policy '{config.strategy.policy}' "
                f"must be a single mode {list(SELECTABLE_MODES)}"
            )
        out.append(Candidate(name + suffix, run_config, config))
    return out


def _constraints(section: Mapping[str, Any]) -> tuple[DeviceProfile, Limits]:
    section = dict(section)
    if "device" not in section:
        raise ValueError("zoo 'constraints' needs a 'device' (a device profile, keys of strategies.fleet.devices)")
    try:
        device = from_config(_mapping(section.pop("device"), "constraints.device"))
    except ValueError as err:
        raise ValueError(f"zoo constraints.device: {err}") from None
    unknown = sorted(set(section) - set(CONSTRAINT_KEYS))
    if unknown:
        raise ValueError(f"zoo constraints: unknown key(s) {unknown}; valid: {sorted(CONSTRAINT_KEYS)}")
    given = {CONSTRAINT_KEYS[k]: (None if v is None else _number(v, f"constraints.{k}")) for k, v in section.items()}
    return device, limits_for(device, given)


def _probe(section: Mapping[str, Any]) -> ProbeBudget:
    known = {"rounds", "clients", "steps-per-round", "min-history-runs"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"zoo probe: unknown key(s) {unknown}; valid: {sorted(known)}")
    default = ProbeBudget()
    rounds = _positive_int(section.get("rounds", default.rounds), "probe.rounds")
    if rounds < 2:
        raise ValueError(f"zoo probe.rounds={rounds}: a curve fit needs two or more rounds")
    return ProbeBudget(
        rounds=rounds,
        clients=_positive_int(section.get("clients", default.clients), "probe.clients"),
        steps=_positive_int(section.get("steps-per-round", default.steps), "probe.steps-per-round"),
        min_history_runs=_positive_int(
            section.get("min-history-runs", default.min_history_runs), "probe.min-history-runs"
        ),
    )


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"zoo '{where}' must be a mapping, got {value!r}")
    return {str(k): v for k, v in value.items()}


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"zoo '{where}' must be a number, got {value!r}")
    return float(value)


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"zoo '{where}' must be a positive integer, got {value!r}")
    return value
