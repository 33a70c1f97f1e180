"""The probe controller: the mode in use, what was probed and decided, a checkpoint's probe entry."""

import pytest
from flwr.app import ConfigRecord

from strategies.probing.controller import ProbeController
from strategies.probing.judge import Decision, ProbePlan
from strategies.round.context import RoundContext
from strategies.settings import SplitSettings
from tests.strategies.fakes import fleet

SETTINGS = SplitSettings(steps=6, lr=0.02, head_lr=0.04, probe=ProbePlan(optimized="int8", plateau=0.1))


@pytest.mark.parametrize(
    ("chosen", "field", "value"),
    [
        ("int8", "activation_dtype", "int8"),  # a wire dtype
        ("topk:0.25", "upload_topk", 0.25),  # top-k uploads
        ("plan:3", "steps", 18),  # three times the basic plan per exchange
        ("float32", "activation_dtype", "float32"),  # the basic mode: its own settings
    ],
)
def test_a_decision_switches_the_mode_and_the_settings(chosen, field, value):
    # Prepare
    probes = ProbeController(SETTINGS)

    # Execute
    probes.decide(Decision(3, chosen, {"chosen": chosen, "reason": "by hand"}))

    # Assert
    assert probes.mode == chosen and getattr(probes.settings, field) == value
    assert probes.decisions == [{"round": 3, "chosen": chosen, "reason": "by hand"}]
    assert (probes.settings is SETTINGS) == (chosen == "float32")


def test_a_checkpoint_entry_restores_mode_and_probed_modes():
    # Prepare: a stage started from float32 and switched to int8
    probes = ProbeController(SETTINGS)
    probes.begin_stage()
    probes.decide(Decision(2, "int8", {"chosen": "int8"}))

    # Execute
    entry = probes.checkpoint_entry()
    restored = ProbeController(SETTINGS)
    restored.restore(entry)

    # Assert
    assert entry == {"wire-dtype": "int8", "mode": "int8", "probed": ["float32"]}
    assert restored.mode == "int8" and restored.probed == ("float32",)
    assert restored.settings.activation_dtype == "int8"


@pytest.mark.parametrize(
    ("entry", "mode"),
    [
        ({"wire-dtype": "float16"}, "float16"),  # an older checkpoint: the wire dtype alone
        ({}, "float32"),  # no probe entry: the basic mode
    ],
)
def test_an_older_or_empty_entry_restores_its_wire_dtype_or_the_basic_mode(entry, mode):
    # Prepare
    probes = ProbeController(SETTINGS)

    # Execute
    probes.restore(entry)

    # Assert
    assert probes.mode == mode and probes.settings.activation_dtype == mode and probes.probed == ()


def test_a_plateau_probes_once_from_each_mode():
    # Prepare: held-out loss 1.0 then 0.99, a fall of 1% (under the 10% plateau)
    history = [{"eval-loss": 1.0}, {"eval-loss": 0.99}]
    probes = ProbeController(SETTINGS)

    # Execute
    before = probes.stage_due(3, history)
    probes.begin_stage()
    after = probes.stage_due(3, history)

    # Assert
    assert before and not after


def test_a_rounds_context_has_the_modes_settings_at_the_rounds_learning_rates():
    # Prepare: rates decaying to half by round 3 of 3
    probes = ProbeController(SplitSettings(steps=6, lr=0.02, head_lr=0.04, lr_decay_to=0.5))
    run = RoundContext(fleet([]), 1, 3, probes.settings, 60.0, ConfigRecord({"k": 1}))

    # Execute
    first = probes.context_for(run, 1)
    last = probes.context_for(run, 3, mode="plan:2", seed_round=2)

    # Assert
    assert first.settings is probes.settings and first.server_round == 1
    assert (last.settings.lr, last.settings.head_lr, last.settings.steps) == pytest.approx((0.01, 0.02, 12))
    assert last.server_round == 3 and last.seed_round == 2 and last.timeout == 60.0 and last.train_config["k"] == 1
    assert probes.mode == "float32"  # a trial's context leaves the mode in use as it was
