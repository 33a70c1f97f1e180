"""Centralized mode: a weak client uploads rows once (``train.upload``); the server trains on the pool.

The rows are token ids (``samples``, nothing runs on the device) or lower-layer activations.
"""

from __future__ import annotations

from strategies.cost.costmodel import Workload
from strategies.cost.workload import ModelShape, RoundPlan, upload_workload
from strategies.modes.base import TrainingMode, layers_params
from strategies.wire import names as wire


def _workload(shape: ModelShape, plan: RoundPlan, rows: int) -> Workload:
    return upload_workload(shape, plan, rows)


def _device_params(shape: ModelShape, plan: RoundPlan) -> int:
    if plan.upload_kind == wire.SAMPLES:
        return 0  # the device sends token ids; the server runs every layer
    return layers_params(shape, shape.client_layers)


MODE = TrainingMode(
    name=wire.CENTRALIZED_MODE,
    first_message=wire.UPLOAD,
    second_message=None,
    sends_emulator=False,
    workload=_workload,
    device_params=_device_params,
    uploads_once=True,
)
