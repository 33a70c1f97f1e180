"""Grouping policies, one module each, listed once in :mod:`strategies.policy.groupings.registry`."""
