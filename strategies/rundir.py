"""The run directory: resolved config, per-round metrics, checkpoint, summary.

::

    <run-dir>/config.yaml      the resolved config
    <run-dir>/metrics.jsonl    one JSON object per round
    <run-dir>/checkpoint.*     trainable tensors + strategy state (see strategies.checkpoint)
    <run-dir>/summary.json     final figures, written when the run ends
    <run-dir>/groups.json      each client's profile, group, mode and allocation
    <run-dir>/ledger.jsonl     simulated time and energy, one line per client and round
    <run-dir>/pool.npz         the centralized clients' uploads (a resumed run needs them)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from strategies.checkpoint import Checkpoint, load_checkpoint, save_checkpoint


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"

    def write_config(self, text: str) -> None:
        (self.path / "config.yaml").write_text(text, encoding="utf-8")

    def start_fresh(self) -> None:
        """Forget a previous run in this directory (its metrics would mix with ours)."""
        for name in (
            "metrics.jsonl",
            "summary.json",
            "checkpoint.json",
            "checkpoint.npz",
            "checkpoint.prev.npz",
            "groups.json",
            "ledger.jsonl",
            "pool.npz",
        ):
            (self.path / name).unlink(missing_ok=True)

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
        with np.load(path) as data:
            for key in data.files:
                pid, name = key.split("/", 1)
                pool.setdefault(int(pid), {})[name] = data[key]
        return pool

    def checkpoint(self, server_round: int, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any]) -> None:
        save_checkpoint(self.path, server_round, arrays, state)

    def load(self) -> Checkpoint | None:
        return load_checkpoint(self.path)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
