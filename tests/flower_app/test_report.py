"""The run report: run directories read into series, drawn, and written as PNGs and one HTML page."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from flower_app.report import charts, rundata
from flower_app.report.rundata import Assignment, ReportError, read_run
from flower_app.report.write import default_out, main, render, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PINNED = Path(__file__).parents[1] / "data" / "pinned_metrics.json"
NO_FAILURES = {"client-error": 0, "timeout": 0}


def _client(up, down, mode="split", group=0, energy_j=None):
    entry = {"bytes-up": up, "bytes-down": down, "mode": mode, "group": group, "train-loss": 0.5}
    if energy_j is not None:
        entry["energy-j"] = energy_j
    return entry


def _record(server_round, clients, accuracy, loss, clock_s, failures=NO_FAILURES, dropped=None):
    """A round's line of metrics.jsonl with the fields the report reads."""
    return {
        "round": server_round,
        "clients": clients,
        "accuracy": accuracy,
        "eval-loss": loss,
        "sim-clock-s": clock_s,
        "energy-j": sum(c.get("energy-j", 0.0) for c in clients.values()),
        "failures": dict(failures),
        "dropped": dropped or {},
        "bytes-up": sum(c["bytes-up"] for c in clients.values()),
        "bytes-down": sum(c["bytes-down"] for c in clients.values()),
    }


def _write_run(path, records, summary=None):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def _two_rounds(path, accuracy=(0.5, 0.75)):
    """Clients 2 and 10 for two rounds; 10's reply to round 2 never arrives."""
    return _write_run(
        path,
        [
            _record(
                1,
                {"2": _client(100, 40, energy_j=1.5), "10": _client(300, 60, "local", 1, energy_j=0.5)},
                accuracy[0],
                0.9,
                2.0,
            ),
            _record(
                2,
                {"2": _client(200, 40, energy_j=2.5), "10": _client(0, 60, "local", 1)},
                accuracy[1],
                0.6,
                5.0,
                failures={"client-error": 0, "timeout": 1},
                dropped={"10": "no reply within 60 s"},
            ),
        ],
        summary={"status": "completed", "rounds": 2, "final-accuracy": accuracy[1]},
    )


def _files(path):
    return {p: p.stat().st_mtime_ns for p in path.rglob("*")}


def test_bytes_per_client_are_summed_over_rounds_in_client_order(tmp_path):
    # Prepare
    run = read_run(_two_rounds(tmp_path / "a"))

    # Execute
    sent = rundata.bytes_per_client(run)

    # Assert: 2 before 10 (numbers, not strings); 100 + 200, 300 + 0; 40 + 40, 60 + 60
    assert list(sent.up) == ["2", "10"]
    assert sent.up == {"2": 300, "10": 300}
    assert sent.down == {"2": 80, "10": 120}


def test_held_out_energy_assignments_and_failures_series(tmp_path):
    # Prepare
    run = read_run(_two_rounds(tmp_path / "a"))

    # Execute
    accuracy = rundata.held_out(run, "accuracy")
    loss = rundata.held_out(run, "eval-loss")
    energy = rundata.energy(run)
    grid = rundata.assignments(run)
    failures = rundata.failures(run)

    # Assert
    assert accuracy == ([1, 2], [2.0, 5.0], [0.5, 0.75])
    assert loss.values == [0.9, 0.6]
    # 1.5 + 2.5 for client 2; client 10 has no cost entry in round 2 (it was dropped)
    assert energy.per_client_j == {"2": 4.0, "10": 0.5}
    assert (energy.rounds, energy.per_round_j) == ([1, 2], [2.0, 2.5])
    assert grid["2"] == {1: Assignment("split", 0, False), 2: Assignment("split", 0, False)}
    assert grid["10"] == {1: Assignment("local", 1, False), 2: Assignment("local", 1, True)}
    assert failures.by_cause == {"client-error": [0, 0], "timeout": [0, 1]}
    assert failures.dropped == {2: {"10": "no reply within 60 s"}}


def test_an_unevaluated_round_is_not_a_point(tmp_path):
    # Prepare: round 2 was not evaluated (its record has no accuracy)
    records = [_record(r, {"0": _client(1, 1)}, 0.5, 0.9, float(r)) for r in (1, 2, 3)]
    del records[1]["accuracy"]
    run = read_run(_write_run(tmp_path / "a", records))

    # Execute
    accuracy = rundata.held_out(run, "accuracy")

    # Assert
    assert accuracy.rounds == [1, 3] and accuracy.clock_s == [1.0, 3.0]


def test_page_is_self_contained_and_pngs_are_valid(tmp_path):
    # Prepare
    run_dir = _two_rounds(tmp_path / "a")

    # Execute
    page, notes = write_report([run_dir], tmp_path / "out")

    # Assert
    text = page.read_text()
    assert notes == []
    assert "http" not in text and "href=" not in text and "url(" not in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == len(charts.CHARTS)
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == sorted(f"{chart.name}.png" for chart in charts.CHARTS)
    assert all((tmp_path / "out" / name).read_bytes().startswith(PNG_SIGNATURE) for name in pngs)
    assert "no reply within 60 s" in text  # the dropped replies' table


