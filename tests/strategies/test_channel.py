"""Channels that change by round: the shadowing and fading process, its keys, and what reacts to it."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import yaml

from flower_app.apps.client_app import node_channel
from flower_app.config.load import load_config
from strategies.cost.workload import ModelShape
from strategies.fleet import channel
from strategies.fleet.channel import ChannelProcess, gain_offset_db, planning_round, profile_at
from strategies.fleet.devices import load_fleet_spec, sample_channels, sample_fleet
from strategies.fleet.state import ClientInfo, FleetState
from strategies.persist.rundir import RunDirectory
from strategies.policy.groupings.registry import grouping_params
from strategies.policy.policies import Policy
from strategies.settings import SplitSettings
from strategies.strategy import SplitPrefixStrategy
from strategies.wire import names as wire
from strategies.wire.records import to_record
from tests.strategies.fakes import FakeClient, FakeServerModel, fleet, initial_state, profile

SHADOWING = ChannelProcess(shadowing_db=8.0, correlation=0.9)
RAYLEIGH = ChannelProcess(fading="rayleigh")
# Rayleigh block fading: |h|^2 ~ Exp(1); in dB its mean is -10 gamma / ln 10, its std 10 pi / (ln 10 sqrt 6).
RAYLEIGH_MEAN_DB = -10.0 * np.euler_gamma / math.log(10.0)
RAYLEIGH_STD_DB = 10.0 * math.pi / (math.log(10.0) * math.sqrt(6.0))


def _series(process, clients, rounds, seed=5):
    """Gain offsets in dB, one row per client, one column per round 1..rounds."""
    return np.array([[gain_offset_db(process, seed, c, r) for r in range(1, rounds + 1)] for c in range(clients)])


def _lag1(series):
    """Pooled lag-1 correlation over every client's consecutive rounds."""
    return float(np.corrcoef(series[:, :-1].ravel(), series[:, 1:].ravel())[0, 1])


# --- the process ------------------------------------------------------------------------------


def test_a_round_gain_is_reproducible_from_seed_client_and_round_alone_and_moves_between_rounds():
    # Prepare
    process = replace(SHADOWING, fading="rayleigh")
    first = [gain_offset_db(process, 11, 3, r) for r in range(1, 30)]

    # Execute: a resumed run asks for a late round first, with no memo of the earlier ones
    channel._SERIES.clear()
    late = gain_offset_db(process, 11, 3, 29)
    again = [gain_offset_db(process, 11, 3, r) for r in range(1, 30)]

    # Assert
    assert late == first[-1] and again == first
    assert len(set(first)) == len(first)  # a new gain every round
    shadowing = channel.shadowing_db(SHADOWING, 11, 3, 5)
    assert channel.shadowing_db(SHADOWING, 12, 3, 5) != shadowing != channel.shadowing_db(SHADOWING, 11, 4, 5)


def test_shadowing_has_the_configured_spread_and_round_to_round_correlation():
    # Execute: 800 clients x 40 rounds
    series = _series(SHADOWING, 800, 40)

    # Assert: zero mean, std sigma, lag-1 correlation rho (AR(1) over rounds)
    assert abs(series.mean()) < 0.6
    assert series.std() == pytest.approx(8.0, rel=0.04)
    assert _lag1(series) == pytest.approx(0.9, abs=0.02)
    assert abs(_lag1(_series(replace(SHADOWING, correlation=0.0), 300, 20))) < 0.05


def test_rayleigh_fading_has_unit_mean_power_and_is_independent_across_rounds():
    # Execute
    series = _series(RAYLEIGH, 250, 40)

    # Assert: |h|^2 ~ Exp(1): linear mean 1, the dB moments of an exponential, no memory
    power = 10.0 ** (series / 10.0)
    assert power.mean() == pytest.approx(1.0, abs=0.04)
    assert np.median(power) == pytest.approx(math.log(2.0), abs=0.04)
    assert series.mean() == pytest.approx(RAYLEIGH_MEAN_DB, abs=0.2)
    assert series.std() == pytest.approx(RAYLEIGH_STD_DB, abs=0.2)
    assert abs(_lag1(series)) < 0.04


def test_profile_at_scales_only_the_channel_gain_and_a_static_channel_is_the_mean():
    # Prepare
    mean = profile()

    # Execute
    faded = profile_at(mean, SHADOWING, 5, 0, 3)

    # Assert
    offset = 10.0 * math.log10(faded.channel_gain / mean.channel_gain)
    assert offset == pytest.approx(gain_offset_db(SHADOWING, 5, 0, 3))
    assert replace(faded, channel_gain=mean.channel_gain) == mean
    assert profile_at(mean, channel.STATIC, 5, 0, 3) is mean and profile_at(mean, SHADOWING, 5, 0, None) is mean


