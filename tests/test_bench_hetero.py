"""bench/hetero.py's curve over targets and seeds, on hand-made rows (no training)."""

import json

import pytest

from tests.benches import load_bench

hetero = load_bench("hetero")


def _row(name, accuracy, clock, final=None):
    return {"name": name, "accuracy": accuracy, "sim-clock-s-by-round": clock, "final": final or accuracy[-1]}


def test_mean_time_needs_every_seed_to_reach_the_target():
    # Prepare: seed 1 reaches 0.75 in round 2 (20 s), seed 2 in round 1 (5 s), seed 3 never
    rows = [_row("x", [0.70, 0.76], [10.0, 20.0]), _row("x", [0.75, 0.77], [5.0, 9.0])]
    never = [*rows, _row("x", [0.70, 0.71], [1.0, 2.0])]

    # Execute / Assert
    assert hetero.mean_time(rows, 0.75) == pytest.approx(12.5)
    assert hetero.mean_time(never, 0.75) is None
    assert hetero.mean_time(rows, 0.70) == pytest.approx(7.5)


def test_curve_compares_each_policy_with_the_best_single_mode_per_target():
    # Prepare: one seed; all-centralized is fast but stops at 0.74, all-split is slow and accurate
    seed = [
        _row("all-centralized", [0.73, 0.74], [40.0, 41.0]),
        _row("all-split", [0.70, 0.78, 0.80], [75.0, 150.0, 225.0]),
        _row("staged", [0.73, 0.78, 0.795], [20.0, 50.0, 120.0]),
    ]

    # Execute
    text = hetero.curve([seed], [0.70, 0.74, 0.78])

    # Assert: 0.70 -> centralized 40 s against 20 s; 0.74 -> centralized 41 s against 50 s;
    # 0.78 -> split 150 s against 50 s; finals 0.795 against split's 0.80
    lines = text.splitlines()
    assert "all-centralized 40.0" in lines[2] and lines[2].split()[-1] == "2.00x"
    assert "all-centralized 41.0" in lines[3] and lines[3].split()[-1] == "0.82x"
    assert "all-split 150.0" in lines[4] and lines[4].split()[-1] == "3.00x"
    assert text.endswith("most accurate single mode: all-split; staged -0.5 points")


def test_parse_targets_includes_both_ends():
    assert hetero.parse_targets("0.70:0.78:0.02") == [0.70, 0.72, 0.74, 0.76, 0.78]


def test_a_seed_can_take_its_rows_from_two_outputs(tmp_path):
    # Prepare: the single modes in one output, a policy (and a redone all-split) in another
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = [_row("all-split", [0.70], [75.0]), _row("all-centralized", [0.73], [40.0])]
    (tmp_path / "a" / "hetero.json").write_text(json.dumps(first))
    (tmp_path / "b" / "hetero.json").write_text(
        json.dumps([_row("all-split", [0.71], [70.0]), _row("p", [0.72], [5.0])])
    )

    # Execute
    rows = hetero.merged_rows(f"{tmp_path / 'a'}+{tmp_path / 'b'}")

    # Assert: three rows by name, the later output's all-split replacing the earlier one
    assert sorted(r["name"] for r in rows) == ["all-centralized", "all-split", "p"]
    assert next(r for r in rows if r["name"] == "all-split")["accuracy"] == [0.71]
    with pytest.raises(SystemExit, match="no hetero.json"):
        hetero.merged_rows(str(tmp_path / "missing"))


def test_a_stopped_bench_keeps_the_rows_it_finished(tmp_path, monkeypatch):
    # Prepare: the first row asked for finishes, the second is stopped (Ctrl-C)
    done = {"name": "all-split", "status": "completed", "rounds": [{"accuracy": 0.7, "sim-clock-s": 75.0}]}

    def run_row(name, overrides, base, nodes, out):
        if name == "all-centralized":
            raise KeyboardInterrupt
        out.mkdir(parents=True, exist_ok=True)
        return dict(done, name=name)

    monkeypatch.setattr(hetero, "run_row", run_row)

    # Execute
    with pytest.raises(KeyboardInterrupt):
        hetero.main(["--only", "all-split,all-centralized", "--out", str(tmp_path)])

    # Assert: hetero.json holds the finished row, in the form --curve-from reads
    rows = json.loads((tmp_path / "hetero.json").read_text())
    assert [r["name"] for r in rows] == ["all-split"]
    assert rows[0]["accuracy"] == [0.7] and rows[0]["sim-clock-s-by-round"] == [75.0]


def test_an_unknown_row_is_refused_before_any_training(tmp_path):
    with pytest.raises(SystemExit, match="no row named all-splt"):
        hetero.main(["--only", "all-splt", "--out", str(tmp_path)])
    assert not (tmp_path / "hetero.json").exists()


@pytest.mark.slow
def test_seeds_run_as_parallel_processes_each_with_its_output(tmp_path):
    # Prepare: two seeds of the tiny job, one row, one round, two at once
    args = ["--nodes", "2", "--rounds", "1", "--only", "all-split", "--seeds", "1,2", "--jobs", "2"]

    # Execute
    hetero.main([*args, "--out", str(tmp_path), "config=test"])

    # Assert: each seed wrote its rows and its log; the seeds are different fleets
    rows = [json.loads((tmp_path / f"seed-{s}" / "hetero.json").read_text()) for s in (1, 2)]
    assert [[r["name"] for r in seed_rows] for seed_rows in rows] == [["all-split"], ["all-split"]]
    assert all((tmp_path / f"seed-{s}.log").stat().st_size > 0 for s in (1, 2))
    configs = [(tmp_path / f"seed-{s}" / "all-split" / "config.yaml").read_text() for s in (1, 2)]
    assert "seed: 1" in configs[0] and "seed: 2" in configs[1]


@pytest.mark.slow
def test_a_failing_seed_stops_the_parallel_bench_with_its_log(tmp_path):
    with pytest.raises(SystemExit, match=r"seed ([12]) failed \(exit [1-9]\d*\); see .*seed-\1.log"):
        hetero.main(["--nodes", "2", "--rounds", "1", "--only", "all-split", "--seeds", "1,2", "--jobs", "2",
                     "--out", str(tmp_path), "config=test", "train.lr=-1"])  # fmt: skip
