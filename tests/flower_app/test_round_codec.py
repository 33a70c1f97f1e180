"""The server's split side encodes boundary gradients in the round's wire codec, not the one it was built with."""

from dataclasses import replace

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from flower_app.config.load import load_config
from flower_app.config.strategy_settings import split_settings
from flower_app.data.files import batch_plan
from flower_app.data.setup import build, client_data
from flower_app.modes.server_model import SplitServer
from flower_app.modes.split import forward_plan
from strategies.fleet.state import ClientInfo, FleetState
from strategies.round.state import RoundState
from strategies.round.steps.base import Bounds
from strategies.round.steps.split import train_split_side
from strategies.wire import names as wire
from strategies.wire.records import to_record
from tests.strategies.fakes import profile

NODE = 100


def _round_gradients(server, round_settings, setup, config):
    """The boundary gradients ``train_split_side`` keeps for one split client's float32 forward reply."""
    fleet_state = FleetState()
    info = ClientInfo(NODE, 0, 64, profile())
    fleet_state.clients[NODE] = info
    fleet_state.plan(round_settings, server.shape())
    encoded = client_data(config, 0, 4)
    plan = batch_plan(len(encoded), round_settings.steps, round_settings.batch_size, seed=3)
    activations = forward_plan(setup.client, encoded, plan, setup.pad_id, "float32")
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID  # as a ServerApp's
    request = Message(RecordDict(), NODE, wire.SPLIT_FORWARD, group_id="1")
    request.metadata.__dict__["_message_id"] = "m1"  # a reply needs the id of what it answers
    records = {
        wire.ACTIVATIONS: to_record(activations),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: len(np.unique(np.concatenate(plan)))}),
        wire.CONFIG: ConfigRecord({wire.CODEC: "float32"}),
    }
    reply = Message(RecordDict(records), reply_to=request)
    rnd = RoundState(1, 1, [info], dict(fleet_state.assignments))
    bounds = Bounds(server.shape().hidden, server.limits())
    state = server.initial_state()
    outcome = train_split_side(server, round_settings, bounds, state, fleet_state, {NODE: reply}, rnd)
    assert not rnd.failures, rnd.failures
    return outcome.gradients[NODE]


def test_a_float32_probe_trial_gets_float32_gradients_from_a_server_built_for_int8():
    # Prepare: the run's basic mode sends int8; a probe's float32 trial asks for float32
    config = load_config({"config": "test"})
    setup = build(config)
    basic = replace(split_settings(config), activation_dtype="int8", steps=2, batch_size=4)
    trial = replace(basic, activation_dtype="float32")

    # Execute: the same trial round on a server built in the int8 mode and on one built in float32
    built_int8 = _round_gradients(SplitServer(setup, basic), trial, setup, config)
    built_float32 = _round_gradients(SplitServer(setup, trial), trial, setup, config)

    # Assert: the trial's gradients are float32 and carry no int8 rounding
    assert [g.dtype for g in built_int8] == [np.dtype(np.float32)] * 2
    for int8_built, reference in zip(built_int8, built_float32, strict=True):
        np.testing.assert_array_equal(int8_built, reference)
