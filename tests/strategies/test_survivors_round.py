"""The round deadline and a centralized client: only an upload already in the pool is free."""

from dataclasses import replace

import numpy as np

from strategies.fleet.state import ClientInfo, FleetState
from strategies.policy.policies import Policy
from strategies.round.deadline import predicted_latency, sample_in_time
from strategies.settings import SplitSettings
from tests.strategies.fakes import FakeServerModel, profile

SETTINGS = SplitSettings(steps=10, batch_size=4, seed=7, policy=Policy("centralized"), min_clients=1)


def _centralized_fleet():
    """Three centralized clients; client 2's channel is 10^4 times weaker, so its upload is slow."""
    slow = replace(profile(), channel_gain=1e-12)
    infos = [ClientInfo(100, 0, 50, profile()), ClientInfo(101, 1, 50, profile()), ClientInfo(102, 2, 50, slow)]
    state = FleetState(clients={c.node_id: c for c in infos})
    state.plan(SETTINGS, FakeServerModel().shape())
    return state, infos


def test_a_centralized_client_that_has_not_uploaded_yet_sits_out_a_deadline_it_would_miss():
    # Prepare: a deadline between the fast clients' predicted upload and the slow one's
    state, infos = _centralized_fleet()
    latency = [predicted_latency(state, c, SETTINGS.fleet_policy.server_flops) for c in infos]
    settings = replace(SETTINGS, round_deadline_s=(latency[0] + latency[2]) / 2)

    # Execute
    train, sit_out = sample_in_time(state, 1, settings)

    # Assert
    assert 0.0 < latency[0] == latency[1] < settings.round_deadline_s < latency[2]
    assert [c.partition_id for c in train] == [0, 1] and [c.partition_id for c in sit_out] == [2]


def test_once_its_upload_is_in_the_pool_a_centralized_client_costs_nothing_and_trains():
    # Prepare: the slow client's upload is in the server's pool
    state, infos = _centralized_fleet()
    latency = predicted_latency(state, infos[0], SETTINGS.fleet_policy.server_flops)
    state.pool[2] = {"act.0": np.zeros((1, 3, 4), np.float32)}
    settings = replace(SETTINGS, round_deadline_s=latency * 2)

    # Execute
    train, sit_out = sample_in_time(state, 2, settings)

    # Assert
    assert predicted_latency(state, infos[2], SETTINGS.fleet_policy.server_flops) == 0.0
    assert [c.partition_id for c in train] == [0, 1, 2] and sit_out == []
