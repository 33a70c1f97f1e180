"""The run directory: resolved config, per-round metrics, checkpoint, summary.

::

    <run-dir>/config.yaml      the resolved config
    <run-dir>/metrics.jsonl    one JSON object per round
    <run-dir>/checkpoint.*     trainable tensors + strategy state (see strategies.persist.checkpoint)
    <run-dir>/summary.json     final figures, written when the run ends
    <run-dir>/groups.json      each client's profile, group, mode and allocation
    <run-dir>/ledger.jsonl     simulated time and energy, one line per client and round
    <run-dir>/pool.npz         the centralized clients' uploads (a resumed run needs them)
    <run-dir>/fingerprint.json what a resumed run must match: model, split, prefix, data, seed

No run deletes another run's results: a new run into a directory that holds one moves
the old run aside to ``<run-dir>.1`` (then ``.2``, ...) first.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from strategies.persist.checkpoint import Checkpoint, load_checkpoint, save_checkpoint


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"

    def write_config(self, text: str) -> None:
        (self.path / "config.yaml").write_text(text, encoding="utf-8")

    def has_results(self) -> bool:
        """Whether a run already left results here."""
        return any((self.path / name).exists() for name in RESULT_FILES)

    def move_aside(self) -> Path:
        """Rename this directory to the first free ``<name>.<n>`` and start an empty one; the new path."""
        n = 1
        while (aside := self.path.with_name(f"{self.path.name}.{n}")).exists():
            n += 1
        os.replace(self.path, aside)
        self.path.mkdir(parents=True)
        return aside

    def write_fingerprint(self, fingerprint: Mapping[str, Any]) -> None:
        _write_atomic(self.path / "fingerprint.json", json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")

    def fingerprint(self) -> dict[str, Any] | None:
        path = self.path / "fingerprint.json"
        if not path.exists():
            return None
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as err:
            raise RunDirectoryError(f"{path}: unreadable ({err})") from err

    def log_round(self, record: Mapping[str, Any]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def rounds(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_after(self, last_round: int) -> None:
        """Drop metrics and ledger rows of rounds after the checkpoint: a resumed run redoes them."""
        kept = [r for r in self.rounds() if r["round"] <= last_round]
        self.metrics_path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        ledger = [r for r in self.ledger() if r["round"] <= last_round]
        (self.path / "ledger.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in ledger))

    def log_ledger(self, rows: list[Mapping[str, Any]]) -> None:
        with open(self.path / "ledger.jsonl", "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)

    def ledger(self) -> list[dict[str, Any]]:
        path = self.path / "ledger.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_groups(self, groups: Mapping[str, Any]) -> None:
        (self.path / "groups.json").write_text(json.dumps(groups, indent=2, sort_keys=True) + "\n")

    def save_pool(self, pool: Mapping[int, Mapping[str, np.ndarray]]) -> None:
        """The uploads by partition id, written beside the checkpoint and swapped in whole."""
        flat = {f"{pid}/{name}": array for pid, arrays in pool.items() for name, array in arrays.items()}
        tmp = self.path / "pool.tmp.npz"
        np.savez(tmp, **flat)  # type: ignore[arg-type]  # numpy's stub reserves the name allow_pickle
        tmp.replace(self.path / "pool.npz")

    def load_pool(self) -> dict[int, dict[str, np.ndarray]]:
        path = self.path / "pool.npz"
        if not path.exists():
            return {}
        pool: dict[int, dict[str, np.ndarray]] = {}
        try:
            with np.load(path, allow_pickle=False) as data:
                for key in data.files:
                    pid, name = key.split("/", 1)
                    pool.setdefault(int(pid), {})[name] = data[key]
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise RunDirectoryError(
                f"{path}: the centralized pool cannot be read ({type(err).__name__}: {err})"
            ) from err
        return pool

    def checkpoint(self, server_round: int, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any]) -> None:
        save_checkpoint(self.path, server_round, arrays, state)

    def load(self) -> Checkpoint | None:
        return load_checkpoint(self.path)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Written whole or not at all; non-finite numbers become null (JSON has no NaN)."""
        text = json.dumps(_finite_json(summary), indent=2, sort_keys=True, allow_nan=False)
        _write_atomic(self.path / "summary.json", text + "\n")


class RunDirectoryError(Exception):
    """A file of the run directory cannot be read, or the directory does not fit the run; the message says which."""


RESULT_FILES = ("metrics.jsonl", "summary.json", "checkpoint.json", "checkpoint.npz", "ledger.jsonl", "pool.npz")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _finite_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value
