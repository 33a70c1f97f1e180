"""What is generated from the schema: pyproject's ``[tool.flwr.app.config]`` and the docs' reference.

:mod:`flower_app.config.schema` declares every setting once. From it come

- the run-config table of ``pyproject.toml``: flwr accepts a ``--run-config`` key only if the
  table declares it, so it lists every setting, each ``""`` ("keep the preset's value"), with
  its doc, default and bounds as a comment;
- ``docs/reference/configuration.md``: a table per section (key, default, allowed values,
  meaning) and what each preset in ``conf/`` changes.

The defaults shown are those of the default job (``make run``: preset ``base``).
Regenerate after changing the schema or a preset, and check that nothing drifted::

    python -m flower_app.config.reference --write    # make config-reference
    python -m flower_app.config.reference --check    # exit 1 and name the stale files
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from flower_app.config.load import CONF_DIR, load_config, preset, to_dict
from flower_app.config.schema import Setting, section_classes, settings

ROOT = CONF_DIR.parent
PYPROJECT = ROOT / "pyproject.toml"
REFERENCE = ROOT / "docs" / "reference" / "configuration.md"
DEFAULT_PRESET = "base"
# The generated part of pyproject.toml lies between these two lines; the rest is left as it is.
BEGIN = "# >>> run settings: generated from flower_app/config/schema.py by `make config-reference`"
END = "# <<< run settings"


def literal(value: Any) -> str:
    """A value as one writes it in YAML or ``--run-config`` (``true``, ``0.01``, ``"minilm"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float) and abs(value) >= 1e5:
        return f"{value:g}"  # 2e+10 reads better than 20000000000.0
    return repr(value)


def allowed(setting: Setting) -> str:
    """The setting's choices or bounds in words ("" when any value of its type goes)."""
    if setting.choices:
        return ", ".join(literal(c) for c in setting.choices)
    low, high = setting.low, setting.high
    if low is not None and high is not None:
        return f"{literal(low)} to {literal(high)}"
    if low is not None:
        return f"at least {literal(low)}"
    if high is not None:
        return f"at most {literal(high)}"
    return ""


def default_job() -> dict[str, dict[str, Any]]:
    """The resolved settings of the default job, by section and key."""
    return to_dict(load_config({"config": DEFAULT_PRESET}))


def pyproject_table() -> str:
    """The generated run-config tables of ``pyproject.toml``, markers included."""
    defaults = default_job()
    lines = [
        BEGIN,
        "# `config` names a preset in conf/ (base: the default job; test, image, llm, scale) or a path",
        '# to a YAML file. Every other key overrides one setting; "" keeps the preset\'s value.',
        "# Each comment: what the setting does, the default job's value, and the values allowed",
        "# (all in docs/reference/configuration.md).",
        '# Override on the command line: flwr run . local --run-config "train.lr=0.02 run.num-rounds=4"',
        "[tool.flwr.app.config]",
        f'config = "{DEFAULT_PRESET}"',
    ]
    section = None
    for s in settings():
        if s.section != section:
            section = s.section
            lines += ["", f"[tool.flwr.app.config.{section}]"]
        bounds = allowed(s)
        note = f"default {literal(defaults[s.section][s.key])}" + (f"; {bounds}" if bounds else "")
        lines.append(f'{s.key} = ""  # {s.doc} [{note}]')
    return "\n".join([*lines, END]) + "\n"


def with_table(pyproject: str, table: str) -> str:
    """``pyproject`` with its generated part replaced by ``table``."""
    if pyproject.count(BEGIN) != 1 or pyproject.count(END) != 1:
        raise ValueError(f"pyproject.toml must hold the lines '{BEGIN}' and '{END}' once each")
    head, rest = pyproject.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + table.rstrip("\n") + tail


def markdown() -> str:
    """``docs/reference/configuration.md``: a table per section, then the presets."""
    defaults = default_job()
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from flower_app/config/schema.py by `make config-reference`; edit the schema. -->",
        "",
        "Every setting of a run, section by section. **Default** is what the default job runs",
        f"(`make run`: preset `{DEFAULT_PRESET}`, which is the schema's defaults). A run takes a preset",
        "(`config=NAME`, a file in `conf/` or a path to a YAML file) and `section.key=value`",
        "overrides on top of it:",
        "",
        "```bash",
        "flwr run . local --run-config \"config='test' train.lr=0.02 run.num-rounds=4\"",
        ".venv/bin/python -m flower_app.apps.runner --nodes 4 config=test train.lr=0.02",
        "```",
        "",
        "A misspelt key or a value outside **Allowed** stops the run at start with a message that names",
        "it, e.g. `unknown config key 'train.lrr' (did you mean 'train.lr'?)`.",
    ]
    for section, cls in section_classes().items():
        out += ["", f"## `{section}`", "", _first_line(cls.__doc__), ""]
        out += ["| key | default | allowed | meaning |", "|---|---|---|---|"]
        for s in settings():
            if s.section == section:
                value = literal(defaults[section][s.key])
                out.append(f"| `{s.name}` | `{value}` | {_cell(allowed(s))} | {_cell(s.doc)} |")
    out += ["", "## Presets", "", "What each preset in `conf/` changes from the defaults above.", ""]
    for name in preset_names():
        changes = list(_flat(OmegaConf.to_container(preset(name))))
        shown = ", ".join(f"`{k}={literal(v)}`" for k, v in changes) or "nothing: the defaults"
        out.append(f"- `{name}`: {shown}")
    return "\n".join(out) + "\n"


def preset_names() -> list[str]:
    """The presets in ``conf/``, the default job's first."""
    names = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
    return sorted(names, key=lambda n: n != DEFAULT_PRESET)


def _flat(tree: Any) -> Iterable[tuple[str, Any]]:
    for section, values in (tree or {}).items():
        for key, value in (values or {}).items():
            yield f"{section}.{key}", value


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n\n")[0].replace("\n", " ")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def stale() -> list[Path]:
    """The generated files that differ from what the schema and presets give now."""
    wanted = {PYPROJECT: with_table(PYPROJECT.read_text(), pyproject_table()), REFERENCE: markdown()}
    return [path for path, text in wanted.items() if not path.is_file() or path.read_text() != text]


def write() -> list[Path]:
    """Regenerate the stale files; the paths written."""
    paths = stale()
    for path in paths:
        text = with_table(path.read_text(), pyproject_table()) if path == PYPROJECT else markdown()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flower_app.config.reference", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="regenerate pyproject's table and the reference")
    action.add_argument("--check", action="store_true", help="exit 1 if either differs from the schema")
    args = parser.parse_args(argv)
    if args.write:
        for path in write():
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    paths = stale()
    for path in paths:
        print(f"{path.relative_to(ROOT)} is stale: run `make config-reference`", file=sys.stderr)
    return 1 if paths else 0


if __name__ == "__main__":
    sys.exit(main())
