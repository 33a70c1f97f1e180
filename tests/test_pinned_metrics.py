"""Pinned behaviour: fresh runs must reproduce the run directories recorded in tests/data/.

A few short in-process runs of the tiny test config (split, the threshold and cost policies,
all-local, parallel server side with float16 activations, and a run with crashing and
vanishing clients) were recorded with the code of the time: every per-round record of
metrics.jsonl except the wall time, every ledger row, groups.json and the summary (less its
wall time). A change that is meant to keep behaviour (a refactor) must leave them as they are.

Regenerate the fixture only when behaviour is meant to change, and say so in the commit::

    python -m tests.test_pinned_metrics --write
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import pytest

from flower_app.apps.runner import run_inprocess
from strategies.persist.rundir import RunDirectory
from strategies.wire import names as wire

FIXTURE = Path(__file__).parent / "data" / "pinned_metrics.json"
# Floats may differ in the last bits on another CPU (other SIMD kernels, other summation order
# inside torch and BLAS), and float16 on the wire can turn such a bit into a value rounded to
# its other neighbour: the float16 scenario's train-loss came out 1.6e-6 relative apart on an
# AMD EPYC. 1e-4 relative is far above that and far below any behaviour change.
REL_TOL, ABS_TOL = 1e-4, 1e-12


def _crash_and_vanish(index, message, call):
    """Client 1 crashes at its backward step in round 1, client 3 at its forward step in round 2;
    client 2's reply to round 3's forward never arrives."""
    server_round, message_type = int(message.metadata.group_id), message.metadata.message_type
    if (server_round, index, message_type) in ((1, 1, wire.SPLIT_BACKWARD), (2, 3, wire.SPLIT_FORWARD)):
        raise RuntimeError("device rebooted")
    if (server_round, index, message_type) == (3, 2, wire.SPLIT_FORWARD):
        return None
    return call()


FAULTS = {"crash-and-vanish": _crash_and_vanish}

# name -> (nodes, run-config overrides of config=test, fault hook name or None)
SCENARIOS = {
    "split": (4, {}, None),
    "threshold": (6, {"strategy.policy": "threshold", "run.num-rounds": 2}, None),
    "cost": (6, {"strategy.policy": "cost", "run.num-rounds": 2}, None),
    "local": (4, {"strategy.policy": "local", "run.num-rounds": 2}, None),
    "parallel-float16": (
        4,
        {"strategy.server-side": "parallel", "train.activation-dtype": "float16", "run.num-rounds": 2},
        None,
    ),
    "faults": (5, {"run.num-rounds": 3}, "crash-and-vanish"),
}


def record_run(name: str, run_dir: Path) -> dict:
    """Run one scenario in ``run_dir``; what of its run directory is pinned."""
    nodes, overrides, fault = SCENARIOS[name]
    config = {"config": "test", "run.run-dir": str(run_dir), **overrides}
    summary = run_inprocess(config, num_nodes=nodes, fault=FAULTS[fault] if fault else None)
    directory = RunDirectory(run_dir)
    return {
        "nodes": nodes,
        "overrides": overrides,
        "fault": fault,
        "metrics": [{k: v for k, v in r.items() if k != "wall-s"} for r in directory.rounds()],
        "ledger": directory.ledger(),
        "groups": json.loads((run_dir / "groups.json").read_text()),
        "summary": {k: v for k, v in summary.items() if k != "wall-s"},
    }


def assert_matches(actual, expected, path="") -> None:
    """Same keys, lengths, strings, ints and booleans; floats within ``REL_TOL``."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: {actual!r} is not a dict"
        assert sorted(actual) == sorted(expected), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_matches(actual[key], expected[key], f"{path}/{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_matches(a, e, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert isinstance(actual, float) and math.isclose(actual, expected, rel_tol=REL_TOL, abs_tol=ABS_TOL), (
            f"{path}: {actual!r} != {expected!r} (rel. tol. {REL_TOL})"
        )
    else:  # str, int, bool, None: exactly, and of the same type (True is not 1)
        assert type(actual) is type(expected) and actual == expected, f"{path}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_fresh_run_reproduces_the_pinned_run_directory(tmp_path, name):
    # Prepare
    expected = json.loads(FIXTURE.read_text())["scenarios"][name]

    # Execute
    actual = record_run(name, tmp_path / name)

    # Assert
    assert_matches(actual, expected, name)


def test_assert_matches_tells_ints_floats_and_keys_apart():
    assert_matches({"a": [1, 2.0, "x", None, True]}, {"a": [1, 2.0 * (1 + 1e-9), "x", None, True]})
    for actual, expected in ([1.0], [1]), ([True], [1]), ([1.0 + 1e-3], [1.0]), ({"a": 1, "b": 2}, {"a": 1}):
        with pytest.raises(AssertionError):
            assert_matches(actual, expected)


def write_fixture() -> None:
    """Record every scenario with the current code into ``FIXTURE``."""
    with tempfile.TemporaryDirectory() as tmp:
        scenarios = {name: record_run(name, Path(tmp) / name) for name in sorted(SCENARIOS)}
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(
        json.dumps(
            {"regenerate": "python -m tests.test_pinned_metrics --write", "scenarios": scenarios},
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_pinned_metrics --write   (records the current behaviour)")
    write_fixture()
