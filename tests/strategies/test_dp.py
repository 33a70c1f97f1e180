"""Client-level DP of the average: clipping, equal weights, seeded noise, the accountant, the strategy."""

import json
import math

import numpy as np
import pytest

from flower_app.config.load import load_config
from flower_app.config.strategy_settings import split_settings
from flower_app.report.page import html_page
from flower_app.report.rundata import RunData
from strategies.aggregate import dp
from strategies.aggregate.accountant import PrivacyLedger, epsilon, sampling_rate
from strategies.aggregate.volume import Contribution
from strategies.persist.checkpoint import Checkpoint
from strategies.persist.rundir import RunDirectory
from strategies.settings import SplitSettings
from strategies.strategy import SplitPrefixStrategy
from strategies.wire.records import to_record
from tests.strategies.fakes import FakeClient, FakeServerModel, fleet, initial_state

SETTINGS = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7)


def _c(volume=10, **arrays):
    return Contribution({k: np.asarray(v, np.float64) for k, v in arrays.items()}, volume)


# --- the mechanism ------------------------------------------------------------------------------


def test_an_update_above_the_clip_is_scaled_to_exactly_the_clip_norm_and_one_below_is_unchanged():
    # Prepare: an update of norm 5 over two tensors, (3, 0) and (0, 4)
    update = {"a": np.array([3.0, 0.0]), "b": np.array([0.0, 4.0])}

    # Execute
    above = dp.clip_update(update, 1.0)
    below = dp.clip_update(update, 10.0)
    zero = dp.clip_update({"a": np.zeros(2)}, 1.0)

    # Assert: the norm over both tensors is the clip, the direction kept; within the clip, nothing changes
    assert math.isclose(np.sqrt(sum(np.sum(v**2) for v in above.values())), 1.0, rel_tol=1e-12)
    assert np.allclose(above["a"], [0.6, 0.0]) and np.allclose(above["b"], [0.0, 0.8])
    assert all(np.array_equal(below[k], update[k]) for k in update)
    assert np.array_equal(zero["a"], np.zeros(2))  # a frozen client's zero update is not divided by 0
    assert np.array_equal(update["a"], [3.0, 0.0])  # the caller's arrays are not clipped in place


def test_under_dp_clients_count_equally_whatever_their_volume():
    # Prepare: from (1, 1), client A moves by (3, 4) (norm 5, above the clip 1) behind 90 samples,
    # client B by (0.3, 0.4) (norm 0.5) behind 10
    state = {"p": np.ones(2, np.float32)}
    clients = [_c(90, p=[4.0, 5.0]), _c(10, p=[1.3, 1.4])]

    # Execute
    private = dp.private_contribution(clients, state, 1.0, 0.0, np.random.default_rng(0))

    # Assert: 1 + the plain mean of (0.6, 0.8) and (0.3, 0.4); by volume it would be 1 + (0.57, 0.76)
    assert private is not None and private.num_examples == 100
    assert np.allclose(private.arrays["p"], [1.0 + 0.45, 1.0 + 0.6])
    assert private.arrays["p"].dtype == np.float32


def test_the_noise_std_is_dp_noise_times_clip_over_the_clients_holding_each_tensor():
    # Prepare: four clients that did not move; "a" is held by all four, "b" by two of them
    size = 200_000
    state = {"a": np.zeros(size), "b": np.zeros(size)}
    clients = [_c(a=np.zeros(size), b=np.zeros(size)) for _ in range(2)] + [_c(a=np.zeros(size)) for _ in range(2)]

    # Execute: noise multiplier 1.5, clip 2
    mean = dp.private_mean(clients, state, 2.0, 1.5, np.random.default_rng(3))

    # Assert: std 1.5 x 2 / 4 = 0.75 on "a", 1.5 x 2 / 2 = 1.5 on "b" (relative standard error 0.16%)
    assert np.std(mean["a"]) == pytest.approx(0.75, rel=0.01)
    assert np.std(mean["b"]) == pytest.approx(1.5, rel=0.01)
    assert abs(np.mean(mean["a"])) < 0.01


def test_the_noise_is_seeded_by_seed_round_and_the_clients_averaged():
    # Prepare
    state, clients = {"p": np.zeros(3)}, [_c(p=np.ones(3))]

    def draw(seed, server_round, pids):
        return dp.private_mean(clients, state, 1.0, 1.0, dp.noise_generator(seed, server_round, pids))["p"]

    # Execute / Assert: the same inputs draw the same noise; another round or half draws other noise
    assert np.array_equal(draw(7, 1, [0, 1]), draw(7, 1, [0, 1]))
    assert not np.array_equal(draw(7, 1, [0, 1]), draw(7, 2, [0, 1]))
    assert not np.array_equal(draw(7, 1, [0, 1]), draw(7, 1, [2, 3]))


# --- the accountant -----------------------------------------------------------------------------


