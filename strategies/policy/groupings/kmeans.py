"""The ``kmeans`` policy: clusters of clients with alike resources, weakest cluster first.

Features are standardised [log capability, log SNR at max power, log energy budget, log memory];
k is the number of modes in ``strategy.kmeans-modes``, and the clusters, ranked by their
centroid's log capability, get those modes in order (weakest first). Seeded by the run's seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from strategies.cost.costmodel import Workload
from strategies.fleet.profile import DeviceProfile
from strategies.policy.grouping import Fleet, GroupConfig, GroupingPolicy, ModeAssignment, assignment, check_modes

_MAX_ITER = 100


@dataclass(frozen=True)
class KMeansParams:
    """Parameters of the k-means policy.

    Attributes
    ----------
    kmeans_modes : tuple[str, ...] (default: ("centralized", "split", "local"))
        One mode per cluster, weakest cluster first (``strategy.kmeans-modes``).
    """

    kmeans_modes: tuple[str, ...] = ("centralized", "split", "local")

    def __post_init__(self) -> None:
        check_modes(self.kmeans_modes)


def assign_kmeans(
    profiles: Mapping[int, DeviceProfile],
    k: int,
    seed: int,
    group_configs_by_rank: Sequence[GroupConfig],
    workloads: Mapping[int, Mapping[str, Workload]] | None = None,
) -> list[ModeAssignment]:
    """Cluster clients into ``k`` groups by resources; group r gets ``group_configs_by_rank[r]``.

    Features are standardised [log capability, log SNR at max power, log energy budget,
    log memory]; clusters are ranked by their centroid's log capability, weakest first, so
    e.g. ``[centralized, split, local]`` sends the weakest cluster to centralized training.
    """
    if len(group_configs_by_rank) != k:
        got = len(group_configs_by_rank)
        raise ValueError(f"need one group config per cluster: k={k}, got {got}")
    ids = sorted(profiles)
    if not 1 <= k <= len(ids):
        raise ValueError(f"k must be between 1 and the number of clients ({len(ids)}), got {k}")
    features = np.log(
        [[p.capability, p.snr, p.energy_budget_j, p.memory_bytes] for p in (profiles[cid] for cid in ids)]
    )
    std = features.std(axis=0)
    # A feature every client shares carries no information; scaling by 1 keeps it at zero.
    features = (features - features.mean(axis=0)) / np.where(std > 0, std, 1.0)
    labels, centroids = kmeans(features, k, seed)
    rank_of_cluster = np.argsort(np.argsort(centroids[:, 0], kind="stable"), kind="stable")
    return [
        assignment(cid, int(rank_of_cluster[label]), group_configs_by_rank[rank_of_cluster[label]], profiles, workloads)
        for cid, label in zip(ids, labels, strict=True)
    ]


def kmeans(points: npt.NDArray[np.float64], k: int, seed: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Lloyd's k-means with seeded k-means++ initialisation.

    Parameters
    ----------
    points : npt.NDArray[np.float64]
        Shape (n, d).
    k : int
        Number of clusters, 1 <= k <= n.
    seed : int
        Seed of the initialisation; the result is a deterministic function of it.

    Returns
    -------
    tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]
        Labels of shape (n,) and centroids of shape (k, d). A cluster that loses all its points
        keeps its previous centroid.
    """
    rng = np.random.default_rng(seed)
    n = len(points)
    chosen = [points[rng.integers(n)]]
    for _ in range(1, k):
        dist2 = ((points[:, None, :] - np.array(chosen)[None]) ** 2).sum(-1).min(axis=1)
        # Duplicated points can leave no distance to weight by; then any point is as good.
        probs = dist2 / dist2.sum() if dist2.sum() > 0 else np.full(n, 1.0 / n)
        chosen.append(points[rng.choice(n, p=probs)])
    centroids = np.array(chosen, dtype=np.float64)
    labels: npt.NDArray[np.intp] = np.full(n, -1, dtype=np.intp)
    for _ in range(_MAX_ITER):
        dist2 = ((points[:, None, :] - centroids[None]) ** 2).sum(-1)  # (n, k)
        new_labels = dist2.argmin(axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for j in range(k):
            if np.any(labels == j):
                centroids[j] = points[labels == j].mean(axis=0)
    return labels, centroids


def assign(params: KMeansParams, fleet: Fleet) -> list[ModeAssignment]:
    """The fleet in ``len(params.kmeans_modes)`` clusters, seeded by ``fleet.seed``."""
    k = len(params.kmeans_modes)
    if k > len(fleet.profiles):
        raise ValueError(
            f"strategy.kmeans-modes names {k} clusters for {len(fleet.profiles)} clients; "
            "name at most one mode per client"
        )
    configs = [fleet.config(m) for m in params.kmeans_modes]
    return assign_kmeans(fleet.profiles, k, fleet.seed, configs, fleet.workloads)


def modes(params: KMeansParams) -> tuple[str, ...]:
    return params.kmeans_modes


GROUPING = GroupingPolicy("kmeans", KMeansParams(), assign, modes)
