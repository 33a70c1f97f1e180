"""What a client does in each training mode, the server's half (:class:`~.server_model.SplitServer`), the shared training step."""
