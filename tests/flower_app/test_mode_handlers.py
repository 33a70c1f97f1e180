"""Every training mode's message types are answered by the ClientApp, through the client registry."""

from flower_app.apps.client_app import app
from flower_app.modes.registry import CLIENT_HANDLERS
from strategies.modes.registry import TRAINING_MODES


def test_the_client_registry_handles_every_message_type_of_every_mode():
    # Prepare
    types = {t for mode in TRAINING_MODES.values() for t in mode.message_types}

    # Assert: a handler module left out of the registry leaves its mode's messages unanswered
    assert set(CLIENT_HANDLERS) == types


def test_the_client_app_registers_every_handler_with_flower():
    # Assert: Flower routes "<category>.<action>"; an unregistered type would get an error reply.
    # Flower keeps the routing table private; there is no public way to list it.
    registered = set(app._registered_funcs)
    assert set(CLIENT_HANDLERS) <= registered