def test_the_accountant_matches_opacus_published_rdp_figure():
    # Opacus 1.6.0, opacus/tests/accountants_test.py, AccountingTest.test_rdp_accountant: noise 1.5,
    # sample rate 0.04, int(90 / 0.04) = 2250 steps, delta 1e-5 -> epsilon 7.32911117143 (same RDP
    # accountant and orders; the extra large orders do not change the optimum at order 3.9)
    assert epsilon(((1.5, 0.04, 2250),), 1e-5) == pytest.approx(7.32911117143, abs=1e-7)


def test_the_accountant_is_within_the_moments_accountants_bound_of_abadi_et_al():
    # Abadi et al. 2016, "Deep Learning with Differential Privacy", Sec. 3.1: q = 0.01, sigma = 4,
    # T = 10000, delta = 1e-5 gives epsilon ~ 1.26 with the moments accountant. RDP with the
    # conversion of Balle et al. 2020 is tighter: 1.035 here, so the figure lies below 1.26, and not
    # far below (a mistake in q, sigma or the steps moves it by far more than 20%).
    spent = epsilon(((4.0, 0.01, 10000),), 1e-5)
    assert 0.8 * 1.26 < spent <= 1.26


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    # Prepare: q = 0.1
    def after(rounds, noise):
        ledger = PrivacyLedger()
        for _ in range(rounds):
            ledger = ledger.after(noise, 0.1)
        return ledger

    # Execute / Assert
    assert after(20, 1.0).epsilon(1e-5) > after(10, 1.0).epsilon(1e-5) > after(5, 1.0).epsilon(1e-5) > 0
    assert after(10, 2.0).epsilon(1e-5) < after(10, 1.0).epsilon(1e-5)
    assert after(10, 1.0).steps == ((1.0, 0.1, 10),)  # one entry for rounds of the same noise and rate
    assert PrivacyLedger().epsilon(1e-5) == 0.0 and after(1, 0.0).epsilon(1e-5) == math.inf


def test_the_ledger_composes_rounds_of_different_rates_and_goes_through_a_checkpoint():
    # Prepare: two rounds at q = 0.5, then one at q = 1 (a client left)
    ledger = PrivacyLedger().after(1.0, 0.5).after(1.0, 0.5).after(1.0, 1.0)

    # Execute
    restored = PrivacyLedger.from_state(json.loads(json.dumps(ledger.to_state())))

    # Assert
    assert restored == ledger and restored.rounds == 3
    assert restored.epsilon(1e-5) == epsilon(((1.0, 0.5, 2), (1.0, 1.0, 1)), 1e-5)
    assert PrivacyLedger.from_state(None) == PrivacyLedger()
    assert sampling_rate(3, 10) == 0.3 and sampling_rate(5, 4) == 1.0 and sampling_rate(1, 0) == 1.0


# --- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dp_noise": 1.0}, "dp_noise=1.0 needs dp_clip > 0"),  # noise scaled to no clip
        ({"dp_clip": 1.0, "root_samples": 8}, "cannot be combined with root_samples=8"),  # FLTrust weights
        ({"dp_clip": 1.0, "aggregation": "median"}, "aggregation='median'"),  # a rule other than the mean
        ({"dp_clip": 1.0, "dp_delta": 0.0}, "dp_delta=0.0 must be in (0, 1)"),  # no delta
        ({"dp_clip": float("nan")}, "must be at least 0"),  # NaN slips past every < and >
    ],
)
def test_dp_settings_that_cannot_work_are_refused(kwargs, message):
    with pytest.raises(ValueError) as err:
        SplitSettings(**kwargs)
    assert message in str(err.value)


def test_the_privacy_section_reaches_the_strategy_and_noise_without_a_clip_is_refused():
    # Execute
    config = load_config({"config": "test", "privacy.dp-clip": 0.5, "privacy.dp-noise": 1.1, "privacy.dp-delta": 1e-6})
    settings = split_settings(config)

    # Assert
    assert (settings.dp_clip, settings.dp_noise, settings.dp_delta) == (0.5, 1.1, 1e-6)
    with pytest.raises(ValueError, match="needs dp_clip > 0"):
        load_config({"config": "test", "privacy.dp-noise": 1.0})


# --- the strategy -------------------------------------------------------------------------------


def _run(clients, settings, num_rounds=1, run_dir=None):
    strategy = SplitPrefixStrategy(FakeServerModel(), settings, run_dir)
    result = strategy.start(grid=fleet(clients), initial_arrays=to_record(initial_state()), num_rounds=num_rounds)
    return strategy, result


