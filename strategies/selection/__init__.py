"""Ranking candidates before a run: footprints, learning-curve fits, a performance model, zero-cost proxies."""
