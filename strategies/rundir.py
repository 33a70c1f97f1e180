"""The run directory: resolved config, per-round metrics, checkpoint, summary.

::

    <run-dir>/config.yaml      the resolved config
    <run-dir>/metrics.jsonl    one JSON object per round
    <run-dir>/checkpoint.*     trainable tensors + strategy state (see strategies.checkpoint)
    <run-dir>/summary.json     final figures, written when the run ends
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
        for name in ("metrics.jsonl", "summary.json", "checkpoint.json", "checkpoint.npz",
                     "checkpoint.prev.npz"):
            (self.path / name).unlink(missing_ok=True)

    def log_round(self, record: Mapping[str, Any]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def rounds(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_after(self, last_round: int) -> None:
        """Drop metrics of rounds after the checkpoint: a resumed run redoes them."""
        kept = [r for r in self.rounds() if r["round"] <= last_round]
        self.metrics_path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def checkpoint(self, server_round: int, arrays: Mapping[str, np.ndarray],
                   state: Mapping[str, Any]) -> None:
        save_checkpoint(self.path, server_round, arrays, state)

    def load(self) -> Checkpoint | None:
        return load_checkpoint(self.path)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
