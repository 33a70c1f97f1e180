"""A finished round's simulated cost and its record; the run's summary.

:func:`simulate` prices each working client's round with the cost model
(:mod:`strategies.cost.costmodel`): FLOPs from the workload of its mode, scaled by the
steps it reports having taken, and the bytes its messages really carried.
:func:`round_record` is the round's line of ``metrics.jsonl``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import Result

from strategies.cost.costmodel import EnergyLedger, RoundCost, Workload, round_cost
from strategies.cost.workload import ModelShape, pool_server_flops
from strategies.fleet import channel
from strategies.fleet.devices import DeviceProfile
from strategies.fleet.state import ClientInfo, FleetState
from strategies.modes.registry import training_mode
from strategies.persist.rundir import RunDirectory
from strategies.policy import policies as fleet
from strategies.policy.requirements import FailureCause, count_causes
from strategies.round.state import RoundState
from strategies.settings import SplitSettings
from strategies.wire import names as wire
from strategies.wire.records import content_bytes, to_record

# A client that declined before training spent no compute on the round's plan.
DECLINED = (FailureCause.INSUFFICIENT_SAMPLES, FailureCause.INSUFFICIENT_COMPUTE)


def bytes_up(rnd: RoundState) -> dict[int, int]:
    """Tensor payload each node sent this round (both exchanges), by node id."""
    up = {n: content_bytes(r) for n, r in rnd.first.items()}
    for n, r in rnd.backward.items():
        up[n] = up.get(n, 0) + content_bytes(r)
    for n, sent in rnd.more_up.items():
        up[n] = up.get(n, 0) + sent
    return up


def simulate(
    rnd: RoundState,
    fleet_state: FleetState,
    settings: SplitSettings,
    shape: ModelShape,
    ledger: EnergyLedger,
) -> tuple[dict[str, Any], dict[int, RoundCost]]:
    """Each working client's simulated time and energy this round, and the round's figures.

    Returns the round's simulated figures (``sim-latency-s``, ``sim-clock-s``,
    ``sim-pool-s``, ``energy-j``, ``over-budget``) and each client's cost by partition id.
    """
    policy = settings.fleet_policy
    up = bytes_up(rnd)
    costs: dict[int, RoundCost] = {}
    extra: dict[int, dict[str, Any]] = {}
    # Partition order: float sums must not depend on the order replies arrived in.
    for node in sorted(rnd.first, key=lambda n: fleet_state.clients[n].partition_id):
        info = fleet_state.clients[node]
        assignment = rnd.assignments[info.partition_id]
        mode = assignment.mode
        planned = fleet_state.workloads[info.partition_id][mode]
        steps = settings.steps * assignment.local_epochs
        # The workload was planned for ``planned_steps``; a longer plan (a probe's plan:M) costs more.
        planned_steps = (fleet_state.planned_steps or settings.steps) * assignment.local_epochs
        done = rnd.steps_done.get(node, steps) / planned_steps
        failure = rnd.failures.get(node)
        declined = failure is not None and failure.cause in DECLINED
        if declined:
            done = 0.0  # it declined before training (its one measured step is not counted)
        # An upload is priced whole once sent, and the server's work on it as the pool's (``sim-pool-s``).
        uploads_once = training_mode(mode).uploads_once
        client_share = done if not uploads_once or declined else 1.0
        observed = Workload(
            mode,
            planned.client_flops * client_share,
            up[node],
            rnd.bytes_down.get(node, 0),
            0.0 if uploads_once else planned.server_flops * done,
            planned.client_memory_bytes,
        )
        # The plan's allocation meets this round's channel, which may have faded since.
        profile = channel_profile(info, settings.seed, rnd.server_round)
        allocation, over = fleet.effective_allocation(assignment, profile)
        costs[info.partition_id] = round_cost(profile, observed, allocation, policy.server_flops)
        extra[info.partition_id] = {
            "mode": mode,
            "group": assignment.group,
            "over-budget": over,
            "energy-budget-j": profile.energy_budget_j,
            **channel_entry(info, profile),
        }
    pool_s = pool_server_flops(shape, rnd.pool_samples, settings.upload_kind) / policy.server_flops
    latency = ledger.record(rnd.server_round, costs, server_busy_s=pool_s, extra=extra)
    figures = {
        "sim-latency-s": latency,
        "sim-clock-s": ledger.clock_s,
        "sim-pool-s": pool_s,
        "energy-j": sum(c.energy_j for c in costs.values()),
        "over-budget": sum(e["over-budget"] for e in extra.values()),
    }
    return figures, costs


def channel_profile(info: ClientInfo, seed: int, server_round: int) -> DeviceProfile:
    """A client's profile with this round's channel gain (its own for a static channel)."""
    return channel.profile_at(info.profile, info.channel, seed, info.partition_id, server_round)


def channel_entry(info: ClientInfo, profile: DeviceProfile) -> dict[str, float]:
    """``channel-gain-db`` the round used, for a changing channel only: a static fleet's records stay as they were."""
    return {} if info.channel.static else {"channel-gain-db": round(channel.gain_db(profile), 3)}


