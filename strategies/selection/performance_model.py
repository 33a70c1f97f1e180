"""The run history and the regressor that learns final accuracy from it.

Every finished full run of a candidate appends one JSON line to a history file::

    {"task": ..., "candidate": ..., "features": {name: number}, "final_accuracy": a}

``features`` holds the candidate's description (log parameters, split layer, prefix
length, log learning rate, mode) and its probe figures (last probe accuracy, the curve's
extrapolation and asymptote). Appends are one ``write`` of one line; a line that does not
parse (a run killed mid-write, a hand edit) is skipped with a warning, never fatal.

Once the history holds ``MIN_RUNS`` runs with the same feature names, a ridge regression
over the standardised features predicts final accuracy; its uncertainty is the
leave-one-out residual RMS, computed in closed form from the hat matrix
(``e_i / (1 - H_ii)``). numpy only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MIN_RUNS = 8
RIDGE = 1.0  # penalty on the standardised coefficients: few runs, several features
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HistoryRun:
    task: str
    candidate: str
    features: dict[str, float]
    final_accuracy: float


def append_run(path: str | Path, run: HistoryRun) -> None:
    """Append one run as one line (the file and its folder are created when missing)."""
    line = json.dumps(
        {
            "task": run.task,
            "candidate": run.candidate,
            "features": run.features,
            "final_accuracy": run.final_accuracy,
        },
        sort_keys=True,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def read_history(path: str | Path) -> list[HistoryRun]:
    """Every well-formed run of the file (none when it does not exist); broken lines are skipped."""
    path = Path(path)
    if not path.exists():
        return []
    runs = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            runs.append(_parse(json.loads(text)))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            logger.warning("%s line %d skipped: %s", path, number, err)
    return runs


def _parse(row: Mapping[str, Any]) -> HistoryRun:
    features = {str(k): float(v) for k, v in dict(row["features"]).items()}
    accuracy = float(row["final_accuracy"])
    if not all(math.isfinite(v) for v in (*features.values(), accuracy)) or not 0 <= accuracy <= 1:
        raise ValueError("a feature or the final accuracy is not a finite number in range")
    return HistoryRun(str(row["task"]), str(row["candidate"]), features, accuracy)


@dataclass(frozen=True)
class Regressor:
    """A fitted ridge regression over named features."""

    names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    loo_rmse: float
    runs: int

    def predict(self, features: Mapping[str, float]) -> tuple[float, float]:
        """Predicted final accuracy (clipped to [0, 1]) and its uncertainty (the LOO RMSE)."""
        missing = [n for n in self.names if n not in features]
        if missing:
            raise ValueError(f"the regressor needs features {missing}")
        z = (np.array([features[n] for n in self.names]) - self.mean) / self.scale
        return min(max(float(z @ self.coef + self.intercept), 0.0), 1.0), self.loo_rmse


def fit_regressor(runs: Sequence[HistoryRun], names: Sequence[str], min_runs: int = MIN_RUNS) -> Regressor | None:
    """Ridge regression of final accuracy on ``names``; None with fewer than ``min_runs`` usable runs."""
    usable = [r for r in runs if all(n in r.features for n in names)]
    if len(usable) < max(min_runs, 2):
        return None
    x = np.array([[r.features[n] for n in names] for r in usable], dtype=np.float64)
    y = np.array([r.final_accuracy for r in usable], dtype=np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0  # a constant feature carries no information; keep it harmless
    z = (x - mean) / scale
    intercept = float(y.mean())
    gram = z.T @ z + RIDGE * np.eye(len(names))
    coef = np.linalg.solve(gram, z.T @ (y - intercept))
    hat = z @ np.linalg.solve(gram, z.T) + 1.0 / len(y)  # the intercept is the mean: add its leverage
    residual = y - (z @ coef + intercept)
    loo = residual / np.clip(1.0 - np.diag(hat), 1e-6, None)
    return Regressor(tuple(names), mean, scale, coef, intercept, float(np.sqrt(np.mean(loo**2))), len(y))
