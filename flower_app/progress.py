"""Progress bars for long commands (tqdm), with the project's defaults.

A bar goes to stderr and shows only where someone watches: on a terminal, outside CI. On a
pipe, a file or a CI log nothing is written, so logs and test output keep only their lines.
The bar is removed once its loop ends (``leave=False``): what a command prints stays as it was.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TextIO, TypeVar

from tqdm import tqdm  # type: ignore[import-untyped]

T = TypeVar("T")


def in_ci() -> bool:
    """Whether the environment says it is a CI job (``CI`` set to anything but empty, 0 or false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, file: TextIO | None = None) -> Iterable[T]:
    """``iterable`` with a bar on ``file`` (default: ``sys.stderr`` at call time); silent off a terminal or in CI."""
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        file=file if file is not None else sys.stderr,
        disable=True if in_ci() else None,  # None: tqdm turns itself off when the stream is no terminal
        leave=False,
        dynamic_ncols=True,
    )


def write_line(line: str, file: TextIO | None = None) -> None:
    """Print ``line`` to ``file`` (default ``sys.stdout``) without tearing an open bar; flushed."""
    stream = file if file is not None else sys.stdout
    tqdm.write(line, file=stream)
    stream.flush()
