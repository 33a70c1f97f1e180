"""Thin Flower apps (one handler per message type) and the in-process grid runner."""
