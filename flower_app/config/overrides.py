"""What the project's command lines share."""

from __future__ import annotations

import argparse


def overrides_of(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``key=value`` command-line overrides as a run config; the parser exits on anything else."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"override '{item}' is not key=value")
        overrides[key] = value
    return overrides
