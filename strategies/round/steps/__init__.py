"""The server's step of each training mode in a round, one module each (:mod:`.registry` lists them)."""
