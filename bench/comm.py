"""Uplink bytes per client per round: prefix tuning against full-model FedAvg.

Every figure is the serialized tensor payload of a real Flower ArrayRecord built
from real tensors of the same model (default: the offline all-MiniLM-L6-v2),
in this process:

- full-model FedAvg: every weight of the model, uploaded each round;
- prefix (all layers) + head: what a `local`-mode client uploads;
- split mode: the boundary activations of the round's batch plan (float32,
  float16, int8 and int4 with a scale per token vector) plus the lower-layer prefix sent
  back after the replay.

    python bench/comm.py [key=value ...]     e.g. config=test, train.steps-per-round=10
"""

from __future__ import annotations

import sys

from flower_app.config.load import load_config
from flower_app.data.files import batch_plan
from flower_app.data.setup import build, client_data
from flower_app.model.loading import load
from flower_app.model.split_model import get_state
from flower_app.modes.split import forward_plan
from strategies.wire.records import to_record


def payload_bytes(arrays) -> int:
    return sum(len(array.data) for array in to_record(arrays).values())


def main(argv: list[str]) -> None:
    config = load_config(dict(a.split("=", 1) for a in argv))
    setup = build(config)
    encoded = client_data(config, 0, config.data.num_partitions)
    steps, batch = config.train.steps_per_round, config.train.batch_size
    plan = batch_plan(len(encoded), steps, batch, seed=config.run.seed)

    model, _ = load(config.model.source, seed=config.run.seed)  # a fresh copy: every frozen weight
    full = payload_bytes({k: v.detach().numpy() for k, v in model.state_dict().items()})
    client_prefix = get_state(setup.client)
    prefix_all = payload_bytes(setup.initial_state)
    rows = [("full-model FedAvg (all weights)", full), ("prefix, all layers + head (local mode)", prefix_all)]
    for dtype in ("float32", "float16", "int8", "int4"):
        acts = forward_plan(setup.client, encoded, plan, setup.pad_id, dtype)
        rows.append(
            (f"split mode, {dtype} activations + lower prefix", payload_bytes(acts) + payload_bytes(client_prefix))
        )

    print(
        f"model {config.model.source}: {sum(v.size for v in setup.initial_state.values()):,} trainable "
        f"of {sum(p.numel() for p in model.parameters()):,} weights; split after layer "
        f"{config.model.split_layer}; {steps} minibatches x {batch} samples per round"
    )
    print(f"{'scheme':<48}{'uplink / client / round':>24}{'vs full FedAvg':>16}")
    for name, size in rows:
        print(f"{name:<48}{size / 1e6:>20.3f} MB{size / full:>16.5f}")
    print(
        f"full FedAvg / prefix upload = {full / prefix_all:,.0f}x; "
        f"full FedAvg / split float32 = {full / rows[2][1]:,.1f}x; "
        f"split int8 / split float32 = {rows[4][1] / rows[2][1]:.3f}x; "
        f"split int4 / split float32 = {rows[5][1] / rows[2][1]:.3f}x"
    )


if __name__ == "__main__":
    main(sys.argv[1:] or [])
