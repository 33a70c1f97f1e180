"""A task family: what one kind of job hands the apps, as one entry of :mod:`flower_app.tasks.registry`.

``task.family`` names the entry. Each entry says, for its kind of job:

====================  =============================================================================
``setup``             the job's :class:`Setup`: the split model, the pool and the held-out split
``device_part``       what a device holds (:class:`~flower_app.model.device_part.DevicePart`)
``server_model``      the server's half, as the strategy reaches it (:class:`ServerHalf`)
``partition_data``    the encoded samples of one partition of the pool (rows of token ids or
                      pixel levels: the wire, batch plans and uploads treat both alike)
``node_data``         a node's encoded samples, read on the device (its cache, or its own file)
``prepare_device``    what a device sets before a train message (the image encoder's channel)
``metrics``           the names of the held-out metrics its server reports
``resume_keys``       config sections a resumed run must share beyond model, data and seed
``token_embeddings``  whether its client part starts from a token embedding matrix (the
                      directions ``privacy.act-directions=embedding`` puts the noise in)
====================  =============================================================================

Entry modules import torch inside their functions: a node answering ``query`` looks its
family up without loading a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, MetricRecord

from flower_app.config.schema import Config
from flower_app.data.device_cache import DataSource
from flower_app.data.files import Encoded
from flower_app.model.device_part import DevicePart
from strategies.fleet.profile import DeviceProfile
from strategies.interfaces import ServerModel
from strategies.settings import SplitSettings


@dataclass
class Setup:
    """Everything one process needs for a config: the split model, the data, the initial tensors.

    ``pool`` and ``test`` are the family's own sets (a ``TextDataset``, an ``ImageSet``);
    ``encode`` turns a subset of either into :class:`~flower_app.data.files.Encoded` rows.
    """

    config: Config
    spec: Any  # SplitSpec
    client: Any  # ClientPart, or the family's own client part answering the same calls
    server: Any  # ServerPart, likewise
    tokenizer: Any
    pad_id: int
    verbalizer_ids: tuple[int, ...] | None
    pool: Any
    test: Any
    initial_state: dict[str, np.ndarray]
    encode: Callable[[Any], Encoded]

    @cached_property
    def test_encoded(self) -> Encoded:
        """The held-out split, encoded once: every evaluation reads the same rows."""
        return self.encode(self.test)


class ServerHalf(ServerModel, Protocol):
    """The server's half as :mod:`flower_app.apps.server_app` drives it: the strategy's model, plus a start."""

    def initial_state(self) -> dict[str, np.ndarray]: ...

    def evaluate_fn(self, every: int, num_rounds: int) -> Callable[[int, ArrayRecord], MetricRecord | None]: ...


@dataclass(frozen=True)
class TaskFamily:
    """One ``task.family``: its name and the functions of the table in the module docstring."""

    name: str
    setup: Callable[[Config], Setup]
    device_part: Callable[[Config, Path], DevicePart]
    server_model: Callable[[Setup, SplitSettings], ServerHalf]
    partition_data: Callable[[Setup, np.ndarray, int], Encoded]
    node_data: Callable[[Config, DataSource, Path], Encoded]
    prepare_device: Callable[[Config, DevicePart, DeviceProfile, int], None]
    metrics: Callable[[Config], tuple[str, ...]]
    resume_keys: tuple[str, ...] = ()
    token_embeddings: bool = True