def test_overlay_of_two_runs_has_one_labelled_line_per_run(tmp_path):
    # Prepare
    paths = [_two_rounds(tmp_path / "a"), _two_rounds(tmp_path / "b", accuracy=(0.6, 0.9))]
    runs = [read_run(p) for p in paths]

    # Execute
    fig = charts.draw_accuracy([(run.name, rundata.held_out(run, "accuracy")) for run in runs])

    # Assert: both panels (against rounds, against the clock) carry a line per run, labelled
    for ax in fig.axes:
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == ["a", "b"]
        assert [list(line.get_ydata()) for line in lines] == [[0.5, 0.75], [0.6, 0.9]]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert [list(line.get_xdata()) for line in fig.axes[1].get_lines()] == [[2.0, 5.0], [2.0, 5.0]]


def test_two_runs_default_beside_them_and_leave_the_runs_as_they_were(tmp_path, capsys):
    # Prepare
    paths = [_two_rounds(tmp_path / "a"), _two_rounds(tmp_path / "b")]
    before = {p: _files(p) for p in paths}

    # Execute
    code = main([str(p) for p in paths])

    # Assert
    assert code == 0
    out = tmp_path / "report-a-vs-b"
    assert capsys.readouterr().out.strip() == f"report: {out / 'report.html'}"
    assert (out / "accuracy.png").exists()
    assert {p: _files(p) for p in paths} == before
    assert default_out([paths[0]]) == paths[0] / "report"


def test_runs_of_the_same_name_are_told_apart(tmp_path):
    # Prepare
    paths = [_two_rounds(tmp_path / "x" / "test"), _two_rounds(tmp_path / "y" / "test")]

    # Execute
    labels = rundata.run_labels(paths)

    # Assert
    assert labels == ["x/test", "y/test"]


def test_a_missing_field_skips_its_chart_with_one_line(tmp_path, capsys):
    # Prepare: no record has a held-out accuracy
    records = [_record(1, {"0": _client(1, 1, energy_j=1.0)}, 0.5, 0.9, 1.0)]
    del records[0]["accuracy"]
    run_dir = _write_run(tmp_path / "a", records)

    # Execute
    code = main([str(run_dir)])

    # Assert
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[:-1] == ["accuracy: skipped: no round of metrics.jsonl has 'accuracy'"]
    assert not (run_dir / "report" / "accuracy.png").exists()
    assert (run_dir / "report" / "loss.png").exists()


def test_a_run_without_metrics_is_left_out_of_the_overlay(tmp_path):
    # Prepare: b has only its summary
    a = read_run(_two_rounds(tmp_path / "a"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "summary.json").write_text(json.dumps({"status": "running"}))
    b = read_run(tmp_path / "b")

    # Execute
    sections = render([a, b])

    # Assert: every chart drawn from a, one note each for b
    assert all(s.png is not None for s in sections)
    assert [s.notes for s in sections] == [(f"{s.name}: left out b: no metrics.jsonl",) for s in sections]


@pytest.mark.parametrize(
    "make, message",
    [
        # a folder that holds none of a run's files
        (lambda p: p.mkdir(), "not a run directory"),
        # no such path
        (lambda p: None, "not a run directory (no such directory)"),
        # a torn line in metrics.jsonl
        (lambda p: _write_run(p, []) and (p / "metrics.jsonl").write_text('{"round": 1}\n{"rou\n'), "metrics.jsonl:2"),
    ],
)
def test_a_broken_run_directory_exits_2_with_one_line(tmp_path, capsys, make, message):
    # Prepare
    path = tmp_path / "run"
    make(path)

    # Execute
    code = main([str(path)])

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err and str(path) in err
    assert not (path / "report").exists()


def test_out_may_not_be_a_run_directory(tmp_path):
    # Prepare
    a, b = _two_rounds(tmp_path / "a"), _two_rounds(tmp_path / "b")
    before = _files(b)

    # Execute / Assert
    with pytest.raises(ReportError, match="is a run directory"):
        write_report([a], b)
    assert _files(b) == before


def test_a_recorded_run_with_faults_draws_every_chart(tmp_path):
    # Prepare: the records a real run with crashing and vanishing clients wrote (tests/data)
    scenario = json.loads(PINNED.read_text())["scenarios"]["faults"]
    run = read_run(_write_run(tmp_path / "faults", scenario["metrics"], scenario["summary"]))

    # Execute
    sections = render([run])
    failures = rundata.failures(run)

    # Assert
    assert [s.notes for s in sections] == [()] * len(charts.CHARTS)
    assert failures.by_cause["client-error"] == [1, 1, 0] and failures.by_cause["timeout"] == [0, 0, 1]
    assert sorted(failures.dropped) == [1, 2, 3]
