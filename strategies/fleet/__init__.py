"""The fleet: device profiles and presets, channels, membership, and the fleet's state between rounds."""
