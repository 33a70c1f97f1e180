"""The training modes, one module each (:mod:`.registry` lists them): what a mode sends, costs and asks of a device.

A mode's server step, which needs the round, is in :mod:`strategies.round.steps`; its client
handlers are in ``flower_app.modes.handlers``.
"""
