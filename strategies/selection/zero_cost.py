"""A zero-cost baseline: a linear probe on frozen features.

Without training the candidate at all, score it by how linearly separable its frozen
features are: fit a multinomial logistic regression (L2-penalised, full-batch gradient
descent on standardised features) to the features of a training sample and report its
accuracy on a held-out sample. Fast and common as a transferability estimate; it sees
only the frozen model, so it cannot tell learning rates or modes apart (those candidates
tie). numpy only.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

STEPS = 300
STEP_SIZE = 0.5
L2 = 1e-3


def linear_probe_accuracy(
    train_x: npt.NDArray[np.floating],
    train_y: npt.NDArray[np.integer],
    test_x: npt.NDArray[np.floating],
    test_y: npt.NDArray[np.integer],
    num_classes: int,
) -> float:
    """Held-out accuracy of a logistic regression fitted on ``(train_x, train_y)``.

    ``train_x`` is ``(N, D)``, ``train_y`` holds class ids in ``[0, num_classes)``.
    """
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be (N, D) with one D, got {train_x.shape} and {test_x.shape}")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y) or len(train_x) == 0 or len(test_x) == 0:
        raise ValueError("one label per feature row, and samples on both sides, are needed")
    mean, scale = train_x.mean(axis=0), train_x.std(axis=0) + 1e-8
    x, xt = (train_x - mean) / scale, (test_x - mean) / scale  # (N, D), (M, D)
    onehot = np.eye(num_classes)[train_y]  # (N, K)
    weights = np.zeros((x.shape[1], num_classes))
    bias = np.zeros(num_classes)
    for _ in range(STEPS):
        logits = x @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        error = (probs - onehot) / len(x)  # gradient of the mean cross-entropy w.r.t. logits
        weights -= STEP_SIZE * (x.T @ error + L2 * weights)
        bias -= STEP_SIZE * error.sum(axis=0)
    predicted = np.argmax(xt @ weights + bias, axis=1)
    return float(np.mean(predicted == test_y))
