"""Probing an optimized wire dtype against the basic one: the rate, ties, the stage, the hot switch."""

import json
import math

import numpy as np
import pytest

from flower_app.apps.runner import run_inprocess
from flower_app.modes.server_model import SplitServer
from strategies.persist.checkpoint import load_checkpoint
from strategies.probing import judge as probing
from strategies.probing.judge import ProbePlan, Trial, decide, rate, stage_due


def _trial(mode, drop, seconds, accuracy=0.8):
    return Trial(mode, start_loss=1.0, end_loss=1.0 - drop, start_accuracy=0.5, end_accuracy=accuracy, seconds=seconds)


def test_rate_is_the_convergence_amount_per_simulated_second():
    assert rate(_trial("int8", 0.2, 4.0), "loss") == pytest.approx(0.05)
    assert rate(_trial("int8", 0.2, 4.0, accuracy=0.7), "accuracy") == pytest.approx(0.05)
    assert rate(_trial("int8", 0.2, 0.0), "loss") == math.inf
    assert rate(_trial("int8", -0.1, 0.0), "loss") == -math.inf


def test_the_faster_converging_mode_wins_and_a_tie_keeps_the_basic_one():
    plan = ProbePlan(optimized="int8", rounds=(2,))
    # int8: less loss drop, but in a quarter of the time
    assert decide(_trial("float32", 0.2, 4.0), _trial("int8", 0.1, 1.0), plan)[0] == "int8"
    assert decide(_trial("float32", 0.2, 1.0), _trial("int8", 0.1, 1.0), plan)[0] == "float32"
    chosen, figures = decide(_trial("float32", 0.1, 1.0), _trial("int8", 0.1, 1.0), plan)
    assert chosen == "float32" and figures["trials"]["int8"]["score"] == figures["trials"]["float32"]["score"]
    by_accuracy = ProbePlan(optimized="int8", rounds=(2,), criterion="accuracy")
    assert decide(_trial("float32", 0.2, 9.0, 0.80), _trial("int8", 0.1, 1.0, 0.79), by_accuracy)[0] == "float32"


def test_when_neither_trial_converges_the_one_that_lost_less_wins():
    plan = ProbePlan(optimized="int8", rounds=(2,))
    # float32 lost 0.012 in 3 s (-0.004/s), int8 lost 0.010 in 1 s (-0.010/s): int8 did less harm
    chosen, figures = decide(_trial("float32", -0.012, 3.0), _trial("int8", -0.010, 1.0), plan)
    assert chosen == "int8" and figures["trials"]["int8"]["score"] == pytest.approx(-0.010)


def test_a_compressed_mode_that_saves_no_time_is_not_taken():
    plan = ProbePlan(optimized="int4", rounds=(2,))  # min_saving 0.05 by default
    # int4 lost more loss in a trial that took as long: its higher rate is noise of its own
    chosen, figures = decide(_trial("float32", 0.010, 43.3), _trial("int4", 0.014, 43.2), plan)
    assert chosen == "float32" and figures["time-saving"] == pytest.approx(0.1 / 43.3)
    assert "under the 5% minimum" in figures["rule"]
    # the same trials without the rule: the higher rate wins
    assert (
        decide(_trial("float32", 0.010, 43.3), _trial("int4", 0.014, 43.2), ProbePlan("int4", (2,), min_saving=0))[0]
        == "int4"
    )
    # saving a tenth of the round is enough, and a longer plan is not a compression
    assert decide(_trial("float32", 0.010, 10.0), _trial("int4", 0.010, 9.0), plan)[0] == "int4"
    assert (
        decide(_trial("float32", 0.010, 10.0), _trial("plan:2", 0.030, 20.0), ProbePlan("plan:2", (2,)))[0] == "plan:2"
    )
    # the accuracy criterion does not weigh time at all
    by_accuracy = ProbePlan(optimized="int4", rounds=(2,), criterion="accuracy")
    assert decide(_trial("float32", 0.0, 10.0, 0.70), _trial("int4", 0.0, 10.0, 0.71), by_accuracy)[0] == "int4"