def round_record(
    rnd: RoundState,
    fleet_state: FleetState,
    sim: Mapping[str, Any],
    costs: Mapping[int, RoundCost],
    evaluation: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The round's line of ``metrics.jsonl`` (``evaluation``: the global model's metrics, if evaluated)."""
    up, down = bytes_up(rnd), rnd.bytes_down
    clients = {}
    for n in sorted(set(up) | set(down)):
        if n not in fleet_state.clients:
            continue
        pid = fleet_state.clients[n].partition_id
        entry = {
            "bytes-up": up.get(n, 0),
            "bytes-down": down.get(n, 0),
            "mode": rnd.assignments[pid].mode,
            "group": rnd.assignments[pid].group,
            "train-loss": rnd.split.losses.get(n, rnd.ushape.losses.get(n)),
        }
        if pid in costs:
            entry.update({"sim-latency-s": costs[pid].latency_s, "energy-j": costs[pid].energy_j})
            info = fleet_state.clients[n]
            entry.update(channel_entry(info, channel_profile(info, fleet_state.seed, rnd.server_round)))
        clients[str(pid)] = entry
    every_loss = [*rnd.split.losses.values(), *rnd.ushape.losses.values(), *rnd.local_losses.values()]
    if rnd.pool_samples and rnd.pool_loss is not None:
        every_loss.append(rnd.pool_loss)
    record = {
        "round": rnd.server_round,
        "train-loss": float(np.mean(every_loss)) if every_loss else None,
        "bytes-up": sum(up.values()),
        "bytes-down": sum(down.values()),
        "clients": clients,
        "dropped": {client_name(n, fleet_state): why for n, why in rnd.dropped().items()},
        "failures": count_causes(rnd.failures.values()),
        "excluded": sorted(fleet_state.excluded),
        "modes": fleet_state.mode_counts(rnd.assignments),
        "pool-rows": sum(
            len(a) for upload in fleet_state.pool.values() for k, a in upload.items() if k.startswith("label.")
        ),
        **sim,
        "wall-s": round(time.time() - rnd.started, 3),
    }
    if rnd.sat_out:
        record["sat-out"] = rnd.sat_out
    for key, ids in (("joined", rnd.joined), ("left", rnd.left)):
        if ids:  # only rounds where the fleet changed: a steady fleet's records stay as they were
            record[key] = sorted(ids)
    if rnd.bounded:  # only rounds where a defence acted: an honest run's records stay as they were
        record["bounded"] = dict(rnd.bounded)
        for source, note in sorted(rnd.bounded.items()):
            log(WARNING, "round %d: %s: %s", rnd.server_round, source, note)
    if rnd.capped:
        record["capped"] = dict(rnd.capped)
        for source, note in sorted(rnd.capped.items()):
            log(WARNING, "round %d: %s: %s", rnd.server_round, source, note)
    if rnd.screened:
        record["screened"] = {client_name(n, fleet_state): why for n, why in sorted(rnd.screened.items())}
        for name, why in record["screened"].items():
            log(WARNING, "round %d: client %s left out by screening: %s", rnd.server_round, name, why)
    for key, value in (evaluation or {}).items():
        record[key if key == wire.ACCURACY else f"eval-{key}"] = value
    return record


def client_name(node: int, fleet_state: FleetState) -> str:
    """A node as the records name it: its partition id (a node unknown to the fleet by its node id)."""
    info = fleet_state.clients.get(node)
    return str(info.partition_id) if info is not None else str(node)


def log_dropped(server_round: int, dropped: Mapping[str, str]) -> None:
    for name, why in sorted(dropped.items()):
        log(WARNING, "round %d: client %s dropped: %s", server_round, name, why)


def log_settings(s: SplitSettings) -> None:
    """The strategy's one line at the start of a run."""
    policy = s.fleet_policy
    log(
        INFO,
        f"SplitPrefixStrategy: policy {policy.name} (modes {','.join(policy.modes)}), {s.steps} steps x "
        f"batch {s.batch_size} per client per round, lr {s.lr:g}, {s.activation_dtype} on the wire, "
        f"min {s.min_clients} clients",
    )