@pytest.mark.parametrize(
    ("server_round", "every", "expected"),
    [(1, 0, None), (7, 0, None), (1, 1, 1), (4, 1, 4), (1, 3, 1), (3, 3, 1), (4, 3, 4), (9, 3, 7)],
)
def test_a_plan_uses_the_channel_of_the_latest_requery(server_round, every, expected):
    assert planning_round(server_round, every) == expected


# --- the keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"shadowing-db": -1.0}, "fleet spec: channel key 'shadowing-db' must be >= 0 dB"),
        ({"shadowing-correlation": 1.5}, "channel key 'shadowing-correlation' must be in \\[0, 1\\]"),
        ({"fading": "rician"}, "channel key 'fading' must be one of \\['none', 'rayleigh'\\]"),
        ({"shadowing-db": "loud"}, "channel key 'shadowing-db' must be a number"),
        ({"shadowing-db": True}, "channel key 'shadowing-db' must be a number"),
        ({"doppler-hz": 5}, "unknown channel key 'doppler-hz'"),
        ([8.0], "'channel' must be a mapping"),
    ],
)
def test_a_bad_channel_section_is_refused_in_one_line_naming_the_key(tmp_path, section, match):
    # Prepare
    spec = load_fleet_spec("bimodal")

    # Execute / Assert: at the preset's level and at a tier's
    with pytest.raises(ValueError, match=match):
        sample_channels(dict(spec, channel=section), 3, 0)
    tiers = [dict(spec["tiers"][0], channel=section), *spec["tiers"][1:]]
    with pytest.raises(ValueError, match="fleet tier 'phone': .*" + match.split(": ", 1)[-1]):
        load_fleet_spec(_write(tmp_path, dict(spec, tiers=tiers)))


def _write(tmp_path, spec):
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_preset_without_channel_is_unchanged_and_the_fading_preset_keeps_its_mean_profiles():
    # Execute
    static = sample_channels(load_fleet_spec("bimodal"), 40, 3)
    fading = sample_channels(load_fleet_spec("bimodal-fading"), 40, 3)
    fading_profiles = sample_fleet(load_fleet_spec("bimodal-fading"), 40, 3)

    # Assert: no process, no reply entries; the fading preset draws the same profiles, each
    # tier its own process (phones shadowed and faded, base stations lightly shadowed)
    assert set(static) == {channel.STATIC} and channel.to_config(channel.STATIC) == {}
    assert fading_profiles == sample_fleet(load_fleet_spec("bimodal"), 40, 3)
    for process, drawn in zip(fading, fading_profiles, strict=True):
        phone = drawn.capability < 20e9
        assert process == (ChannelProcess(8.0, 0.9, "rayleigh") if phone else ChannelProcess(2.0, 0.9, "none"))
    assert channel.from_config(channel.to_config(fading[0])) == fading[0]


def test_a_simulated_node_reports_its_preset_entry_and_a_deployed_one_states_its_own():
    # Prepare
    config = load_config({"config": "test", "fleet.preset": "bimodal-fading"})
    stated = {"partition-id": 0, "channel-shadowing-db": "6", "channel-fading": "rayleigh"}

    # Execute / Assert
    assert (
        node_channel(config, {"partition-id": 2}, 2, 5)
        == sample_channels(load_fleet_spec("bimodal-fading"), 5, config.run.seed)[2]
    )
    assert node_channel(config, stated, 0, 5) == ChannelProcess(6.0, 0.0, "rayleigh")
    assert node_channel(config, {"partition-id": 0, "channel-gain": "1e-9"}, 0, 5) == channel.STATIC


# --- what reacts to it ------------------------------------------------------------------------


def _faded(client, process):
    """``client``, whose query reply also states its channel ``process``."""

    def handler(msg):
        reply = client(msg)
        if msg.metadata.message_type == wire.QUERY:
            for key, value in channel.to_config(process).items():
                reply.content.config_records[wire.PROFILE][key] = value
        return reply

    return handler


def _run(tmp_path, clients, processes, settings, num_rounds):
    grid = fleet([])
    grid.handlers = {100 + i: _faded(c, p) for i, (c, p) in enumerate(zip(clients, processes, strict=True))}
    strategy = SplitPrefixStrategy(FakeServerModel(), settings, RunDirectory(tmp_path))
    strategy.start(grid=grid, initial_arrays=to_record(initial_state()), num_rounds=num_rounds)
    return strategy, RunDirectory(tmp_path)