def test_stages_start_at_listed_rounds_or_when_the_loss_stops_falling():
    rounds = ProbePlan(optimized="int8", rounds=(3,))
    plateau = ProbePlan(optimized="int8", plateau=0.05)
    falling = [{"eval-loss": 1.0}, {"eval-loss": 0.8}]
    flat = [{"eval-loss": 1.0}, {"eval-loss": 0.98}]
    assert stage_due(rounds, 3, [], [], "float32") and not stage_due(rounds, 4, [], [], "float32")
    assert not stage_due(plateau, 3, falling, [], "float32") and stage_due(plateau, 3, flat, [], "float32")
    assert not stage_due(plateau, 3, flat, ["float32"], "float32")  # once per mode in use
    assert not stage_due(ProbePlan(rounds=(3,)), 3, [], [], "float32")  # no optimized mode: off


def _probe_run(tmp_path, monkeypatch, chosen, num_rounds=3, **extra):
    """A tiny split run probing int8 at round 2, the decision forced; the tensors each evaluation saw."""
    seen = []
    evaluate = SplitServer.evaluate
    monkeypatch.setattr(SplitServer, "evaluate", lambda self, state: seen.append(dict(state)) or evaluate(self, state))
    real = probing.decide
    monkeypatch.setattr(
        probing,
        "decide",
        lambda basic, optimized, plan: (chosen, {**real(basic, optimized, plan)[1], "chosen": chosen}),
    )
    overrides = {
        "config": "test",
        "run.run-dir": str(tmp_path),
        "run.num-rounds": num_rounds,
        "strategy.policy": "split",
        "strategy.probe-dtype": "int8",
        "strategy.probe-rounds": "2",
        **extra,
    }
    summary = run_inprocess(overrides, num_nodes=4)
    rounds = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return summary, rounds, seen


@pytest.mark.parametrize("chosen", ["int8", "float32"])
def test_a_hot_switch_keeps_the_winning_trials_tensors_and_mode(tmp_path, monkeypatch, chosen):
    # Execute: 4 rounds, the stage is rounds 2 (int8 trial) and 3 (float32 trial)
    summary, rounds, seen = _probe_run(tmp_path, monkeypatch, chosen, num_rounds=4)

    # Assert: both trials started from round 1's tensors and the decision is recorded
    assert [r.get("probe", {}).get("trial") for r in rounds] == [None, "int8", "float32", None]
    assert rounds[2]["probe"]["chosen"] == chosen and summary["probes"][0]["chosen"] == chosen
    assert rounds[1]["bytes-up"] < 0.4 * rounds[2]["bytes-up"]  # the int8 trial really sent int8
    # the run went on from the winner's tensors (seen: initial, round 1, 2, 3, 4 evaluations)
    trial_state = seen[2] if chosen == "int8" else seen[3]
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.round == 4
    assert not all(np.array_equal(trial_state[k], checkpoint.arrays[k]) for k in trial_state)  # round 4 trained
    # ... in the winner's mode
    ratio = rounds[3]["bytes-up"] / rounds[0]["bytes-up"]
    assert (ratio < 0.4) == (chosen == "int8")
    assert checkpoint.state["probe"]["wire-dtype"] == chosen


def test_the_kept_tensors_are_the_winning_trials(tmp_path, monkeypatch):
    # Execute: 3 rounds, so the checkpoint is the stage's end
    _, rounds, seen = _probe_run(tmp_path, monkeypatch, "int8")

    # Assert: the int8 trial's tensors (evaluated after round 2), not the float32 trial's
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.round == 3
    assert all(np.array_equal(seen[2][k], checkpoint.arrays[k]) for k in seen[2])
    assert not all(np.array_equal(seen[3][k], checkpoint.arrays[k]) for k in seen[3])


def test_a_resumed_run_stays_in_the_switched_mode(tmp_path, monkeypatch):
    # Prepare: a run that switched to int8 at its stage, then stopped
    _, rounds, _ = _probe_run(tmp_path, monkeypatch, "int8")

    # Execute: continue for one more round
    _, resumed, _ = _probe_run(tmp_path, monkeypatch, "int8", num_rounds=4, **{"run.resume": True})

    # Assert: round 4 sent int8 activations (a quarter of round 1's float32 bytes)
    assert resumed[-1]["round"] == 4 and resumed[-1]["bytes-up"] < 0.4 * rounds[0]["bytes-up"]