def log_round(record: Mapping[str, Any], num_rounds: int) -> None:
    log_dropped(record["round"], record["dropped"])
    log(
        INFO,
        "[round %d/%d] train-loss %.4f  %s  up %.2f MB  down %.2f MB  %d dropped  %.1f s  (simulated %.1f s, %.1f J)",
        record["round"],
        num_rounds,
        float("nan") if record["train-loss"] is None else record["train-loss"],
        held_out_text(record),
        record["bytes-up"] / 1e6,
        record["bytes-down"] / 1e6,
        len(record["dropped"]),
        record["wall-s"],
        record["sim-latency-s"],
        record["energy-j"],
    )


def held_out_text(record: Mapping[str, Any]) -> str:
    """The round line's held-out figures: a causal-LM job's (it reports perplexity) are of next tokens."""
    if "accuracy" not in record:
        return "accuracy -"
    if "eval-perplexity" not in record:
        return f"accuracy {record['accuracy']:.4f}"
    return f"next-token accuracy {record['accuracy']:.4f}  perplexity {record['eval-perplexity']:.2f}"


def run_summary(status: str, history: Sequence[Mapping[str, Any]], wall_s: float, policy: str) -> dict[str, Any]:
    """``summary.json``: status, rounds, final accuracy, total bytes, simulated time and energy."""
    evaluated = [r for r in history if "accuracy" in r]
    # A causal-LM run is judged by its held-out perplexity too.
    perplexity = evaluated[-1].get("eval-perplexity") if evaluated else None
    probes = [{"round": r["round"], **r["probe"]} for r in history if "chosen" in r.get("probe", {})]
    return {
        "status": status,
        "rounds": len(history),
        "wall-s": round(wall_s, 3),
        "final-accuracy": evaluated[-1]["accuracy"] if evaluated else None,
        "final-eval-loss": evaluated[-1].get("eval-loss") if evaluated else None,
        "bytes-up": sum(r["bytes-up"] for r in history),
        "bytes-down": sum(r["bytes-down"] for r in history),
        "sim-clock-s": history[-1].get("sim-clock-s") if history else None,
        "energy-j": sum(r.get("energy-j", 0.0) for r in history),
        "policy": policy,
        **({"final-eval-perplexity": perplexity} if perplexity is not None else {}),
        **({"probes": probes} if probes else {}),
        **privacy_spent(history),
    }


def privacy_spent(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Under DP, the run's ``(epsilon, delta)``: its last private round's (a run without DP: nothing)."""
    private = [r for r in history if "dp-epsilon" in r]
    if not private:
        return {}
    return {"dp-epsilon": private[-1]["dp-epsilon"], "dp-delta": private[-1]["dp-delta"], "dp-rounds": len(private)}


def add_to_result(result: Result, record: Mapping[str, Any], state: Mapping[str, np.ndarray]) -> None:
    """A finished round into Flower's Result: its scalar figures, its evaluation, the tensors."""
    server_round = record["round"]
    result.arrays = to_record(state)
    store(result.train_metrics_clientapp, server_round, metric_record(record, ("accuracy", "eval-")))
    evaluation = {k: v for k, v in record.items() if k == wire.ACCURACY or k.startswith("eval-")}
    store(result.evaluate_metrics_serverapp, server_round, MetricRecord(evaluation) if evaluation else None)


def store(table: dict[int, MetricRecord], server_round: int, metrics: MetricRecord | None) -> None:
    table.update({server_round: metrics} if metrics is not None else {})


def metric_record(record: Mapping[str, Any], exclude: tuple[str, ...]) -> MetricRecord:
    """The round's scalar figures as a Flower MetricRecord (per-client tables stay in metrics.jsonl)."""
    return MetricRecord(
        {
            k: float(v) if isinstance(v, float) else int(v)
            for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith(exclude)
        }
    )


def save_round(
    run_dir: RunDirectory,
    record: Mapping[str, Any],
    state: Mapping[str, np.ndarray],
    fleet_state: FleetState,
    ledger: EnergyLedger,
    uploaded: bool,
    probe: Mapping[str, Any],
    trust: Mapping[str, Any] | None = None,
    privacy: Mapping[str, Any] | None = None,
) -> None:
    """A closed round on disk: the pool if an upload arrived, the record, the ledger, the checkpoint."""
    if uploaded:
        run_dir.save_pool(fleet_state.pool)
    run_dir.log_round(dict(record))
    run_dir.log_ledger([r for r in ledger.rows if r["round"] == record["round"]])
    saved = {"round": record["round"], **fleet_state.dump(), "clock-s": ledger.clock_s, "probe": dict(probe)}
    if trust is not None:
        saved["trust"] = dict(trust)
    if privacy is not None:
        saved["privacy"] = dict(privacy)
    run_dir.checkpoint(record["round"], dict(state), saved)
