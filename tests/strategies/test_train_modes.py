"""Probe modes beyond a wire dtype: their specs, their settings, and a resumed run that stays in one."""

import json

import pytest

from flower_app.apps.runner import run_inprocess
from flower_app.config.load import load_config
from flower_app.config.strategy_settings import split_settings
from strategies.cost.costmodel import EnergyLedger
from strategies.persist.checkpoint import load_checkpoint
from strategies.probing import judge as probing
from strategies.probing.controller import apply_mode
from strategies.probing.modes import Mode, parse_mode
from strategies.round.record import simulate
from strategies.settings import SplitSettings
from strategies.wire import names as wire
from tests.replies import arrays, spy
from tests.strategies.fakes import FakeGrid, FakeServerModel
from tests.strategies.test_round_pieces import SETTINGS, _fleet, _split_round


def test_mode_specs_parse_and_change_one_setting_of_the_basic_ones():
    basic = SplitSettings(steps=6)
    assert parse_mode("topk:0.1") == Mode("topk", 0.1) and parse_mode("plan:3") == Mode("plan", 3)
    assert apply_mode(basic, "int8").activation_dtype == "int8"
    assert apply_mode(basic, "topk:0.25").upload_topk == 0.25
    assert apply_mode(basic, "plan:3").steps == 18  # three times the basic plan per exchange
    for spec in ("topk:1", "topk:0", "topk:x", "plan:1", "plan:2.5", "bf16", "plan"):
        with pytest.raises(ValueError, match="must be float16, int8, int4, bfloat16, topk:F"):
            parse_mode(spec)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"strategy.probe-mode": "plan:1"}, "'strategy.probe-mode'='plan:1' must be float16, int8, int4, bfloat16"),
        ({"strategy.probe-mode": "int8", "strategy.probe-dtype": "int8"}, "set one"),  # two names for one thing
        ({"train.upload-topk": 0.0}, "'train.upload-topk'=0.0 is below its minimum"),
    ],
)
def test_bad_mode_settings_fail_at_start_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config({"config": "test", **overrides})


def test_a_longer_plan_is_priced_for_the_steps_it_trains():
    # Prepare: a fleet planned for 2 steps a round, and a round of plan:3 (6 steps in one exchange)
    FakeGrid({})  # messages outside a Flower runtime need its task identity
    state = _fleet()
    rnd = _split_round(state)

    # Execute
    _, basic = simulate(rnd, state, SETTINGS, FakeServerModel().shape(), EnergyLedger())
    _, longer = simulate(rnd, state, apply_mode(SETTINGS, "plan:3"), FakeServerModel().shape(), EnergyLedger())

    # Assert: three times the compute on both sides, the same bytes
    for pid in basic:
        assert longer[pid].compute_s == pytest.approx(3 * basic[pid].compute_s)
        assert longer[pid].server_s == pytest.approx(3 * basic[pid].server_s)
        assert longer[pid].uplink_s == basic[pid].uplink_s


def test_the_older_probe_dtype_key_still_names_the_mode():
    assert split_settings(load_config({"config": "test", "strategy.probe-dtype": "int8"})).probe.optimized == "int8"


def _forced_run(tmp_path, monkeypatch, mode, num_rounds, replies, **extra):
    """A tiny split run probing ``mode`` at round 2, the decision forced to it."""
    real = probing.decide
    monkeypatch.setattr(
        probing, "decide", lambda basic, optimized, plan: (mode, {**real(basic, optimized, plan)[1], "chosen": mode})
    )
    config = {
        "config": "test",
        "run.run-dir": str(tmp_path),
        "run.num-rounds": num_rounds,
        "strategy.policy": "split",
        "train.steps-per-round": 3,
        "strategy.probe-mode": mode,
        "strategy.probe-rounds": "2",
        **extra,
    }
    run_inprocess(config, num_nodes=2, fault=spy(replies))
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["topk:0.1", "plan:2"])
def test_a_resumed_run_stays_in_the_probed_mode(tmp_path, monkeypatch, mode):
    # Prepare: a run that switched to the mode at its stage (rounds 2 and 3), then stopped
    first, resumed = [], []
    rounds = _forced_run(tmp_path, monkeypatch, mode, 3, first)
    assert [r.get("probe", {}).get("trial") for r in rounds] == [None, mode, "float32"]
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.state["probe"]["mode"] == mode

    # Execute: continue for one more round
    _forced_run(tmp_path, monkeypatch, mode, 4, resumed, **{"run.resume": True})

    # Assert: round 4 trained in the mode: sparse uploads, or twice the minibatches in one exchange
    def forward_chunks(replies):
        return [len(arrays(r, wire.ACTIVATIONS)) // 3 for _, _, t, r in replies if t == wire.SPLIT_FORWARD]

    backward = [r for _, _, t, r in resumed if t == wire.SPLIT_BACKWARD]
    assert len(backward) == 2
    if mode.startswith("topk"):
        assert all(wire.SPARSE in r.content.array_records for r in backward)
        assert forward_chunks(resumed) == [3, 3]
    else:
        assert all(wire.ARRAYS in r.content.array_records for r in backward)
        assert forward_chunks(resumed) == [6, 6] and forward_chunks(first)[:2] == [3, 3]
