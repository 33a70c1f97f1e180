"""Volume-weighted averaging and the robust rules that bound hostile contributions."""
