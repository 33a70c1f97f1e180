"""U-shape mode: labels and targets never leave the device; the head runs there.

The device runs the lower layers and the head, the server the layers between them. Three
exchanges a round: the boundary activations up without labels (``train.ushape_forward``);
the server's features (what the head reads: pooled for a classifier) and the head down, the
device's loss gradient at them and its trained head up (``train.ushape_top``); the server's
boundary gradients down, the trained lower prefix up (``train.ushape_backward``). Only
activations and gradients cross, never a label field.
"""

from __future__ import annotations

from strategies.cost.costmodel import Workload
from strategies.cost.workload import ModelShape, RoundPlan, ushape_workload
from strategies.modes.base import TrainingMode, layers_params
from strategies.wire import names as wire


def _workload(shape: ModelShape, plan: RoundPlan, rows: int) -> Workload:
    return ushape_workload(shape, plan)


def _device_params(shape: ModelShape, plan: RoundPlan) -> int:
    return layers_params(shape, shape.client_layers) + shape.head_params


MODE = TrainingMode(
    name=wire.USHAPE_MODE,
    first_message=wire.USHAPE_FORWARD,
    second_message=wire.USHAPE_TOP,
    third_message=wire.USHAPE_BACKWARD,
    sends_emulator=False,
    workload=_workload,
    device_params=_device_params,
)
