"""Model-agnostic policy and the Strategy (:mod:`strategies.strategy`) that composes it.

Never imports :mod:`flower_app`: the server's half of the model is reached through
:class:`strategies.interfaces.ServerModel`."""
