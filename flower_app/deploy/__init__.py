"""Deployment on devices: certificates and keys, a local fleet on loopback, the per-device worker."""
