"""Every training mode is registered once on the strategy's side: its entry and its server step."""

from strategies.modes.registry import TRAINING_MODES, training_mode
from strategies.round.steps.registry import SERVER_STEPS
from strategies.wire import names as wire


def test_the_registry_holds_every_mode_on_the_wire_in_its_order():
    # Assert: a mode left out of the registry (or added without a wire name) shows here
    assert tuple(TRAINING_MODES) == wire.MODES
    assert all(name == mode.name for name, mode in TRAINING_MODES.items())


def test_every_mode_has_a_server_step():
    # Assert: a registered mode whose step is missing would get no server work in a round
    assert set(SERVER_STEPS) == set(TRAINING_MODES)
    assert all(name == step.mode for name, step in SERVER_STEPS.items())


def test_every_message_type_belongs_to_one_mode():
    # Prepare
    types = [t for mode in TRAINING_MODES.values() for t in mode.message_types]

    # Assert: two modes sharing a message type could not be told apart by a client
    assert len(types) == len(set(types))
    assert wire.QUERY not in types


def test_an_unknown_mode_is_named_with_the_known_ones():
    try:
        training_mode("vshape")
    except ValueError as err:
        assert "vshape" in str(err) and "ushape" in str(err)
    else:
        raise AssertionError("an unknown mode was accepted")
