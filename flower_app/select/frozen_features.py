"""Frozen boundary features of a candidate, for the zero-cost baseline.

The client's half of the untrained split model (embeddings, lower layers, the initial
prefix) turns a sample of the task's texts into boundary activations; their mean over
the real tokens is one feature vector per text. :func:`zero_cost_score` fits a linear
probe on them (:func:`strategies.selection.zero_cost.linear_probe_accuracy`): no training of the
candidate at all.
"""

from __future__ import annotations

import numpy as np
import torch

from flower_app.config.schema import Config
from flower_app.data import files as data_mod
from flower_app.data.setup import build
from flower_app.tasks.lm import encode_for
from strategies.selection.zero_cost import linear_probe_accuracy


def boundary_features(config: Config, dataset: data_mod.TextDataset, batch_size: int = 64) -> np.ndarray:
    """``(N, hidden)`` mean-pooled boundary activations of ``dataset`` under the candidate's split."""
    setup = build(config)
    encoded = encode_for(setup.tokenizer, dataset, config)
    out = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            ids, mask, _ = data_mod.collate(
                encoded, np.arange(start, min(start + batch_size, len(encoded))), setup.pad_id
            )
            boundary = setup.client(ids, mask)  # (B, T, hidden)
            weights = mask.unsqueeze(-1).to(boundary.dtype)  # (B, T, 1)
            out.append((boundary * weights).sum(1) / weights.sum(1).clamp(min=1.0))
    return torch.cat(out).numpy().astype(np.float64)


def zero_cost_score(config: Config, train_size: int = 256, test_size: int = 200) -> float:
    """Held-out accuracy of a linear probe on the frozen boundary features of a sample."""
    setup = build(config)
    train = setup.pool.subset(np.arange(min(train_size, len(setup.pool))))
    test = setup.test.subset(np.arange(min(test_size, len(setup.test))))
    return linear_probe_accuracy(
        boundary_features(config, train),
        train.labels,
        boundary_features(config, test),
        test.labels,
        len(setup.pool.label_names),
    )
