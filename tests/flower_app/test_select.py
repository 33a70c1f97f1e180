"""Tests for the zoo file, the selection on tiny models, the written choice and the command line."""

import pytest

from flower_app.config.load import load_config
from flower_app.select import choose as select_mod
from flower_app.select.choose import REGRESSOR_FEATURES, Probe, main, run_candidate, select, write_choice
from flower_app.select.zoo import load_zoo
from strategies.selection.learning_curve import fit_curve
from strategies.selection.performance_model import HistoryRun, append_run, read_history

ZOO = """
task:
  name: tiny
  config: test
  nodes: 2
  overrides: {{run.num-rounds: 2, data.test-size: 60}}
constraints:
  device: {{cpu-hz-max: 1.5e9, memory-bytes: 1.0e9, energy-budget-j: 40.0, bandwidth-hz: 3.0e6, channel-gain: 1.0e-11}}
  max-device-params: {max_params}
probe: {{rounds: 2, clients: 2, steps-per-round: 2}}
history: {history}
candidates:
  - name: bert
    grid: {{train.lr: [0.003, 0.03]}}
  - name: wide
    model.source: random-bert
    model.split-layer: 3
"""


def _zoo_file(tmp_path, max_params=1.6e5, body=ZOO):
    path = tmp_path / "zoo.yaml"
    path.write_text(body.format(max_params=max_params, history=tmp_path / "history.jsonl"))
    return path


def test_zoo_expands_grids_and_checks_every_candidate(tmp_path):
    # Execute
    zoo = load_zoo(_zoo_file(tmp_path))

    # Assert
    assert [c.name for c in zoo.candidates] == ["bert-lr=0.003", "bert-lr=0.03", "wide"]
    assert zoo.candidates[1].config.train.lr == 0.03
    assert zoo.candidates[2].config.model.split_layer == 3
    assert zoo.limits.device_params == 1.6e5 and zoo.limits.memory_bytes == 1e9


@pytest.mark.parametrize(
    "edit, message",
    [
        (("model.split-layer: 3", "model.split-layr: 3"), "did you mean 'model.split-layer'"),
        (("max-device-params", "max-params"), "unknown key(s) ['max-params']"),
        (("[0.003, 0.03]", "0.003"), "must be a non-empty list"),
        (("  - name: wide\n", "  - name: bert-lr=0.03\n"), "candidate names repeat"),
        (("model.split-layer: 3", "strategy.policy: kmeans"), "must be a single mode"),
        (("rounds: 2,", "rounds: 1,"), "two or more rounds"),
    ],
)
def test_bad_zoo_fails_in_one_line_naming_the_problem(tmp_path, edit, message):
    # Prepare
    body = ZOO.replace(*edit)
    assert body != ZOO

    # Execute / Assert
    with pytest.raises(ValueError, match=None) as caught:
        load_zoo(_zoo_file(tmp_path, body=body))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.slow  # two probes and a model build: seconds alone, a minute on a busy machine
def test_select_drops_by_constraint_probes_the_rest_and_writes_a_loadable_choice(tmp_path):
    # Prepare: 'wide' holds 3 layers on the device, over the parameter bound; one learning rate
    zoo = load_zoo(_zoo_file(tmp_path, body=ZOO.replace("[0.003, 0.03]", "[0.03]")))
    lines = []

    # Execute
    selection = select(zoo, tmp_path / "probes", progress=lines.append)
    text = write_choice(selection.chosen, tmp_path / "chosen.yaml")

    # Assert: the drop names its constraint and figures; the others carry a prediction
    bert, wide = selection.assessments
    assert not wide.feasible and wide.violations[0].limit == "device_params"
    assert "wide: dropped, parameters on the device" in lines[1]
    assert bert.method == "curve" and 0 <= bert.predicted <= 1 and bert.std > 0
    assert len(bert.probe.accuracy) == 2
    assert selection.chosen is bert
    # the written file and the run-config string both give the chosen config
    assert load_config({"config": str(tmp_path / "chosen.yaml")}) == bert.candidate.config
    assert 'config="test"' in text and "train.lr=0.03" in text


@pytest.mark.slow  # a full (two-round) run of the tiny model
def test_a_full_run_appends_to_the_history(tmp_path):
    # Prepare
    zoo = load_zoo(_zoo_file(tmp_path, max_params=1.0))  # nothing fits: no probes needed
    selection = select(zoo, tmp_path / "probes", progress=lambda _: None)

    # Execute
    summary = run_candidate(selection.assessments[0], zoo, tmp_path / "run")

    # Assert
    assert selection.chosen is None
    runs = read_history(zoo.history)
    assert [r.candidate for r in runs] == ["bert-lr=0.003"]
    assert runs[0].final_accuracy == summary["final-accuracy"]
    assert runs[0].features["split-layer"] == 2.0


def test_regressor_method_needs_a_history(tmp_path):
    zoo = load_zoo(_zoo_file(tmp_path))
    with pytest.raises(ValueError, match="the regressor needs 8"):
        select(zoo, tmp_path / "probes", method="regressor")


def test_command_line_bad_zoo_exits_2_with_one_line(tmp_path, capsys):
    # Prepare
    bad = _zoo_file(tmp_path, body=ZOO.replace("task:", "tsak:"))

    # Execute
    code = main(["--zoo", str(bad), "--out", str(tmp_path / "chosen.yaml")])

    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: zoo file") and "unknown section(s) ['tsak']" in err[-1]


def test_command_line_with_nothing_feasible_exits_1(tmp_path, capsys):
    code = main(["--zoo", str(_zoo_file(tmp_path, max_params=1.0)), "--out", str(tmp_path / "c.yaml")])
    assert code == 1
    assert "every candidate breaks a constraint" in capsys.readouterr().err


def test_default_zoo_loads():
    zoo = load_zoo()
    assert len(zoo.candidates) >= 6


def test_unknown_zoo_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown zoo 'nope': expected one of \['default'\]"):
        load_zoo("nope")


def test_auto_method_switches_to_the_regressor_once_the_history_is_long_enough(tmp_path, monkeypatch):
    # Prepare: probes stubbed (the training is tested above); eight finished runs of the task in the
    # history whose final accuracy is 0.2 above the probe's last accuracy
    zoo = load_zoo(_zoo_file(tmp_path, body=ZOO.replace("[0.003, 0.03]", "[0.03]")))
    fake = Probe((4.0, 8.0), (0.60, 0.62), fit_curve([4.0, 8.0], [0.60, 0.62], 8.0), 0.0)
    monkeypatch.setattr(select_mod, "probe", lambda *args: fake)
    for i in range(8):
        last = 0.5 + 0.02 * i
        features = {name: 1.0 for name in REGRESSOR_FEATURES} | {"probe-last-accuracy": last}
        append_run(zoo.history, HistoryRun("tiny", f"old{i}", features, last + 0.2))

    # Execute
    curve = select(zoo, tmp_path / "probes", method="curve", progress=lambda _: None)
    auto = select(zoo, tmp_path / "probes", progress=lambda _: None)

    # Assert: the curve predicts from the probe alone; the regressor learned the +0.2
    assert curve.chosen.method == "curve"
    assert curve.chosen.predicted == pytest.approx(fake.fit.prediction)
    assert auto.chosen.method == "regressor"
    assert auto.chosen.predicted == pytest.approx(0.82, abs=0.03)
