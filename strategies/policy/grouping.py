"""Grouping policies: which training mode and config each client gets.

Every policy maps client profiles to a list of ``ModeAssignment`` sorted by client id. Groups
are numbered from the weakest clients up where the policy has an order (threshold, k-means);
``assign_cost`` numbers them by the order of its ``group_configs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from strategies.cost.costmodel import Allocation, Workload, round_cost
from strategies.fleet.devices import DeviceProfile
from strategies.policy.allocation import allocate
from strategies.wire.names import MODES

_KMEANS_MAX_ITER = 100


@dataclass(frozen=True)
class GroupConfig:
    """Training config shared by a group: mode (one of ``MODES``), local epochs, batch size."""

    mode: str
    local_epochs: int = 1
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode '{self.mode}'; valid modes: {list(MODES)}")


@dataclass(frozen=True)
class ModeAssignment:
    """A client's group, mode, training config and resources for the coming rounds.

    Attributes
    ----------
    client_id : int
        The client (Flower node id).
    group : int
        Index of the client's group.
    mode : str
        Training mode, one of ``MODES``.
    local_epochs : int
        Local epochs per round.
    batch_size : int
        Minibatch size.
    allocation : Allocation | None
        CPU frequency and transmit power for the mode; ``None`` when no workloads were given or
        the mode does not fit the client's energy budget (and memory, for ``assign_cost``).
    threshold : float | None
        Capability threshold (FLOP/s) the policy used, if any.
    """

    client_id: int
    group: int
    mode: str
    local_epochs: int
    batch_size: int
    allocation: Allocation | None = None
    threshold: float | None = None


def assign_single(
    profiles: Mapping[int, DeviceProfile],
    config: GroupConfig,
    workloads: Mapping[int, Mapping[str, Workload]] | None = None,
) -> list[ModeAssignment]:
    """Everyone in group 0 with the same config (the single-mode baselines)."""
    return [_assignment(cid, 0, config, profiles, workloads) for cid in sorted(profiles)]


def assign_threshold(
    profiles: Mapping[int, DeviceProfile],
    threshold: float,
    strong: GroupConfig,
    weak: GroupConfig,
    workloads: Mapping[int, Mapping[str, Workload]] | None = None,
) -> list[ModeAssignment]:
    """Clients below ``threshold`` capability (FLOP/s) go to group 0 (``weak``), others to 1."""
    out = []
    for cid in sorted(profiles):
        is_weak = profiles[cid].capability < threshold
        group, config = (0, weak) if is_weak else (1, strong)
        out.append(_assignment(cid, group, config, profiles, workloads, threshold))
    return out


def assign_cost(
    profiles: Mapping[int, DeviceProfile],
    workloads: Mapping[int, Mapping[str, Workload]],
    server_flops_per_s: float,
    group_configs: Mapping[str, GroupConfig],
) -> list[ModeAssignment]:
    """Per client, the mode with the least simulated round latency that fits its budget and memory.

    Candidate modes are the keys of ``group_configs`` a client has a workload for; group is the
    mode's index in ``group_configs``. Latency uses the ``allocate`` optimum for each mode.
    A client that no mode fits gets, among the modes that fit its memory (all modes if none
    does), the one with the least energy at full speed, with ``allocation=None`` as the mark:
    the strategy decides whether to skip it or let it try and report a failure.
    """
    modes = list(group_configs)
    for mode, config in group_configs.items():
        if config.mode != mode:
            raise ValueError(f"group_configs['{mode}'] has mode '{config.mode}'")
    out = []
    for cid in sorted(profiles):
        candidates = [m for m in modes if m in workloads[cid]]
        if not candidates:
            raise ValueError(f"client {cid} has no workload for any of the modes {modes}")
        mode, allocation = _fastest_fitting_mode(profiles[cid], workloads[cid], candidates, server_flops_per_s)
        config = group_configs[mode]
        out.append(ModeAssignment(cid, modes.index(mode), mode, config.local_epochs, config.batch_size, allocation))
    return out


def _fastest_fitting_mode(
    profile: DeviceProfile,
    workloads: Mapping[str, Workload],
    candidates: list[str],
    server_flops_per_s: float,
) -> tuple[str, Allocation | None]:
    fits = []
    for order, mode in enumerate(candidates):
        workload = workloads[mode]
        allocation = allocate(profile, workload)
        if allocation is not None and workload.client_memory_bytes <= profile.memory_bytes:
            latency = round_cost(profile, workload, allocation, server_flops_per_s).latency_s
            # The order breaks latency ties before the tuple comparison reaches Allocation.
            fits.append((latency, order, mode, allocation))
    if fits:
        _, _, mode, allocation = min(fits)
        return mode, allocation
    return _fallback_mode(profile, workloads, candidates), None


def _fallback_mode(profile: DeviceProfile, workloads: Mapping[str, Workload], candidates: list[str]) -> str:
    in_memory = [m for m in candidates if workloads[m].client_memory_bytes <= profile.memory_bytes]
    full_speed = Allocation(profile.max_tx_power_w, profile.cpu_hz_max, profile.energy_budget_j)
    # Server speed does not enter client energy, so any positive value will do here.
    return min(in_memory or candidates, key=lambda m: round_cost(profile, workloads[m], full_speed, 1.0).energy_j)


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
        _assignment(
            cid, int(rank_of_cluster[label]), group_configs_by_rank[rank_of_cluster[label]], profiles, workloads
        )
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
    for _ in range(_KMEANS_MAX_ITER):
        dist2 = ((points[:, None, :] - centroids[None]) ** 2).sum(-1)  # (n, k)
        new_labels = dist2.argmin(axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for j in range(k):
            if np.any(labels == j):
                centroids[j] = points[labels == j].mean(axis=0)
    return labels, centroids


def _assignment(
    cid: int,
    group: int,
    config: GroupConfig,
    profiles: Mapping[int, DeviceProfile],
    workloads: Mapping[int, Mapping[str, Workload]] | None,
    threshold: float | None = None,
) -> ModeAssignment:
    allocation = None
    if workloads is not None and config.mode in workloads.get(cid, {}):
        allocation = allocate(profiles[cid], workloads[cid][config.mode])
    return ModeAssignment(cid, group, config.mode, config.local_epochs, config.batch_size, allocation, threshold)
