"""Local mode on the client: train the lower prefix end to end through an emulator.

The emulator is the upper layers with all but ``emulator_layers`` dropped
(:mod:`flower_app.model.emulator`); tokenizer, embeddings and lower layers are the real
model's. :func:`train_local_round` is one client's round: emulator, time-limited
training, the threshold check on held-back samples, the tensors to send back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from flower_app.data import files as data_mod
from flower_app.model import emulator as emulator_mod
from flower_app.model.device_part import DevicePart
from flower_app.model.split_model import ClientPart, ServerPart, SplitSpec, get_state, set_state
from flower_app.modes.training import EvalTally, adam, task_loss
from flower_app.privacy.defences import UNGUARDED, ActivationGuard
from strategies.policy.requirements import Failure, TrainingRequirement, check_after_training, check_before_training
from strategies.wire import names as wire


@dataclass
class LocalResult:
    """What a local-mode round produced: tensors to send, or the failure to report."""

    arrays: dict[str, np.ndarray]
    steps: int
    loss: float
    evaluation: dict[str, float]
    failure: Failure | None = None


def hold_back(num_samples: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices to train on and ``count`` held back for a local evaluation (seeded, disjoint).

    At least half the samples stay for training: a client with little data
    evaluates on less rather than training on nothing.
    """
    count = min(count, num_samples // 2)
    order = np.random.default_rng([seed, 7]).permutation(num_samples)  # 7: a stream apart from the plan's
    return np.sort(order[count:]), np.sort(order[:count])


def train_local_round(
    device: DevicePart,
    arrays: Mapping[str, np.ndarray],
    emulator_layers: int,
    encoded: data_mod.Encoded,
    plan: Sequence[np.ndarray],
    eval_indices: np.ndarray,
    lr: float,
    head_lr: float,
    requirement: TrainingRequirement,
    guard: ActivationGuard = UNGUARDED,
) -> LocalResult:
    """Local mode on one client: emulator, time-limited training, threshold check.

    ``emulator_layers`` of the upper layers are kept (0: all, the real upper layers,
    and then their prefix is sent back too). The lower prefix and a trainable head
    are always sent back. The first step's time, times the plan, is the estimate
    checked against the time limit. ``guard``: the device's activation guard, whose clip
    the emulator's input goes through as the server's does.
    """
    keep, held = emulator_layers or device.num_upper_layers, len(device.upper.stack.layers)
    if keep != held:
        raise ValueError(
            f"the plan asks for an emulator of {keep} upper layers but this device holds {held} "
            "(the run config's train.emulator-layers decides what a device holds)"
        )
    set_state(device.client, arrays)
    emulator = emulator_mod.build_emulator(device.upper, held)
    set_state(emulator, arrays)
    args = (device.pad_id, device.spec, device.verbalizer_ids)
    failures: list[Failure | None] = []

    def stop(done: int, elapsed_s: float) -> bool:
        if done == 1:  # the first step sets the pace: does the whole plan fit the time limit?
            failures.append(check_before_training(requirement, len(encoded), elapsed_s, len(plan)))
        limit = requirement.max_train_s
        return failures[0] is not None or (limit is not None and elapsed_s >= limit)

    loss, steps = train_local(device.client, emulator, encoded, plan, lr, head_lr, *args, stop=stop, guard=guard)
    failure = failures[0] if failures else None
    held_out = len(eval_indices) > 0
    evaluation = evaluate_local(device.client, emulator, encoded, eval_indices, *args, guard=guard) if held_out else {}
    if failure is None and evaluation:
        failure = check_after_training(requirement, evaluation[requirement.threshold_metric])
    # The head goes up too (no one else trains it in an all-local fleet); the kept layers'
    # prefix adapted to a stack with holes in it, so it stays, unless nothing was dropped.
    trained = get_state(emulator)
    uploaded = trained if keep == device.num_upper_layers else {k: v for k, v in trained.items() if wire.is_head(k)}
    return LocalResult({**get_state(device.client), **uploaded}, steps, loss, evaluation, failure)


def train_local(
    client: ClientPart,
    emulator: ServerPart,
    encoded: data_mod.Encoded,
    plan: Sequence[np.ndarray],
    lr: float,
    head_lr: float,
    pad_id: int,
    spec: SplitSpec,
    verbalizer_ids: tuple[int, ...] | None,
    stop: Callable[[int, float], bool] | None = None,
    guard: ActivationGuard = UNGUARDED,
) -> tuple[float, int]:
    """One Adam step per planned minibatch through client part and emulator; mean loss and steps taken.

    Trains the client's prefix and the emulator's prefix at ``lr`` and its head at
    ``head_lr``. Before each step after the first, ``stop(steps_done, seconds_elapsed)``
    may end the plan early: how the requirement's time limit is kept. The boundary goes
    through ``guard``'s clip (no noise: nothing leaves the device).
    """
    optimizer = adam([client, emulator], lr, head_lr)
    losses: list[float] = []
    started = time.perf_counter()
    for indices in plan:
        if stop is not None and losses and stop(len(losses), time.perf_counter() - started):
            break
        ids, mask, labels = data_mod.collate(encoded, indices, pad_id)  # (B, T), (B, T), (B,)
        loss = task_loss(spec, emulator(guard.shape(client(ids, mask)), mask), mask, labels, verbalizer_ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses)), len(losses)


def evaluate_local(
    client: ClientPart,
    emulator: ServerPart,
    encoded: data_mod.Encoded,
    indices: np.ndarray,
    pad_id: int,
    spec: SplitSpec,
    verbalizer_ids: tuple[int, ...] | None,
    guard: ActivationGuard = UNGUARDED,
) -> dict[str, float]:
    """Loss and accuracy of client part + emulator on held-back samples (the threshold check).

    The boundary goes through ``guard``'s clip, as in training."""
    tally = EvalTally(spec, verbalizer_ids)
    with torch.no_grad():
        ids, mask, labels = data_mod.collate(encoded, np.asarray(indices), pad_id)
        tally.add(emulator(guard.shape(client(ids, mask)), mask), mask, labels)
    metrics = tally.metrics()
    return {wire.LOSS: metrics[wire.LOSS], wire.ACCURACY: metrics[wire.ACCURACY]}
