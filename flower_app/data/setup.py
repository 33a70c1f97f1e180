"""Setting up a job: the split model and the data for a config, cached per process.

:func:`build` is the job's :class:`~flower_app.tasks.family.Setup` (built by its task
family, :mod:`flower_app.tasks.registry`); :func:`client_data` is the encoded partition
one client holds, :func:`test_data` the server's held-out split. Ray actors and the
in-process grid serve many nodes from one process, hence the caches.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from flower_app.config.schema import Config
from flower_app.data import files as data_mod
from flower_app.tasks.family import Setup
from flower_app.tasks.registry import family_of


@lru_cache(maxsize=2)
def build(config: Config) -> Setup:
    return family_of(config).setup(config)


@lru_cache(maxsize=4)
def partitions(config: Config, num_partitions: int) -> tuple[np.ndarray, ...]:
    """Sample indices of every partition of the pool (seeded: same on every machine).

    Computed once per process: a Ray actor or the in-process grid serves hundreds of
    nodes, and each would otherwise repeat the O(pool) permutation.
    """
    setup = build(config)
    return tuple(
        data_mod.partition(
            setup.pool.labels, num_partitions, config.data.partitioner, config.data.alpha, config.run.seed
        )
    )


# One entry per node a process serves. The partitions are disjoint, so all the entries of
# one config together hold at most its pool; the bound only has to exceed the nodes per
# process (a Ray actor may serve every node of a 1000-node simulation).
@lru_cache(maxsize=4096)
def client_data(config: Config, partition_id: int, num_partitions: int) -> data_mod.Encoded:
    """The encoded partition a client holds (seeded: same on every machine)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    setup, parts = build(config), partitions(config, num_partitions)
    return family_of(config).partition_data(setup, parts[partition_id], partition_id)


def test_data(config: Config) -> data_mod.Encoded:
    """The held-out split, encoded (once per :func:`build`)."""
    return build(config).test_encoded