def test_a_faded_clients_simulated_uplink_time_changes_by_round_and_is_recorded(tmp_path):
    # Prepare: client 0 fades, client 1 keeps a static channel; both send the same bytes each round
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 10)]
    process = replace(SHADOWING, fading="rayleigh")
    settings = SplitSettings(steps=4, batch_size=4, wait_for_nodes_s=0, seed=7)

    # Execute
    _, run_dir = _run(tmp_path, clients, [process, channel.STATIC], settings, 4)

    # Assert: the ledger and metrics.jsonl show the gain each round used, and the uplink time follows it
    faded, static = ([row for row in _ledger(run_dir) if row["client_id"] == c] for c in (0, 1))
    mean_db = 10.0 * math.log10(clients[0].profile.channel_gain)
    expected = [round(mean_db + gain_offset_db(process, 7, 0, r), 3) for r in range(1, 5)]
    assert [row["channel-gain-db"] for row in faded] == expected
    uplink = [row["uplink_s"] for row in faded]
    assert len(set(uplink)) == 4
    assert np.argsort(uplink).tolist() == np.argsort(expected)[::-1].tolist()  # a better channel, a faster upload
    rounds = run_dir.rounds()
    assert [r["clients"]["0"]["channel-gain-db"] for r in rounds] == expected
    assert all(
        "channel-gain-db" not in r["clients"]["1"] and "channel-gain-db" not in row
        for r, row in zip(rounds, static, strict=True)
    )
    assert len({row["uplink_s"] for row in static}) == 1


def _ledger(run_dir):
    return [json.loads(line) for line in (run_dir.path / "ledger.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("requery_every", [1, 0])
def test_requery_regroups_clients_whose_channel_faded_across_the_split_local_boundary(tmp_path, requery_every):
    # Prepare: weak clients under the cost policy train in split mode above about -97.5 dB and
    # locally below; their mean gain sits near that edge and moves 8 dB by shadowing plus fading
    clients = [FakeClient(p, 1.0, 10, strong=False) for p in range(3)]
    for c in clients:
        c.profile = replace(c.profile, channel_gain=10 ** (-97.0 / 10.0))
    policy = Policy(name="cost", params=grouping_params(cost_modes=("local", "split")))
    settings = SplitSettings(
        steps=10, batch_size=4, wait_for_nodes_s=0, seed=7, policy=policy, requery_every=requery_every
    )

    # Execute
    _, run_dir = _run(tmp_path, clients, [replace(SHADOWING, correlation=0.5, fading="rayleigh")] * 3, settings, 6)

    # Assert: with a requery every round some client changes mode; without one the plan stays
    modes = [tuple(r["clients"][str(p)]["mode"] for p in range(3)) for r in run_dir.rounds()]
    if requery_every:
        assert len(set(modes)) > 1, modes
    else:
        assert len(set(modes)) == 1, modes


def test_the_fading_preset_regroups_part_of_the_fleet_between_requeries():
    # Prepare: 40 clients of the fading preset under the cost policy, a tiny model's workloads
    spec = load_fleet_spec("bimodal-fading")
    profiles, processes = sample_fleet(spec, 40, 0), sample_channels(spec, 40, 0)
    state = FleetState()
    for i, (p, c) in enumerate(zip(profiles, processes, strict=True)):
        state.clients[100 + i] = ClientInfo(100 + i, i, 1000, p, 40, c)
    settings = SplitSettings(steps=10, batch_size=16, seed=0, requery_every=1, policy=Policy(name="cost"))
    shape = ModelShape(
        layer_params=7_000_000,
        client_layers=2,
        server_layers=10,
        hidden=768,
        embedding_params=24_000_000,
        client_state_bytes=4 * 2 * 2 * 20 * 768,
        layer_prefix_bytes=4 * 2 * 20 * 768,
        head_bytes=0,
        mean_tokens=64.0,
    )

    def plans(every):
        out = []
        for server_round in range(1, 11):
            state.plan(replace(settings, requery_every=every), shape, server_round)
            out.append({p: (a.mode, a.allocation) for p, a in state.assignments.items()})
        return out

    # Execute: a plan each round, on the channel of the latest requery (every round, or never)
    tracking, fixed = plans(1), plans(0)

    # Assert: some modes or allocations move from round to round; without requeries none does
    assert any(after != before for before, after in zip(tracking[:-1], tracking[1:], strict=True))
    assert all(plan == fixed[0] for plan in fixed)
