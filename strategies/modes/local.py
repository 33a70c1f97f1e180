"""Local mode: the client trains its lower prefix end to end through an emulator of the upper layers.

One exchange a round (``train.local``): the lower prefix and the emulator's tensors down,
the trained prefix up; ``local_epochs`` passes over the plan.
"""

from __future__ import annotations

from strategies.cost.costmodel import Workload
from strategies.cost.workload import ModelShape, RoundPlan, local_workload
from strategies.modes.base import TrainingMode, layers_params
from strategies.wire import names as wire


def _workload(shape: ModelShape, plan: RoundPlan, rows: int) -> Workload:
    return local_workload(shape, plan)


def _device_params(shape: ModelShape, plan: RoundPlan) -> int:
    return layers_params(shape, shape.client_layers + plan.emulator_layers)


MODE = TrainingMode(
    name=wire.LOCAL_MODE,
    first_message=wire.LOCAL,
    second_message=None,
    sends_emulator=True,
    workload=_workload,
    device_params=_device_params,
    takes_local_epochs=True,
)
