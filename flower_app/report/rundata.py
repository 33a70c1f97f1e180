"""A run directory read into plain data: the series the report's charts draw.

Reads what :mod:`strategies.persist.rundir` writes and writes nothing::

    metrics.jsonl   one record per round (strategies.round.record.round_record)
    summary.json    the run's final figures (a ``running`` left by a killed run reads as
                    ``interrupted (process gone)``: strategies.persist.rundir.reported_status)
    groups.json     each client's profile, group and mode at the end of the run

:func:`read_run` raises :class:`ReportError` for a path that is not a run directory or a file
that cannot be read. Each series function takes a :class:`RunData` and returns plain data, or
raises :class:`MissingData` saying which file or field the run lacks: that chart is skipped
for that run, the others are still drawn.

Clients are named as ``metrics.jsonl`` names them: by partition id, as a string.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from strategies.persist.rundir import reported_status

# Any of these makes a directory a run directory (a run that was stopped early may lack some).
V = TypeVar("V")

RUN_FILES = ("metrics.jsonl", "summary.json", "groups.json", "ledger.jsonl", "config.yaml", "checkpoint.json")


class ReportError(Exception):
    """A path is not a run directory, or one of its files cannot be read; the message says which."""


class MissingData(Exception):
    """A run lacks a file or a field that one chart needs; the message says which."""


@dataclass(frozen=True)
class RunData:
    """What a run directory holds, as parsed JSON.

    Parameters
    ----------
    name : str
        The label of the run in legends and titles (the directory's name).
    path : Path
        The run directory.
    rounds : tuple of dict, or None
        The records of ``metrics.jsonl`` in file order; None when the file is absent.
    summary : dict or None
        ``summary.json``; None when absent.
    groups : dict or None
        ``groups.json``; None when absent.
    """

    name: str
    path: Path
    rounds: tuple[dict[str, Any], ...] | None
    summary: dict[str, Any] | None
    groups: dict[str, Any] | None


class HeldOut(NamedTuple):
    """One held-out metric of the global model, at each evaluated round."""

    rounds: list[int]
    clock_s: list[float]  # simulated clock at the end of each of those rounds
    values: list[float]


class ClientBytes(NamedTuple):
    """Tensor payload bytes per client, summed over the rounds."""

    up: dict[str, int]
    down: dict[str, int]


class Assignment(NamedTuple):
    """A client's part in one round."""

    mode: str
    group: int
    dropped: bool  # its reply was dropped (see Failures.dropped for why)


class Energy(NamedTuple):
    """Simulated energy: each client's total over the rounds, and the fleet's per round."""

    per_client_j: dict[str, float]
    rounds: list[int]
    per_round_j: list[float]


class Failures(NamedTuple):
    """Failed clients per round by cause, and each dropped reply's reason."""

    rounds: list[int]
    by_cause: dict[str, list[int]]  # cause -> count in each of ``rounds``
    dropped: dict[int, dict[str, str]]  # round -> client -> reason


def read_run(path: str | Path, name: str | None = None) -> RunData:
    """The run directory at ``path``; ``name`` labels it (default: the directory's name)."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: not a run directory (no such directory)")
    if not any((path / file).exists() for file in RUN_FILES):
        raise ReportError(f"{path}: not a run directory (none of {', '.join(RUN_FILES)} in it)")
    summary = _read_json(path / "summary.json")
    if summary is not None and isinstance(summary.get("status"), str):  # a killed run's "running" says so
        summary["status"] = reported_status(path, summary["status"])
    return RunData(
        name=name or path.resolve().name,
        path=path,
        rounds=_read_jsonl(path / "metrics.jsonl"),
        summary=summary,
        groups=_read_json(path / "groups.json"),
    )


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Each run's label: its directory's name, or more of its path where two names are the same."""
    resolved = [p.resolve() for p in paths]
    names = [p.name for p in resolved]
    if len(set(names)) == len(names):
        return names
    # runs/a/test and runs/b/test: keep as many trailing parts as it takes to tell them apart
    for depth in range(2, max(len(p.parts) for p in resolved) + 1):
        names = ["/".join(p.parts[-depth:]) for p in resolved]
        if len(set(names)) == len(names):
            break
    return names


def held_out(run: RunData, key: str) -> HeldOut:
    """``key`` (``accuracy``, ``eval-loss``, ...) at each round that evaluated the global model."""
    evaluated = [r for r in _rounds(run) if r.get(key) is not None]
    if not evaluated:
        raise MissingData(f"no round of metrics.jsonl has {key!r}")
    if any("sim-clock-s" not in r for r in evaluated):
        raise MissingData("metrics.jsonl has no 'sim-clock-s' (simulated clock)")
    return HeldOut(
        rounds=[int(r["round"]) for r in evaluated],
        clock_s=[float(r["sim-clock-s"]) for r in evaluated],
        values=[float(r[key]) for r in evaluated],
    )


def bytes_per_client(run: RunData) -> ClientBytes:
    """Bytes each client sent and received, summed over the rounds it took part in."""
    entries = _client_entries(run, "bytes-up")
    up: dict[str, int] = {}
    down: dict[str, int] = {}
    for _, client, entry in entries:
        up[client] = up.get(client, 0) + int(entry.get("bytes-up", 0))
        down[client] = down.get(client, 0) + int(entry.get("bytes-down", 0))
    return ClientBytes(_by_client(up), _by_client(down))


def assignments(run: RunData) -> dict[str, dict[int, Assignment]]:
    """Each client's mode and group in each round it was given a plan (client -> round -> assignment)."""
    grid: dict[str, dict[int, Assignment]] = {}
    for r in _rounds(run):
        dropped = r.get("dropped", {})
        for client, entry in r.get("clients", {}).items():
            if "mode" in entry:
                assignment = Assignment(str(entry["mode"]), int(entry.get("group", 0)), str(client) in dropped)
                grid.setdefault(str(client), {})[int(r["round"])] = assignment
    if not grid:
        raise MissingData("no client entry of metrics.jsonl has 'mode'")
    return _by_client(grid)


def energy(run: RunData) -> Energy:
    """Simulated energy per client (summed over its rounds) and of the whole fleet per round."""
    per_client: dict[str, float] = {}
    for _, client, entry in _client_entries(run, "energy-j"):
        # A client that declined or was dropped before replying has no cost entry that round.
        per_client[client] = per_client.get(client, 0.0) + float(entry.get("energy-j", 0.0))
    rounds = [r for r in _rounds(run) if "energy-j" in r]
    return Energy(_by_client(per_client), [int(r["round"]) for r in rounds], [float(r["energy-j"]) for r in rounds])


def failures(run: RunData) -> Failures:
    """Failures per round by cause (every cause any round names), and the dropped replies' reasons."""
    rounds = _rounds(run)
    if not any("failures" in r for r in rounds):
        raise MissingData("no round of metrics.jsonl has 'failures'")
    causes = sorted({cause for r in rounds for cause in r.get("failures", {})})
    return Failures(
        rounds=[int(r["round"]) for r in rounds],
        by_cause={cause: [int(r.get("failures", {}).get(cause, 0)) for r in rounds] for cause in causes},
        dropped={int(r["round"]): dict(r["dropped"]) for r in rounds if r.get("dropped")},
    )


def _rounds(run: RunData) -> tuple[dict[str, Any], ...]:
    if run.rounds is None:
        raise MissingData("no metrics.jsonl")
    if not run.rounds:
        raise MissingData("metrics.jsonl has no rounds yet")
    return run.rounds


def _client_entries(run: RunData, field: str) -> list[tuple[int, str, Mapping[str, Any]]]:
    """(round, client, entry) for every client entry of every round; MissingData if none has ``field``."""
    entries = [
        (int(r["round"]), str(client), entry) for r in _rounds(run) for client, entry in r.get("clients", {}).items()
    ]
    if not any(field in entry for _, _, entry in entries):
        raise MissingData(f"no client entry of metrics.jsonl has {field!r}")
    return entries


def client_order(clients: Iterable[str]) -> list[str]:
    """``clients`` sorted: partition ids as numbers (2 before 10), other names after them."""
    return sorted(clients, key=lambda name: (0, int(name), "") if name.isdigit() else (1, 0, name))


def _by_client(table: dict[str, V]) -> dict[str, V]:
    return {client: table[client] for client in client_order(table)}


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: unreadable ({err})") from err
    if not isinstance(value, dict):
        raise ReportError(f"{path}: not a JSON object")
    return value


def _read_jsonl(path: Path) -> tuple[dict[str, Any], ...] | None:
    if not path.exists():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ReportError(f"{path}: unreadable ({err})") from err
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise ReportError(f"{path}:{number}: not a JSON line ({err})") from err
        if not isinstance(record, dict) or not isinstance(record.get("round"), int):
            raise ReportError(f"{path}:{number}: not a round record (no integer 'round')")
        records.append(record)
    return tuple(records)
