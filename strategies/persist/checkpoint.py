"""Atomic checkpoints of the trainable tensors and the strategy state, to resume after a kill.

A checkpoint is a pair of files in one directory:

- ``checkpoint.npz``: the arrays, one ``.npy`` member per name;
- ``checkpoint.json``: the round, the state, the array names and the sha256 of the npz.

The json commits the pair. :func:`save_checkpoint` writes every file to a temporary file in the
same directory and moves it into place with ``os.replace`` (atomic), in this order:

1. the new arrays to a temporary file, flushed to disk;
2. ``checkpoint.npz`` -> ``checkpoint.prev.npz``, when it is the npz the current json names,
   and a copy of that json -> ``checkpoint.prev.json`` (the previous checkpoint, whole);
3. the temporary file -> ``checkpoint.npz``;
4. the new json -> ``checkpoint.json``.

Wherever a kill strikes, the json on disk names the digest of ``checkpoint.npz`` or of
``checkpoint.prev.npz``. :func:`load_checkpoint` takes whichever matches: a newer npz whose json
was never written is ignored and the previous round resumes. If the json is unreadable or
neither npz matches, the previous checkpoint (``checkpoint.prev.json`` + ``checkpoint.prev.npz``)
is loaded with a warning; only when that fails too does :class:`CheckpointError` name the files.
An npz without any json (a first save that was killed) counts as no checkpoint. A save that
fails (a full disk) deletes its temporary files and leaves the last committed checkpoint
loadable. One writer per directory is assumed (:mod:`strategies.persist.rundir` locks it).

The state travels as Python's JSON: tuples come back as lists, dict keys as strings, and
``inf``/``nan`` floats survive.
"""

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

NPZ_NAME = "checkpoint.npz"
PREV_NPZ_NAME = "checkpoint.prev.npz"
PREV_JSON_NAME = "checkpoint.prev.json"
JSON_NAME = "checkpoint.json"
FORMAT_VERSION = 1

logger = logging.getLogger(__name__)

