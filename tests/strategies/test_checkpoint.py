"""Tests for atomic checkpoints."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from strategies.persist import checkpoint as ckpt
from strategies.persist.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "prefix.layer-0.kv": rng.standard_normal((2, 4, 8)).astype(np.float32),
        "head.bias": rng.standard_normal(3),  # float64
        "file": np.arange(5, dtype=np.int16),  # a name np.savez could not take
    }


def _assert_arrays_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype, name
        assert np.array_equal(got[name], array), name


def test_round_trip_preserves_arrays_dtypes_and_state(tmp_path: Path) -> None:
    # Prepare
    arrays = _arrays(seed=0)
    state = {"strikes": {"4": 1}, "modes": ["local", "split"], "best-loss": 0.25}

    # Execute
    save_checkpoint(tmp_path, 3, arrays, state)
    loaded = load_checkpoint(tmp_path)

    # Assert
    assert loaded is not None
    assert loaded.round == 3
    assert loaded.state == state
    _assert_arrays_equal(loaded.arrays, arrays)


def test_no_checkpoint_gives_none(tmp_path: Path) -> None:
    # Execute / Assert
    assert load_checkpoint(tmp_path / "missing") is None


def test_later_save_replaces_earlier(tmp_path: Path) -> None:
    # Prepare
    save_checkpoint(tmp_path, 1, _arrays(seed=1), {"n": 1})

    # Execute
    save_checkpoint(tmp_path, 2, _arrays(seed=2), {"n": 2})
    loaded = load_checkpoint(tmp_path)

    # Assert
    assert loaded is not None and loaded.round == 2 and loaded.state == {"n": 2}
    _assert_arrays_equal(loaded.arrays, _arrays(seed=2))


def _crash_on_json(monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name == ckpt.JSON_NAME:
            raise KeyboardInterrupt("killed before the json was committed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_crash_between_npz_and_json_resumes_previous_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    save_checkpoint(tmp_path, 1, _arrays(seed=1), {"n": 1})
    _crash_on_json(monkeypatch)

    # Execute
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, _arrays(seed=2), {"n": 2})
    loaded = load_checkpoint(tmp_path)

    # Assert: the round-2 npz is on disk, but its json never was
    on_disk = np.load(tmp_path / ckpt.NPZ_NAME)["head.bias"]
    assert np.array_equal(on_disk, _arrays(seed=2)["head.bias"])
    assert loaded is not None and loaded.round == 1 and loaded.state == {"n": 1}
    _assert_arrays_equal(loaded.arrays, _arrays(seed=1))


def test_save_after_crash_clears_leftovers_and_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a killed save leaves its temporary json behind
    save_checkpoint(tmp_path, 1, _arrays(seed=1), {})
    _crash_on_json(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, _arrays(seed=2), {})
    monkeypatch.undo()
    assert list(tmp_path.glob(".checkpoint-*.tmp"))

    # Execute
    save_checkpoint(tmp_path, 3, _arrays(seed=3), {})
    loaded = load_checkpoint(tmp_path)

    # Assert
    assert not list(tmp_path.glob(".checkpoint-*.tmp"))
    assert loaded is not None and loaded.round == 3
    _assert_arrays_equal(loaded.arrays, _arrays(seed=3))


def test_two_crashes_in_a_row_still_resume_the_committed_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: round 2 and round 3 both die before their json is written
    save_checkpoint(tmp_path, 1, _arrays(seed=1), {"n": 1})
    _crash_on_json(monkeypatch)
    for server_round in (2, 3):
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(tmp_path, server_round, _arrays(seed=server_round), {})

    # Execute
    loaded = load_checkpoint(tmp_path)

    # Assert
    assert loaded is not None and loaded.round == 1
    _assert_arrays_equal(loaded.arrays, _arrays(seed=1))


def test_npz_without_json_is_no_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    _crash_on_json(monkeypatch)

    # Execute
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 1, _arrays(seed=1), {})

    # Assert
    assert (tmp_path / ckpt.NPZ_NAME).exists()
    assert load_checkpoint(tmp_path) is None


def test_corrupt_npz_raises_naming_the_files(tmp_path: Path) -> None:
    # Prepare
    save_checkpoint(tmp_path, 1, _arrays(seed=1), {})
    npz_path = tmp_path / ckpt.NPZ_NAME
    npz_path.write_bytes(npz_path.read_bytes()[:-10])

    # Execute / Assert
    with pytest.raises(CheckpointError, match=ckpt.NPZ_NAME):
        load_checkpoint(tmp_path)


def test_corrupt_json_raises_naming_the_file(tmp_path: Path) -> None:
    # Prepare
    save_checkpoint(tmp_path, 1, _arrays(seed=1), {})
    (tmp_path / ckpt.JSON_NAME).write_text('{"round": 1, ')

    # Execute / Assert
    with pytest.raises(CheckpointError, match=ckpt.JSON_NAME):
        load_checkpoint(tmp_path)


def test_unserialisable_state_leaves_checkpoint_untouched(tmp_path: Path) -> None:
    # Prepare
    save_checkpoint(tmp_path, 1, _arrays(seed=1), {"n": 1})
    before = (tmp_path / ckpt.JSON_NAME).read_text()

    # Execute
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path, 2, _arrays(seed=2), {"rng": np.random.default_rng(0)})

    # Assert
    assert (tmp_path / ckpt.JSON_NAME).read_text() == before
    assert json.loads(before)["round"] == 1


def test_empty_arrays_round_trip(tmp_path: Path) -> None:
    # Execute
    save_checkpoint(tmp_path, 0, {}, {"note": "before the first round"})
    loaded = load_checkpoint(tmp_path)

    # Assert
    assert loaded is not None and loaded.arrays == {} and loaded.round == 0


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path, caplog):
    # Prepare: checkpoints after rounds 1 and 2, then the round-2 arrays are damaged on disk
    save_checkpoint(tmp_path, 1, {"w": np.ones(3)}, {"round": 1})
    save_checkpoint(tmp_path, 2, {"w": np.full(3, 2.0)}, {"round": 2})
    (tmp_path / "checkpoint.npz").write_bytes(b"damaged")

    # Execute
    with caplog.at_level("WARNING"):
        checkpoint = load_checkpoint(tmp_path)

    # Assert
    assert checkpoint is not None and checkpoint.round == 1 and np.array_equal(checkpoint.arrays["w"], np.ones(3))
    assert "falling back to the previous checkpoint (round 1)" in caplog.text


def test_an_unreadable_record_with_no_previous_checkpoint_still_raises(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": np.ones(3)}, {})
    (tmp_path / "checkpoint.json").write_text("{")
    with pytest.raises(CheckpointError, match="checkpoint.json"):
        load_checkpoint(tmp_path)
