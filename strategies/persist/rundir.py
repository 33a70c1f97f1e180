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
    <run-dir>/run.lock         the run writing here now: pid, host, start time (gone when it ends)

No run deletes another run's results: a new run into a directory that holds one moves
the old run aside to ``<run-dir>.1`` (then ``.2``, ...) first.

One writer per directory: a run holds ``run.lock`` (:meth:`RunDirectory.lock`) from before its
first write to its end, however it ends; a second run is refused with a
:class:`RunDirectoryInUse` that names the holder. The lock is an exclusive ``flock`` on the
file, which the kernel drops when the process ends (SIGKILL too): a ``run.lock`` whose flock is
free was left by a process that is gone. The next writer takes it over with a warning, and a
``running`` summary left by that process reads as ``interrupted (process gone)``
(:func:`reported_status`).

Every file is written whole or not at all (a temporary file and ``os.replace``; an append that
fails is cut back off). A full disk (``ENOSPC``, ``EDQUOT``) cuts ``metrics.jsonl`` and
``ledger.jsonl`` back to the checkpoint's round, so that the summary and the checkpoint agree,
and raises :class:`RunDirectoryFull` naming the file and that round.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import socket
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from strategies.persist.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
RUNNING = "running"
PROCESS_GONE = "interrupted (process gone)"
# How long taking the lock retries a busy flock: a reader's glance (reported_status) holds it for microseconds.
_LOCK_RETRY_S = 1.0
_FULL = (errno.ENOSPC, errno.EDQUOT)
_NO_FLOCK = (errno.EOPNOTSUPP, errno.ENOLCK, errno.ENOSYS)


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``run.lock`` while this process writes here (see the module docstring).

        Raises
        ------
        RunDirectoryInUse
            When another run holds it; nothing here is touched.
        """
        held, gone = RunLock.take(self.path)
        try:
            if gone is not None:
                self._settle_stale(gone)
            yield
        finally:
            held.release()

    def write_config(self, text: str) -> None:
        self._write(self.path / "config.yaml", text)

    def has_results(self) -> bool:
        """Whether a run already left results here."""
        return any((self.path / name).exists() for name in RESULT_FILES)

    def move_aside(self) -> Path:
        """Move this directory's files to the first free ``<name>.<n>``; the new path.

        ``run.lock`` stays: the run that holds it goes on writing here.
        """
        n = 1
        while True:
            aside = self.path.with_name(f"{self.path.name}.{n}")
            try:
                aside.mkdir()
                break
            except FileExistsError:
                n += 1
        for entry in self.path.iterdir():
            if entry.name != LOCK_NAME:
                os.replace(entry, aside / entry.name)
        return aside

    def write_fingerprint(self, fingerprint: Mapping[str, Any]) -> None:
        self._write(self.path / "fingerprint.json", json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")

    def fingerprint(self) -> dict[str, Any] | None:
        path = self.path / "fingerprint.json"
        if not path.exists():
            return None
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as err:
            raise RunDirectoryError(f"{path}: unreadable ({err})") from err

    def log_round(self, record: Mapping[str, Any]) -> None:
        with self._writing(self.metrics_path):
            _append(self.metrics_path, json.dumps(record, sort_keys=True) + "\n")

    def rounds(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_after(self, last_round: int) -> None:
        """Drop metrics and ledger rows of rounds after the checkpoint: a resumed run redoes them."""
        with self._writing(self.metrics_path):
            _keep_rounds(self.metrics_path, last_round)
            _keep_rounds(self.path / "ledger.jsonl", last_round)

    def log_ledger(self, rows: list[Mapping[str, Any]]) -> None:
        path = self.path / "ledger.jsonl"
        with self._writing(path):
            _append(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))

    def ledger(self) -> list[dict[str, Any]]:
        path = self.path / "ledger.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_groups(self, groups: Mapping[str, Any]) -> None:
        self._write(self.path / "groups.json", json.dumps(groups, indent=2, sort_keys=True) + "\n")

    def save_pool(self, pool: Mapping[int, Mapping[str, np.ndarray]]) -> None:
        """The uploads by partition id, written beside the checkpoint and swapped in whole."""
        flat = {f"{pid}/{name}": array for pid, arrays in pool.items() for name, array in arrays.items()}
        tmp, path = self.path / "pool.tmp.npz", self.path / "pool.npz"
        with self._writing(path):
            try:
                np.savez(tmp, **flat)  # type: ignore[arg-type]  # numpy's stub reserves the name allow_pickle
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            tmp.replace(path)

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
        with self._writing(self.path / "checkpoint.npz"):
            save_checkpoint(self.path, server_round, arrays, state)

    def load(self) -> Checkpoint | None:
        return load_checkpoint(self.path)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Written whole or not at all; non-finite numbers become null (JSON has no NaN)."""
        text = json.dumps(_finite_json(summary), indent=2, sort_keys=True, allow_nan=False)
        self._write(self.path / "summary.json", text + "\n")

    def _write(self, path: Path, text: str) -> None:
        with self._writing(path):
            _write_atomic(path, text)

    @contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """A full disk while writing ``path``: cut the round files back to the checkpoint, then say so."""
        try:
            yield
        except OSError as err:
            if err.errno not in _FULL:
                raise
            kept = self._roll_back()
            raise RunDirectoryFull(
                f"no space left on device writing {path}: {self.path} keeps rounds up to {kept} "
                "(its checkpoint's); free some space and continue with run.resume=true"
            ) from err

    def _roll_back(self) -> int:
        """Metrics and ledger cut back to the checkpoint's round (in place: it needs no space); that round."""
        try:
            checkpoint = load_checkpoint(self.path)
        except CheckpointError:
            checkpoint = None
        kept = checkpoint.round if checkpoint is not None else 0
        _keep_rounds(self.metrics_path, kept)
        _keep_rounds(self.path / "ledger.jsonl", kept)
        return kept

    def _settle_stale(self, gone: str) -> None:
        """The lock of a process that is gone: say so, and let a ``running`` summary it left say so too."""
        summary = _read_json(self.path / "summary.json") or {}
        stale = summary.get("status") == RUNNING
        if stale:
            self.write_summary({**summary, "status": PROCESS_GONE})
        logger.warning(
            "%s: taking over the lock of %s: that process is gone%s",
            self.path,
            gone,
            f"; its summary.json now says '{PROCESS_GONE}'" if stale else "",
        )


