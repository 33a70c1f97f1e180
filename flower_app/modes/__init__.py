"""What a client does in each training mode, the server's half of the model and the shared training step.

:mod:`.handlers` holds each mode's client handlers (:mod:`.registry` lists them), :mod:`.node` what
a node holds; ``split``, ``local`` and ``centralized`` the torch work they call;
:class:`~.server_model.SplitServer` the server's half; :mod:`.training` the shared step.
"""
