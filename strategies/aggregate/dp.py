"""Client-level differential privacy of the clients' average (DP-FedAvg, McMahan et al. 2018).

A round releases the clients' mean update, clipped and noised (``S`` = ``dp_clip``,
``z`` = ``dp_noise``, ``x`` the round's starting global tensors, ``x_i`` client ``i``'s
contribution, ``n`` the clients averaged):

=====================================  ===============================================================
``d_i = x_i - x``                      client ``i``'s update, over every tensor it sends
``c_i = d_i * min(1, S / |d_i|)``      clipped to L2 norm ``S`` (Flower's FlatClip: direction kept)
``x' = x + sum(c_i) / n + N(0, s^2)``  the equal-weight mean plus Gaussian noise, ``s = z * S / n``
=====================================  ===============================================================

Adding or removing one client moves ``sum(c_i)`` by at most ``S``: noise of standard
deviation ``z * S`` on the sum (``z * S / n`` on the mean) makes the round a Gaussian
mechanism of noise multiplier ``z``, which :mod:`strategies.aggregate.accountant` composes
over the run's rounds. ``n`` is treated as public, as the number of clients sampled is in
Flower's ``DifferentialPrivacyServerSideFixedClipping``.

**Equal weights.** Every client counts ``1 / n``, whatever its data volume. A
volume-weighted mean ``sum(w_i * c_i)`` with ``w_i = n_i / sum(n)`` has a data-dependent
sensitivity: a client holding most of the data moves it by almost ``S`` alone, and one
client's volume changes every other client's weight. So under DP the clients' volumes do
not weight them, and the volume-based defences (reputation weights, volume caps, the
update bound relative to the round's median, FLTrust) are not applied to them: the fixed
clip is what bounds each client's influence.

**Per tensor.** Clients of different modes send different tensors. Each name is the mean
over the ``n_k`` clients that hold it, with noise ``z * S / n_k``; the sum of every name's
clipped updates still moves by at most ``S`` (a client's whole update is clipped), so this
is the same mechanism, scaled name by name afterwards.

**Not covered.** The server's own contributions (its upper prefix trained on split
clients' activations, the centralized pool's result) are not clipped or noised: they join
the clients' private mean afterwards, which carries the clients' total volume. Neither are
the boundary activations or uploads clients send in the clear. The noise is drawn from a
generator seeded by the run seed, the round and the partition ids averaged, so a run is
reproducible, and anyone who knows the run seed can draw the same noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from flwr.supercore.differential_privacy import clip_inputs_inplace, compute_stdv, get_norm

from strategies.aggregate.volume import Contribution

NOISE_ID = 2**31 - 3  # seeds the noise apart from every partition, the root set (2**31 - 1) and the halves (- 2)

Update = dict[str, npt.NDArray[np.float64]]


def update_of(contribution: Contribution, state: Mapping[str, npt.NDArray[np.generic]]) -> Update:
    """The contribution's tensors minus the round's starting ones, in float64."""
    return {k: np.asarray(v, np.float64) - np.asarray(state[k], np.float64) for k, v in contribution.arrays.items()}


def clip_update(update: Mapping[str, npt.NDArray[np.float64]], clip: float) -> Update:
    """The update scaled down to L2 norm ``clip`` over all its tensors; one within it unchanged.

    Flower's ``clip_inputs_inplace`` (FlatClip) on a copy. A zero update (a client whose half
    stayed frozen) is left as it is rather than divided by its zero norm.
    """
    names = list(update)
    arrays = [np.array(update[k], np.float64) for k in names]  # copies: the clip is in place
    if get_norm(arrays) > clip:
        clip_inputs_inplace(arrays, clip)
    return dict(zip(names, arrays, strict=True))


def noise_generator(seed: int, server_round: int, partition_ids: Sequence[int]) -> np.random.Generator:
    """The round's noise generator; the partition ids keep a parallel probe's two halves' noise apart."""
    return np.random.default_rng([seed, server_round, NOISE_ID, *partition_ids])


def private_mean(
    contributions: Sequence[Contribution],
    state: Mapping[str, npt.NDArray[np.generic]],
    clip: float,
    noise: float,
    rng: np.random.Generator,
) -> dict[str, npt.NDArray[np.generic]]:
    """``x + mean(clipped updates) + N(0, (noise * clip / n_k)^2)`` for each name some contribution holds.

    Names in ``state``'s order (the noise is drawn in that order), each in ``state``'s dtype;
    sums in float64 in the given order. Names no contribution holds are left out.
    """
    clipped = [clip_update(update_of(c, state), clip) for c in contributions]
    result: dict[str, npt.NDArray[np.generic]] = {}
    for name, start in state.items():
        holders = [u[name] for u in clipped if name in u]
        if not holders:
            continue
        mean = np.asarray(sum(holders), np.float64) / len(holders)  # equal weights: 1 / n_k each
        std = compute_stdv(noise, clip, len(holders))
        noisy = np.asarray(start, np.float64) + mean + rng.normal(0.0, std, mean.shape)
        result[name] = noisy.astype(start.dtype)
    return result


def private_contribution(
    contributions: Sequence[Contribution],
    state: Mapping[str, npt.NDArray[np.generic]],
    clip: float,
    noise: float,
    rng: np.random.Generator,
) -> Contribution | None:
    """The clients' :func:`private_mean` as one contribution of their total volume; None for no client.

    The total volume weighs the clients' mean against the server's own contributions where
    both hold a name, as the clients together weighed without DP.
    """
    if not contributions:
        return None
    arrays = private_mean(contributions, state, clip, noise, rng)
    volume = sum(c.num_examples for c in contributions)
    return Contribution(arrays, volume, f"{len(contributions)} clients' private mean")
