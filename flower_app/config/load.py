"""Run configuration: a preset, scalar overrides, typed and validated.

The defaults are :mod:`flower_app.config.schema`'s. ``conf/<name>.yaml`` holds a preset:
only the settings that differ from them (``base``, the default job, holds none; ``test``
and the others hold their own). Flower's ``context.run_config`` (``[tool.flwr.app.config]``
plus ``flwr run --run-config``) holds the preset's name under ``config`` and scalar
overrides under dotted kebab-case keys such as ``train.lr``. They are merged with
OmegaConf and validated into :class:`Config`: a misspelt key or an out-of-range value
stops the run at start with a message that names it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from flower_app.config.schema import Config, Setting, kebab, section_classes, settings
from flower_app.config.strategy_settings import mode_list, split_settings
from flower_app.privacy.checks import check_defences
from flower_app.tasks.lm import check_objective

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
_KINDS: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}


def load_config(run_config: Mapping[str, Any] | None = None) -> Config:
    """Merge ``conf/<config>.yaml`` and flat dotted overrides into a validated :class:`Config`."""
    # "" in [tool.flwr.app.config] means "keep the preset's value" (flwr only overrides listed keys).
    overrides = {k: v for k, v in (run_config or {}).items() if v != ""}
    name = str(overrides.pop("config", "base"))
    merged = OmegaConf.merge(preset(name), OmegaConf.from_dotlist([f"{k}={_dot(v)}" for k, v in overrides.items()]))
    tree = OmegaConf.to_container(merged, resolve=True)
    if not isinstance(tree, dict):
        raise ValueError(f"config '{name}' must be a mapping of sections, got {type(tree).__name__}")
    return from_dict({str(k): v for k, v in tree.items()})


def preset(name: str) -> Any:
    """The OmegaConf tree of preset ``name`` (a file in ``conf/`` or a YAML path); empty: all defaults."""
    tree = OmegaConf.load(yaml_path(name))
    return OmegaConf.create({}) if tree is None else tree


def _dot(value: Any) -> str:
    # from_dotlist parses YAML scalars: quote strings so '1e-3'-like text stays what the user typed.
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def yaml_path(name: str) -> Path:
    """The YAML file of a preset name (``conf/<name>.yaml``) or of a path to one."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = CONF_DIR / f"{name}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
        raise ValueError(f"config '{name}' not found: expected one of {known} or a path to a YAML file")
    return candidate


def from_dict(tree: Mapping[str, Any]) -> Config:
    """Validate a nested dict with kebab-case keys into a :class:`Config`.

    Each value is checked against its field's type, bounds and choices; then the settings
    that depend on each other (mode lists, the causal-LM objective, the activation defences,
    the strategy's settings, probing) are checked together by building what the run will build from them.
    """
    classes = section_classes()
    specs = {(s.section, s.key): s for s in settings()}
    sections = {}
    for section, values in tree.items():
        _known(section, list(classes), "")
        if not isinstance(values, Mapping):
            raise ValueError(f"config key '{section}' must be a section (a mapping), got {values!r}")
        keys = [k for s, k in specs if s == section]
        kwargs = {}
        for key, value in values.items():
            _known(key, keys, section)
            kwargs[key.replace("-", "_")] = check(specs[section, key], value)
        sections[section] = classes[section](**kwargs)
    config = Config(**sections)
    for key in ("kmeans-modes", "cost-modes"):
        mode_list(config, key)
    check_objective(config)  # causal-lm: an LM head and templates that render
    check_defences(config)  # activation noise needs a clip; embedding directions need embeddings
    split_settings(config)  # cross-checks: policy schedule, probe rounds, probe dtype
    return config


def _known(key: str, keys: list[str], prefix: str) -> None:
    if key in keys:
        return
    where = f"{prefix}.{key}" if prefix else key
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
    raise ValueError(f"unknown config key '{where}'{hint}; valid keys here: {sorted(keys)}")


def check(setting: Setting, value: Any) -> Any:
    """``value`` as the setting's type, or a ``ValueError`` naming the setting and its bounds."""
    name, kind = setting.name, _KINDS[setting.kind]
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
    if setting.choices and value not in setting.choices:
        raise ValueError(f"config key '{name}'={value!r} must be one of {list(setting.choices)}")
    if setting.low is not None and value < setting.low:
        raise ValueError(f"config key '{name}'={value!r} is below its minimum {setting.low}")
    if setting.high is not None and value > setting.high:
        raise ValueError(f"config key '{name}'={value!r} is above its maximum {setting.high}")
    return value


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The resolved config with kebab-case keys (written to the run directory)."""
    return {
        s.name: {kebab(k): v for k, v in dataclasses.asdict(getattr(config, s.name)).items()}
        for s in dataclasses.fields(config)
    }
