"""Split mode: the client runs the lower layers, the server the upper ones, every minibatch.

Two exchanges a round: the client's boundary activations up (``train.split_forward``), the
server's boundary gradients down (``train.split_backward``), then the trained lower prefix up.
"""

from __future__ import annotations

from strategies.cost.costmodel import Workload
from strategies.cost.workload import ModelShape, RoundPlan, split_workload
from strategies.modes.base import TrainingMode, layers_params
from strategies.wire import names as wire


def _workload(shape: ModelShape, plan: RoundPlan, rows: int) -> Workload:
    return split_workload(shape, plan)


def _device_params(shape: ModelShape, plan: RoundPlan) -> int:
    return layers_params(shape, shape.client_layers)


MODE = TrainingMode(
    name=wire.SPLIT_MODE,
    first_message=wire.SPLIT_FORWARD,
    second_message=wire.SPLIT_BACKWARD,
    sends_emulator=False,
    workload=_workload,
    device_params=_device_params,
)
