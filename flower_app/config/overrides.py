"""What the project's command lines share: ``key=value`` overrides, for argparse and for ``flwr run``.

Our own command lines (``python -m flower_app.apps.runner``, ``flower_app.generate``, the
benches) take overrides as separate ``key=value`` arguments whose values are text, converted
by the config schema. ``flwr run --run-config`` takes one string whose values are TOML:
a bare word such as ``config=llm`` is not valid TOML, and Flower's error names no key.
:func:`flwr_run_config` turns the text a user writes (``config=llm train.lr=0.02``) into
what Flower accepts (``config='llm' train.lr=0.02``); ``scripts/flwr_run.sh`` calls it::

    python -m flower_app.config.overrides --project-root . "config=llm train.lr=0.02"
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

RUN_DIR_KEY = "run.run-dir"
PRESET_KEY = "config"

# One whitespace-separated item: key=value with the value quoted or bare, else a stray word.
# Flower splits the same way (flwr.common.config.parse_config_args) but drops stray words silently.
_ITEM = re.compile(r"""(?P<key>[^\s=]*)=(?P<value>'[^']*'|"[^"]*"|\S*)|(?P<stray>\S+)""")


class OverrideError(ValueError):
    """An override that cannot be passed on; the message names it in one line."""


def overrides_of(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``key=value`` command-line overrides as a run config; the parser exits on anything else.

    A value in matching quotes loses them, so the quoted form that ``flwr run`` needs
    (``config='llm'``) means the same here as the bare one (``config=llm``).
    """
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"override '{item}' is not key=value")
        overrides[key] = _unquoted(value)
    return overrides


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """The ``(key, value)`` pairs of ``text`` with each value as TOML (bare strings quoted).

    Raises
    ------
    OverrideError
        For an item without ``=`` or without a key, a value whose quote is not closed,
        or a value that holds both kinds of quotes.
    """
    pairs = []
    for match in _ITEM.finditer(text):
        if match["stray"] is not None:
            raise OverrideError(f"override '{match['stray']}' is not key=value (e.g. config=llm train.lr=0.02)")
        if not match["key"]:
            raise OverrideError(f"override '{match[0]}' has no key before '='")
        pairs.append((match["key"], toml_value(match["key"], match["value"])))
    return pairs


def toml_value(key: str, value: str) -> str:
    """``value`` as Flower reads it: numbers and true/false as they are, other text quoted."""
    if value[:1] in ("'", '"') and value:
        if len(value) < 2 or value[-1] != value[0]:
            raise OverrideError(f"override '{key}={value}': the quote is not closed")
        return value  # already quoted by the user
    if _is_scalar(value):
        return value
    if "'" not in value:
        return f"'{value}'"  # a TOML literal string: backslashes stay as typed
    if '"' not in value and "\\" not in value:
        return f'"{value}"'
    raise OverrideError(f"override '{key}={value}' holds both ' and \": write it in a preset YAML instead")


def _is_scalar(value: str) -> bool:
    # '#' would start a TOML comment inside what the user meant as one value.
    if not value or "#" in value:
        return False
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return False
    return isinstance(parsed, bool | int | float)


def toml_text(value: str) -> Any:
    """The Python value of a TOML value as :func:`parse_pairs` returns it."""
    return tomllib.loads(f"v = {value}")["v"]


def default_run_dir(preset_name: str, project_root: Path) -> Path:
    """The run directory preset ``preset_name`` resolves to (the schema's default if it sets none).

    A relative one is anchored at ``project_root``: the ServerApp under ``flwr run`` starts in
    another working directory, and the user looks for the run where the preset says.
    """
    from flower_app.config.load import load_config  # omegaconf and the schema: only when a run dir is needed

    return anchored(Path(load_config({PRESET_KEY: preset_name}).run.run_dir), project_root)


def flwr_run_config(text: str, project_root: Path) -> str:
    """``text`` as ``flwr run --run-config`` takes it, with an absolute run directory.

    The run directory is added only when neither ``text`` nor its preset (``config=``)
    names one, so a preset's own (``conf/llm.yaml``: ``runs/llm``) is where the run lands.
    A relative one is taken from ``project_root``, where ``generate --run-dir`` finds it.
    """
    pairs = parse_pairs(text)
    given = dict(pairs)
    if RUN_DIR_KEY in given:  # the user's own, a relative one taken from the project as the preset's is
        run_dir = anchored(Path(str(toml_text(given[RUN_DIR_KEY]))), project_root)
        pairs = [(k, toml_value(k, str(run_dir)) if k == RUN_DIR_KEY else v) for k, v in pairs]
    else:
        preset_name = str(toml_text(given[PRESET_KEY])) if PRESET_KEY in given else ""
        run_dir = default_run_dir(preset_name or "base", project_root)
        pairs.append((RUN_DIR_KEY, toml_value(RUN_DIR_KEY, str(run_dir))))
    return " ".join(f"{key}={value}" for key, value in pairs)


def anchored(run_dir: Path, project_root: Path) -> Path:
    """``run_dir``, a relative one taken from ``project_root``."""
    run_dir = run_dir.expanduser()
    return run_dir if run_dir.is_absolute() else project_root / run_dir


def main(argv: list[str] | None = None) -> int:
    """Print the ``--run-config`` string; exit 2 with one line on stderr when an override is bad."""
    parser = argparse.ArgumentParser(prog="python -m flower_app.config.overrides", description=__doc__.splitlines()[0])
    parser.add_argument("--project-root", type=Path, default=Path.cwd(), help="anchor of a relative run directory")
    parser.add_argument("overrides", nargs="?", default="", help='one string, e.g. "config=llm train.lr=0.02"')
    args = parser.parse_args(argv)
    try:
        print(flwr_run_config(args.overrides, args.project_root.resolve()))
    except ValueError as err:  # OverrideError, or load_config's one line on an unknown preset
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
