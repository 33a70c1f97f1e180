"""The cost model: FLOPs per mode, compute time, energy and uplink rate on a simulated clock."""