def test_with_dp_and_no_noise_the_round_is_the_clipped_equal_weight_mean():
    # Prepare: split clients move prefix.0 from 0 to 1, 2 and 3 (norms 1.73, 3.46, 5.20) behind 10, 20, 30
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 20), FakeClient(2, 3.0, 30)]
    settings = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7, dp_clip=3.0)

    # Execute
    strategy, result = _run(clients, settings)

    # Assert: clip 3 leaves (1, 1, 1) and scales the others to 3 / sqrt(3) each; equal weights
    clipped = 3.0 / np.sqrt(3.0)
    assert np.allclose(result.arrays["prefix.0"].numpy(), (1.0 + clipped + clipped) / 3)
    # the server's own tensors are not clipped: its sequential copy trained 30 steps
    assert np.allclose(result.arrays["prefix.1"].numpy(), 30.0)
    assert result.train_metrics_clientapp[1]["dp-epsilon"] == math.inf  # no noise, no privacy


def test_with_dp_the_round_is_the_clipped_mean_plus_the_seeded_noise():
    # Prepare
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 20), FakeClient(2, 3.0, 30)]
    settings = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7, dp_clip=3.0, dp_noise=0.8)

    # Execute
    _, result = _run(clients, settings)

    # Assert: prefix.0 is the first tensor the clients hold, so it takes the generator's first draws
    clipped = 3.0 / np.sqrt(3.0)
    noise = dp.noise_generator(7, 1, [0, 1, 2]).normal(0.0, 0.8 * 3.0 / 3, 3)
    expected = ((1.0 + clipped + clipped) / 3 + noise).astype(np.float32)
    assert np.allclose(result.arrays["prefix.0"].numpy(), expected)
    assert not np.allclose(expected, (1.0 + clipped + clipped) / 3, atol=1e-3)  # the noise is there


def test_each_record_and_the_summary_carry_epsilon_and_a_resumed_run_goes_on_counting(tmp_path):
    # Prepare: every client every round (q = 1), noise multiplier 1
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 20)]
    settings = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7, dp_clip=1.0, dp_noise=1.0)

    # Execute: two rounds, then a new strategy resumes from the checkpoint and runs a third
    strategy, _ = _run(clients, settings, num_rounds=2, run_dir=RunDirectory(tmp_path))
    checkpoint = RunDirectory(tmp_path).load()
    resumed = SplitPrefixStrategy(FakeServerModel(), settings, RunDirectory(tmp_path))
    resumed.resume(checkpoint)
    resumed.start(grid=fleet(clients), initial_arrays=to_record(checkpoint.arrays), num_rounds=3)

    # Assert: epsilon of 1, 2 and 3 Gaussian releases in the records, the last in the summary
    records = RunDirectory(tmp_path).rounds()
    expected = [epsilon(((1.0, 1.0, t),), 1e-5) for t in (1, 2, 3)]
    assert [r["dp-epsilon"] for r in records] == pytest.approx(expected)
    assert expected[0] < expected[1] < expected[2]
    assert all(r["dp-sampling-rate"] == 1.0 and r["dp-delta"] == 1e-5 for r in records)
    assert strategy.summary_record["dp-epsilon"] == pytest.approx(expected[1])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dp-epsilon"] == pytest.approx(expected[2]) and summary["dp-rounds"] == 3


def test_the_sampling_rate_is_the_rounds_sample_over_the_connected_clients():
    # Prepare: four clients, half sampled each round
    clients = [FakeClient(i, 1.0 + i, 10) for i in range(4)]
    settings = SplitSettings(
        steps=10, batch_size=4, wait_for_nodes_s=0, seed=7, dp_clip=1.0, dp_noise=1.0, fraction_train=0.5
    )

    # Execute
    _, result = _run(clients, settings, num_rounds=2)

    # Assert
    assert result.train_metrics_clientapp[2]["dp-sampling-rate"] == 0.5
    assert result.train_metrics_clientapp[2]["dp-epsilon"] == pytest.approx(epsilon(((1.0, 0.5, 2),), 1e-5))


def test_without_dp_records_and_checkpoints_carry_no_privacy_entries(tmp_path):
    # Execute
    strategy, _ = _run([FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 20)], SETTINGS, run_dir=RunDirectory(tmp_path))

    # Assert
    [record] = RunDirectory(tmp_path).rounds()
    assert not any(k.startswith("dp-") for k in record) and "dp-epsilon" not in strategy.summary_record
    assert "privacy" not in RunDirectory(tmp_path).load().state
    strategy.resume(Checkpoint(1, initial_state(), {"round": 1}))
    assert strategy.privacy == PrivacyLedger()


def test_the_reports_summary_table_shows_a_dp_runs_epsilon(tmp_path):
    # Prepare: a DP run and one without
    private = RunData("private", tmp_path, None, {"status": "completed", "dp-epsilon": 5.88123}, None)
    plain = RunData("plain", tmp_path, None, {"status": "completed"}, None)

    # Execute
    page = html_page([private, plain], [])

    # Assert: the DP run's epsilon to 4 significant digits
    assert "<th>DP epsilon</th>" in page and "<td>5.881</td>" in page
