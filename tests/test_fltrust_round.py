"""FLTrust end to end: the lower prefix after a round is the clients' updates weighed against the
server's own update on its root set, worked out here with the server half and the replies."""

import json

import numpy as np
import pytest

from flower_app.apps.runner import run_inprocess
from flower_app.config.load import load_config
from flower_app.config.strategy_settings import split_settings
from flower_app.data.setup import build
from flower_app.modes.server_model import SplitServer
from strategies.aggregate.volume import Contribution
from strategies.fleet.state import round_seed
from strategies.round.server_side import ROOT_SET_ID
from strategies.trust.fltrust import fltrust_contribution
from strategies.wire import names as wire
from tests.replies import arrays, checkpoint_arrays, spy, volume


def test_the_lower_prefix_after_a_round_is_the_fltrust_merge_of_the_clients_updates(tmp_path):
    # Prepare: one round, a constant learning rate (the root update is worked out at the same rate)
    config = {
        "config": "test",
        "run.num-rounds": 1,
        "run.run-dir": str(tmp_path),
        "train.lr-decay-to": 1.0,
        "strategy.root-samples": 24,
    }
    replies = []

    # Execute
    summary = run_inprocess(config, num_nodes=4, fault=spy(replies))

    # Assert: the server's root update, then FLTrust over the backward replies, equals the checkpoint
    assert summary["status"] == "completed"
    job = load_config(config)
    server = SplitServer(build(job), split_settings(job))
    start = server.initial_state()
    s = split_settings(job)
    root = server.root_update(start, 24, s.steps, round_seed(s.seed, 1, ROOT_SET_ID), lr=s.lr, head_lr=s.head_lr)
    backward = [r for _, _, kind, r in sorted(replies, key=lambda x: x[1]) if kind == wire.SPLIT_BACKWARD]
    contributions = [Contribution(arrays(r), volume(r), str(i)) for i, r in enumerate(backward)]
    merged, _ = fltrust_contribution(contributions, start, root)
    saved = checkpoint_arrays(tmp_path)
    assert merged is not None and set(merged.arrays) == set(server.client_keys)
    for key in server.client_keys:
        np.testing.assert_allclose(saved[key], merged.arrays[key], rtol=1e-5, atol=1e-6)
        assert not np.allclose(saved[key], np.average([c.arrays[key] for c in contributions], axis=0))
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["round"] == 1


def test_a_root_set_larger_than_the_training_pool_is_refused_naming_the_setting():
    job = load_config({"config": "test"})
    server = SplitServer(build(job), split_settings(job))
    with pytest.raises(ValueError, match="strategy.root-samples=1000000 must be in"):
        server.root_update(server.initial_state(), 10**6, 2, 0, lr=0.01, head_lr=0.01)