class RunDirectoryError(Exception):
    """A file of the run directory cannot be read, or the directory does not fit the run; the message says which."""


class RunDirectoryInUse(RunDirectoryError):
    """Another run writes into the directory; the message names it (pid, host, start time)."""


class RunDirectoryFull(RunDirectoryError):
    """The disk filled up while a run wrote; the message names the file and the last round kept."""


RESULT_FILES = ("metrics.jsonl", "summary.json", "checkpoint.json", "checkpoint.npz", "ledger.jsonl", "pool.npz")


@dataclass(frozen=True)
class Writer:
    """The process that holds a run directory's lock: its id, its host, when it took the lock (UTC)."""

    pid: int
    host: str
    started: str

    @classmethod
    def this_process(cls) -> Writer:
        return cls(os.getpid(), socket.gethostname(), datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def parse(cls, text: str) -> Writer | None:
        """The writer a lock file names; None for an empty or unreadable one."""
        try:
            fields = json.loads(text)
            return cls(int(fields["pid"]), str(fields["host"]), str(fields["started"]))
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"


class RunLock:
    """``run.lock`` held by this process: an exclusive flock on the file that names the writer."""

    def __init__(self, path: Path, fd: int, writer: Writer):
        self.path, self.fd, self.writer = path, fd, writer

    @classmethod
    def take(cls, directory: Path) -> tuple[RunLock, str | None]:
        """The lock of ``directory``, and who a stale lock file named (None when there was none).

        Raises
        ------
        RunDirectoryInUse
            When a live process holds it.
        """
        path = directory / LOCK_NAME
        fd = _flocked(path)
        try:
            previous = os.read(fd, 1 << 16).decode("utf-8", "replace")
            writer = Writer.this_process()
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(asdict(writer)) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        # A lock file found with content was left by a process that is gone: a released one is deleted.
        stale = Writer.parse(previous)
        gone = stale.describe() if stale else ("an unreadable run.lock" if previous.strip() else None)
        return cls(path, fd, writer), gone

    def release(self) -> None:
        """Delete the file, then drop the flock (in that order: whoever waits finds no stale file)."""
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)


def _flocked(path: Path) -> int:
    """A descriptor of ``path`` holding its exclusive flock (the file created if missing)."""
    deadline = time.monotonic() + _LOCK_RETRY_S
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            holder = Writer.parse(_read_text(path))
            raise RunDirectoryInUse(
                f"{path.parent} is in use by another run ({holder.describe() if holder else 'starting now'}): "
                "one writer per run directory; wait for it, stop it, or choose another run.run-dir"
            ) from None
        except OSError as err:
            if err.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            logger.warning(
                "%s: this file system has no flock (%s): one writer per directory is not enforced", path, err
            )
            return fd
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)  # its holder released it (deleted it) while we waited: take the next one


def reported_status(directory: Path, status: str) -> str:
    """``status`` as ``summary.json`` holds it, or ``interrupted (process gone)`` for a ``running``
    whose writer is gone: its ``run.lock`` is still there and nobody holds its flock."""
    if status != RUNNING:
        return status
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return status  # no lock: a run started without one (a ServerApp of your own), it may be alive
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return status  # held: the writer is alive (or no flock here: cannot tell)
    finally:
        os.close(fd)  # drops the shared flock, if taken
    return PROCESS_GONE


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not keep a half-written copy
        raise


def _append(path: Path, text: str) -> None:
    """Append whole lines or nothing: a write that fails (a full disk) is cut back off."""
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, data)
        except BaseException:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _keep_rounds(path: Path, last_round: int) -> None:
    """Cut a JSON-lines file of rounds back to the rows of rounds ``<= last_round``.

    The rows are in round order, so what stays is a prefix of the file: it is truncated in
    place, which a full disk allows. Rows out of order are rewritten through a temporary file.
    """
    if not path.exists():
        return
    rows = path.read_bytes().splitlines(keepends=True)
    keep = [not row.strip() or json.loads(row)["round"] <= last_round for row in rows]
    cut = keep.index(False) if False in keep else len(rows)
    if any(keep[cut:]):
        _write_atomic(path, b"".join(r for r, k in zip(rows, keep, strict=True) if k).decode("utf-8"))
    elif cut < len(rows):
        os.truncate(path, sum(len(row) for row in rows[:cut]))


def _finite_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value
