"""The learning rates of each round: the cosine factor, and the rates both sides of the split train at."""

import math
from dataclasses import replace

import pytest

from strategies.round.lr_schedule import lr_factor, settings_for_round
from strategies.settings import SplitSettings
from strategies.strategy import SplitPrefixStrategy
from strategies.wire.records import to_record
from tests.strategies.fakes import FakeClient, FakeServerModel, fleet, initial_state


def test_the_factor_runs_from_one_at_the_first_round_to_decay_to_at_the_last():
    # Execute
    factors = [lr_factor(r, 5, 0.1) for r in range(1, 6)]

    # Assert: the ends, the cosine's midpoint, and a strict fall in between
    assert factors[0] == 1.0 and math.isclose(factors[-1], 0.1)
    assert math.isclose(factors[2], 0.55)
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))


@pytest.mark.parametrize("server_round, num_rounds, decay_to", [(3, 5, 1.0), (1, 1, 0.1), (1, 6, 0.5)])
def test_a_constant_schedule_a_one_round_run_and_the_first_round_keep_the_rates(server_round, num_rounds, decay_to):
    settings = SplitSettings(lr=0.02, head_lr=0.03, lr_decay_to=decay_to)

    assert settings_for_round(settings, server_round, num_rounds) is settings


def test_a_resumed_round_gets_the_rates_it_would_have_had():
    # Execute: round 4 of 6, asked twice (a run that never stopped, and one resumed there)
    settings = SplitSettings(lr=0.01, head_lr=0.02, lr_decay_to=0.1)
    first, again = settings_for_round(settings, 4, 6), settings_for_round(settings, 4, 6)

    # Assert
    factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 5))
    assert first == again
    assert math.isclose(first.lr, 0.01 * factor) and math.isclose(first.head_lr, 0.02 * factor)


@pytest.mark.parametrize("decay_to", [0.0, -0.5, 1.5, float("nan")])
def test_a_decay_outside_zero_to_one_is_refused(decay_to):
    with pytest.raises(ValueError, match="lr_decay_to"):
        SplitSettings(lr_decay_to=decay_to)


class RecordingServer(FakeServerModel):
    """The fake server half, keeping the learning rates of each split call."""

    def __init__(self) -> None:
        super().__init__()
        self.rates: list[tuple[float, float]] = []

    def train_split(self, state, batches, *, lr=None, head_lr=None, codec):
        self.rates.append((lr, head_lr))
        return super().train_split(state, batches, lr=lr, head_lr=head_lr, codec=codec)


def test_the_server_and_the_clients_train_at_the_rounds_rates():
    # Prepare: 3 rounds decaying to a tenth, two split clients
    settings = SplitSettings(steps=2, batch_size=4, wait_for_nodes_s=0, lr=0.01, head_lr=0.02, lr_decay_to=0.1)
    clients = [FakeClient(0, 1.0, 8), FakeClient(1, 2.0, 8)]
    model = RecordingServer()

    # Execute
    SplitPrefixStrategy(model, settings).start(
        grid=fleet(clients), initial_arrays=to_record(initial_state()), num_rounds=3
    )

    # Assert: round r at lr x (1, 0.55, 0.1) on the server (2 clients a round) and in every train message
    expected = [settings_for_round(settings, r, 3) for r in (1, 2, 3)]
    assert [round(x.lr, 6) for x in expected] == [0.01, 0.0055, 0.001]
    assert model.rates == [(x.lr, x.head_lr) for x in expected for _ in clients]
    for client in clients:
        sent = [
            (m.content.config_records["config"]["lr"], m.content.config_records["config"]["head-lr"])
            for m in client.received
            if m.metadata.message_type == "train.split_forward"
        ]
        assert sent == [(x.lr, x.head_lr) for x in expected]


def test_without_a_schedule_every_round_trains_at_the_configured_rates():
    settings = replace(SplitSettings(steps=2, batch_size=4, wait_for_nodes_s=0), lr=0.01, head_lr=0.02)
    model = RecordingServer()

    SplitPrefixStrategy(model, settings).start(
        grid=fleet([FakeClient(0, 1.0, 8), FakeClient(1, 2.0, 8)]),
        initial_arrays=to_record(initial_state()),
        num_rounds=3,
    )

    assert model.rates == [(0.01, 0.02)] * 6
