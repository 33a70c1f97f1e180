"""Volume-weighted averaging, the robust rules that bound hostile contributions, client-level DP and its accountant."""
