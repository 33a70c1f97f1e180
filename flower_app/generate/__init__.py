"""Split generation: KV-cached device and server sessions, the sampler, ``python -m flower_app.generate``."""
