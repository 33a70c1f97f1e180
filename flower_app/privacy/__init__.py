"""What the server can learn from the wire, and the device's defences.

``defences.py``: what a device does to its boundary activations before they leave it (per-token
clipping, calibrated Gaussian noise, noise in the token embeddings' principal directions);
``guard.py``: that guard built from the run config, and the noise's seeds; ``checks.py``: the
settings checked together when a config is loaded;
``inversion.py``: the attacks an honest-but-curious server can run on what it receives;
``leakage.py``: what the backward messages reveal of labels and targets.
"""