_TMP_PREFIX = ".checkpoint-"
_TMP_SUFFIX = ".tmp"
# A fixed member timestamp makes the npz bytes, hence its digest, a function of the arrays alone.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class CheckpointError(Exception):
    """A checkpoint exists but cannot be read back consistently."""


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint restores: the round it was taken after, the arrays, the state."""

    round: int
    arrays: dict[str, npt.NDArray[Any]]
    state: dict[str, Any]


def save_checkpoint(
    directory: Path, round: int, arrays: Mapping[str, npt.NDArray[Any]], state: Mapping[str, Any]
) -> Path:
    """Atomically replace the checkpoint in ``directory``; returns the path of its json.

    Parameters
    ----------
    directory : Path
        Where the checkpoint lives; created if missing.
    round : int
        The last completed server round.
    arrays : Mapping[str, npt.NDArray[Any]]
        Trainable tensors by name; object arrays are refused (they would need pickling).
    state : Mapping[str, Any]
        JSON-serialisable strategy state.
    """
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise ValueError(f"round must be an integer >= 0, got {round!r}")
    for name, array in arrays.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"array names must be non-empty strings, got {name!r}")
        if not isinstance(array, np.ndarray) or array.dtype.hasobject:
            raise ValueError(f"array {name!r} must be a numpy array of a non-object dtype")
    try:
        # Serialised before anything is written, so a bad state leaves the old checkpoint intact.
        json.dumps(dict(state))
    except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint state is not JSON-serialisable: {err}") from err

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)  # left by a save that was killed
    npz_path, prev_path, json_path = (directory / n for n in (NPZ_NAME, PREV_NPZ_NAME, JSON_NAME))

    with _temporary_file(directory) as (tmp_npz, handle):
        _write_npz(handle, arrays)
    try:
        digest = _sha256(tmp_npz)
        # Only rotate the npz the json names; an orphan from a killed save must not evict it.
        committed = _committed_digest(json_path)
        if npz_path.exists() and committed is not None and _sha256(npz_path) == committed:
            os.replace(npz_path, prev_path)
            # Its record goes along as a copy (the current json stays in place until replaced).
            with _temporary_file(directory) as (tmp_prev, handle):
                handle.write(json_path.read_bytes())
            os.replace(tmp_prev, directory / PREV_JSON_NAME)
        os.replace(tmp_npz, npz_path)
    except BaseException:
        tmp_npz.unlink(missing_ok=True)  # a full disk gets its space back; the committed pair stays loadable
        raise

    record = {
        "format": FORMAT_VERSION,
        "round": round,
        "arrays": list(arrays),
        "npz-sha256": digest,
        "state": dict(state),
    }
    with _temporary_file(directory) as (tmp_json, handle):
        handle.write(json.dumps(record, indent=1).encode())
    os.replace(tmp_json, json_path)
    _fsync_directory(directory)
    return json_path


def load_checkpoint(directory: Path) -> Checkpoint | None:
    """Read the checkpoint in ``directory``; None when there is none.

    When the latest checkpoint is unreadable or its arrays are corrupt, the one before it
    (``checkpoint.prev.json`` with ``checkpoint.prev.npz``) is returned with a warning.

    Raises
    ------
    CheckpointError
        When neither the latest nor the previous checkpoint can be read.
    """
    directory = Path(directory)
    json_path = directory / JSON_NAME
    if not json_path.exists():
        return None
    try:
        return _load_pair(json_path, [directory / NPZ_NAME, directory / PREV_NPZ_NAME])
    except CheckpointError as err:
        prev_json = directory / PREV_JSON_NAME
        if not prev_json.exists():
            raise
        try:
            previous = _load_pair(prev_json, [directory / PREV_NPZ_NAME])
        except CheckpointError:
            raise err from None
        logger.warning("%s; falling back to the previous checkpoint (round %d)", err, previous.round)
        return previous


def _load_pair(json_path: Path, candidates: list[Path]) -> Checkpoint:
    try:
        record = json.loads(json_path.read_text())
        names, digest = list(record["arrays"]), str(record["npz-sha256"])
        server_round, state = int(record["round"]), dict(record["state"])
        version = record["format"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"cannot read checkpoint record {json_path}: {err!r}") from err
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{json_path} has format {version!r}, expected {FORMAT_VERSION}")
    npz_path = next((p for p in candidates if p.exists() and _sha256(p) == digest), None)
    if npz_path is None:
        raise CheckpointError(
            f"no array file matches the sha256 named by {json_path}: "
            f"{' and '.join(str(c) for c in candidates)} missing or corrupt"
        )
    return Checkpoint(round=server_round, arrays=_read_npz(npz_path, names), state=state)


@contextmanager
def _temporary_file(directory: Path) -> Iterator[tuple[Path, IO[bytes]]]:
    # Same directory as the target, so that os.replace is a rename within one file system.
    fd, name = tempfile.mkstemp(dir=directory, prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield path, handle
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _write_npz(handle: IO[bytes], arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    # Written member by member rather than with np.savez: any array name works (savez reserves
    # `file`), nothing is pickled, and the fixed timestamps keep the bytes reproducible.
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _read_npz(path: Path, names: list[str]) -> dict[str, npt.NDArray[Any]]:
    if not names:
        return {}  # an empty zip lacks the header np.load recognises; the digest vouched for it
    try:
        with np.load(path, allow_pickle=False) as npz:
            if sorted(npz.files) != sorted(names):
                found, expected = sorted(npz.files), sorted(names)
                raise CheckpointError(f"{path} holds arrays {found}, expected {expected}")
            return {name: npz[name] for name in names}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"cannot read checkpoint arrays {path}: {err!r}") from err


def _committed_digest(json_path: Path) -> str | None:
    try:
        return str(json.loads(json_path.read_text())["npz-sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_directory(directory: Path) -> None:
    # Makes the renames themselves durable; directories cannot be opened for this on Windows.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
