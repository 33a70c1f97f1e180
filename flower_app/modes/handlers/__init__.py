"""Each training mode's client handlers, one module per mode (:mod:`flower_app.modes.registry` lists them).

Torch and the model are imported inside a handler, when a message needs them: a node that
only answers queries, or hands its messages to a device worker, never loads them.
"""
